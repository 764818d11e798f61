"""Chat messages written to Redis and published to the nodes that hold their readers
(cluster).

A batch of a node's messages (``RedisJournal``) is stored in one pipeline: each in its
conversation's sorted set (``gp:chat:{C}``), a 1:1 conversation in both parties' lists
(``gp:chats_of:{U}``, what a ``sync`` reads). A message with a ``client_msg_id`` is stored
by a Lua script on the conversation's slot, so that a resend through another node is stored
once whichever node writes first: it stores the message unless the sender's id is already
there, and otherwise returns the message stored before, which the acks then name. Before
that, the sender's ``gp:cmids:{U}`` records the conversation each of its ``client_msg_id``
was first used in (``HSETNX``): one reused for another conversation is refused (``REUSED``),
as on one node, and nothing is stored. Once stored, the messages are published on their
channels (the parties' ``inbox`` channels, or the group's), in the same pipeline when no
script had to decide, in one after the scripts' otherwise. The journal writes its batches one after
another, so a message is published before any later feed entry of its node is written: a
node that heard that entry's watermark and then waits for its own subscriptions to answer
(``Watermarks``) has every message below the watermark that its sessions subscribe to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from geopresence.cluster.presence_scripts import PipelinedScript
from geopresence.cluster.redis_keys import Keys, member_message, message_member, string
from geopresence.model.chat_message import ChatMessage

_STORE_ONCE: Final = """
local stored = redis.call('HGET', KEYS[2], ARGV[1])
if stored then
  local found = redis.call('ZRANGE', KEYS[1], '[' .. stored .. ' ', '(' .. stored .. ' ~',
                           'BYLEX', 'LIMIT', 0, 1)
  if found[1] then return found[1] end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], 0, ARGV[2])
return false
"""
"""Store a message once per (sender, client_msg_id) in its conversation (KEYS[1]: the
messages, KEYS[2]: the client ids, one slot): returns the member stored before, or false."""


_RELEASE: Final = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
"""
"""Drop a sender's claim (KEYS[1]: its ``gp:cmids:{U}``) of ``client_msg_id`` ARGV[1] if it
is still for conversation ARGV[2]."""


async def delete_conversation(client: Any, keys: Keys, conversation: str) -> None:
    """Delete ``conversation`` (a group's, a forgotten user's 1:1): its messages, and its
    ``client_msg_id`` index, whose ids are their senders' to use again, as on one node.
    One key per command: on a Cluster each lives in its own slot."""
    await client.delete([keys.of("chat", conversation)])
    ids = keys.client_ids(conversation)
    for field in [string(f) async for f, _ in client.hscan_iter(ids)]:
        sender, _, client_msg_id = field.partition("\n")
        await client.eval(
            _RELEASE, keys=[keys.sender_ids(sender)], args=[client_msg_id, conversation]
        )
    await client.delete([ids])
    await client.srem(keys.chats, [conversation])


class Reused:
    """What ``ChatWrites`` returns for a message whose sender had used its
    ``client_msg_id`` in another conversation: refused, not stored."""


REUSED: Final = Reused()

Publications = Callable[[ChatMessage], list[tuple[str, str, bytes]]]
"""(command, Redis channel, payload) that publish a message to the other nodes
(``RedisBroker.publications``)."""


class ChatWrites:
    """Stores and publishes one node's messages (``RedisJournal``); scripts by their SHA
    (``EVALSHA``; loaded first, and again after Redis forgot it)."""

    def __init__(self, client: Any, keys: Keys, node_id: int) -> None:
        self._client = client
        self._keys = keys
        self._last_id = keys.last_id(node_id)
        self._script = PipelinedScript(_STORE_ONCE)
        self.publications: Publications | None = None
        """How a stored message is published (None: it is not, a node alone)."""

    async def __call__(self, messages: list[ChatMessage]) -> list[ChatMessage | Reused | None]:
        """Store each message unless, for one with a ``client_msg_id``, its sender's resend
        through another node was stored first, or its sender used that id in another
        conversation (``REUSED``); then publish those stored. Returns, per message, the one
        stored before (None: stored now, or by an earlier attempt of this very write: a
        retry is harmless, and the nodes hear a message once)."""
        client = self._client
        # The node's last id, which it must never issue again below (a restart with its
        # clock behind reads it): its messages are written in id order.
        last = str(max(message.message_id for message in messages))
        if not any(m.client_msg_id is not None for m in messages):
            async with client.pipeline(transaction=False) as pipe:
                for message in messages:
                    self._store(pipe, message)
                    self._publish(pipe, message)
                pipe.set(self._last_id, last)
            return [None] * len(messages)
        reused = await self._reused(messages)
        kept = [m for m, refused in zip(messages, reused, strict=True) if not refused]
        async with self._script.ready(client) as sha:
            async with client.pipeline(transaction=False) as pipe:
                requests = [self._store(pipe, message, sha) for message in kept]
                pipe.set(self._last_id, last)
            results = iter([None if r is None else await r for r in requests])
        originals: list[ChatMessage | Reused | None] = []
        for message, refused in zip(messages, reused, strict=True):
            if refused:
                originals.append(REUSED)
                continue
            stored = next(results)
            original = None if not stored else member_message(stored)
            same = original is None or original.message_id == message.message_id
            originals.append(None if same else original)
        if self.publications is not None:
            async with client.pipeline(transaction=False) as pipe:
                for message, before in zip(messages, originals, strict=True):
                    if before is None:
                        self._publish(pipe, message)
        return originals

    async def _reused(self, messages: list[ChatMessage]) -> list[bool]:
        """Per message: whether its sender used its ``client_msg_id`` in another
        conversation first (the first use claims it, whichever node writes it)."""
        keys = self._keys
        claims: list[Any] = []
        async with self._client.pipeline(transaction=False) as pipe:
            for message in messages:
                if message.client_msg_id is None:
                    claims.append(None)
                    continue
                key = keys.sender_ids(message.sender)
                pipe.hsetnx(key, message.client_msg_id, keys.conversation(message))
                claims.append(pipe.hget(key, message.client_msg_id))
        owners = [None if claim is None else await claim for claim in claims]
        return [
            owner is not None and string(owner) != self._keys.conversation(message)
            for message, owner in zip(messages, owners, strict=True)
        ]

    def _store(self, pipe: Any, message: ChatMessage, sha: str | None = None) -> Any:
        """Queue the commands that store ``message``; the script's request, if it runs one."""
        keys = self._keys
        conversation = keys.conversation(message)
        member = message_member(message)
        request = None
        if sha is not None and message.client_msg_id is not None:
            request = pipe.evalsha(
                sha,
                keys=[keys.of("chat", conversation), keys.client_ids(conversation)],
                args=[f"{message.sender}\n{message.client_msg_id}", member, member[:20]],
            )
        else:
            pipe.zadd(keys.of("chat", conversation), {member: 0})
        pipe.sadd(keys.chats, [conversation])
        if message.to is not None:
            for user in (message.sender, message.to):
                pipe.sadd(keys.of("chats_of", user), [conversation])
        return request

    def _publish(self, pipe: Any, message: ChatMessage) -> None:
        if self.publications is not None:
            for command, channel, data in self.publications(message):
                getattr(pipe, command)(channel, data)
