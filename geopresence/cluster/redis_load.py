"""Reading the shared state back from Redis (cluster): what a starting node loads into its
replica (``load_state``), and what a session needs as it opens: its user's friends
(``read_friends``) and the live locations (``load_locations``).
The keys are in ``geopresence.cluster.redis_keys``; ``redis_state`` writes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from geopresence.cluster.redis_keys import Keys, member_message, string, strings
from geopresence.core.replication import LocationSet
from geopresence.core.state import DurableState
from geopresence.model.chat_message import ChatMessage
from geopresence.model.records import SettingsChanged

if TYPE_CHECKING:
    from geopresence.core.hub import Hub


def _settings_from_json(user: str, raw: bytes | str) -> SettingsChanged:
    """The record that ``_settings_json`` stored."""
    data = orjson.loads(raw)
    return SettingsChanged(
        user,
        bool(data["share_location"]),
        data["radius_m"],
        bool(data["visible_to_strangers"]),
    )


async def load_durable(
    client: Any, keys: Keys, state: DurableState, *, friendships: bool = True
) -> dict[str, int]:
    """Fill a fresh durable state from Redis: the user DB and the chat messages (without
    ``friendships``, no friendship: a node reads those of its users as they need them,
    ``read_friends``). Returns counts for the log line."""
    k = keys
    pairs: list[tuple[str, str]] = []
    for user in strings(await client.smembers(k.users)) if friendships else ():
        for friend in strings(await client.smembers(k.of("friends", user))):
            pairs.append((user, friend))  # each pair twice: the second is a no-op
    groups: dict[str, dict[str, int]] = {}
    for group in strings(await client.smembers(k.groups)):
        members = await client.hgetall(k.of("group", group))
        marks = {string(user): int(mark) for user, mark in members.items()}
        if marks:
            groups[group] = marks
    settings: list[SettingsChanged] = []
    for user in strings(await client.smembers(k.settings_users)):
        raw = await client.get(k.of("settings", user))
        if raw is not None:
            settings.append(_settings_from_json(user, raw))
    messages: list[ChatMessage] = []
    for conversation in strings(await client.smembers(k.chats)):
        members = await client.zrange(k.of("chat", conversation), 0, -1)
        messages.extend(member_message(member) for member in members)
    messages.sort(key=lambda m: m.message_id)
    marks_issued = (mark for marks in groups.values() for mark in marks.values())
    state.load(
        friendships=pairs,
        groups=groups,
        settings=settings,
        messages=messages,
        last_message_id=max(marks_issued, default=0),
    )
    counts = {"groups": len(groups), "messages": len(messages)}
    if friendships:
        counts["friendships"] = sum(1 for _ in state.users.friendships())
    return counts


async def read_friends(client: Any, keys: Keys, users: list[str]) -> dict[str, list[str]]:
    """Each of ``users``' friends, in one pipeline (on a Cluster, each shard its part)."""
    if not users:
        return {}
    async with client.pipeline(transaction=False) as pipe:
        requests = [pipe.smembers(keys.of("friends", user)) for user in users]
    return {user: strings(await request) for user, request in zip(users, requests, strict=True)}


async def load_locations(client: Any, keys: Keys, users: list[str]) -> list[LocationSet]:
    """The live locations of ``users`` (those with one), in one pipeline (on a Cluster,
    coredis sends each shard its part)."""
    if not users:
        return []
    async with client.pipeline(transaction=False) as pipe:
        requests = [pipe.get(keys.location(user)) for user in users]
    found = []
    for user, request in zip(users, requests, strict=True):
        raw = await request
        if raw is not None:
            lat, lon, ts, at = orjson.loads(raw)
            found.append(LocationSet(user, lat, lon, ts, at))
    return found


async def load_state(client: Any, keys: Keys, hub: Hub) -> dict[str, int]:
    """Fill a fresh hub's replica from Redis: its durable state but the friendships
    (``load_durable``) and every user's presence (friendships and locations are read as
    sessions open: ``geopresence.cluster.friend_slices``, ``geopresence.cluster.views``).
    Returns counts for the log line."""
    k = keys
    counts = await load_durable(client, keys, hub.state, friendships=False)
    online = 0
    for user in strings(await client.smembers(k.presence_users)):
        status, last, version = await client.hmget(
            k.of("presence", user), ["status", "last_active_at", "v"]
        )
        if status is None:
            continue
        online += string(status) == "online"
        hub.replica.load_status(
            user,
            "online" if string(status) == "online" else "offline",
            None if last is None else float(last),
            0 if version is None else int(version),
        )
    return {**counts, "online": online}
