"""Whatever a peer does at the WebSocket layer: no traceback in the log, refusals counted,
and control frames (pings) limited like any other message."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from trio.testing import MockClock
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

from geopresence.testing import TestServer, open_server


class RawPeer:
    """A WebSocket client driven frame by frame (wsproto over an in-memory stream)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list[Event] = []

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def handshake(self) -> None:
        await self.send(Request(host="localhost", target="/ws"))
        await self.until(AcceptConnection)

    async def pump(self) -> bool:
        """Read once; False at end of stream."""
        data = await self.stream.receive_some(65536)
        if not data:
            self.ws.receive_data(None)
            return False
        self.ws.receive_data(bytes(data))
        self.events.extend(self.ws.events())
        return True

    async def until(self, kind: type[Event]) -> Event | None:
        while True:
            for i, event in enumerate(self.events):
                if isinstance(event, kind):
                    del self.events[: i + 1]
                    return event
            try:
                if not await self.pump():
                    return None
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None

    async def drain(self) -> list[Event]:
        """Everything until the server closes the transport."""
        try:
            while await self.pump():
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        seen, self.events = self.events, []
        return seen


@asynccontextmanager
async def raw_peer(server: TestServer) -> AsyncIterator[RawPeer]:
    stream = server.open_memory_connection()
    peer = RawPeer(stream)
    await peer.handshake()
    try:
        yield peer
    finally:
        await trio.aclose_forcefully(stream)


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_ping_after_a_refused_hello_logs_no_traceback(
    server: TestServer, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="geopresence")
    for _ in range(5):
        async with raw_peer(server) as peer:
            ping = peer.ws.send(Ping(b"x"))  # framed now: it crosses the server's close
            await peer.send(TextMessage("{"))
            await peer.until(TextMessage)  # the error reply (the close frame follows it)
            await peer.stream.send_all(ping)
            await peer.drain()
    await trio.sleep(1)
    assert tracebacks(caplog) == []
    assert server.running.server.metrics.closes[1008] == 5


async def test_ping_after_logout_logs_no_traceback(
    server: TestServer, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="geopresence")
    for _ in range(5):
        async with raw_peer(server) as peer:
            await peer.send(TextMessage('{"type":"hello","user":"alice","device":"d"}'))
            await peer.until(TextMessage)  # welcome
            await peer.send(TextMessage('{"type":"logout","id":1}'))
            await peer.send(Ping(b"x"))
            await peer.send(Ping(b"y"))
            await peer.drain()
    await trio.sleep(1)
    assert tracebacks(caplog) == []


async def test_pings_count_against_the_rate_limit_and_a_flood_ends_in_4008(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_server(rate_limit=20, rate_burst=40) as server, raw_peer(server) as peer:
        await peer.send(TextMessage('{"type":"hello","user":"alice","device":"d"}'))
        await peer.until(TextMessage)
        for _ in range(2000):
            await peer.send(Ping(b"p"))
        events = await peer.drain()
        closes = [e for e in events if isinstance(e, CloseConnection)]
        assert [c.code for c in closes] == [4008]
        pongs = sum(isinstance(e, Pong) for e in events)
        assert 40 <= pongs < 2000
    assert tracebacks(caplog) == []
    assert "closing 4008 (rate limit abuse)" in caplog.text  # the operator sees why


async def test_pings_within_the_limit_are_answered(autojump_clock: MockClock) -> None:
    async with open_server(rate_limit=20, rate_burst=40) as server, raw_peer(server) as peer:
        await peer.send(TextMessage('{"type":"hello","user":"alice","device":"d"}'))
        await peer.until(TextMessage)
        for i in range(30):
            await peer.send(Ping(b"%d" % i))
            pong = await peer.until(Pong)
            assert isinstance(pong, Pong) and pong.payload == b"%d" % i
        await peer.send(TextMessage('{"type":"heartbeat","id":7}'))
        reply = await peer.until(Message)
        assert isinstance(reply, TextMessage) and '"re":7' in reply.data


async def test_a_ping_flood_before_hello_ends_in_4008(autojump_clock: MockClock) -> None:
    async with open_server(rate_limit=20, rate_burst=40, abuse_limit=50) as server:
        async with raw_peer(server) as peer:
            for _ in range(500):
                await peer.send(Ping(b"p"))
            events = await peer.drain()
        assert sum(isinstance(e, Pong) for e in events) == 40
        assert [e.code for e in events if isinstance(e, CloseConnection)] == [4008]
        errors = [e.data for e in events if isinstance(e, TextMessage)]
        assert len(errors) == 1 and '"code":"rate_limited"' in errors[0]


async def test_pings_crossing_the_shutdown_close_log_no_traceback(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="geopresence")
    async with open_server() as server:
        peers = []
        async with trio.open_nursery() as nursery:
            for i in range(5):
                stream = server.open_memory_connection()
                peer = RawPeer(stream)
                await peer.handshake()
                await peer.send(TextMessage(f'{{"type":"hello","user":"u{i}","device":"d"}}'))
                await peer.until(TextMessage)
                peers.append(peer)

            async def keep_pinging(peer: RawPeer) -> None:
                try:
                    while True:
                        await peer.stream.send_all(peer.ws.send(Ping(b"k")))
                        await trio.sleep(0.01)
                except (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError):
                    return

            for peer in peers:
                nursery.start_soon(keep_pinging, peer)
            await trio.sleep(0.1)
            server.stop()
            for peer in peers:
                events = await peer.drain()
                assert 1001 in [e.code for e in events if isinstance(e, CloseConnection)]
    assert tracebacks(caplog) == []


async def test_a_failing_connection_task_logs_one_traceback_a_minute(
    server: TestServer,
    autojump_clock: MockClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.running.server.hub, "open_session", broken)
    for _ in range(10):
        async with raw_peer(server) as peer:
            await peer.send(TextMessage('{"type":"hello","user":"alice","device":"d"}'))
            await peer.drain()
    await trio.sleep(1)
    assert len(tracebacks(caplog)) == 1
    assert server.running.server.metrics.connection_failures == 10
