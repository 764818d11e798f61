"""A forgotten user's keys in Redis (cluster): how a ``UserForgotten`` record is written.

The node that forgets a user writes the record through its ``RedisJournal`` (the writer
below, then the feed entry that makes every other node forget it too). The writer reads
what it deletes from Redis itself, not from what this node holds, so that what other nodes
wrote and this one has not seen yet goes as well:

- ``friends:{U}`` and U in each friend's set; ``groups_of:{U}`` and U in each group's hash;
  ``settings:{U}``; U in the ``users``, ``settings_users`` and ``presence_users`` indexes;
  its cached location; ``presence:{U}`` and its devices' deadlines; U in every strangers'
  cell (``stranger_cells.forget_stranger``);
- every 1:1 conversation with U (``chat:{dm:A:B}``, found with ``SSCAN`` of the ``chats``
  index, exact: ids never hold ``:`` or a glob character), and its place in both parties'
  ``chats_of``; the group messages U sent
  (``ZSCAN`` of each group conversation, filtered by ``MATCH`` and then by sender): about
  a second of Redis time per million group messages, during which this node's later writes
  (and acks) wait;
- U is added to ``forgotten`` (a sorted set: user -> forget time, epoch seconds), so that a
  node that was down meanwhile scrubs U from its own location history when it joins
  (``forgotten_since``, which also drops entries older than the history retention: no
  history line can be that old).

Every step is idempotent: a write retried after a failure, or a forget repeated, is harmless.
"""

from __future__ import annotations

import math
import time
from typing import Any

from geopresence.cluster.chat_writes import delete_conversation
from geopresence.cluster.redis_keys import Keys, member_message, string, strings
from geopresence.cluster.stranger_cells import forget_stranger
from geopresence.model.records import UserForgotten


def forgotten_key(keys: Keys) -> str:
    """The sorted set of forgotten users (member: user id, score: forget time)."""
    return f"{keys.prefix}:forgotten"


async def forget_user(client: Any, keys: Keys, op: UserForgotten) -> None:
    """Delete everything Redis holds about ``op.user`` and list it in ``forgotten``."""
    k, user = keys, op.user
    for friend in strings(await client.smembers(k.of("friends", user))):
        await client.srem(k.of("friends", friend), [user])
    for group in strings(await client.smembers(k.of("groups_of", user))):
        await client.hdel(k.of("group", group), [user])
    presence = k.of("presence", user)
    # Its devices may still be listed in their node's gp:held:{X}: the presence scripts
    # check the holder in the presence hash, which goes below, so those entries are inert.
    # One key per DEL: on a Cluster each lives in its own slot.
    for key in (
        k.of("friends", user),
        k.of("groups_of", user),
        k.of("chats_of", user),
        k.sender_ids(user),
        k.of("settings", user),
        presence,
        k.location(user),
    ):
        await client.delete([key])
    await forget_stranger(client, k, user)
    await client.srem(k.users, [user])
    await client.srem(k.settings_users, [user])
    await client.srem(k.presence_users, [user])
    for pattern in (f"dm:{user}:*", f"dm:*:{user}"):
        conversations = [string(c) async for c in client.sscan_iter(k.chats, match=pattern)]
        for conversation in conversations:
            await delete_conversation(client, k, conversation)
            for party in conversation.split(":")[1:]:
                await client.srem(k.of("chats_of", party), [conversation])
    groups = [string(c) async for c in client.sscan_iter(k.chats, match="g:*")]
    for conversation in groups:
        key = k.of("chat", conversation)
        # MATCH narrows it in Redis (the sender is the array's second value); the sender
        # check drops what the pattern also matches (a group or client_msg_id equal to U).
        members = [m async for m, _ in client.zscan_iter(key, match=f'*,"{user}",*')]
        sent = [m for m in members if member_message(m).sender == user]
        if sent:
            await client.zrem(key, sent)
        ids = k.client_ids(conversation)
        fields = [f async for f, _ in client.hscan_iter(ids, match=f"{user}\n*")]
        if fields:
            await client.hdel(ids, fields)
    await client.zadd(forgotten_key(k), {user: time.time()})


async def forgotten_since(
    client: Any, keys: Keys, since: float, retention: float
) -> tuple[list[str], float]:
    """The users forgotten after ``since`` (epoch seconds), and the latest forget time
    among them (``since`` if none). Entries older than ``retention`` (the history's,
    seconds; inf: forever) are dropped first."""
    key = forgotten_key(keys)
    if math.isfinite(retention):
        await client.zremrangebyscore(key, float("-inf"), time.time() - retention)
    entries = await client.zrangebyscore(key, since, float("inf"), withscores=True)
    found = [(string(member), float(score)) for member, score in entries]
    users = sorted({user for user, score in found if score > since})
    latest = max((score for _, score in found), default=since)
    return users, latest
