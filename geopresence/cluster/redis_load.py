"""Reading the shared state back from Redis (cluster): what a starting node loads
(``load_state``), and what a session needs as it opens: its user's friends
(``read_friends``), their statuses (``read_statuses``) and settings (``read_settings``), and
the live locations (``load_locations``).
The keys are in ``geopresence.cluster.redis_keys``; ``state_writes`` writes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import orjson

from geopresence.cluster.redis_keys import Keys, member_message, string, strings, value_location
from geopresence.core.replication import LocationSet
from geopresence.core.state import DurableState, settings_from
from geopresence.core.statuses import Held
from geopresence.core.store import DEFAULT_SETTINGS, UserSettings
from geopresence.model.chat_message import ChatMessage
from geopresence.model.records import SettingsChanged

if TYPE_CHECKING:
    from geopresence.core.hub import Hub


PIPELINE: Final = 1000
"""Commands per pipeline when reading many keys: one round trip each, not one per key (on a
Cluster, coredis sends each shard its part)."""

T = TypeVar("T")


async def pipelined(client: Any, items: Sequence[T], command: Callable[[Any, T], Any]) -> list[Any]:
    """``command(pipe, item)`` for each of ``items``, ``PIPELINE`` to a round trip; the
    replies in the order of ``items``."""
    replies: list[Any] = []
    for start in range(0, len(items), PIPELINE):
        async with client.pipeline(transaction=False) as pipe:
            requests = [command(pipe, item) for item in items[start : start + PIPELINE]]
        replies.extend([await request for request in requests])
    return replies


def _settings_record(user: str, data: dict[str, Any]) -> SettingsChanged:
    """The record whose settings ``gp:settings:{U}`` holds (``settings_writes``), parsed."""
    return SettingsChanged(
        user,
        bool(data["share_location"]),
        data["radius_m"],
        bool(data["visible_to_strangers"]),
    )


async def load_durable(
    client: Any, keys: Keys, state: DurableState, *, whole: bool = True
) -> dict[str, int]:
    """Fill a fresh durable state from Redis: the user DB and the chat messages (without
    ``whole``, nothing: a node reads the friendships, groups and settings its sessions need
    as they open, ``read_friends``, ``read_groups`` and ``read_settings``, and the messages
    as they sync, ``chat_reads``). Returns counts for the log line."""
    k = keys
    pairs: list[tuple[str, str]] = []
    if whole:
        users = strings(await client.smembers(k.users))
        read = await pipelined(client, users, lambda pipe, u: pipe.smembers(k.of("friends", u)))
        for user, friends in zip(users, read, strict=True):
            pairs.extend((user, friend) for friend in strings(friends))  # each pair twice
    names = strings(await client.smembers(k.groups)) if whole else []
    groups = await read_groups(client, keys, names)
    settings: list[SettingsChanged] = []
    users = strings(await client.smembers(k.settings_users)) if whole else []
    read = await pipelined(client, users, lambda pipe, u: pipe.get(k.of("settings", u)))
    for user, raw in zip(users, read, strict=True):
        if raw is not None:
            settings.append(_settings_record(user, orjson.loads(raw)))
    messages: list[ChatMessage] = []
    chats = strings(await client.smembers(k.chats)) if whole else []
    read = await pipelined(client, chats, lambda pipe, c: pipe.zrange(k.of("chat", c), 0, -1))
    for members in read:
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
    counts = {"groups": len(groups)}
    if whole:
        counts["messages"] = len(messages)
        counts["friendships"] = sum(1 for _ in state.users.friendships())
    return counts


async def read_friends(client: Any, keys: Keys, users: list[str]) -> dict[str, list[str]]:
    """Each of ``users``' friends, ``PIPELINE`` to a round trip (``pipelined``)."""
    read = await pipelined(
        client, users, lambda pipe, user: pipe.smembers(keys.of("friends", user))
    )
    return {user: strings(friends) for user, friends in zip(users, read, strict=True)}


async def read_groups_of(client: Any, keys: Keys, users: list[str]) -> dict[str, list[str]]:
    """Each of ``users``' groups (``gp:groups_of:{U}``), ``PIPELINE`` to a round trip."""
    read = await pipelined(
        client, users, lambda pipe, user: pipe.smembers(keys.of("groups_of", user))
    )
    return {user: strings(groups) for user, groups in zip(users, read, strict=True)}


async def read_groups(client: Any, keys: Keys, groups: list[str]) -> dict[str, dict[str, int]]:
    """Each of ``groups`` that exists (listed in ``gp:groups``: an empty one too), with its
    members' join marks (``gp:group:{G}``)."""
    read = await pipelined(client, groups, lambda pipe, g: pipe.hgetall(keys.of("group", g)))
    listed = await pipelined(client, groups, lambda pipe, g: pipe.sismember(keys.groups, g))
    found = {}
    for group, members, exists in zip(groups, read, listed, strict=True):
        if members or exists:
            found[group] = {string(user): int(mark) for user, mark in members.items()}
    return found


async def load_locations(client: Any, keys: Keys, users: list[str]) -> list[LocationSet]:
    """The live locations of ``users`` (those with one), ``PIPELINE`` to a round trip."""
    read = await pipelined(client, users, lambda pipe, user: pipe.get(keys.location(user)))
    found = []
    for user, raw in zip(users, read, strict=True):
        if raw is not None:
            found.append(value_location(user, raw))
    return found


async def load_state(client: Any, keys: Keys, hub: Hub) -> dict[str, int]:
    """Fill a fresh hub from Redis: its durable state but the friendships
    (``load_durable``). Friendships, statuses, settings and locations are read as sessions
    open (``geopresence.cluster.friend_slices``, ``.covered``, ``.views``). Returns counts
    for the log line."""
    return await load_durable(client, keys, hub.state, whole=False)


async def read_statuses(client: Any, keys: Keys, users: Sequence[str]) -> dict[str, Held]:
    """The cluster-wide status of each of ``users`` that Redis has (``gp:presence:{U}``,
    written by ``presence_scripts``): (status, last_active_at, version); a user never seen
    online is missing."""
    return (await read_kept(client, keys, users, ()))[0]


async def read_settings(client: Any, keys: Keys, users: Sequence[str]) -> dict[str, UserSettings]:
    """Each of ``users``' settings (``gp:settings:{U}``; absent: ``DEFAULT_SETTINGS``)."""
    read = (await read_kept(client, keys, (), users))[1]
    return {user: settings for user, (settings, _) in read.items()}


Versioned = tuple[UserSettings, int]
"""A user's settings and their version (``settings_writes.SET_SETTINGS``; 0: none stored)."""

_STATUS_FIELDS: Final = ["status", "last_active_at", "v"]


async def read_kept(
    client: Any, keys: Keys, statuses: Sequence[str], settings: Sequence[str]
) -> tuple[dict[str, Held], dict[str, Versioned]]:
    """``read_statuses(statuses)`` and the versioned settings of ``settings`` together,
    ``PIPELINE`` to a round trip: what a node keeps of the users its sessions need."""
    items = [(True, user) for user in statuses] + [(False, user) for user in settings]
    read = await pipelined(
        client,
        items,
        lambda pipe, item: (
            pipe.hmget(keys.of("presence", item[1]), _STATUS_FIELDS)
            if item[0]
            else pipe.get(keys.of("settings", item[1]))
        ),
    )
    found: dict[str, Held] = {}
    for user, (status, last, version) in zip(statuses, read[: len(statuses)], strict=True):
        if status is not None:
            found[user] = (
                "online" if string(status) == "online" else "offline",
                None if last is None else float(last),
                0 if version is None else int(version),
            )
    kept: dict[str, Versioned] = {}
    for user, raw in zip(settings, read[len(statuses) :], strict=True):
        if raw is None:
            kept[user] = (DEFAULT_SETTINGS, 0)
        else:
            data = orjson.loads(raw)  # once: the settings and their version
            kept[user] = (settings_from(_settings_record(user, data)), int(data.get("v", 0)))
    return found, kept
