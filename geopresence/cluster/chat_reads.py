"""Reading a user's chat messages from Redis (cluster): its ``sync`` pages and its export.

A node keeps no messages (``Chat.keeps_messages`` is off): they are in one sorted set per
conversation (``gp:chat:{C}``, members ``"<20-digit id> <JSON>"``, so that lexicographic
order is id order and ``ZRANGE ... BYLEX`` reads an id range). A user's 1:1 conversations
are listed in ``gp:chats_of:{U}`` (``chat_writes``); its groups and join marks are held by
the node (``holdings``). A sync page is that list, then a few members of each conversation per
round trip (``redis_load.pipelined``), merged by id (``_merged``); exports and catch-ups
read pages of the same merge.
"""

from __future__ import annotations

import functools
import heapq
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

from geopresence.cluster.redis_keys import (
    Keys,
    conversation_of,
    member_message,
    string,
    strings,
)
from geopresence.cluster.redis_load import pipelined
from geopresence.core.hub import Hub
from geopresence.model.chat_message import ChatMessage
from geopresence.model.snowflake import MAX_ID
from geopresence.wire.client_messages import Send

SYNC_BATCH: Final = 50
"""Messages read from one conversation per round of a sync page (its first round: fewer,
as the page's share)."""

EXPORT_BATCH: Final = 500
"""Messages read from one conversation per round trip of an export."""

MIGRATED: Final = "chats_of_listed"
"""The key (under the prefix) set once every 1:1 conversation stored by a version without
``gp:chats_of:{U}`` is listed there (``list_conversations``)."""


def _from(after: int) -> bytes:
    """The BYLEX bound of the members with an id above ``after``."""
    return b"[%020d" % (after + 1)


def _below(below: int) -> bytes:
    """The BYLEX bound of the members with an id below ``below``."""
    return b"(%020d" % below


def _by_id(target: Any, key: str, after: int, below: bytes, count: int) -> Any:
    """``ZRANGE key ... BYLEX LIMIT 0 count``: the members after id ``after`` up to the
    bound ``below``, on a client or in a pipeline."""
    from coredis import PureToken

    return target.zrange(key, _from(after), below, sortby=PureToken.BYLEX, offset=0, count=count)


async def conversations_of(client: Any, keys: Keys, user: str) -> list[str]:
    """``user``'s 1:1 conversations ("dm:A:B")."""
    return strings(await client.smembers(keys.of("chats_of", user)))


async def read_sync(
    client: Any,
    keys: Keys,
    user: str,
    groups: Mapping[str, int],
    after: int,
    below: int,
    count: int,
    skip: Callable[[ChatMessage], bool] = lambda message: False,
) -> list[ChatMessage]:
    """``user``'s messages with ``after`` < id < ``below``, ascending, at most ``count``
    (but those ``skip`` drops, which do not count): its 1:1 messages and those of
    ``groups`` (group -> its join mark: only later ids)."""
    starts = {name: after for name in await conversations_of(client, keys, user)}
    starts.update({f"g:{group}": max(after, mark) for group, mark in groups.items()})
    return await _merged(client, keys, starts, below, count, skip)


async def _merged(
    client: Any,
    keys: Keys,
    starts: Mapping[str, int],
    below: int,
    count: int,
    skip: Callable[[ChatMessage], bool] = lambda message: False,
) -> list[ChatMessage]:
    """The first ``count`` messages (but those ``skip`` drops) of the conversations
    ``starts`` names, each after its id there and below ``below``, merged by id. Each
    conversation is read a few members at a time (all of them in one pipeline per round):
    a page never reads ``count`` messages of every conversation."""
    if not starts or count < 1:
        return []
    after = dict(starts)  # where each conversation is read on from
    # A first round sized for the page spread over the conversations, then SYNC_BATCH.
    size = min(count, SYNC_BATCH, max(8, 2 * count // len(after)))
    buffers: dict[str, deque[bytes]] = {}
    heads: list[tuple[bytes, str]] = []
    done: set[str] = set()
    wanted = [name for name, start in after.items() if start + 1 < below]
    page: list[ChatMessage] = []
    while True:
        if wanted:
            fetch = functools.partial(_next_of, keys, after, _below(below), size)
            read = await pipelined(client, wanted, fetch)
            for name, found in zip(wanted, read, strict=True):
                members = deque(m if isinstance(m, bytes) else m.encode() for m in found)
                if len(members) < size:
                    done.add(name)
                if members:
                    after[name] = member_message(members[-1]).message_id
                    heapq.heappush(heads, (members.popleft(), name))
                    buffers[name] = members
            wanted = []
            size = min(count, SYNC_BATCH)
        if not heads or len(page) == count:
            return page
        member, name = heapq.heappop(heads)
        message = member_message(member)
        if not skip(message):
            page.append(message)
        if buffers[name]:
            heapq.heappush(heads, (buffers[name].popleft(), name))
        elif name not in done:
            wanted.append(name)  # its next may come before the other heads: read it first


def _next_of(
    keys: Keys, starts: Mapping[str, int], below: bytes, size: int, pipe: Any, name: str
) -> Any:
    """The next ``size`` members of conversation ``name`` after ``starts[name]``."""
    return _by_id(pipe, keys.of("chat", name), starts[name], below, size)


async def _pages(
    client: Any, keys: Keys, starts: Mapping[str, int], below: int
) -> AsyncIterator[list[ChatMessage]]:
    """Every message of the conversations ``starts`` names (``_merged``), ``EXPORT_BATCH``
    at a time: a long history is never held whole."""
    last = 0
    while True:
        page = await _merged(
            client,
            keys,
            {name: max(start, last) for name, start in starts.items()},
            below,
            EXPORT_BATCH,
        )
        if page:
            yield page
        if len(page) < EXPORT_BATCH:
            return
        last = page[-1].message_id


async def read_range(
    client: Any, keys: Keys, conversations: list[str], after: int, below: int
) -> list[ChatMessage]:
    """Every message of ``conversations`` with ``after`` < id < ``below``, ascending."""
    starts = dict.fromkeys(conversations, after)
    return [message async for page in _pages(client, keys, starts, below) for message in page]


async def read_all(
    client: Any, keys: Keys, user: str, groups: Mapping[str, int], exists: Callable[[str], bool]
) -> AsyncIterator[list[ChatMessage]]:
    """Every message ``user`` sent or can read, ascending by id, in batches of at most
    ``EXPORT_BATCH`` (an export): its 1:1 messages, those of ``groups`` after its join
    marks (``_pages``), and the group messages it sent in any group that ``exists`` (found
    as a forget finds them: ``ZSCAN`` of each group conversation; a message written late to
    a deleted group is not the user's any more)."""
    sent = sorted([member async for member in _sent_in_groups(client, keys, user, exists)])
    pending = deque(member_message(member) for member in sent)
    starts = dict.fromkeys(await conversations_of(client, keys, user), 0)
    starts.update({f"g:{group}": mark for group, mark in groups.items()})

    async def merged() -> AsyncIterator[ChatMessage]:
        async for page in _pages(client, keys, starts, MAX_ID + 1):
            for message in page:
                while pending and pending[0].message_id <= message.message_id:
                    yield pending.popleft()
                yield message
        for message in pending:
            yield message

    batch: list[ChatMessage] = []
    last = -1
    async for message in merged():
        if message.message_id == last:
            continue  # a message in both sources is listed once
        last = message.message_id
        batch.append(message)
        if len(batch) == EXPORT_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


async def stored_for(
    client: Any, keys: Keys, sender: str, client_msg_id: str, to: str | None, group: str | None
) -> ChatMessage | None:
    """The message ``sender`` stored with ``client_msg_id``, if any: a resend's original.
    Looked for where the sender first used that id (``gp:cmids:{U}``), else (stored by an
    older version) to ``to`` or in ``group``; then ``gp:cmid:{C}``, then its member."""
    claimed = await client.hget(keys.sender_ids(sender), client_msg_id)
    conversation = conversation_of(sender, to, group) if claimed is None else string(claimed)
    stored = await client.hget(keys.client_ids(conversation), f"{sender}\n{client_msg_id}")
    if stored is None:
        return None
    found = await _by_id(
        client, keys.of("chat", conversation), int(stored) - 1, _below(int(stored) + 1), 1
    )
    return member_message(found[0]) if found else None


async def count_own(client: Any, keys: Keys, user: str, exists: Callable[[str], bool]) -> int:
    """How many messages a forget of ``user`` deletes (``redis_forget``): its 1:1 messages
    and the group messages it sent in groups that ``exists`` (as ``read_all``)."""
    conversations = await conversations_of(client, keys, user)
    sizes = await pipelined(
        client, conversations, lambda pipe, name: pipe.zcard(keys.of("chat", name))
    )
    count = sum(int(size) for size in sizes)
    async for _ in _sent_in_groups(client, keys, user, exists):
        count += 1
    return count


async def _sent_in_groups(
    client: Any, keys: Keys, user: str, exists: Callable[[str], bool]
) -> AsyncIterator[bytes]:
    """The members of the group messages ``user`` sent, in the groups that ``exists``, in
    no order (``ZSCAN`` of each group conversation: ``MATCH`` narrows it in Redis, the
    sender check drops what the pattern also matches)."""
    async for conversation in client.sscan_iter(keys.chats, match="g:*"):
        name = string(conversation)
        if not exists(name[2:]):
            continue
        async for member, _ in client.zscan_iter(keys.of("chat", name), match=f'*,"{user}",*'):
            if member_message(member).sender == user:
                yield member if isinstance(member, bytes) else member.encode()


async def list_conversations(client: Any, keys: Keys) -> int:
    """Once per Redis: list in ``gp:chats_of:{U}`` every 1:1 conversation stored by a
    version that did not (idempotent; concurrent nodes may both run it). Returns how many
    conversations it listed (0: done before)."""
    done = f"{keys.prefix}:{MIGRATED}"
    if await client.exists([done]):
        return 0
    names = [string(c) async for c in client.sscan_iter(keys.chats, match="dm:*")]
    for start in range(0, len(names), 1000):
        async with client.pipeline(transaction=False) as pipe:
            for name in names[start : start + 1000]:
                _, a, b = name.split(":")
                for user in (a, b):
                    pipe.sadd(keys.of("chats_of", user), [name])
    await client.set(done, b"1")
    return len(names)


class ChatReads:
    """What a node's answers read of a user's chat in Redis (``sync`` pages, a resend's
    original, an export, a forget's count), with what the node holds of the
    user's groups and forgets (``holds_group``: whether it holds a group at all)."""

    def __init__(
        self, client: Any, keys: Keys, hub: Hub, holds_group: Callable[[str], bool]
    ) -> None:
        self._client = client
        self._keys = keys
        self._hub = hub
        self._holds_group = holds_group

    def marks_of(self, user: str) -> dict[str, int]:
        """``user``'s groups, each with its join mark."""
        hub, found = self._hub, {}
        for group in hub.store.groups_of(user):
            joined = hub.chat.store.joined_after(group, user)
            if joined is not None:
                found[group] = joined
        return found

    async def page(self, user: str, after: int, below: int, count: int) -> list[ChatMessage]:
        """``read_sync``, but the messages a forget here made before (written late)."""
        skip = self._hub.chat.made_before_forget
        marks = self.marks_of(user)
        return await read_sync(self._client, self._keys, user, marks, after, below, count, skip)

    def messages_of(self, user: str) -> AsyncIterator[list[ChatMessage]]:
        """Every message of ``user``, in batches (``read_all``)."""
        return read_all(self._client, self._keys, user, self.marks_of(user), self._exists)

    async def count(self, user: str) -> int:
        """How many messages a forget of ``user`` deletes (``count_own``)."""
        return await count_own(self._client, self._keys, user, self._exists)

    async def original_of(self, sender: str, message: Send) -> ChatMessage | None:
        """The message stored for a resend of ``message`` (``stored_for``)."""
        assert message.client_msg_id is not None
        found = await stored_for(
            self._client, self._keys, sender, message.client_msg_id, message.to, message.group
        )
        return found

    def _exists(self, group: str) -> bool:
        """False for a group this node holds as deleted (Redis may not have deleted its
        conversation yet); one it does not hold is as Redis lists it (``gp:chats``)."""
        return not self._holds_group(group) or self._hub.store.group_members(group) is not None
