"""The ``Broker`` seam over Redis pub/sub (shell): channels shared by several nodes.

Local semantics are exactly ``MemoryBroker``'s (it does the local bookkeeping and delivery):
``subscribe``/``publish`` are synchronous, and a publish reaches local subscribers at once,
exactly once. On top of that:

- The node subscribes to a Redis channel while at least one of its local connections needs
  it (reference-counted by the local subscriber sets): the first local subscriber makes it
  ``SUBSCRIBE``, the last one leaving makes it ``UNSUBSCRIBE``. With Redis Cluster these are
  ``SSUBSCRIBE``/``SPUBLISH`` (Redis 7 sharded pub/sub), so each channel lives on the shard
  that owns its slot instead of being broadcast to the whole cluster.
- A publish is also sent to Redis on each of its channels, as one envelope
  (``geopresence.cluster.channel_events``) carrying this node's id and a publish id. Another node
  receives it once per channel it is subscribed to and delivers it once (the publish id is
  remembered for a while) to its subscribers of any of those channels; a node ignores its
  own envelopes (it delivered them locally already).
- Redis commands are queued by the synchronous methods and sent by ``run`` (a task), in
  order. Like any pub/sub, an envelope published before a node's ``SUBSCRIBE`` has reached
  Redis is not seen by that node: events are live state, and the hub's snapshots
  (``friends_presence``, ``nearby_friends``) cover what was missed.

The shared state itself is in Redis: what travels here is the live events and the notices
that tell a node to read what changed again; see ``geopresence.cluster.link`` for how a node
puts it together.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Set
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Final, Literal

import trio

from geopresence.cluster.channel_events import Envelope, decode_envelope, encode_envelope
from geopresence.cluster.redis_subscriber import RedisAddress, Subscriber
from geopresence.core.broker import ConnId, Deliver, MemoryBroker, SeenOnce

log = logging.getLogger("geopresence.redis")

SEEN_PUBLISHES: Final = 10_000
"""Publish ids remembered per node, to deliver an envelope once however many of its
channels this node is subscribed to."""
PUBLISH_BATCH: Final = 512
"""Publishes sent per pipeline."""
BARRIER_TIMEOUT: Final = 10.0
"""Seconds ``subscribed`` waits for Redis to confirm the subscriptions at most."""
MAX_PENDING_OPS: Final = 100_000
"""Queued Redis commands beyond which publishes are dropped (counted): Redis is down or too
slow, and the live events would be stale anyway."""

Op = tuple[Literal["subscribe", "unsubscribe", "publish", "barrier"], str, Any]
"""(kind, channel, payload): the envelope of a publish, the event a barrier sets."""

NODE: Final[ConnId] = 0
"""The subscriber that stands for this node itself (``hold``): no connection has id 0."""
"""(command, Redis channel name, payload)."""


def fresh_ids() -> Iterator[int]:
    """Ids for this node's messages, starting at random: a restarted node must not reuse
    ids that other nodes' ``SeenOnce`` still remember from its previous run."""
    return itertools.count(random.getrandbits(40) << 20)


def redis_channel(channel: str, prefix: str = "gp") -> str:
    """The Redis name of a hub channel: ``user:alice`` -> ``gp:user:{alice}``. The hash tag
    puts a user's channel on its keys' slot (``geopresence.cluster.redis_keys``); the prefix keeps
    geopresence clusters sharing one Redis apart (pub/sub ignores database numbers)."""
    kind, _, name = channel.partition(":")
    return f"{prefix}:{kind}:{{{name}}}"


def hub_channel(name: str, prefix: str = "gp") -> str | None:
    """The hub channel whose ``redis_channel`` is ``name`` (None: not one of them)."""
    head = prefix + ":"
    if not name.startswith(head):
        return None
    kind, _, tagged = name[len(head) :].partition(":")
    if not (tagged.startswith("{") and tagged.endswith("}")):
        return None
    return f"{kind}:{tagged[1:-1]}"


class RedisBroker:
    """A ``Broker`` whose channels span every node connected to the same Redis.

    ``client`` is a ``coredis.Redis`` (give its ``address`` too) or ``coredis.RedisCluster``
    (``sharded`` True); ``node_id`` tells this node's envelopes apart. Publishes go through
    ``client``; subscriptions and what arrives on them through a lean ``Subscriber``.
    Start ``run`` in a task.
    """

    def __init__(
        self,
        deliver: Deliver,
        client: Any,
        *,
        node_id: int,
        sharded: bool = False,
        prefix: str = "gp",
        address: RedisAddress | None = None,
    ) -> None:
        self.subscribe_delay = 0.0
        """Tests only: seconds each SUBSCRIBE waits first (a slow subscription)."""
        self._deliver = deliver

        def to_connections(conn: ConnId, event: Any) -> None:
            if conn != NODE:
                deliver(conn, event)

        self._local = MemoryBroker(to_connections)
        self.on_remote: Callable[[Any], bool] | None = None
        """Called once per event from another node, before this node's subscribers get it
        (the node's caches apply it: ``ClusterLink``); True: it told the subscribers itself
        (a presence transition), the broker does not."""
        self.travels: Callable[[Any], bool] = lambda event: True
        """Whether an event goes to the other nodes through Redis (False: this node's
        subscribers only; the other nodes learn of it otherwise)."""
        self.on_released: Callable[[str], None] | None = None
        """Called with a channel this node has just stopped listening to (no subscriber
        left): what it knew from that channel is no longer kept current."""
        self.on_gap: Callable[[list[str]], None] | None = None
        """Called with the (hub) channels that may have missed events
        (``Subscriber.on_gap``)."""
        self.delivery: Callable[[], AbstractContextManager[object]] = nullcontext
        """Wraps the delivery of each batch of envelopes from Redis (the shell writes out
        what they queued at its end: ``Connections.batch``)."""
        self._client = client
        self._redis_address = address
        self._nursery: trio.Nursery
        self._sharded = sharded
        self._prefix = prefix
        self.node_id = node_id
        self._publish_ids = fresh_ids()
        self._ops: deque[Op] = deque()
        self._wakeup = trio.Event()
        self._seen = SeenOnce(SEEN_PUBLISHES)
        self._held: dict[str, int] = {}
        self.dropped = 0
        """Publishes not sent to Redis because the queue was full (for metrics)."""
        self.received = 0
        """Envelopes from other nodes delivered here (for metrics)."""
        self.failed = 0
        """Redis commands that failed (Redis unreachable), for metrics."""

    # ---------------------------------------------------------------- the Broker seam

    def subscribe(self, channel: str, conn: ConnId) -> None:
        first = not self._local.subscribers(channel)
        self._local.subscribe(channel, conn)
        if first:
            self._queue(("subscribe", channel, b""))

    def unsubscribe(self, channel: str, conn: ConnId) -> None:
        self._local.unsubscribe(channel, conn)
        if not self._local.subscribers(channel):
            self._left(channel)

    def unsubscribe_all(self, conn: ConnId) -> None:
        channels = list(self._local.channels_of(conn))
        self._local.unsubscribe_all(conn)
        for channel in channels:
            if not self._local.subscribers(channel):
                self._left(channel)

    def _left(self, channel: str) -> None:
        self._queue(("unsubscribe", channel, b""))
        if self.on_released is not None:
            self.on_released(channel)

    # ---------------------------------------------------------------- the node's own interest

    def hold(self, channel: str) -> None:
        """Listen to ``channel`` for the node itself (its caches), whether or not a
        connection subscribes; ``release`` undoes one ``hold`` (they nest)."""
        held = self._held.get(channel, 0)
        self._held[channel] = held + 1
        if not held:
            self.subscribe(channel, NODE)

    def release(self, channel: str) -> None:
        held = self._held.pop(channel, 0) - 1
        if held > 0:
            self._held[channel] = held
        elif held == 0:
            self.unsubscribe(channel, NODE)

    async def subscribed(self, *, timeout: float = BARRIER_TIMEOUT) -> None:
        """Return once every subscription asked for so far is in place in Redis (events
        published from then on reach this node), and every connection answered a round
        trip (what was published before has arrived); at the latest after ``timeout``
        seconds (inf: only then, ``Watermarks``). ``run`` must be running."""
        done = trio.Event()
        self._queue(("barrier", "", (done, timeout)))
        await done.wait()

    def publish(
        self, channels: Iterable[str], message: Any, exclude: Set[ConnId] = frozenset()
    ) -> int:
        channel_list = list(channels)
        delivered = self._local.publish(channel_list, message, exclude)
        if not self.travels(message):
            return delivered
        self.publish_remote(channel_list, message)
        return delivered

    def publish_remote(self, channels: Iterable[str], message: Any) -> None:
        """Publish ``message`` to the other nodes only (this node told its own subscribers
        already, its own way); dropped if the queue is full."""
        if len(self._ops) >= MAX_PENDING_OPS:
            self.dropped += 1
            return
        channel_list = list(channels)
        envelope = self._envelope(channel_list, message)
        for channel in channel_list:
            self._queue(("publish", channel, envelope))

    def publications(self, channels: Iterable[str], message: Any) -> list[tuple[str, str, bytes]]:
        """(command, Redis channel, payload) that publish ``message`` to the other nodes,
        for a caller that sends them itself, in order with its writes (``chat_writes``)."""
        channel_list = list(channels)
        envelope = self._envelope(channel_list, message)
        command = "spublish" if self._sharded else "publish"
        return [(command, redis_channel(c, self._prefix), envelope) for c in channel_list]

    def _envelope(self, channels: list[str], message: Any) -> bytes:
        return encode_envelope(
            Envelope(self.node_id, next(self._publish_ids), tuple(channels), message)
        )

    def publish_local(
        self, channels: Iterable[str], message: Any, exclude: Set[ConnId] = frozenset()
    ) -> int:
        return self._local.publish(channels, message, exclude)

    def subscribers(self, channel: str) -> Set[ConnId]:
        return self._local.subscribers(channel)

    def channels_of(self, conn: ConnId) -> Set[str]:
        return self._local.channels_of(conn)

    # ---------------------------------------------------------------- Redis side

    def _queue(self, op: Op) -> None:
        self._ops.append(op)
        self._wakeup.set()

    @property
    def pending(self) -> int:
        return len(self._ops)

    async def flush(self) -> None:
        """Send every queued publish (shutdown): subscription changes still queued are
        dropped first (the node's subscriptions end with it), so the last events are not
        stuck behind them. ``run`` must be running."""
        for op in self._ops:
            if op[0] == "barrier":
                op[2][0].set()
        self._ops = deque(op for op in self._ops if op[0] == "publish")
        while self._ops:
            await trio.sleep(0.005)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send queued commands and deliver envelopes from other nodes, until cancelled."""
        subscriber = Subscriber(
            self._on_messages,
            address=None if self._sharded else self._address(),
            cluster=self._client if self._sharded else None,
        )
        subscriber.on_gap = self._gap
        async with trio.open_nursery() as nursery:
            await nursery.start(subscriber.run)
            self._nursery = nursery
            task_status.started()
            await self._send_loop(subscriber)

    def _address(self) -> RedisAddress:
        if self._redis_address is None:
            raise ValueError("a RedisBroker on a standalone Redis needs its address")
        return self._redis_address

    async def _send_loop(self, subscriber: Subscriber) -> None:
        failing = False
        while True:
            if not self._ops:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            if self._ops[0][0] == "barrier":
                # Every earlier (un)subscription is sent; the barrier waits for Redis'
                # answers in its own task (publishes do not wait behind it).
                self._nursery.start_soon(self._barrier, subscriber, *self._ops.popleft()[2])
                continue
            if self._ops[0][0] == "publish":
                # Consecutive publishes share one pipeline (one round trip per batch).
                batch: list[Op] = []
                while self._ops and self._ops[0][0] == "publish" and len(batch) < PUBLISH_BATCH:
                    batch.append(self._ops.popleft())
                try:
                    await self._publish_batch(batch)
                except Exception as exc:
                    # Live events are dropped, not replayed: pub/sub is at-most-once.
                    self.failed += len(batch)
                    if not failing:  # one line per outage, not one per event
                        log.error("redis publish failed (%s); dropping until it works", exc)
                    failing = True
                    continue
                if failing:
                    log.info("redis publishes work again (%d dropped)", self.failed)
                failing = False
            else:
                # Consecutive (un)subscriptions of one kind share one command. They never
                # fail: the subscriber keeps the set, and subscribes again after a lost
                # connection.
                kind = self._ops[0][0]
                ops: list[Op] = []
                while self._ops and self._ops[0][0] == kind and len(ops) < PUBLISH_BATCH:
                    ops.append(self._ops.popleft())
                await self._subscription(subscriber, kind, [channel for _, channel, _ in ops])

    async def _publish_batch(self, batch: list[Op]) -> None:
        command = "spublish" if self._sharded else "publish"
        async with self._client.pipeline(transaction=False) as pipe:
            for _, channel, data in batch:
                getattr(pipe, command)(redis_channel(channel, self._prefix), data)

    @staticmethod
    async def _barrier(subscriber: Subscriber, done: trio.Event, timeout: float) -> None:
        """Set ``done`` once Redis has every subscription sent so far, or after ``timeout``
        (a server down: its channels follow when it is back)."""
        with trio.move_on_after(timeout) as waited:
            await subscriber.sync()
        if waited.cancelled_caught:
            log.warning("redis subscriptions not confirmed within %g s", timeout)
        done.set()

    async def _subscription(self, subscriber: Subscriber, kind: str, channels: list[str]) -> None:
        """SUBSCRIBE (or UNSUBSCRIBE) the channels whose local subscribers still call for
        it: a channel may have been left (or joined) again since the op was queued."""
        wanted = kind == "subscribe"
        if wanted and self.subscribe_delay:
            await trio.sleep(self.subscribe_delay)
        names = [
            redis_channel(channel, self._prefix)
            for channel in dict.fromkeys(channels)
            if bool(self._local.subscribers(channel)) == wanted
        ]
        if wanted:
            await subscriber.subscribe(names)
        else:
            await subscriber.unsubscribe(names)

    def _gap(self, names: list[str]) -> None:
        if self.on_gap is not None:
            found = (hub_channel(name, self._prefix) for name in names)
            self.on_gap([channel for channel in found if channel is not None])

    def _on_messages(self, payloads: list[bytes]) -> None:
        """Envelopes from Redis (one read's worth): delivered in one ``delivery`` scope,
        so that what they queue for the connections is written once, at its end."""
        with self.delivery():
            for data in payloads:
                try:
                    envelope = decode_envelope(data)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("ignoring a malformed envelope: %s", exc)
                    continue
                try:
                    self.on_envelope(envelope)
                except Exception:  # one bad event must not cost the others of the read
                    log.exception("delivering an envelope from redis failed")

    def on_envelope(self, envelope: Envelope) -> None:
        """Deliver an envelope from Redis to this node's subscribers, once."""
        if envelope.node == self.node_id:
            return
        if not self._seen.first_time((envelope.node, envelope.publish_id)):
            return
        self.received += 1
        local = self._local
        # Only while this node still listens (an envelope in flight as it unsubscribed must
        # not bring back what it dropped, ``on_released``).
        if self.on_remote is not None and any(local.subscribers(c) for c in envelope.channels):
            try:
                if self.on_remote(envelope.event):
                    return
            except Exception:  # not shown here either: the node's caches do not have it
                log.exception("applying another node's %s failed", type(envelope.event).__name__)
                return
        local.publish(envelope.channels, envelope.event)
