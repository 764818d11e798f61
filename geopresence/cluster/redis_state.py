"""The shared state in Redis (cluster): the journal that writes it.

With several nodes, Redis holds the state every node shares, and each node the slices of it
its sessions need (its hub's ``DurableState``), which answer synchronously. Changes reach
Redis through the ``Journal`` seam: ``RedisJournal.append`` queues a durable record, ``run``
writes it to the keys (``geopresence.cluster.redis_keys``) in order, through ``WRITERS``
(feed op kind -> commands). Most records (``OFF_FEED``: settings, friendships, groups, chat)
then reach only the nodes that hold what they change, on channels, once written
(``on_written``, ``chat_writes``); the rest (forgets, watermarks) are appended, in
the same pipeline, to the feed stream every node reads (``geopresence.cluster.redis_feed``).
A record is *durable* once Redis has it, so acks (``sent``, ``settings``, HTTP writes) wait
for Redis exactly as they wait for the disk with one node. ``geopresence.cluster.redis_load``
reads these keys back.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs
import orjson
import trio

from geopresence.cluster.chat_writes import ChatWrites, Reused
from geopresence.cluster.group_writes import write_group_deleted, write_group_set
from geopresence.cluster.redis_broker import fresh_ids
from geopresence.cluster.redis_feed import RedisFeed
from geopresence.cluster.redis_forget import forget_user
from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.settings_writes import SetSettings
from geopresence.core.replication import (
    FEED_KINDS,
    FeedOp,
    LocationSet,
    LogoutRequested,
    PresenceSet,
    Watermark,
)
from geopresence.core.state import covering
from geopresence.model.chat_message import ChatMessage
from geopresence.model.records import (
    Befriended,
    GroupDeleted,
    GroupSet,
    MemberAdded,
    MemberRemoved,
    Record,
    SettingsChanged,
    Unfriended,
    UserForgotten,
)

log = logging.getLogger("geopresence.redis")

BATCH: Final = 512
"""Changes written per pipeline (one round trip) by ``RedisJournal``."""


Command = tuple[str, tuple[Any, ...]] | tuple[str, tuple[Any, ...], dict[str, Any]]
"""A coredis client method name, its arguments and (optionally) keyword arguments."""


def _call(target: Any, command: Command) -> Any:
    """Call ``command`` on a client or pipeline."""
    kwargs = command[2] if len(command) == 3 else {}
    return getattr(target, command[0])(*command[1], **kwargs)


@attrs.frozen
class Writer:
    """How one kind of change reaches Redis: either ``commands``, the commands that apply
    it without reading anything first (so that many changes share one pipeline: one round
    trip), or ``write``, which reads before it writes (group changes)."""

    commands: Callable[[Keys, Any], list[Command]] | None = None
    write: Callable[[Any, Keys, Any], Awaitable[Any]] | None = None
    """Returns what ``RedisJournal.on_written`` is told (settings: their version)."""

    def __attrs_post_init__(self) -> None:
        if (self.commands is None) == (self.write is None):
            raise TypeError("a Writer has commands or a write, not both")


def _location(k: Keys, op: LocationSet) -> list[Command]:
    # One key per user (spread over a Cluster's slots), expiring with the location: Redis
    # drops it, no node sweeps.
    assert k.location_ttl is not None, "Keys.location_ttl is the hub's location TTL"
    value = orjson.dumps([op.lat, op.lon, op.ts, op.at])
    return [("set", (k.location(op.user), value), {"pxat": round((op.at + k.location_ttl) * 1000)})]


def _befriended(k: Keys, op: Befriended) -> list[Command]:
    return [
        ("sadd", (k.of("friends", op.a), [op.b])),
        ("sadd", (k.of("friends", op.b), [op.a])),
        ("sadd", (k.users, [op.a, op.b])),
    ]


def _unfriended(k: Keys, op: Unfriended) -> list[Command]:
    return [
        ("srem", (k.of("friends", op.a), [op.b])),
        ("srem", (k.of("friends", op.b), [op.a])),
    ]


def _member_added(k: Keys, op: MemberAdded) -> list[Command]:
    return [
        ("hsetnx", (k.of("group", op.group), op.user, str(op.joined_after))),
        ("sadd", (k.of("groups_of", op.user), [op.group])),
        ("sadd", (k.groups, [op.group])),
    ]


def _member_removed(k: Keys, op: MemberRemoved) -> list[Command]:
    return [
        ("hdel", (k.of("group", op.group), [op.user])),
        ("srem", (k.of("groups_of", op.user), [op.group])),
    ]


async def _settings(client: Any, k: Keys, op: SettingsChanged) -> int:
    """Store ``op``'s settings; returns their version (``settings_writes``)."""
    [version] = await SetSettings(client, k)([op])
    return version


def _feed_only(k: Keys, op: PresenceSet | LogoutRequested | Watermark) -> list[Command]:
    # Presence is written by the Lua scripts that decide it (geopresence.cluster
    # .redis_presence); a logout request has no state of its own.
    return []


async def _chat_writes_only(client: Any, k: Keys, op: ChatMessage) -> None:
    raise TypeError("chat messages are written in batches by ChatWrites (RedisJournal)")


WRITERS: Final[dict[type[Any], Writer]] = covering(
    {
        ChatMessage: Writer(write=_chat_writes_only),
        LocationSet: Writer(_location),
        Befriended: Writer(_befriended),
        Unfriended: Writer(_unfriended),
        MemberAdded: Writer(_member_added),
        MemberRemoved: Writer(_member_removed),
        SettingsChanged: Writer(write=_settings),
        GroupSet: Writer(write=write_group_set),
        GroupDeleted: Writer(write=write_group_deleted),
        UserForgotten: Writer(write=forget_user),
        PresenceSet: Writer(_feed_only),
        LogoutRequested: Writer(_feed_only),
        Watermark: Writer(_feed_only),
    },
    FEED_KINDS,
    what="the Redis writer",
)
"""Feed op kind -> how ``RedisJournal`` writes it to the keys above (every change is
idempotent: a retry after a failure is harmless)."""


def blind_commands(keys: Keys, op: FeedOp) -> list[Command] | None:
    """The commands that apply ``op`` without reading anything first, so that many ops can
    share one pipeline (one round trip); None for the ones that must read (group changes)
    and chat messages (``chat_writes``)."""
    commands = WRITERS[type(op)].commands
    return None if commands is None else commands(keys, op)


async def write(client: Any, keys: Keys, op: FeedOp) -> Any:
    """Apply one change to Redis (idempotent: a retry after a failure is harmless); not
    for a chat message (``chat_writes``). Returns what its writer
    returns (settings: their version)."""
    writer = WRITERS[type(op)]
    if writer.write is not None:
        return await writer.write(client, keys, op)
    assert writer.commands is not None
    for command in writer.commands(keys, op):
        await _call(client, command)
    return None


async def write_batch(
    client: Any, keys: Keys, ops: list[tuple[int, FeedOp, bool, int | None]], feed: RedisFeed
) -> None:
    """Apply ops that need no reads, and append those marked for it to the feed, in one
    pipeline (not a transaction: a batch that failed halfway is written again, and every op
    is idempotent, for Redis and for the replicas that may then read it twice)."""
    async with client.pipeline(transaction=False) as pipe:
        for _, op, _, _ in ops:
            for command in blind_commands(keys, op) or ():
                _call(pipe, command)
        for uid, op, on_feed, watermark in ops:
            if on_feed:
                feed.append_to(pipe, op, uid, watermark)


Publication = tuple[str, str, bytes]
"""(command, Redis channel, payload): one publish (``RedisBroker.publications``)."""


PUBLISH_BATCH: Final = 1000
"""Notices published per pipeline."""


async def send_publications(client: Any, publications: list[Publication]) -> None:
    """Send ``publications`` (``RedisBroker.publications``), ``PUBLISH_BATCH`` to a round
    trip; raises if Redis does not take them."""
    for start in range(0, len(publications), PUBLISH_BATCH):
        async with client.pipeline(transaction=False) as pipe:
            for command, channel, data in publications[start : start + PUBLISH_BATCH]:
                getattr(pipe, command)(channel, data)


QueuedOp = tuple[int, int, FeedOp, bool, int | None]
"""(seq or 0, uid, op, on the feed, watermark): one change waiting to be written."""

OFF_FEED: Final = (
    SettingsChanged,
    ChatMessage,
    Befriended,
    Unfriended,
    GroupSet,
    GroupDeleted,
    MemberAdded,
    MemberRemoved,
)
"""Records not put on the feed: the nodes that need them hear them (or a notice to read them
again) on a channel, published once written (``RedisJournal.on_written``; chat:
``chat_writes``), so that a node reading Redis after subscribing never misses one."""


class RedisJournal:
    """The ``Journal`` seam over Redis: records (and replicated ops) written in order, each
    appended to the feed stream in the same pipeline (``RedisFeed``). Start ``run`` in a
    task."""

    def __init__(self, client: Any, keys: Keys, node_id: int, last_seq: int = 0) -> None:
        self._client = client
        self._keys = keys
        self.feed = RedisFeed(client, keys, node_id)
        self.chat = ChatWrites(client, keys, node_id)
        """Writes and publishes chat messages (the link sets ``chat.publications``)."""
        self._set_settings = SetSettings(client, keys)
        self._queue: deque[QueuedOp] = deque()
        """(seq or 0, uid, op, on the feed, watermark) in write order."""
        self.watermark: Callable[[], int] | None = None
        """The smallest message id this node can issue now (``chat_horizon``): each queued
        op carries it to the feed, for the other nodes' horizons. None: no watermarks."""
        self.queued_at = 0.0
        """``trio.current_time()`` of the last op queued for the feed (a node without one
        for a while writes a watermark entry)."""
        self.chat_queued_at = float("-inf")
        """``trio.current_time()`` of the last chat message queued."""
        self.write_delay = 0.0
        """Seconds each write waits first (tests: a commit slower than its id)."""
        self._uids = fresh_ids()
        self._wakeup = trio.Event()
        self.last_seq = last_seq
        self._durable = last_seq
        self.on_durable: Callable[[], None] | None = None
        """Called (in the event loop) each time ``durable_seq`` advanced."""
        self.on_stored_before: Callable[[int, ChatMessage | None], None] | None = None
        """Called with a chat message's sequence number and the message another node had
        stored for its ``client_msg_id``, or None if its sender had used that id in another
        conversation (before ``on_durable`` covers it): it was not stored, nor published."""
        self.write_errors = 0
        self.on_append: Callable[[Record], None] | None = None
        """Called with each record this node journals (the link watches friendships)."""
        self.notices: Callable[[FeedOp, Any], list[Publication]] | None = None
        """What tells the nodes that hold what a written op changes to read it again, given
        what its writer returned (``Arrivals.notices``); published once Redis has the op,
        before it counts as written (a retry publishes them again)."""
        self.on_written: Callable[[Record, Any], None] | None = None
        """Called with each ``OFF_FEED`` record once Redis has it, and what its writer
        returned (settings: their version); the link publishes it."""

    def append(self, record: Record) -> int:
        if self.on_append is not None:
            self.on_append(record)
        self.last_seq += 1
        self._enqueue(self.last_seq, record, not isinstance(record, OFF_FEED))
        return self.last_seq

    def replicate(self, op: FeedOp, *, feed: bool = True) -> None:
        """Write ``op`` (if it has state in Redis) and, unless ``feed`` is False, publish it
        on the feed, in order with the records (no sequence number: nothing waits for it)."""
        self._enqueue(0, op, feed)

    def _enqueue(self, seq: int, op: FeedOp, on_feed: bool) -> None:
        # The watermark as the op is queued: every id issued before is queued ahead of it.
        watermark = None if self.watermark is None else self.watermark()
        self._queue.append((seq, next(self._uids), op, on_feed, watermark))
        if on_feed:
            self.queued_at = trio.current_time()
        if isinstance(op, ChatMessage):
            self.chat_queued_at = trio.current_time()
        self._wakeup.set()

    @property
    def durable_seq(self) -> int:
        return self._durable

    def _batch(self, fits: Callable[[FeedOp], bool]) -> list[QueuedOp]:
        """The queue's longest prefix (at most ``BATCH``) of ops that ``fits``."""
        batch: list[QueuedOp] = []
        for item in self._queue:
            if len(batch) == BATCH or not fits(item[2]):
                break
            batch.append(item)
        return batch

    def _blind(self, op: FeedOp) -> bool:
        return blind_commands(self._keys, op) is not None

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write queued changes, oldest first, until cancelled. A failed write is retried
        (after a second) before any later one, so Redis and the feed never see them
        reordered; acks wait meanwhile."""
        task_status.started()
        queue = self._queue
        while True:
            if not queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            while queue:
                try:
                    if self.write_delay:
                        await trio.sleep(self.write_delay)
                    batch = await self._write_some()
                except Exception as exc:
                    self.write_errors += 1
                    log.error("redis write failed (%s); retrying (%d queued)", exc, len(queue))
                    await trio.sleep(1.0)
                    continue
                advanced = False
                for seq, *_ in batch:
                    queue.popleft()
                    if seq:
                        self._durable = seq
                        advanced = True
                # After each batch, not once the queue is empty: under a steady stream of
                # changes it may never be, and the acks would wait for ever.
                if advanced and self.on_durable is not None:
                    self.on_durable()

    async def _write_some(self) -> list[QueuedOp]:
        """Write the ops at the head of the queue that share a kind of round trip: a batch
        of blind ops in one pipeline, a batch of settings changes (``settings_writes``,
        then ``on_written``), a batch of chat messages (``chat_writes``), or one op that
        must read first. Returns what was written."""
        client, keys, feed = self._client, self._keys, self.feed
        batch = self._batch(self._blind)
        if batch:
            await write_batch(client, keys, [item[1:] for item in batch], feed)
            # Again on a retry of the batch (harmless: a notice only makes nodes read).
            await self._publish([n for _, _, op, _, _ in batch for n in self._notices_of(op, None)])
            for _, _, op, _, _ in batch:
                self._written_off_feed(op, None)
            return batch
        batch = self._batch(lambda op: isinstance(op, SettingsChanged))
        if batch:
            changes = [op for _, _, op, _, _ in batch if isinstance(op, SettingsChanged)]
            versions = await self._set_settings(changes)
            for change, version in zip(changes, versions, strict=True):
                self._written_off_feed(change, version)
            return batch
        batch = self._batch(lambda op: isinstance(op, ChatMessage))
        if batch:
            messages = [op for _, _, op, _, _ in batch if isinstance(op, ChatMessage)]
            originals = await self.chat(messages)
            for (seq, *_), original in zip(batch, originals, strict=True):
                if original is not None and self.on_stored_before is not None:
                    self.on_stored_before(seq, None if isinstance(original, Reused) else original)
            return batch
        seq, uid, op, on_feed, mark = queue_head = self._queue[0]
        # A retry (of the write or of the notices) writes again: every writer is
        # idempotent, and says the same again (a GroupSet: its members marked as its own).
        result = await write(client, keys, op)
        if on_feed:
            await feed.append(op, uid, mark)
        await self._publish(self._notices_of(op, result))
        self._written_off_feed(op, result)
        return [queue_head]

    def _notices_of(self, op: FeedOp, result: Any) -> list[Publication]:
        return [] if self.notices is None else self.notices(op, result)

    async def _publish(self, publications: list[Publication]) -> None:
        # Raises if Redis does not take them: the write is tried again.
        await send_publications(self._client, publications)

    def _written_off_feed(self, op: FeedOp, result: Any) -> None:
        if self.on_written is not None and isinstance(op, OFF_FEED):
            self.on_written(op, result)

    async def flush(self) -> None:
        """Wait until everything queued so far is written (``run`` must be running)."""
        while self._queue:
            await trio.sleep(0.005)

    async def written(self) -> None:
        """Wait until the records appended so far are in Redis (read your writes). Unlike
        ``flush``, records appended meanwhile do not make it wait longer."""
        target = self.last_seq
        while self._durable < target:
            await trio.sleep(0.005)
