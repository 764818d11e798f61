"""One pub/sub connection to one Redis server (cluster): a trio socket, hiredis' parser.

The ``Subscriber`` (``geopresence.cluster.redis_subscriber``) keeps one per Redis server its
channels live on; see there why it is not coredis' ``PubSub``. A ``PubSubConnection``
connects (TLS and ``AUTH`` if its address says so, within ``CONNECT_TIMEOUT``), subscribes
to its channels, then reads: the messages of one read go to the owner's ``on_messages`` at
once, synchronously. A lost connection is reopened and its channels subscribed again
(messages published meanwhile are missed: pub/sub is at most once). Replies that say the
Cluster moved (``MOVED``, ``CLUSTERDOWN``, ... or Redis ending a shard channel's
subscription itself) hand the channels back to the owner, which places them again.

Barriers: a ``PING`` is answered after every command sent before it on the connection, so
``barrier`` sends one and waits for its answer; the answers come in order (``_pings``).
"""

from __future__ import annotations

import binascii
import logging
import ssl
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs
import hiredis
import trio

log = logging.getLogger("geopresence.redis")

SLOTS: Final = 16384
"""Redis Cluster's hash slots."""
CONNECT_TIMEOUT: Final = 5.0
"""Seconds to connect, shake hands (TLS) and log in before trying again."""
RECONNECT_DELAYS: Final = (0.05, 0.2, 0.5, 1.0, 2.0)
"""Seconds before each attempt to reopen a lost connection (the last one repeats)."""
KEEPALIVE: Final = 15.0
"""Seconds between PINGs on a quiet connection; no answer within as long again reopens it."""
CHANNELS_PER_COMMAND: Final = 512
"""Channels per (UN)SUBSCRIBE command (shard channels: per slot, see ``commands``)."""
TOPOLOGY_ERRORS: Final = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "CROSSSLOT")
"""Error replies that answer a shard channel command whose slot is not (or no longer) there."""
TLS_OPTIONS: Final = {"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"}
"""The ``rediss://`` URL options the subscriber applies (as coredis does)."""


@attrs.frozen
class RedisAddress:
    """Where one Redis server listens, and how to log in to it."""

    host: str
    port: int = 6379
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_options: tuple[tuple[str, str], ...] = ()
    """``ssl_*`` options of a ``rediss://`` URL (``TLS_OPTIONS``)."""

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """``redis://[user:password@]host[:port][/db][?options]`` or ``rediss://`` (TLS).
        Pub/sub ignores the database number; of the options, the TLS ones count.
        ValueError for another scheme or a TLS option the subscriber cannot apply."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"not a redis:// or rediss:// URL: {url!r}")
        options = tuple((k, v) for k, v in parse_qsl(parts.query) if k.startswith("ssl_"))
        unknown = sorted({k for k, _ in options} - TLS_OPTIONS)
        if unknown:
            raise ValueError(f"unsupported option(s) in the Redis URL: {', '.join(unknown)}")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=parts.scheme == "rediss",
            tls_options=options,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS settings of a ``rediss://`` address."""
        options = dict(self.tls_options)
        context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
        if "ssl_certfile" in options:
            context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
        requirement = options.get("ssl_cert_reqs", "required").lower()
        if requirement in ("none", "optional"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE if requirement == "none" else ssl.CERT_OPTIONAL
        return context


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


def pack(*args: str) -> bytes:
    """One command in RESP (hiredis' stub types the tuple as of length one)."""
    return bytes(hiredis.pack_command(args))  # type: ignore[arg-type]


def commands(name: str, channels: list[str]) -> list[bytes]:
    """``name`` for ``channels``, in as few commands as Redis takes: a shard channel
    command's channels must share one slot (else ``CROSSSLOT``)."""
    if name in ("SSUBSCRIBE", "SUNSUBSCRIBE"):
        by_slot: dict[int, list[str]] = {}
        for channel in channels:
            by_slot.setdefault(hash_slot(channel), []).append(channel)
        return [pack(name, *same) for same in by_slot.values()]
    return [
        pack(name, *channels[start : start + CHANNELS_PER_COMMAND])
        for start in range(0, len(channels), CHANNELS_PER_COMMAND)
    ]


class Owner(Protocol):
    """What a connection needs of its ``Subscriber``."""

    subscribe_command: str
    unsubscribe_command: str
    on_messages: Callable[[list[bytes]], None]

    def lost(self, connection: PubSubConnection, channels: Iterable[str]) -> None:
        """Redis no longer has ``channels`` subscribed here (the Cluster moved)."""

    def resubscribed(self, channels: Iterable[str]) -> None:
        """``channels`` are subscribed again on a new connection: what was published on
        them meanwhile was missed."""


class PubSubConnection:
    """One connection to one Redis server, and the channels wanted there."""

    def __init__(self, address: RedisAddress, owner: Owner) -> None:
        self.address = address
        self.owner = owner
        self.channels: set[str] = set()
        self.stopped = False
        self.scope = trio.CancelScope()
        self._stream: trio.abc.Stream | None = None
        self._send_lock = trio.Lock()
        self._pings: deque[list[trio.Event]] = deque()
        """Per PING sent on the current connection, in order: what its answer sets."""
        self._barriers: list[trio.Event] = []
        """``barrier`` calls waiting for the next PING (sent at once, or on reconnect)."""
        self._leaving: Counter[str] = Counter()
        """Our own unsubscriptions not yet confirmed (any other is Redis' own doing)."""
        self._heard = False
        self._failures = 0
        """Attempts to connect that failed since the connection was last up."""
        self._was_up = False

    @property
    def name(self) -> str:
        return f"{self.address.host}:{self.address.port}"

    def stop(self) -> None:
        """Close for good (the Cluster has no slot here any more) and let every barrier
        waiting here go (``Subscriber.sync`` waits on the new owners of the channels)."""
        self.stopped = True
        self.scope.cancel()
        for waiting in [self._barriers, *self._pings]:
            for event in waiting:
                event.set()

    # ---------------------------------------------------------------- commands

    async def subscribe(self, channels: list[str]) -> None:
        """Send (S)SUBSCRIBE for ``channels`` if connected (a connection opened later
        subscribes to ``self.channels`` itself)."""
        await self._send(lambda: commands(self.owner.subscribe_command, channels))

    async def unsubscribe(self, channels: list[str]) -> None:
        def make() -> list[bytes]:
            self._leaving.update(channels)  # counted only if sent (under the lock)
            return commands(self.owner.unsubscribe_command, channels)

        await self._send(make)

    async def barrier(self) -> None:
        """Return once every command sent here before it has been answered (if the
        connection is down: once it is back and has subscribed again; if stopped: now)."""
        if self.stopped:
            return
        done = trio.Event()
        self._barriers.append(done)
        if self._stream is not None:
            await self._ping()
        await done.wait()

    async def _ping(self, *also: trio.Event) -> None:
        waiting, self._barriers = [*self._barriers, *also], []
        self._pings.append(waiting)
        await self._send(lambda: [pack("PING")])

    async def _send(self, make: Callable[[], list[bytes]]) -> None:
        """Write what ``make`` returns (called under the lock, so what it reads is current);
        nothing if not connected (a lost connection is the reader's to handle)."""
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
            except (
                OSError,
                EOFError,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                trio.TooSlowError,
                hiredis.ProtocolError,
            ) as exc:
                if self._failures == 0:  # one line per outage
                    log.error("redis pub/sub %s lost (%r); reconnecting", self.name, exc)
                self._failures += 1
                await trio.sleep(RECONNECT_DELAYS[min(self._failures, len(RECONNECT_DELAYS)) - 1])

    async def _session(self) -> None:
        reader = hiredis.Reader()
        stream = await self._open(reader)
        try:
            self._stream = stream
            self._leaving.clear()
            await self._send(lambda: commands(self.owner.subscribe_command, sorted(self.channels)))
            await self._ping()  # releases the barriers that waited for the reconnect
            if self._was_up and self.channels:
                self.owner.resubscribed(set(self.channels))
            self._was_up = True
            await self._read(stream, reader)
        finally:
            self._stream = None
            for waiting in self._pings:  # unanswered: asked again on the next connection
                self._barriers.extend(waiting)
            self._pings.clear()
            await trio.aclose_forcefully(stream)

    async def _open(self, reader: Any) -> trio.abc.Stream:
        """Connect, TLS, AUTH: within ``CONNECT_TIMEOUT`` (a server that accepts and then
        says nothing must not hold the connection, and every barrier, for ever)."""
        address = self.address
        with trio.fail_after(CONNECT_TIMEOUT):
            stream: trio.abc.Stream = await trio.open_tcp_stream(address.host, address.port)
            try:
                if address.tls:
                    context = address.ssl_context()
                    stream = trio.SSLStream(stream, context, server_hostname=address.host)
                    await stream.do_handshake()
                if address.password is not None or address.username is not None:
                    login = [address.password or ""]
                    if address.username is not None:
                        login.insert(0, address.username)
                    await stream.send_all(pack("AUTH", *login))
                    answer = await _one_reply(stream, reader)
                    if isinstance(answer, hiredis.ReplyError):
                        raise OSError(f"AUTH refused: {answer}")
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        return stream

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
            self._answered()
        elif isinstance(reply, hiredis.ReplyError):
            text = str(reply)
            if text.startswith(TOPOLOGY_ERRORS):
                # It answers a shard channel command: place them all again (MOVED names
                # the slot, the others do not).
                slot = text.split()[1] if text.startswith("MOVED ") else None
                moved = [c for c in self.channels if slot is None or str(hash_slot(c)) == slot]
                self.owner.lost(self, moved)
            else:
                # (S)SUBSCRIBE is taken even while Redis loads its data; a PING is not
                # (LOADING): it still answers the PING, after the commands before it.
                log.error("redis pub/sub %s: %s", self.name, text)
                self._answered()
        elif kind in (b"unsubscribe", b"sunsubscribe"):
            channel = reply[1].decode()
            if self._leaving[channel] > 0:
                self._leaving[channel] -= 1
            elif kind == b"sunsubscribe" and channel in self.channels:
                self.owner.lost(self, [channel])  # Redis ended it itself: its slot moved

    def _answered(self) -> None:
        if self._failures:  # an answer: the connection works (not only opens)
            log.info("redis pub/sub %s: connected again", self.name)
            self._failures = 0
        if self._pings:
            for event in self._pings.popleft():
                event.set()

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


async def _one_reply(stream: trio.abc.Stream, reader: Any) -> Any:
    while (reply := reader.gets()) is False:
        data = await stream.receive_some(65536)
        if not data:
            raise EOFError("closed by Redis")
        reader.feed(data)
    return reply
