"""The connections (shell): the hub's ``Sink`` and the life of each connection.

``Connections`` is the Sink side: the table of live sessions, each with its bounded
``Outbox``; ``send`` queues and wakes the connection's writer, ``close`` asks it to close
after what is queued, and a full queue makes the client a slow consumer (4008). It also
keeps the drain bookkeeping the shutdown waits on.

``ConnectionHandler`` runs one connection: the opening handshake and hello
(``shell.handshake``), then a reader (frames -> hub) and a writer (outbox -> socket). The hub
never awaits, so one slow client can only ever fill its own bounded queue. Everything
WebSocket-specific is behind ``shell.transport``.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable

import attrs
import trio

from geopresence.config import Config
from geopresence.core.broker import ConnId
from geopresence.core.hub import Hub
from geopresence.model.text import utf8_len
from geopresence.shell.handshake import Handshake
from geopresence.shell.metrics import Metrics
from geopresence.shell.transport import Closed, Connection, accept, is_disconnect
from geopresence.wire.errors import CLOSE_GOING_AWAY, CLOSE_SLOW_CONSUMER, ProtocolError, RequestId
from geopresence.wire.outbox import Outbox, Outgoing
from geopresence.wire.protocol import decode

log = logging.getLogger("geopresence")

TRACEBACK_INTERVAL = 60.0
"""Seconds between two logged tracebacks of failed connection tasks (the rest are counted)."""


@attrs.define(eq=False)
class OpenConnection:
    """Shell-side state of one live session."""

    conn: ConnId
    outbox: Outbox
    wakeup: trio.Event = attrs.Factory(trio.Event)
    close_request: tuple[int, str] | None = None
    send_scope: trio.CancelScope | None = None


class Connections:
    """The hub's Sink, the table of live sessions, and the drain bookkeeping."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self.by_id: dict[ConnId, OpenConnection] = {}
        """Live sessions (after a valid hello), by the hub's connection id."""
        self.greeting: set[Connection] = set()
        """Connections accepted but not yet through their hello."""
        self._ids = itertools.count(1)
        self._drained = trio.Event()
        metrics.gauge("connections", "Open WebSocket sessions.", lambda: len(self.by_id))

    def __len__(self) -> int:
        return len(self.by_id)

    # ------------------------------------------------------------------ Sink (for the hub)

    def send(self, conn: ConnId, message: Outgoing) -> None:
        """Queue a frame; a full queue makes the client a slow consumer (closed 4008)."""
        c = self.by_id.get(conn)
        if c is None or c.close_request is not None:
            return
        before = c.outbox.coalesced
        if not c.outbox.push(message):
            self._slow_consumer(c)
            return
        self._metrics.coalesced += c.outbox.coalesced - before
        c.wakeup.set()

    def close(self, conn: ConnId, code: int, reason: str) -> None:
        """Close after the frames already queued (the hub has forgotten ``conn``)."""
        c = self.by_id.get(conn)
        if c is not None and c.close_request is None:
            c.close_request = (code, reason)
            self._bound_send(c)
            c.wakeup.set()

    def _bound_send(self, c: OpenConnection) -> None:
        """A send already in progress gets ``close_timeout`` more, then the transport is cut:
        a peer that stopped reading must not keep a closed session alive."""
        if c.send_scope is not None:
            c.send_scope.deadline = min(
                c.send_scope.deadline, trio.current_time() + self._config.close_timeout
            )

    def _slow_consumer(self, c: OpenConnection) -> None:
        log.warning("conn %d: send queue full (%d frames), closing 4008", c.conn, len(c.outbox))
        c.outbox.pop_all()  # nothing more will be sent; free the memory now
        c.close_request = (CLOSE_SLOW_CONSUMER, "slow consumer")
        self._bound_send(c)
        c.wakeup.set()

    # ------------------------------------------------------------------ the table

    def open(self) -> OpenConnection:
        """A new live session with an empty outbox (its id is the hub's ``conn``)."""
        config = self._config
        conn = next(self._ids)
        c = OpenConnection(
            conn, Outbox(config.queue_size, config.state_queue_size, config.queue_bytes)
        )
        self.by_id[conn] = c
        self._metrics.connections_total += 1
        return c

    def forget(self, conn: ConnId) -> None:
        del self.by_id[conn]
        self.settled()

    def settled(self) -> None:
        """A connection ended or got through its hello: wake the drain if none is left."""
        if not self.by_id and not self.greeting:
            self._drained.set()

    async def wait_drained(self) -> None:
        """Return once no connection is left (sessions and greetings; unbounded)."""
        while self.by_id or self.greeting:
            self._drained = trio.Event()
            await self._drained.wait()


class ConnectionHandler:
    """Serves each transport stream, from the opening handshake to the close.

    ``deadline_moved`` is called after each message the hub handled (the reaper's O(1)
    check); ``stopping`` tells whether a graceful shutdown has begun."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        hub: Hub,
        connections: Connections,
        handshake: Handshake,
        now: Callable[[], float],
        *,
        deadline_moved: Callable[[], None],
        stopping: Callable[[], bool],
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._hub = hub
        self._connections = connections
        self._handshake = handshake
        self._now = now
        self._deadline_moved = deadline_moved
        self._stopping = stopping
        self._last_traceback = -math.inf  # time.monotonic() of the last logged traceback
        self._tracebacks_suppressed = 0

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one transport stream (TCP or in-memory) as a WebSocket session."""
        config = self._config
        try:
            async with trio.open_nursery() as nursery:
                with trio.move_on_after(config.hello_timeout) as handshake_scope:
                    request = await accept(
                        nursery, stream, max_message_size=config.max_message_bytes
                    )
                if handshake_scope.cancelled_caught:
                    await trio.aclose_forcefully(stream)
                    nursery.cancel_scope.cancel()
                    return
                ws = await self._handshake.accept_request(request)
                if ws is not None:
                    try:
                        await self._session(ws)
                    finally:
                        with trio.move_on_after(config.close_timeout) as cleanup:
                            cleanup.shield = True
                            await ws.close()
                nursery.cancel_scope.cancel()
        except Exception as exc:
            # Whatever one connection does, the server and other connections go on.
            if is_disconnect(exc):
                log.debug("connection ended: %r", exc)
            else:
                self._metrics.connection_failures += 1
                self._log_bug("connection task failed")
        finally:
            await trio.aclose_forcefully(stream)

    def _log_bug(self, what: str) -> None:
        """Log the exception being handled (a bug, not a peer going away) with its
        traceback, at most once per ``TRACEBACK_INTERVAL``: a peer that repeats whatever
        triggers it must not fill the log. Callers count every occurrence in a metric."""
        now = time.monotonic()
        if now - self._last_traceback < TRACEBACK_INTERVAL:
            self._tracebacks_suppressed += 1
            return
        suppressed, self._tracebacks_suppressed = self._tracebacks_suppressed, 0
        self._last_traceback = now
        log.exception("%s (%d more errors since the last traceback logged)", what, suppressed)

    async def _greet(self, ws: Connection) -> tuple[str, str, RequestId] | None:
        if self._stopping():
            # Accepted while shutting down: tell it to go elsewhere at once.
            await self._handshake.close_quietly(ws, CLOSE_GOING_AWAY)
            return None
        connections = self._connections
        connections.greeting.add(ws)
        try:
            return await self._handshake.read_hello(ws)
        finally:
            connections.greeting.discard(ws)
            connections.settled()

    async def _session(self, ws: Connection) -> None:
        hello = await self._greet(ws)
        if hello is None:
            return
        user, device, request_id = hello
        hub = self._hub
        c = self._connections.open()
        conn = c.conn
        try:
            await self._handshake.alive_in_cluster(user, device)
            hub.open_session(conn, user, device, self._now(), request_id)
            log.debug("conn %d: session opened: user %s, device %s", conn, user, device)
            self._deadline_moved()
            ws.admit_ping = lambda: (
                c.close_request is None and hub.admit(c.conn, self._now(), answer=False)
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, ws, c, nursery.cancel_scope)
                await self._reader(ws, c)
                if c.close_request is None:
                    nursery.cancel_scope.cancel()  # the peer went away: stop the writer
                # else the writer is closing: let it finish the close handshake (bounded)
        finally:
            self._connections.forget(conn)
            hub.close_session(conn)
            if log.isEnabledFor(logging.DEBUG):
                code = ws.close_code
                if code is None and c.close_request is not None:
                    code = c.close_request[0]
                log.debug(
                    "conn %d: session closed: user %s, device %s, close code %s",
                    conn, user, device, 1006 if code is None else int(code),
                )  # fmt: skip

    async def _reader(self, ws: Connection, c: OpenConnection) -> None:
        hub = self._hub
        limit = self._config.max_message_bytes
        while True:
            try:
                frame = await ws.receive()
            except Closed:
                self._handshake.count_1009(ws)
                return
            self._metrics.messages_in += 1
            now = self._now()
            # The transport limits characters; the contract limits UTF-8 bytes.
            if len(frame) * 4 > limit and utf8_len(frame) > limit:
                hub.close_session(c.conn)
                await self._handshake.too_big(ws)
                return
            try:
                message = decode(frame)
            except ProtocolError as exc:
                hub.activity(c.conn, now)
                if hub.admit(c.conn, now, exc.re):
                    hub.reply_error(c.conn, exc)
                continue
            if not hub.admit(c.conn, now, getattr(message, "id", None)):
                hub.activity(c.conn, now)
                continue
            try:
                hub.handle(c.conn, message, now)
                self._deadline_moved()
            except Exception:
                # A bug must cost one reply, never the server or another client.
                self._log_bug(f"conn {c.conn}: internal error handling {type(message).__name__}")
                hub.reply_error(
                    c.conn,
                    ProtocolError("internal", "internal error", getattr(message, "id", None)),
                )

    async def _writer(
        self, ws: Connection, c: OpenConnection, session_scope: trio.CancelScope
    ) -> None:
        """Drain the outbox to the socket; on a close request, close after what is queued.

        A send that a slow consumer keeps blocked past ``close_timeout`` after its queue
        overflowed is abandoned and the transport is closed outright: the frame boundary is
        lost, so no close frame can follow it."""
        try:
            while True:
                if not len(c.outbox) and c.close_request is None:
                    c.wakeup = trio.Event()
                    await c.wakeup.wait()
                batch = c.outbox.pop_all()
                with trio.CancelScope() as scope:
                    c.send_scope = scope
                    await ws.send_batch([item.text for item in batch])
                    self._metrics.messages_out += len(batch)
                c.send_scope = None
                if scope.cancelled_caught:
                    code = c.close_request[0] if c.close_request else CLOSE_SLOW_CONSUMER
                    self._metrics.closes[code] += 1
                    await ws.abort()
                    session_scope.cancel()
                    return
                if c.close_request is not None and not len(c.outbox):
                    code, reason = c.close_request
                    self._metrics.closes[code] += 1
                    with trio.move_on_after(self._config.close_timeout):
                        await ws.close(code, reason)
                    session_scope.cancel()
                    return
        except Closed:
            session_scope.cancel()
