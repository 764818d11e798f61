"""A user's messages read back from Redis (geopresence/cluster/chat_reads.py): sync pages,
catch-up ranges, exports, a forget's count, and the listing of older conversations."""

from __future__ import annotations

import pytest

from geopresence.cluster import chat_reads
from geopresence.cluster.chat_reads import (
    count_own,
    list_conversations,
    read_all,
    read_range,
    read_sync,
)
from geopresence.cluster.chat_writes import ChatWrites
from geopresence.cluster.redis_keys import Keys, message_member
from geopresence.model.chat_message import ChatMessage
from tests.redis_server import AnyRedis

END = 2**63


def dm(message_id: int, sender: str, to: str) -> ChatMessage:
    return ChatMessage(message_id, sender, f"m{message_id}", 1.0, to=to)


def group(message_id: int, sender: str, name: str) -> ChatMessage:
    return ChatMessage(message_id, sender, f"m{message_id}", 1.0, group=name)


def ids(messages: list[ChatMessage]) -> list[int]:
    return [message.message_id for message in messages]


async def written(client: AnyRedis, keys: Keys, *messages: ChatMessage) -> None:
    await ChatWrites(client, keys, 2)(list(messages))


async def test_a_sync_page_merges_1to1_and_groups_within_its_bounds(any_redis: AnyRedis) -> None:
    keys = Keys("sync")
    await written(
        any_redis,
        keys,
        dm(10, "ann", "ben"),
        group(20, "cat", "g"),
        dm(30, "ben", "ann"),
        dm(35, "cat", "dan"),  # not ann's
        group(40, "ann", "g"),
        group(50, "cat", "h"),  # a group ann is not in
        dm(60, "ann", "cat"),
    )
    marks = {"g": 15}
    assert ids(await read_sync(any_redis, keys, "ann", marks, 0, END, 10)) == [10, 20, 30, 40, 60]
    # ``after`` and ``below`` are exclusive; ``count`` cuts the page.
    assert ids(await read_sync(any_redis, keys, "ann", marks, 10, 60, 10)) == [20, 30, 40]
    assert ids(await read_sync(any_redis, keys, "ann", marks, 0, END, 2)) == [10, 20]
    # A member reads its group after its join mark only.
    assert ids(await read_sync(any_redis, keys, "ann", {"g": 25}, 0, END, 10)) == [10, 30, 40, 60]
    assert await read_sync(any_redis, keys, "ann", marks, 59, 60, 10) == []


async def test_a_range_reads_every_page_of_each_conversation(
    any_redis: AnyRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chat_reads, "EXPORT_BATCH", 2)
    keys = Keys("range")
    await written(any_redis, keys, *(dm(i, "ann", "ben") for i in range(1, 8)))
    await written(any_redis, keys, *(group(i, "cat", "g") for i in range(10, 15)))
    found = await read_range(any_redis, keys, ["dm:ann:ben", "g:g"], 2, 13)
    assert ids(found) == [3, 4, 5, 6, 7, 10, 11, 12]


async def test_an_export_lists_each_message_once_in_order_in_batches(
    any_redis: AnyRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chat_reads, "EXPORT_BATCH", 2)
    keys = Keys("export")
    await written(
        any_redis,
        keys,
        group(5, "ann", "g"),  # before her current membership, but hers
        group(6, "cat", "g"),  # before it, not hers: not in her view
        dm(10, "ann", "ben"),
        group(20, "cat", "g"),
        group(25, "ann", "left"),  # a group she left: her own message stays hers
        group(26, "cat", "left"),
        dm(30, "ben", "ann"),
        group(40, "ann", "g"),
        dm(50, "ann", "cat"),
    )
    exists = {"g", "left"}.__contains__
    batches = [ids(b) async for b in read_all(any_redis, keys, "ann", {"g": 15}, exists)]
    assert [i for batch in batches for i in batch] == [5, 10, 20, 25, 30, 40, 50]
    assert all(len(batch) <= 2 for batch in batches)
    assert await count_own(any_redis, keys, "ann", exists) == 6  # 1:1, the group ones hers
    # A message written late to a deleted group (its node had not heard of the deletion)
    # recreates its key: it is nobody's any more.
    await written(any_redis, keys, group(60, "ann", "deleted"))
    batches = [ids(b) async for b in read_all(any_redis, keys, "ann", {"g": 15}, exists)]
    assert [i for batch in batches for i in batch] == [5, 10, 20, 25, 30, 40, 50]
    assert await count_own(any_redis, keys, "ann", exists) == 6


async def test_older_conversations_are_listed_once(any_redis: AnyRedis) -> None:
    """A version before ``gp:chats_of:{U}`` stored conversations without listing them."""
    keys = Keys("older")
    for message in (dm(1, "ann", "ben"), dm(2, "cat", "ann"), group(3, "ann", "g")):
        name = keys.conversation(message)
        await any_redis.zadd(keys.of("chat", name), {message_member(message): 0})
        await any_redis.sadd(keys.chats, [name])
    assert await read_sync(any_redis, keys, "ann", {}, 0, END, 10) == []
    assert await list_conversations(any_redis, keys) == 2
    assert ids(await read_sync(any_redis, keys, "ann", {}, 0, END, 10)) == [1, 2]
    assert ids(await read_sync(any_redis, keys, "cat", {}, 0, END, 10)) == [2]
    assert await list_conversations(any_redis, keys) == 0  # done: not again


async def test_a_sync_page_reads_a_few_messages_of_each_conversation(
    any_redis: AnyRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page merges the conversations by id, each read a few at a time: not ``count`` of
    every conversation (a user with hundreds of friends would read that many pages)."""
    monkeypatch.setattr(chat_reads, "SYNC_BATCH", 3)
    keys = Keys("merge")
    friends = [f"f{i:02d}" for i in range(30)]
    await written(
        any_redis,
        keys,
        *(
            dm(1000 + 100 * i + j, friend, "ann")
            for i, friend in enumerate(friends)
            for j in range(20)
        ),
    )
    read: list[int] = []
    real = chat_reads._by_id

    def counted(target: object, key: str, after: int, below: bytes, count: int) -> object:
        read.append(count)
        return real(target, key, after, below, count)

    monkeypatch.setattr(chat_reads, "_by_id", counted)
    page = await read_sync(any_redis, keys, "ann", {}, 0, END, 10)
    assert ids(page) == list(range(1000, 1010))
    assert sum(read) <= 30 * 3 + 10  # a first round of a few each, then the page's own
    # Interleaved conversations come out in id order, whatever the sizes.
    page = await read_sync(any_redis, keys, "ann", {}, 1005, 1302, 100)
    expected = [1000 + 100 * i + j for i in range(30) for j in range(20)]
    assert ids(page) == [i for i in sorted(expected) if 1005 < i < 1302]


async def test_what_a_sync_skips_does_not_count_towards_its_page(any_redis: AnyRedis) -> None:
    """A message a forget made before, written late, is left out of the page, which still
    holds ``count`` others when there are (so ``more`` stays true)."""
    keys = Keys("skip")
    await written(any_redis, keys, *(dm(i, "ann", "ben") for i in range(1, 6)))
    page = await read_sync(any_redis, keys, "ben", {}, 0, END, 3, lambda m: m.message_id == 2)
    assert ids(page) == [1, 3, 4]
