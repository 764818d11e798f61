"""Signals during the shutdown of the real ``geopresence serve``: a second SIGTERM is only
logged and the shutdown ends as usual (exit 0); a second SIGINT (Ctrl+C again) exits at
once, without the final snapshot, as in Redis (exit 1). Either way no traceback, and
nothing acknowledged is lost. The shutdown is held open by a client that never answers
the server's close (``--close-timeout``)."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from tests.helpers import ServerProcess, geopresence, start

CLOSE_TIMEOUT_S = 8.0


@contextmanager
def deaf_client(server: ServerProcess) -> Iterator[None]:
    """A session that stops reading once greeted: the server's close waits for it."""
    host, port = server.ws_url.removeprefix("ws://").removesuffix("/ws").split(":")
    ws = WSConnection(ConnectionType.CLIENT)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(ws.send(Request(host=host, target="/ws")))
        while not any(isinstance(e, AcceptConnection) for e in ws.events()):
            ws.receive_data(sock.recv(4096))
        hello = '{"type":"hello","user":"alice","device":"phone"}'
        sock.sendall(ws.send(TextMessage(data=hello)))
        sock.recv(4096)  # the welcome
        yield


def served(tmp_path: Path) -> ServerProcess:
    return start(
        "--insecure", "--port", "0", "--http-port", "0", "--data-dir", str(tmp_path / "data"),
        "--close-timeout", str(CLOSE_TIMEOUT_S), "--drain-timeout", str(CLOSE_TIMEOUT_S),
        cwd=tmp_path,
    )  # fmt: skip


@pytest.mark.parametrize(("second", "status"), [(signal.SIGTERM, 0), (signal.SIGINT, 1)])
def test_a_second_signal_during_the_shutdown(
    tmp_path: Path, second: signal.Signals, status: int
) -> None:
    server = served(tmp_path)
    try:
        httpx.put(f"{server.http_url}/v1/friendships/alice/bob").raise_for_status()
        with deaf_client(server):
            started = time.monotonic()
            server.proc.send_signal(signal.SIGINT)
            time.sleep(1.0)  # shutting down: waiting for the deaf client's close
            assert server.proc.poll() is None
            server.proc.send_signal(second)
            assert server.proc.wait(30) == status
            took = time.monotonic() - started
        assert server.proc.stdout is not None
        output = "".join(server.output) + server.proc.stdout.read()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    if second == signal.SIGINT:
        assert "SIGINT again: exiting now" in output
        assert took < CLOSE_TIMEOUT_S, took
    else:
        assert "SIGTERM: already stopping" in output
    inspected = geopresence("inspect", "--data-dir", str(tmp_path / "data"))
    assert "durable state: 1 friendships" in inspected.stdout, inspected.stdout
