"""A node of a multi-node deployment (shell): Redis is the shared state and the pub/sub.

``ClusterLink`` is the hub's ``Replicator`` and owns the node's Redis side:

- a ``RedisBroker`` (the hub's broker): per-user, group, inbox and cell channels through
  Redis pub/sub (sharded SSUBSCRIBE/SPUBLISH on a Cluster);
- a ``RedisJournal`` (the hub's journal): durable records written to Redis, then announced
  to the nodes that hold what they change (``RedisJournal.notices``: ``Arrivals.notices``;
  forgets and watermarks on the feed stream every node reads, ``RedisFeed``);
- a ``RedisPresence``: which node holds each alive device, the once-decided online/offline
  transitions (published on the users' and small groups' channels, not the feed), and the
  sweeper of gone nodes' devices; a device it ends that another node holds (taken over,
  logged out) is that node's to close, told on its control channel (``Control``);
- ``Watermarks``: this node's part in the chat horizon (messages shown in id order);
- the node lease in ``gp:nodes`` (``NodeLease``): two live nodes never share a Snowflake node
  id, and the other nodes know this one is alive while it renews it (every second).

Start-up (``run``): take the lease, note the feed's newest entry, then read the feed from
that entry on and serve: a node loads nothing of the population.

What a node holds for its sessions, and what routes to them what reaches it, are its parts
(``geopresence.cluster.node_parts``), built and wired as ``run`` starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Collection, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, Final

import trio

from geopresence.cluster.chat_reads import ChatReads, list_conversations
from geopresence.cluster.control import Control
from geopresence.cluster.holdings import Holdings
from geopresence.cluster.joining import join
from geopresence.cluster.node_parts import NodeParts, wire_parts
from geopresence.cluster.redis_broker import RedisBroker
from geopresence.cluster.redis_feed import earlier_id
from geopresence.cluster.redis_forget import forgotten_since
from geopresence.cluster.redis_keys import Keys, string
from geopresence.cluster.redis_load import load_state, read_settings
from geopresence.cluster.redis_nodes import NodeLease, keep_lease
from geopresence.cluster.redis_presence import RedisPresence
from geopresence.cluster.redis_state import RedisJournal
from geopresence.cluster.redis_strangers import RedisStrangers
from geopresence.cluster.redis_subscriber import RedisAddress
from geopresence.core.broker import Deliver
from geopresence.core.hub import Hub
from geopresence.core.replication import (
    FeedOp,
    LocationSet,
    PresenceSet,
)
from geopresence.core.statuses import Held
from geopresence.core.store import UserSettings
from geopresence.model.records import Record

log = logging.getLogger("geopresence.redis")


WRITE_DELAY_ENV: Final = "GEOPRESENCE_TEST_REDIS_WRITE_DELAY"
"""Tests only: seconds each Redis write of the journal waits first."""

SUBSCRIBE_DELAY_ENV: Final = "GEOPRESENCE_TEST_REDIS_SUBSCRIBE_DELAY"
"""Tests only: seconds each SUBSCRIBE of the node waits first."""

FEED_OVERLAP: Final = 5.0
"""Seconds of feed a starting node applies again on top of what it loaded."""


class ClusterLink:
    """The hub's ``Replicator`` over Redis. Create it, build the hub with ``make_broker``,
    ``journal`` and ``replicator=self``, then ``await nursery.start(link.run, hub, clock)``.

    The timings are ``Config``'s, as the hub has them: ``offline_after`` and ``location_ttl``
    (the hub's settings of those names), ``lease`` and ``sweep_interval`` (``redis_lease``,
    ``redis_sweep_interval``); ``prefix`` is ``redis_prefix``.
    """

    def __init__(
        self,
        client: Any,
        *,
        node_id: int,
        sharded: bool,
        prefix: str,
        shared_keys: Mapping[str, str] | None = None,
        lease: float,
        sweep_interval: float,
        offline_after: float,
        location_ttl: float,
        address: RedisAddress | None = None,
    ) -> None:
        self.client = client
        self.address = address
        """A standalone Redis' address (``address_of``), for the broker's subscriber."""
        self.shared_keys = dict(shared_keys or {})
        """``secret`` and ``admin_key``: every node sharing the Redis (and prefix) must have
        the same (checked at start through their ``fingerprint``)."""
        self.node_id = node_id
        self.sharded = sharded
        self.keys = Keys(prefix, location_ttl=location_ttl)
        self.broker: RedisBroker | None = None
        self.journal = RedisJournal(client, self.keys, node_id)
        self.presence = RedisPresence(
            client,
            self.keys,
            lambda transition: self._announcer(transition),
            self._now,
            known_version=self._known_version,
            sweep_interval=sweep_interval,
            offline_after=offline_after,
            may_sweep=lambda: self.lease.steady(),
        )
        self.lease = NodeLease(client, self.keys, node_id, self._now, lease)
        self.strangers = RedisStrangers(client, self.keys, self._now)
        """The hub's ``stranger_index``: visible users' positions per geohash cell."""
        self._hub: Hub | None = None
        self._clock: Callable[[], float] | None = None
        self._parts: NodeParts | None = None
        """What the node holds for its sessions, and routes to them (while ``run`` runs)."""
        self._announcer: Callable[[PresenceSet], None] = lambda transition: None
        """Tells a transition decided here (``Announcer``, once ``run`` runs)."""
        self.chat: ChatReads | None = None
        """A user's messages read from Redis (while ``run`` runs): a node keeps none."""
        self.holdings: Holdings | None = None
        """The friendships and groups this node holds (while ``run`` runs)."""

    def make_broker(self, deliver: Deliver) -> RedisBroker:
        """The hub's ``broker_factory``."""
        self.broker = RedisBroker(
            deliver,
            self.client,
            node_id=self.node_id,
            sharded=self.sharded,
            prefix=self.keys.prefix,
            address=self.address,
        )
        return self.broker

    # ---------------------------------------------------------------- the Replicator seam

    def replicate(self, op: FeedOp) -> None:
        if isinstance(op, LocationSet):
            # A location reaches the nodes that need it on its user's channel (the live
            # event), and a session opening elsewhere reads it from gp:loc:{U}; strangers
            # search gp:strangers:{cell} (``RedisStrangers``).
            self.journal.replicate(op, feed=False)
            return
        self.journal.replicate(op)

    def unchanged(self, op: Record) -> None:
        """An admin write found ``op`` already made: written again (idempotent) and its
        notices published, in case the node that made it died before announcing it."""
        self.journal.replicate(op, feed=False)

    def device_alive(self, user: str, device: str, at: float) -> None:
        self.presence.device_alive(user, device, at)

    def device_ended(
        self, user: str, device: str, last_active_at: float | None, *, logout: bool
    ) -> None:
        self.presence.device_ended(user, device, last_active_at, logout=logout)

    def logout(self, user: str, device: str | None, last_active_at: float | None) -> None:
        # Redis ends the device wherever it is held; its holder is told on its control
        # channel (``Control.logged_out``).
        if device is None:
            self.presence.logout_user(user, last_active_at)
        else:
            self.presence.device_ended(user, device, last_active_at, logout=True)

    async def devices_held(self, user: str) -> set[str]:
        """``user``'s devices some node holds: alive, connected or in their grace window, on
        any node (the presence hash's ``d:`` fields)."""
        key = self.keys.of("presence", user)
        fields = (string(field) for field in await self.client.hkeys(key))
        return {field[2:] for field in fields if field.startswith("d:")}

    async def forgotten_since(self, since: float, retention: float) -> tuple[list[str], float]:
        """The users forgotten in the cluster after ``since`` (epoch seconds) and the latest
        forget time (``redis_forget.forgotten_since``): a joining node scrubs them from its
        own location history."""
        return await forgotten_since(self.client, self.keys, since, retention)

    # ---------------------------------------------------------------- internals

    def _now(self) -> float:
        assert self._clock is not None
        return self._clock()

    def _incarnation(self) -> str | None:
        return self.lease.incarnation if self.lease.held else None

    def _known_version(self, user: str) -> int:
        return 0 if self._hub is None else self._hub.status_version(user)

    # ---------------------------------------------------------------- what the node holds

    async def hold(self, users: Collection[str], groups: Collection[str] = ()) -> None:
        """Every friendship and group of ``users``, and ``groups``, held here until
        ``release`` (``Holdings``)."""
        assert self.holdings is not None, "the link is not running"
        await self.holdings.hold(users, groups)

    def release(self, users: Collection[str], groups: Collection[str] = ()) -> None:
        """The end of one ``hold(users, groups)``."""
        if self.holdings is not None:
            self.holdings.release(users, groups)

    def replacing(self, group: str) -> AbstractContextManager[None]:
        """For the block, ``group`` (held) is replaced here in slices (``Holdings``)."""
        assert self.holdings is not None, "the link is not running"
        return self.holdings.replacing(group)

    async def own(self, user: str) -> None:
        """A session of ``user`` is opening here: its settings are kept here until
        ``close_view`` (``KeptSettings.own``)."""
        assert self._parts is not None, "the link is not running"
        await self._parts.settings.own(user)

    def covering(self, user: str) -> AbstractAsyncContextManager[None]:
        """For the block: the statuses a session of ``user`` needs are kept here
        (``Covered.covering``); open the session inside it."""
        assert self._parts is not None, "the link is not running"
        return self._parts.covered.covering(user)

    def unconfirmed(self, user: str, since: int) -> None:
        """A session of ``user`` opened although ``covering`` failed: the chat its channels
        carried from ``since`` is read back (``ChatGaps.unconfirmed``)."""
        if self._parts is not None:
            self._parts.chat_gaps.unconfirmed(user, since)

    async def read_statuses(self, users: Collection[str]) -> dict[str, Held]:
        """``users``' statuses as Redis has them, for one answer (``Statuses.overlay``)."""
        assert self._parts is not None, "the link is not running"
        return await self._parts.covered.read(users)

    async def read_settings(self, users: Collection[str]) -> dict[str, UserSettings]:
        """``users``' settings as Redis has them, for one answer."""
        return await read_settings(self.client, self.keys, sorted(users))

    def hurry(self) -> None:
        """A ``sync`` waits for the chat horizon (``Watermarks.hurry``)."""
        if self._parts is not None:
            self._parts.watermarks.hurry()

    async def open_view(self, user: str) -> int:
        """A session of ``user`` just opened here: read what it needs (``Views.open``)."""
        assert self._parts is not None, "the link is not running"
        return await self._parts.views.open(user)

    def close_view(self, user: str) -> None:
        """A session of ``user`` here ended (one ``close_view`` per ``own``)."""
        if self._parts is not None:
            self._parts.views.close(user)

    async def run(
        self,
        hub: Hub,
        clock: Callable[[], float],
        *,
        task_status: trio.TaskStatus[dict[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Join the cluster and keep the node's Redis side running until cancelled; started
        once the hub has what it loads at start (reports the loaded counts)."""
        self._hub = hub
        self._clock = clock
        self.strangers.follow(hub)
        assert self.broker is not None, "build the hub with make_broker first"
        parts = self._parts = wire_parts(
            hub,
            self.client,
            self.keys,
            self.broker,
            self.journal,
            self.lease,
            self.strangers,
            clock,
            self._now,
        )
        self._announcer = parts.announcer
        self.chat = parts.chat
        self.holdings = parts.holdings
        arrivals, watermarks = parts.arrivals, parts.watermarks
        # Tests only: every Redis write waits this long (a commit slower than its id).
        self.journal.write_delay = float(os.environ.get(WRITE_DELAY_ENV, "0") or 0)
        self.broker.subscribe_delay = float(os.environ.get(SUBSCRIBE_DELAY_ENV, "0") or 0)
        async with contextlib.AsyncExitStack() as stack:
            await join(stack, self.client, self.keys, self.shared_keys, self.lease, self.sharded)
            self.presence.holder = self.lease.incarnation
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        keep_lease, self.lease, self._lease_refused, self._lease_retaken
                    )
                    await nursery.start(self.broker.run)
                    parts.start(nursery)
                    await nursery.start(self.strangers.run)
                    self.journal.on_append = arrivals.on_record
                    self.journal.on_written = arrivals.written
                    self.journal.notices = arrivals.notices
                    control = Control(
                        self.client, self.keys, self.broker, hub, self._incarnation, nursery
                    )
                    control.listen(self.node_id)
                    await self.broker.subscribed()
                    arrivals.control = control
                    control.attach(self.presence)
                    self.presence.batches.on_offline_at = arrivals.went_offline
                    migrated = await self.presence.migrate_legacy()
                    if migrated:
                        log.warning("ended %d devices recorded by an older version", migrated)
                    last_id = await self.client.get(self.keys.last_id(self.node_id))
                    if last_id is not None:  # its previous run's: never issued again
                        hub.state.ids.observe(int(last_id))
                    listed = await list_conversations(self.client, self.keys)
                    if listed:
                        log.warning("listed %d conversations stored by an older version", listed)
                    # Read the feed from before the load: what changes meanwhile is applied
                    # on top (applying a change twice is harmless), nothing is missed. A few
                    # seconds before, since on a Cluster a change's feed entry can land before
                    # its keys (another shard) and the load would miss both.
                    feed = self.journal.feed
                    start = earlier_id(await feed.last_id(), FEED_OVERLAP)
                    counts = await load_state(self.client, self.keys, hub)
                    await nursery.start(feed.run, arrivals.on_feed, start)
                    # Every live node's watermark, before this node shows any message.
                    await watermarks.apply_heard()
                    nursery.start_soon(watermarks.apply)
                    await nursery.start(self.journal.run)
                    await nursery.start(self.presence.run)
                    await watermarks.start()
                    nursery.start_soon(watermarks.run)
                    task_status.started(counts)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await self.leave()

    async def leave(self) -> None:
        """Free this node's id at once (clean shutdown); a crashed node's lease lapses. The
        devices it held stay alive for their grace window, then the others end them."""
        try:
            await self.lease.leave()
        except Exception as exc:  # it lapses by itself
            log.warning("could not release the node lease: %s", exc)

    async def flush(self) -> None:
        """Wait until the journal and the presence reports are in Redis (drain, shutdown)."""
        await self.journal.flush()
        await self.presence.flush()
        await self.journal.flush()  # the transitions those reports decided
        if self.broker is not None:
            await self.broker.flush()  # the feed ops and transitions just produced
        if self._parts is not None:
            await self._parts.watermarks.leave()  # the others' chat no longer waits for this node

    def _lease_refused(self) -> None:
        self.presence.holder = None  # its reports wait for a lease

    def _lease_retaken(self) -> None:
        """A new incarnation: report every device alive here again, before the other
        nodes' sweepers end them."""
        assert self._hub is not None
        devices = list(self._hub.lifecycle.presence.alive_devices())
        log.warning(
            "node %d had lost its lease (stalled or cut off from Redis for more than "
            "%.0f s?): its %d devices are reported again",
            self.node_id,
            self.lease.lease,
            len(devices),
        )
        self.presence.holder = self.lease.incarnation
        self.presence.reclaim(devices)
