"""The shared state in Redis (cluster): the journal that writes it.

With several nodes, Redis holds the state every node shares, and each node the slices of it
its sessions need (its hub's ``DurableState``), which answer synchronously. Changes reach
Redis through the ``Journal`` seam: ``RedisJournal.append`` queues a durable record, ``run``
writes it to the keys (``geopresence.cluster.redis_keys``) in order, through ``WRITERS``
(``geopresence.cluster.state_writes``: feed op kind -> commands). Most records
(``OFF_FEED``: settings, friendships, groups, chat) then reach only the nodes that hold what
they change, on channels, once written (``on_written``, ``chat_writes``); the rest (forgets,
watermarks) are appended, in the same pipeline, to the feed stream every node reads
(``geopresence.cluster.redis_feed``). A record is *durable* once Redis has it, so acks
(``sent``, ``settings``, HTTP writes) wait for Redis exactly as they wait for the disk with
one node. ``geopresence.cluster.redis_load`` reads these keys back.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import trio

from geopresence.cluster.chat_writes import ChatWrites, Reused
from geopresence.cluster.redis_broker import fresh_ids
from geopresence.cluster.redis_feed import RedisFeed
from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.settings_writes import SetSettings
from geopresence.cluster.state_writes import blind_commands, write, write_batch
from geopresence.core.replication import FeedOp, Watermark
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
)

log = logging.getLogger("geopresence.redis")

BATCH: Final = 512
"""Changes written per pipeline (one round trip) by ``RedisJournal``."""


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
        self.writing_since: float | None = None
        """``trio.current_time()`` the write at the head of the queue began (None: idle):
        while it lasts, no entry of this node reaches the feed (``mark``)."""
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
                if self.writing_since is None:
                    self.writing_since = trio.current_time()
                try:
                    if self.write_delay:
                        await trio.sleep(self.write_delay)
                    batch = await self._write_some()
                except Exception as exc:
                    self.write_errors += 1
                    log.error("redis write failed (%s); retrying (%d queued)", exc, len(queue))
                    await trio.sleep(1.0)
                    continue
                self.writing_since = None
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

    async def mark(self, watermark: int) -> None:
        """Put ``watermark`` on the feed now, ahead of the queue (its head's write hangs):
        the other nodes' chat horizons then know this node is alive and what it can still
        commit. ``watermark`` must be at most every id it has not yet written and
        published (its lowest pending message's), so the entry may come before the queue's
        and says nothing they do not."""
        await self.feed.append(Watermark(), next(self._uids), watermark)

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
