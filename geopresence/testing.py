"""Run a geopresence server inside a test, in-process, for your own test suites.

    from geopresence.testing import open_server

    async def test_presence():                      # pytest-trio
        async with open_server() as server:
            await server.admin.befriend("alice", "bob")
            async with server.connect("alice") as alice, server.connect("bob") as bob:
                assert alice.friends[0]["status"] == "online"

``server.connect`` uses an in-memory transport by default, so tests can run under
``trio.testing.MockClock(autojump_threshold=0)`` and assert exact times: no socket can be
"in flight" while virtual time jumps. ``memory=False`` connects over loopback TCP instead.
The server listens on free loopback ports either way (``server.ws_url``, ``server.http_url``).
"""

from __future__ import annotations

import difflib
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
import trio.testing

from geopresence.client import AdminClient, Client, connect, connect_stream
from geopresence.config import Config
from geopresence.shell.aio import collapse_exception_groups
from geopresence.shell.auth import DEFAULT_TOKEN_TTL
from geopresence.shell.http_api import HttpApi
from geopresence.shell.server import RunningServer, Server


def open_memory_connection(server: Server, *, lockstep: bool = False) -> trio.abc.Stream:
    """A client-side stream connected to ``server`` (running) in memory, for tests under
    ``MockClock``: no sockets, so virtual time never jumps while bytes are in flight.

    ``lockstep=True`` gives a transport without buffering (a send completes only when the
    peer reads), so a client that stops reading blocks the server's writer at once: the
    slow-consumer path without megabytes of kernel buffers in the way."""
    pair = trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
    client, server_side = pair()
    server.accept_stream(server_side)
    return client


@attrs.define(eq=False)
class TestServer:
    """A running in-process server with a ready ``admin`` client (in-memory HTTP)."""

    __test__ = False  # not a pytest test class

    running: RunningServer
    admin: AdminClient

    @property
    def config(self) -> Config:
        return self.running.server.config

    @property
    def ws_url(self) -> str:
        return self.running.ws_url

    @property
    def http_url(self) -> str:
        return self.running.http_url

    def now(self) -> float:
        """The server's clock (epoch seconds, or trio time when ``time_origin=0``)."""
        return self.running.server.now()

    def token(self, user: str, ttl: float = DEFAULT_TOKEN_TTL) -> str:
        """A token for ``user`` valid ``ttl`` seconds (by default 24 h, as the server's)."""
        return self.running.mint_token(user, ttl)

    def open_memory_connection(self, *, lockstep: bool = False) -> trio.abc.Stream:
        """A raw client stream to this server in memory (see ``open_memory_connection``):
        for ``geopresence.client.connect_stream`` or a hand-made WebSocket."""
        return open_memory_connection(self.running.server, lockstep=lockstep)

    @asynccontextmanager
    async def connect(
        self,
        user: str,
        device: str = "default",
        *,
        token: str | None = None,
        heartbeat: bool = False,
        memory: bool = True,
    ) -> AsyncIterator[Client]:
        """A session as ``user`` on ``device`` (a token is minted unless the server is
        ``insecure``, or pass your own)."""
        if token is None and not self.config.insecure:
            token = self.token(user)
        as_user = user if token is None else None
        if memory:
            stream = self.open_memory_connection()
            async with connect_stream(
                stream, user=as_user, token=token, device=device, heartbeat=heartbeat
            ) as client:
                yield client
        else:
            async with connect(
                self.ws_url, user=as_user, token=token, device=device, heartbeat=heartbeat
            ) as client:
                yield client

    def stop(self) -> None:
        self.running.stop()


async def _inline(function: Callable[..., Any], *args: Any) -> Any:
    return function(*args)


def _defaults(data_dir: Path) -> Config:
    """``open_server``'s configuration when it is given none (see there)."""
    return Config(
        port=0,
        http_port=0,
        insecure=True,
        data_dir=data_dir,
        time_origin=0.0,
        in_memory=True,
        gc_freeze_interval=0,
        rate_limit=0,
    )


def config_problem(*args: Any, **fields: Any) -> str | None:
    """What is wrong with ``open_server(**fields)``'s configuration, in one line (None:
    nothing): the ``geopresence`` marker's check, before any trio code runs."""
    if args:
        return "takes Config fields as keywords (offline_after=30), not positional arguments"
    known = attrs.fields_dict(Config)
    for name in fields:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            return f"{name} is not a Config field{hint}"
    try:
        attrs.evolve(_defaults(Path(tempfile.gettempdir())), **fields)
    except (ValueError, TypeError) as exc:
        first = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
        return first if isinstance(exc, ValueError) else f"{fields}: {first}"
    return None


@asynccontextmanager
async def open_server(config: Config | None = None, **overrides: Any) -> AsyncIterator[TestServer]:
    """Start a server for the duration of the block and stop it afterwards.

    Without ``config``: free loopback ports, ``insecure=True``, a temporary data dir,
    ``time_origin=0`` (server times equal ``trio.current_time()``) and ``in_memory=True``: no
    journal, whose disk writes in worker threads would let a ``MockClock`` jump while they
    run (the location history's file work then runs inline too). To test durability, pass
    ``in_memory=False`` and your own ``data_dir`` and use the real clock. The per-connection
    rate limit is off (``rate_limit=0``): a test suite's fake backend should not throttle it;
    pass ``rate_limit`` to test it. ``overrides`` replace fields of the config either way.
    """
    with tempfile.TemporaryDirectory(prefix="geopresence-test-") as tmp:
        config = attrs.evolve(config or _defaults(Path(tmp)), **overrides)
        server = Server(config)
        if config.in_memory:
            # The history's file work (the retention check at start, a forget's scrub, an
            # export) inline: a MockClock must not jump while a worker thread runs.
            server.history_keeper.run_sync = _inline
        with collapse_exception_groups():
            async with trio.open_nursery() as nursery:
                running: RunningServer = await nursery.start(server.run)
                transport = httpx.ASGITransport(app=HttpApi(running.server))
                admin = AdminClient(
                    "http://geopresence.test", running.admin_key, transport=transport
                )
                try:
                    yield TestServer(running, admin)
                finally:
                    await admin.aclose()
                    running.stop()
