"""Helpers shared by the test modules (import them from here, not from another test file)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from geopresence.client import Client
from geopresence.core.broker import ConnId
from geopresence.core.hub import Hub
from geopresence.core.replies import Place
from geopresence.testing import TestServer
from geopresence.wire.outgoing import Outgoing


class SettableClock:
    """A clock a test sets by hand (``clock.now = ...``): epoch seconds, for code that is
    given a ``Callable[[], float]``."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingSink:
    """A hub Sink that keeps every frame, decoded, per connection (``take`` empties it)."""

    def __init__(self) -> None:
        self.frames: dict[ConnId, list[dict[str, Any]]] = {}
        self.closed: dict[ConnId, int] = {}

    def send(self, conn: ConnId, message: Outgoing) -> None:
        self.frames.setdefault(conn, []).append(orjson.loads(message.text))

    def close(self, conn: ConnId, code: int, reason: str) -> None:
        assert conn not in self.closed, "closed twice"
        self.closed[conn] = code

    def take(self, conn: ConnId, *kinds: str) -> list[dict[str, Any]]:
        """The frames sent to ``conn`` since the last take (only those of ``kinds``, if
        given; the others are dropped too)."""
        frames = self.frames.pop(conn, [])
        return [f for f in frames if not kinds or f["type"] in kinds]


# ---------------------------------------------------------------- servers and raw sockets


@asynccontextmanager
async def raw_ws(server: TestServer, path: str = "/ws") -> AsyncIterator[WebSocketConnection]:
    """A WebSocket to the server that has said nothing yet."""
    stream = server.open_memory_connection()
    async with trio.open_nursery() as nursery:
        ws = await wrap_client_stream(nursery, stream, "localhost", path)  # type: ignore[arg-type]
        yield ws
        await ws.aclose()
        nursery.cancel_scope.cancel()


async def close_code(ws: WebSocketConnection) -> int | None:
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed as exc:
        return exc.reason.code if exc.reason else None


# ---------------------------------------------------------------- the real command


LISTENING = re.compile(r"^listening ws=(?P<ws>\S+):(?P<wp>\d+) http=(?P<http>\S+):(?P<hp>\d+)$")


def geopresence(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geopresence", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


class ServerProcess:
    def __init__(self, proc: subprocess.Popen[str], ws_port: int, http_port: int) -> None:
        self.proc = proc
        self.ws_url = f"ws://127.0.0.1:{ws_port}/ws"
        self.http_url = f"http://127.0.0.1:{http_port}"
        self.output: list[str] = []


def start(*args: str, cwd: Path, env: dict[str, str] | None = None) -> ServerProcess:
    proc = subprocess.Popen(
        [sys.executable, "-m", "geopresence", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        match = LISTENING.match(line.strip())
        if match:
            server = ServerProcess(proc, int(match["wp"]), int(match["hp"]))
            server.output = lines
            return server
    proc.kill()
    raise AssertionError("server did not print its listening line:\n" + "".join(lines))


def files_naming(data_dir: Path, word: str) -> list[str]:
    """Every file under ``data_dir`` whose bytes hold ``word`` (a grep -rl), relative to it.

    A file a running server removes between the listing and the read (a retired history
    file) is skipped, as grep would."""
    needle = word.encode()
    named = []
    for p in data_dir.rglob("*"):
        try:
            if p.is_file() and needle in p.read_bytes():
                named.append(str(p.relative_to(data_dir)))
        except FileNotFoundError:
            continue
    return sorted(named)


class Listening:
    """A fake ``in_flight.Listener``: the channels held (counted), and a log of what was
    held, released and confirmed, in order (``subscribed`` logs ``"subscribed"``)."""

    def __init__(self) -> None:
        self.held: dict[str, int] = {}
        self.log: list[str] = []

    def hold(self, channel: str) -> None:
        self.held[channel] = self.held.get(channel, 0) + 1
        self.log.append(f"hold {channel}")

    def release(self, channel: str) -> None:
        self.held[channel] -= 1
        if not self.held[channel]:
            del self.held[channel]
        self.log.append(f"release {channel}")

    async def subscribed(self) -> None:
        self.log.append("subscribed")


@asynccontextmanager
async def running(task: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    """``task`` runs in the background for the block; at its end, once every task is
    blocked (what the block set off has run), it is cancelled."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task)
        yield
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


async def quiet(client: Client) -> None:
    """Read and drop whatever the server already sent (presence chatter)."""
    while True:
        with trio.move_on_after(0.01):
            await client.recv()
            continue
        return


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (polling every 10 ms, at most ``timeout`` seconds) until ``condition()``."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


def places_taken(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> list[ConnId]:
    """The connections for which ``hub`` keeps a place in a line of replies, as they are
    taken from now on (``Replies.place``: a reply that waits)."""
    places: list[ConnId] = []
    take_place = hub.replies.place

    def place(conn: ConnId) -> Place:
        places.append(conn)
        return take_place(conn)

    monkeypatch.setattr(hub.replies, "place", place)
    return places
