"""Sessions over TCP are read by one task, the ``ReadPoller`` (shell/read_poller): each is
watched while open and let go at its end, whichever way it ends; a failing read ends its
own session only; and without epoll each session reads its own socket as before."""

from __future__ import annotations

import logging
import socket

import pytest
import trio

from geopresence.shell.read_poller import ReadPoller
from geopresence.testing import TestServer, open_server


def poller_of(server: TestServer) -> ReadPoller:
    poller = server.running.server.handler.poller
    assert poller is not None
    return poller


async def until(condition: object, seconds: float = 5.0) -> None:
    with trio.fail_after(seconds):
        while not condition():  # type: ignore[operator]
            await trio.sleep(0.01)


async def test_a_session_is_polled_while_open_and_let_go_when_the_peer_closes(
    server: TestServer,
) -> None:
    poller = poller_of(server)
    async with server.connect("alice", memory=False) as alice:
        assert len(poller) == 1
        async with server.connect("bob", memory=False) as bob:
            assert len(poller) == 2
            settings = await bob.settings()
            assert settings["type"] == "settings"
        await until(lambda: len(poller) == 1)
        assert (await alice.settings())["type"] == "settings"
    await until(lambda: len(poller) == 0)


async def test_a_peer_that_vanishes_or_is_replaced_is_let_go(server: TestServer) -> None:
    poller = poller_of(server)
    # A device replaced by a new connection of the same device: closed by the server.
    async with server.connect("alice", "phone", memory=False) as old:
        async with server.connect("alice", "phone", memory=False):
            code, _ = await old.closed()
            assert code is not None and code != 1006
            await until(lambda: len(poller) == 1)
    # A peer whose socket is reset mid-session, without a close frame.
    sock = socket.create_connection(("127.0.0.1", server.running.ws_port))
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    hello = b'{"type":"hello","user":"carol","device":"d"}'
    sock.sendall(b"\x81" + bytes([0x80 | len(hello)]) + b"\0\0\0\0" + hello)
    await until(lambda: len(poller) == 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # a reset
    sock.close()
    await until(lambda: len(poller) == 0)
    assert len(server.running.server.connections) == 0


async def test_shutdown_closes_polled_sessions_with_1001() -> None:
    async with open_server() as server:
        poller = poller_of(server)
        async with server.connect("alice", memory=False) as alice:
            server.stop()
            code, _ = await alice.closed()
            assert code == 1001
        await until(lambda: len(poller) == 0)


async def test_a_read_that_fails_ends_its_own_session_only(
    server: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    node = server.running.server
    async with server.connect("alice", memory=False) as alice:
        async with server.connect("bob", memory=False) as bob:
            (bob_conn,) = [c for c in node.connections.by_id.values() if c.conn == 2]

            def broken() -> list[str | bytes]:
                raise RuntimeError("a bug in reading")

            bob_conn.ws.read_now = broken  # type: ignore[method-assign]
            await bob.send({"type": "heartbeat"})
            code, _ = await bob.closed()
            assert code == 1000  # the session's end, as for any bug in its task
        assert (await alice.settings())["type"] == "settings"  # still read
        assert node.metrics.connection_failures == 1
    assert any("a bug in reading" in str(r.exc_info) for r in caplog.records if r.exc_info)
    await until(lambda: len(poller_of(server)) == 0)


async def test_without_epoll_each_session_reads_its_own_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ReadPoller, "create", classmethod(lambda cls: None))
    async with open_server() as server:
        assert server.running.server.handler.poller is None
        await server.admin.befriend("alice", "bob")
        async with server.connect("alice", memory=False) as alice:
            async with server.connect("bob", memory=False) as bob:
                event = await alice.recv_type("presence")
                assert (event["user"], event["status"]) == ("bob", "online")
                assert (await bob.settings())["type"] == "settings"


async def test_a_callback_that_raises_is_logged_and_dropped_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    poller = ReadPoller.create()
    assert poller is not None
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    read: list[bytes] = []

    def failing() -> None:
        raise RuntimeError("boom")

    def reading() -> None:
        read.append(c.recv(100))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poller.run)
        poller.register(a.fileno(), failing)
        poller.register(c.fileno(), reading)
        b.send(b"x")
        d.send(b"y")
        with trio.fail_after(5):
            while not read or len(poller) != 1:
                await trio.sleep(0.01)
        assert read == [b"y"]
        d.send(b"z")
        with trio.fail_after(5):
            while len(read) < 2:
                await trio.sleep(0.01)
        poller.unregister(c.fileno())
        poller.unregister(c.fileno())  # twice: nothing
        assert len(poller) == 0
        nursery.cancel_scope.cancel()
    assert [r.levelno for r in caplog.records if "fd" in r.getMessage()] == [logging.ERROR]
    for s in (a, b, c, d):
        s.close()
