"""Sessions over TCP are read by one task, the ``ReadPoller`` (shell/read_poller): each is
watched while open and let go at its end, whichever way it ends, before its socket is
closed; a failing read ends its own session only; and without epoll each session reads its
own socket as before."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import pytest
import trio

from geopresence.shell.read_poller import ReadPoller
from geopresence.testing import TestServer, open_server


def poller_of(server: TestServer) -> ReadPoller:
    poller = server.running.server.handler.poller
    assert poller is not None
    return poller


def kernel_set(poller: ReadPoller) -> list[int]:
    """The fds in the poller's epoll set, as the kernel has them (not its own table)."""
    with open(f"/proc/self/fdinfo/{poller._epoll.fileno()}") as info:
        return sorted(int(line.split()[1]) for line in info if line.startswith("tfd:"))


def record_unregisters(poller: ReadPoller) -> list[tuple[int, bool]]:
    """Each unregister of a registered fd from now on, and whether the fd was still open
    then (it must be: a closed fd's number may already be another socket's)."""
    seen: list[tuple[int, bool]] = []
    unregister = poller.unregister

    def recording(fd: int) -> None:
        if fd in poller._callbacks:
            try:
                os.fstat(fd)
                seen.append((fd, True))
            except OSError:
                seen.append((fd, False))
        unregister(fd)

    poller.unregister = recording  # type: ignore[method-assign]
    return seen


def raw_session(port: int, user: str, device: str = "d") -> socket.socket:
    """A session opened by hand over TCP that reads nothing and never answers a close."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    hello = b'{"type":"hello","user":"%s","device":"%s"}' % (user.encode(), device.encode())
    sock.sendall(b"\x81" + bytes([0x80 | len(hello)]) + b"\0\0\0\0" + hello)
    return sock


async def until(condition: Callable[[], object], seconds: float = 5.0) -> None:
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.01)


async def test_a_session_is_polled_while_open_and_let_go_when_the_peer_closes(
    server: TestServer,
) -> None:
    poller = poller_of(server)
    unregistered = record_unregisters(poller)
    async with server.connect("alice", memory=False) as alice:
        assert len(kernel_set(poller)) == len(poller) == 1
        async with server.connect("bob", memory=False) as bob:
            assert len(kernel_set(poller)) == len(poller) == 2
            assert (await bob.settings())["type"] == "settings"
        await until(lambda: len(poller) == 1)
        assert (await alice.settings())["type"] == "settings"
    await until(lambda: len(poller) == 0)
    assert kernel_set(poller) == []
    assert len(unregistered) == 2 and all(still_open for _, still_open in unregistered)


async def test_a_peer_that_vanishes_or_is_replaced_is_let_go(server: TestServer) -> None:
    node = server.running.server
    poller = poller_of(server)
    unregistered = record_unregisters(poller)
    # A device replaced by a new connection of the same device: closed by the server.
    async with server.connect("alice", "phone", memory=False) as old:
        async with server.connect("alice", "phone", memory=False):
            code, _ = await old.closed()
            assert code is not None and code != 1006
            await until(lambda: len(node.connections) == 1 and len(poller) == 1)
    await until(lambda: len(poller) == 0)
    # A peer whose socket is reset mid-session, without a close frame.
    sock = raw_session(server.running.ws_port, "carol")
    await until(lambda: len(node.connections) == 1 and len(poller) == 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # a reset
    sock.close()
    await until(lambda: len(poller) == 0)
    assert len(node.connections) == 0 and kernel_set(poller) == []
    assert len(unregistered) == 3 and all(still_open for _, still_open in unregistered)


async def test_a_replaced_peer_that_never_answers_the_close_is_let_go_at_the_deadline() -> None:
    async with open_server(close_timeout=0.3) as server:
        node = server.running.server
        poller = poller_of(server)
        unregistered = record_unregisters(poller)
        old = raw_session(server.running.ws_port, "alice", "phone")
        await until(lambda: len(poller) == 1)
        (old_fd,) = kernel_set(poller)
        async with server.connect("alice", "phone", memory=False):
            # The old session's close is never answered: its task is cancelled at the
            # close deadline, and lets its socket go before closing it.
            await until(lambda: len(node.connections) == 1 and old_fd not in kernel_set(poller))
            assert unregistered == [(old_fd, True)]
            assert kernel_set(poller) == sorted(poller._callbacks)
        old.close()


async def test_shutdown_closes_polled_sessions_with_1001() -> None:
    async with open_server() as server:
        poller = poller_of(server)
        unregistered = record_unregisters(poller)
        async with server.connect("alice", memory=False) as alice:
            (fd,) = kernel_set(poller)
            server.stop()
            code, _ = await alice.closed()
            assert code == 1001
        await until(lambda: unregistered == [(fd, True)])  # by the session, not the end


async def test_a_read_that_fails_ends_its_own_session_only(
    server: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    node = server.running.server
    async with server.connect("alice", memory=False) as alice:
        async with server.connect("bob", memory=False) as bob:
            (bob_conn,) = [c for c in node.connections.by_id.values() if c.conn == 2]

            def broken(data: bytes | bytearray) -> None:
                raise RuntimeError("a bug in reading")

            bob_conn.ws._protocol.receive_data = broken  # type: ignore[method-assign]
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


async def test_a_callback_that_raises_is_dropped_its_owner_told_and_the_others_go_on() -> None:
    poller = ReadPoller.create()
    assert poller is not None
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    read: list[bytes] = []
    errors: list[Exception] = []

    def failing() -> None:
        raise RuntimeError("boom")

    def reading() -> None:
        read.append(c.recv(100))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poller.run)
        poller.register(a.fileno(), failing, errors.append)
        poller.register(c.fileno(), reading, errors.append)
        b.send(b"x")
        d.send(b"y")
        await until(lambda: read and errors)
        assert read == [b"y"] and [str(e) for e in errors] == ["boom"]
        assert kernel_set(poller) == [c.fileno()]
        d.send(b"z")
        await until(lambda: len(read) == 2)
        poller.unregister(c.fileno())
        poller.unregister(c.fileno())  # twice: nothing
        assert len(poller) == 0 and kernel_set(poller) == []
        nursery.cancel_scope.cancel()
    # Stopped (the server is stopping): a late session registers nothing.
    assert poller.stopped
    poller.register(a.fileno(), failing, errors.append)
    assert len(poller) == 0
    for sock in (a, b, c, d):
        sock.close()
