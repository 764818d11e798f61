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

import binascii
import logging
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import attrs
import hiredis
import trio

log = logging.getLogger("geopresence.redis")

SLOTS: Final = 16384
"""Redis Cluster's hash slots."""
CHANNELS_PER_COMMAND: Final = 512
"""Channels per (S)SUBSCRIBE command (one command per batch of subscriptions)."""
RECONNECT_DELAYS: Final = (0.05, 0.2, 0.5, 1.0, 2.0)
"""Seconds before each attempt to reopen a lost connection (the last one repeats)."""
KEEPALIVE: Final = 15.0
"""Seconds between PINGs on a quiet connection; no answer within as long again reopens it."""


@attrs.frozen
class RedisAddress:
    """Where one Redis server listens, and how to log in to it."""

    host: str
    port: int = 6379
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """``redis://[user:password@]host[:port][/db]`` or ``rediss://`` (TLS). Pub/sub
        ignores the database number. ValueError for any other scheme."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"not a redis:// or rediss:// URL: {url!r}")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=parts.scheme == "rediss",
        )


def hash_slot(name: str) -> int:
    """Redis Cluster's slot of a key or shard channel: CRC16 (XMODEM, which is what
    ``binascii.crc_hqx`` computes) of its hash tag, or of the whole name without one."""
    data = name.encode()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return binascii.crc_hqx(data, 0) % SLOTS


class _Server:
    """One connection to one Redis server, and the channels wanted there."""

    def __init__(self, address: RedisAddress, owner: Subscriber) -> None:
        self.address = address
        self.owner = owner
        self.channels: set[str] = set()
        self.scope = trio.CancelScope()
        self._stream: trio.abc.Stream | None = None
        self._send_lock = trio.Lock()
        self._pings: deque[list[trio.Event]] = deque()
        """Per PING sent on the current connection, in order: what its answer sets."""
        self._barriers: list[trio.Event] = []
        """``barrier`` calls waiting for the next PING (sent at once, or on reconnect)."""
        self._heard = False
        self._failures = 0
        """Attempts to connect that failed since the connection was last up."""

    def stop(self) -> None:
        """Close for good (no slot of the Cluster is here any more); whoever waits on a
        barrier here is let go (its channels were subscribed elsewhere, with a barrier
        of their own)."""
        self.scope.cancel()
        for waiting in [self._barriers, *self._pings]:
            for event in waiting:
                event.set()

    @property
    def name(self) -> str:
        return f"{self.address.host}:{self.address.port}"

    # ---------------------------------------------------------------- commands

    async def command(self, name: str, channels: Iterable[str]) -> None:
        """Send ``name`` (SUBSCRIBE, SUNSUBSCRIBE, ...) for ``channels`` if connected (a
        connection opened later subscribes to ``self.channels`` itself)."""
        batch = list(channels)
        await self._send(lambda: _commands(name, batch))

    async def barrier(self) -> None:
        """Return once every command sent here before it has been answered (if the
        connection is down: once it is back and has subscribed again)."""
        done = trio.Event()
        self._barriers.append(done)
        if self._stream is not None:
            await self._ping()
        await done.wait()

    async def _ping(self, *also: trio.Event) -> None:
        waiting, self._barriers = [*self._barriers, *also], []
        self._pings.append(waiting)
        await self._send(
            lambda: [
                _pack(
                    "PING",
                )
            ]
        )

    async def _send(self, make: Callable[[], list[bytes]]) -> None:
        """Write what ``make`` returns (called under the lock, so that what it reads is
        current); nothing if not connected (a lost connection is the reader's to handle)."""
        stream = self._stream
        if stream is None:
            return
        try:
            async with self._send_lock:
                for data in make():
                    await stream.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    # ---------------------------------------------------------------- the connection

    async def run(self) -> None:
        """Connect, subscribe, read; again whenever the connection is lost. Forever."""
        with self.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keepalive)
                await self._connect_again_and_again()

    async def _connect_again_and_again(self) -> None:
        while True:
            try:
                await self._session()
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, EOFError) as exc:
                if self._failures == 0:  # one line per outage
                    log.error("redis pub/sub %s lost (%s); reconnecting", self.name, exc)
                self._failures += 1
                delay = RECONNECT_DELAYS[min(self._failures, len(RECONNECT_DELAYS)) - 1]
                await trio.sleep(delay)
                if self._failures > 1:
                    self.owner.topology_changed()  # a Cluster may have moved on

    async def _session(self) -> None:
        address = self.address
        stream: trio.abc.Stream = await trio.open_tcp_stream(address.host, address.port)
        try:
            if address.tls:
                tls = trio.SSLStream(
                    stream, ssl.create_default_context(), server_hostname=address.host
                )
                await tls.do_handshake()
                stream = tls
            reader = hiredis.Reader()
            if address.password is not None:
                login = (
                    [address.password]
                    if address.username is None
                    else [address.username, address.password]
                )
                await stream.send_all(_pack("AUTH", *login))
                answer = await _one_reply(stream, reader)
                if isinstance(answer, hiredis.ReplyError):
                    raise OSError(f"AUTH refused: {answer}")
            self._stream = stream
            await self._send(lambda: _commands(self.owner.subscribe_command, sorted(self.channels)))
            await self._ping()  # releases the barriers that waited for the reconnect
            if self._failures:
                log.info("redis pub/sub %s: connected again", self.name)
                self._failures = 0
            await self._read(stream, reader)
        finally:
            self._stream = None
            for waiting in self._pings:  # unanswered: asked again on the next connection
                self._barriers.extend(waiting)
            self._pings.clear()
            await trio.aclose_forcefully(stream)

    async def _read(self, stream: trio.abc.Stream, reader: Any) -> None:
        on_messages = self.owner.on_messages
        while True:
            data = await stream.receive_some(65536)
            if not data:
                raise EOFError("closed by Redis")
            self._heard = True
            reader.feed(data)
            payloads = []
            reply = reader.gets()
            while reply is not False:
                kind = reply[0] if type(reply) is list else None
                if kind == b"message" or kind == b"smessage":
                    payloads.append(reply[2])
                else:
                    self._other(kind, reply)
                reply = reader.gets()
            if payloads:
                try:
                    on_messages(payloads)
                except Exception:
                    log.exception("handling messages from redis pub/sub failed")

    def _other(self, kind: Any, reply: Any) -> None:
        if kind == b"pong" or reply == b"PONG":
            if self._pings:
                for event in self._pings.popleft():
                    event.set()
        elif isinstance(reply, hiredis.ReplyError):
            if str(reply).startswith(("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")):
                self.owner.topology_changed()
            else:
                log.error("redis pub/sub %s: %s", self.name, reply)
        elif kind == b"sunsubscribe" and reply[1].decode() in self.channels:
            # Redis ended a wanted shard channel's subscription itself: its slot moved.
            self.owner.topology_changed()

    async def _keepalive(self) -> None:
        """PING a connection quiet for ``KEEPALIVE`` s; one that does not answer within as
        long is closed (and reopened by ``run``): a dead peer is found."""
        while True:
            self._heard = False
            await trio.sleep(KEEPALIVE)
            stream = self._stream
            if self._heard or stream is None:
                continue
            answered = trio.Event()
            await self._ping(answered)
            with trio.move_on_after(KEEPALIVE):
                await answered.wait()
                continue
            if self._stream is stream:
                log.error("redis pub/sub %s: no answer to a PING in %g s", self.name, KEEPALIVE)
                await trio.aclose_forcefully(stream)


def _pack(*args: str) -> bytes:
    """One command in RESP (hiredis' stub types the tuple as of length one)."""
    return bytes(hiredis.pack_command(args))  # type: ignore[arg-type]


def _commands(name: str, channels: list[str]) -> list[bytes]:
    """``name`` for ``channels``, in as few commands as Redis takes: a shard channel
    command's channels must share one slot (else ``CROSSSLOT``)."""
    if name in ("SSUBSCRIBE", "SUNSUBSCRIBE"):
        by_slot: dict[int, list[str]] = {}
        for channel in channels:
            by_slot.setdefault(hash_slot(channel), []).append(channel)
        return [_pack(name, *same) for same in by_slot.values()]
    return [
        _pack(name, *channels[start : start + CHANNELS_PER_COMMAND])
        for start in range(0, len(channels), CHANNELS_PER_COMMAND)
    ]


async def _one_reply(stream: trio.abc.Stream, reader: Any) -> Any:
    while (reply := reader.gets()) is False:
        data = await stream.receive_some(65536)
        if not data:
            raise EOFError("closed by Redis")
        reader.feed(data)
    return reply


class Subscriber:
    """The channels this node listens to, on a standalone Redis (``address``) or a Redis
    Cluster (``cluster``: a coredis ``RedisCluster``, asked for its slots; shard channels).

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
        self._address = address
        self._cluster = cluster
        self.subscribe_command = "SUBSCRIBE" if cluster is None else "SSUBSCRIBE"
        self.unsubscribe_command = "UNSUBSCRIBE" if cluster is None else "SUNSUBSCRIBE"
        self._servers: dict[RedisAddress, _Server] = {}
        self._slots: list[tuple[int, int, RedisAddress]] = []
        self._where: dict[str, _Server] = {}
        """Wanted channels and the server each is subscribed on (None: not placed yet)."""
        self._unplaced: set[str] = set()
        self._topology = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the connections, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._address is not None:
                self._server(self._address)
            else:
                await self._load_slots()
                nursery.start_soon(self._follow_topology)
            task_status.started()

    # ---------------------------------------------------------------- subscriptions

    async def subscribe(self, channels: Iterable[str]) -> None:
        """Listen to ``channels`` (Redis names) from now on."""
        by_server: dict[_Server, list[str]] = {}
        for channel in channels:
            if channel in self._where or channel in self._unplaced:
                continue
            server = self._route(channel)
            if server is None:
                self._unplaced.add(channel)
                self.topology_changed()
                continue
            self._where[channel] = server
            server.channels.add(channel)
            by_server.setdefault(server, []).append(channel)
        for server, names in by_server.items():
            await server.command(self.subscribe_command, names)

    async def unsubscribe(self, channels: Iterable[str]) -> None:
        """Stop listening to ``channels``."""
        by_server: dict[_Server, list[str]] = {}
        for channel in channels:
            self._unplaced.discard(channel)
            server = self._where.pop(channel, None)
            if server is not None:
                server.channels.discard(channel)
                by_server.setdefault(server, []).append(channel)
        for server, names in by_server.items():
            await server.command(self.unsubscribe_command, names)

    async def sync(self) -> None:
        """Return once every subscription made so far is in place in Redis (messages
        published from then on are received)."""
        while self._unplaced:
            await trio.sleep(0.05)  # the Cluster's slots are being asked again
        for server in list(self._servers.values()):
            await server.barrier()

    @property
    def channels(self) -> set[str]:
        """The channels listened to (or to be, once a Cluster's slots are known)."""
        return set(self._where) | self._unplaced

    # ---------------------------------------------------------------- servers and slots

    def _server(self, address: RedisAddress) -> _Server:
        server = self._servers.get(address)
        if server is None:
            assert self._nursery is not None, "Subscriber.run is not running"
            server = self._servers[address] = _Server(address, self)
            self._nursery.start_soon(server.run)
        return server

    def _route(self, channel: str) -> _Server | None:
        if self._address is not None:
            return self._server(self._address)
        slot = hash_slot(channel)
        for start, end, address in self._slots:
            if start <= slot <= end:
                return self._server(address)
        return None

    def topology_changed(self) -> None:
        """Ask the Cluster for its slots again (soon, once for many calls)."""
        self._topology.set()

    async def _follow_topology(self) -> None:
        while True:
            await self._topology.wait()
            await trio.sleep(0.1)  # one refresh for a burst of MOVED replies
            self._topology = trio.Event()
            try:
                await self._load_slots()
            except Exception as exc:
                log.error("redis cluster slots could not be read (%s); retrying", exc)
                await trio.sleep(1.0)
                self._topology.set()

    async def _load_slots(self) -> None:
        """Read the Cluster's slot ranges, then move each channel to its slot's master."""
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
        moves = [c for c, s in self._where.items() if self._route(c) is not s]
        for channel in moves:
            old = self._where.pop(channel)
            old.channels.discard(channel)
            await old.command(self.unsubscribe_command, [channel])
        unplaced, self._unplaced = [*self._unplaced, *moves], set()
        await self.subscribe(unplaced)
        masters = {address for _, _, address in self._slots}
        for address in [a for a in self._servers if a not in masters]:
            self._servers.pop(address).stop()
