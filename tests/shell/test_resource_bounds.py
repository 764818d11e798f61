"""What a peer cannot make the server hold or hide: pongs it never reads, a body sent
slowly, pings sent with the handshake, and the closes the transport makes by itself (counted)."""

from __future__ import annotations

from typing import Any

import trio
from trio.testing import MockClock
from wsproto.events import CloseConnection, Ping, Pong, TextMessage
from wsproto.events import Request as WsRequest

from geopresence.shell.http_api import HttpApi
from geopresence.testing import open_server
from tests.shell.test_peer_misbehaviour import RawPeer


async def test_pongs_to_a_client_that_stopped_reading_stay_bounded(
    autojump_clock: MockClock,
) -> None:
    async with open_server(rate_limit=30, rate_burst=60) as server:
        stream = server.open_memory_connection(lockstep=True)
        peer = RawPeer(stream)
        with trio.fail_after(5):
            await peer.handshake()
            await peer.send(TextMessage('{"type":"hello","user":"mallory","device":"d"}'))
            await peer.until(TextMessage)  # welcome
        (c,) = server.running.server.connections.by_id.values()
        # Never read: a heartbeat a second (no reply) and pings within the rate limit,
        # each asking for a 125-byte pong, for ten minutes (was: 1.5 MB parked, growing).
        for second in range(600):
            await peer.send(TextMessage('{"type":"heartbeat"}'))
            for i in range(20):
                await peer.send(Ping(b"%03d-%02d" % (second, i) + b"x" * 118))
            await trio.sleep(1)
            assert sum(len(b) for b in c.ws._parked) <= 64 * 1024
        # Reading again, the client gets the answer to its latest ping.
        with trio.fail_after(5):
            while True:
                pong = await peer.until(Pong)
                assert isinstance(pong, Pong)
                if pong.payload.startswith(b"599-19"):
                    break
        await trio.aclose_forcefully(stream)


async def _call_slowly(app: Any, method: str, path: str, headers: list[Any]) -> list[Any]:
    """An ASGI request whose body's first byte comes and the rest never does."""
    sent: list[Any] = []
    first = True

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"{", "more_body": True}
        await trio.sleep_forever()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "headers": headers,
    }
    with trio.move_on_after(3600):
        await app(scope, receive, send)
    return sent


async def test_a_body_sent_slowly_does_not_hold_an_http_request(
    autojump_clock: MockClock,
) -> None:
    """A console page needs no body and reads none (the console's paths may face
    everyone); an admin request's body must come within 30 s (was: held for ever, up to
    4 MiB buffered each)."""
    async with open_server(insecure=False, admin_key="k" * 32) as server:
        app = HttpApi(server.running.server)
        start = trio.current_time()
        page = await _call_slowly(app, "GET", "/", [(b"content-length", b"4000000")])
        assert page and page[0]["status"] == 200 and trio.current_time() == start
        auth = [(b"authorization", b"Bearer " + b"k" * 32), (b"content-length", b"4000000")]
        put = await _call_slowly(app, "PUT", "/v1/groups/g", auth)
        assert put and put[0]["status"] == 408
        assert trio.current_time() - start == 30


async def test_pings_sent_with_the_handshake_are_limited_like_any_before_hello(
    autojump_clock: MockClock,
) -> None:
    """security.md: before the hello, ``rate_burst`` pings are answered, the next
    ``abuse_limit`` ignored, and one more closes with 4008; also those that come in the
    same read as the opening handshake (were: all answered, no 4008)."""
    async with open_server(rate_limit=20, rate_burst=40, abuse_limit=50) as server:
        stream = server.open_memory_connection()
        peer = RawPeer(stream)
        request = peer.ws.send(WsRequest(host="localhost", target="/ws"))
        pings = b"\x89\x81\x00\x00\x00\x00p" * 500  # masked pings, framed by hand
        await stream.send_all(request + pings)
        events = await peer.drain()
        await trio.aclose_forcefully(stream)
    assert sum(isinstance(e, Pong) for e in events) == 40
    assert [e.code for e in events if isinstance(e, CloseConnection)] == [4008]


async def test_a_too_big_message_in_the_hellos_read_is_counted(autojump_clock: MockClock) -> None:
    """operations.md: 1009 closes count in ``closes_total`` and ``errors_total{too_large}``;
    also when the too big message came in the same read as the hello (was: not counted)."""
    async with open_server(max_message_bytes=1024) as server:
        stream = server.open_memory_connection()
        peer = RawPeer(stream)
        await peer.handshake()
        hello = peer.ws.send(TextMessage('{"type":"hello","user":"alice","device":"d"}'))
        await stream.send_all(hello + peer.ws.send(TextMessage("x" * 2000)))
        events = await peer.drain()
        await trio.aclose_forcefully(stream)
        assert [e.code for e in events if isinstance(e, CloseConnection)] == [1009]
        metrics = server.running.server.metrics
        assert metrics.closes[1009] == 1 and metrics.errors["too_large"] == 1


def _frame(opcode: int, payload: bytes, *, masked: bool = True) -> bytes:
    """One final frame as a client sends it (masked with zeros: the payload as is)."""
    assert len(payload) < 126
    return (
        bytes([0x80 | opcode, (0x80 if masked else 0) | len(payload)])
        + (b"\0\0\0\0" if masked else b"")
        + payload
    )


async def test_every_close_the_transport_makes_is_counted(autojump_clock: MockClock) -> None:
    """operations.md: ``closes_total`` counts connections closed by the server, by code:
    also invalid UTF-8 (1007) and a broken frame rule (1002, an unmasked client frame),
    which the transport closes by itself (was: only its 1009 was counted)."""
    async with open_server() as server:
        for data, code in ((_frame(0x1, b"\xff"), 1007), (_frame(0x1, b"{}", masked=False), 1002)):
            stream = server.open_memory_connection()
            peer = RawPeer(stream)
            await peer.handshake()
            await peer.send(TextMessage('{"type":"hello","user":"alice","device":"d"}'))
            await peer.until(TextMessage)
            await stream.send_all(data)
            with trio.fail_after(10):
                await peer.drain()
            await trio.aclose_forcefully(stream)
            await trio.sleep(1)
            assert server.running.server.metrics.closes[code] == 1, code
