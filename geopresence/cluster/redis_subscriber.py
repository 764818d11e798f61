"""The receiving side of the node's Redis pub/sub: one socket per Redis server, no hops.

Why not coredis' ``PubSub``: a node of several receives about one channel message per
delivery it makes (a friend's move, heard on the friend's channel), so the cost of a
message sets the cost of a node. Measured on this machine (benchmarks/RESULTS.md,
"the receive path"), coredis' pub/sub costs 190-240 µs of CPU per message at 1,000
messages a second and 89 µs at 8,000 (each message crosses four tasks and anyio's
wrappers); one trio task reading the socket and parsing with hiredis costs 60-80 µs and
15-21 µs, the parse and the envelope's decode included. Publishing stays on coredis
(pipelined); this module only subscribes and reads.

A ``Subscriber`` keeps the set of channels the node wants and one ``_Server`` per Redis
server they live on (standalone: one; Cluster: each master, by the channel's hash slot,
with ``SSUBSCRIBE``). Each server's task connects, subscribes to its channels, then reads:
the messages of one read go to ``on_messages`` at once, synchronously (the node delivers
them and writes out what they queued, without waking another task). A lost
connection is reopened and its channels subscribed again (messages published meanwhile are
missed: pub/sub is at most once); a Cluster whose slots moved (a ``MOVED`` reply, or Redis
dropping a shard channel's subscription itself) is asked for its slots again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import trio

from geopresence.cluster.pubsub_connection import (
    PubSubConnection,
    RedisAddress,
    commands,
    hash_slot,
)

__all__ = ["RedisAddress", "Subscriber", "commands", "hash_slot"]

log = logging.getLogger("geopresence.redis")


class Subscriber:
    """The channels this node listens to, on a standalone Redis (``address``) or a Redis
    Cluster (``cluster``: a coredis ``RedisCluster``, asked for its shards).

    ``on_messages(payloads)`` runs once per read from a server with the messages it
    brought, synchronously in the reading task. Start ``run`` in a task first.
    """

    def __init__(
        self,
        on_messages: Callable[[list[bytes]], None],
        *,
        address: RedisAddress | None = None,
        cluster: Any = None,
    ) -> None:
        if (address is None) == (cluster is None):
            raise ValueError("give a standalone Redis' address or a cluster client")
        self.on_messages = on_messages
        self.on_gap: Callable[[list[str]], None] | None = None
        """Called with channels that may have missed messages: their connection was lost
        and is back, or the Cluster moved them (called as they are placed again: wait
        for ``sync`` before reading what they carry)."""
        self._address = address
        self._cluster = cluster
        self.subscribe_command = "SUBSCRIBE" if cluster is None else "SSUBSCRIBE"
        self.unsubscribe_command = "UNSUBSCRIBE" if cluster is None else "SUNSUBSCRIBE"
        self._servers: dict[RedisAddress, PubSubConnection] = {}
        self._slots: list[tuple[int, int, RedisAddress]] = []
        self._where: dict[str, PubSubConnection] = {}
        """Wanted channels, each with the connection it is subscribed on."""
        self._unplaced: set[str] = set()
        """Wanted channels waiting for the Cluster's shards to be read (again)."""
        self._generation = 0
        """Times the shards were read: a ``sync`` that saw it change waits again."""
        self._topology = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the connections, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._address is not None:
                self._connection(self._address)
            else:
                await self._read_shards()
            nursery.start_soon(self._follow_topology)
            task_status.started()

    # ---------------------------------------------------------------- subscriptions

    async def subscribe(self, channels: Iterable[str]) -> None:
        """Listen to ``channels`` (Redis names) from now on."""
        new = [c for c in channels if c not in self._where and c not in self._unplaced]
        await self._send_subscribes(self._place(new))

    async def unsubscribe(self, channels: Iterable[str]) -> None:
        """Stop listening to ``channels``."""
        by_connection: dict[PubSubConnection, list[str]] = {}
        for channel in channels:
            self._unplaced.discard(channel)
            connection = self._where.pop(channel, None)
            if connection is not None:
                connection.channels.discard(channel)
                by_connection.setdefault(connection, []).append(channel)
        for connection, names in by_connection.items():
            await connection.unsubscribe(names)

    async def sync(self) -> None:
        """Return once every subscription made so far is in place in Redis (messages
        published from then on are received). Waits while a server is unreachable."""
        while True:
            generation = self._generation
            while self._unplaced:
                await trio.sleep(0.05)  # the Cluster's shards are being read again
            async with trio.open_nursery() as nursery:  # a dead master delays only its own
                for connection in list(self._servers.values()):
                    if connection.channels:
                        nursery.start_soon(connection.barrier)
            if generation == self._generation and not self._unplaced:
                return

    @property
    def channels(self) -> set[str]:
        """The channels listened to (or to be, once a Cluster's shards are known)."""
        return set(self._where) | self._unplaced

    def lost(self, connection: PubSubConnection, channels: Iterable[str]) -> None:
        """Redis no longer has ``channels`` subscribed on ``connection`` (the Cluster
        moved): place them again once its shards are read."""
        moved = []
        for channel in list(channels):
            if self._where.get(channel) is connection:
                del self._where[channel]
                connection.channels.discard(channel)
                self._unplaced.add(channel)
                moved.append(channel)
        self.topology_changed()
        if moved and self.on_gap is not None:
            self.on_gap(moved)

    def resubscribed(self, channels: Iterable[str]) -> None:
        if self.on_gap is not None:
            self.on_gap(list(channels))

    def topology_changed(self) -> None:
        """Read the Cluster's shards again (soon, once for many calls)."""
        self._topology.set()

    # ---------------------------------------------------------------- placing channels

    def _place(self, channels: Iterable[str]) -> dict[PubSubConnection, list[str]]:
        """Record each channel on its connection at once (no checkpoint: what another task
        does next sees it); the commands are the caller's to send."""
        by_connection: dict[PubSubConnection, list[str]] = {}
        for channel in channels:
            connection = self._route(channel)
            if connection is None:
                self._unplaced.add(channel)
                self.topology_changed()
                continue
            self._unplaced.discard(channel)
            self._where[channel] = connection
            connection.channels.add(channel)
            by_connection.setdefault(connection, []).append(channel)
        return by_connection

    @staticmethod
    async def _send_subscribes(by_connection: dict[PubSubConnection, list[str]]) -> None:
        for connection, names in by_connection.items():
            await connection.subscribe(names)

    def _connection(self, address: RedisAddress) -> PubSubConnection:
        connection = self._servers.get(address)
        if connection is None:
            assert self._nursery is not None, "Subscriber.run is not running"
            connection = self._servers[address] = PubSubConnection(address, self)
            self._nursery.start_soon(connection.run)
        return connection

    def _route(self, channel: str) -> PubSubConnection | None:
        if self._address is not None:
            return self._connection(self._address)
        slot = hash_slot(channel)
        for start, end, address in self._slots:
            if start <= slot <= end:
                return self._connection(address)
        return None

    async def _follow_topology(self) -> None:
        while True:
            await self._topology.wait()
            await trio.sleep(0.1)  # one refresh for a burst of replies
            self._topology = trio.Event()
            try:
                if self._cluster is not None:
                    await self._read_shards()
                else:
                    unplaced, self._unplaced = self._unplaced, set()
                    await self._send_subscribes(self._place(unplaced))
            except Exception as exc:
                log.error("redis cluster shards could not be read (%s); retrying", exc)
                await trio.sleep(1.0)
                self._topology.set()

    async def _read_shards(self) -> None:
        """Read the Cluster's slot ranges, then move each channel to its slot's master.
        The bookkeeping changes at once, without a checkpoint; the commands follow."""
        assert self._cluster is not None
        slots: list[tuple[int, int, RedisAddress]] = []
        for shard in await self._cluster.cluster_shards():
            primaries = [n for n in shard[b"nodes"] if n[b"role"] == b"master"]
            if not primaries:
                continue  # a shard without a master serves nothing until one is elected
            master = primaries[0]
            address = RedisAddress(master[b"ip"].decode(), int(master[b"port"]))
            ranges = shard[b"slots"]
            slots.extend(
                (int(a), int(b), address) for a, b in zip(ranges[::2], ranges[1::2], strict=True)
            )
        self._slots = sorted(slots)
        self._generation += 1
        leaving: dict[PubSubConnection, list[str]] = {}
        for channel, connection in list(self._where.items()):
            if self._route(channel) is not connection:
                del self._where[channel]
                connection.channels.discard(channel)
                self._unplaced.add(channel)
                leaving.setdefault(connection, []).append(channel)
        masters = {address for _, _, address in self._slots}
        for address in [a for a in self._servers if a not in masters]:
            self._servers.pop(address).stop()
        unplaced, self._unplaced = self._unplaced, set()
        placed = self._place(unplaced)
        moved = [name for names in leaving.values() for name in names]
        if moved and self.on_gap is not None:
            self.on_gap(moved)  # subscribed elsewhere from now on: what was sent meanwhile
        for connection, names in leaving.items():
            if not connection.stopped:
                await connection.unsubscribe(names)
        await self._send_subscribes(placed)
