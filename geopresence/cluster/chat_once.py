"""Chat messages with a ``client_msg_id``, stored once across nodes (cluster).

A client that resends a message (same ``client_msg_id``) through another node must not
store it twice, whichever node writes first. A Lua script on the conversation's slot
decides: it stores the message unless the sender's id is already there, and otherwise
returns the message stored before, which the acks then name. Messages queued together are
decided in one pipeline, and those stored go on the feed in a second one (was: three round
trips per message).
"""

from __future__ import annotations

from typing import Any, Final

from geopresence.cluster.presence_scripts import PipelinedScript
from geopresence.cluster.redis_feed import RedisFeed
from geopresence.cluster.redis_keys import Keys, member_message, message_member
from geopresence.core.replication import FeedOp
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


def is_once(op: FeedOp) -> bool:
    """A chat message with a ``client_msg_id``: stored by ``store_once``."""
    return isinstance(op, ChatMessage) and op.client_msg_id is not None


class StoreOnce:
    """Stores messages with a ``client_msg_id`` for one node (``RedisJournal``): by the
    script's SHA (``EVALSHA``; loaded first, and again after Redis forgot it)."""

    def __init__(self, client: Any, keys: Keys, feed: RedisFeed) -> None:
        self._client = client
        self._keys = keys
        self._feed = feed
        self._script = PipelinedScript(_STORE_ONCE)

    async def __call__(
        self, ops: list[tuple[int, FeedOp, bool, int | None]]
    ) -> list[ChatMessage | None]:
        """Store each message (``(uid, message, on the feed, watermark)``) unless its
        sender's resend through another node was stored first, then append to the feed
        those stored (marked for it), in order. Returns, per message, the one stored before
        (None: stored now, or by an earlier attempt of this very write: a retry is
        harmless)."""
        client, keys = self._client, self._keys
        async with self._script.ready(client) as sha:
            async with client.pipeline(transaction=False) as pipe:
                requests = []
                for _, op, _, _ in ops:
                    assert isinstance(op, ChatMessage), "messages with a client_msg_id only"
                    conversation = keys.conversation(op)
                    member = message_member(op)
                    requests.append(
                        pipe.evalsha(
                            sha,
                            keys=[keys.of("chat", conversation), keys.client_ids(conversation)],
                            args=[f"{op.sender}\n{op.client_msg_id}", member, member[:20]],
                        )
                    )
                    pipe.sadd(keys.chats, [conversation])
            results = [await request for request in requests]
        originals: list[ChatMessage | None] = []
        for (_, op, _, _), stored in zip(ops, results, strict=True):
            assert isinstance(op, ChatMessage)
            original = None if not stored else member_message(stored)
            same = original is None or original.message_id == op.message_id
            originals.append(None if same else original)
        stored_now = [
            (uid, op, mark)
            for (uid, op, on_feed, mark), original in zip(ops, originals, strict=True)
            if on_feed and original is None
        ]
        if stored_now:
            async with client.pipeline(transaction=False) as pipe:
                for uid, op, mark in stored_now:
                    self._feed.append_to(pipe, op, uid, mark)
        return originals
