"""The life of each connection (shell): ``ConnectionHandler`` runs one connection in one
task: the opening handshake and hello (``shell.handshake``); then each batch of frames read
(by the ``ReadPoller``'s task, which calls back for every session) goes to the hub, and what
it produced is flushed (``shell.connections``). The hub never
awaits, so one slow client can only ever fill its own bounded queue. Everything
WebSocket-specific is behind ``shell.transport``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import trio

from geopresence.config import Config
from geopresence.core.broker import ConnId
from geopresence.core.hub import Hub
from geopresence.shell.connections import Connections, OpenConnection
from geopresence.shell.handshake import Handshake, Hello
from geopresence.shell.metrics import Metrics
from geopresence.shell.read_poller import ReadPoller
from geopresence.shell.transport import Closed, Connection, is_disconnect
from geopresence.shell.transport_handshake import accept
from geopresence.wire.client_messages import ClientMessage
from geopresence.wire.errors import CLOSE_GOING_AWAY, ProtocolError
from geopresence.wire.protocol import decode

log = logging.getLogger("geopresence")

TRACEBACK_INTERVAL = 60.0
"""Seconds between two logged tracebacks of failed connection tasks (the rest are counted)."""


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
        self.nursery: trio.Nursery | None = None
        """Where connections' drain tasks run (the server's connection nursery)."""
        self.later: Callable[[ConnId, ClientMessage], bool] | None = None
        """Several nodes: takes a message answered after a Redis read (``ClusterAnswers``)."""
        self.poller: ReadPoller | None = None
        """Reads every session's socket in one task (``shell.read_poller``), if set."""
        self._last_traceback = -math.inf  # time.monotonic() of the last logged traceback
        self._tracebacks_suppressed = 0

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one transport stream (TCP or in-memory) as a WebSocket session."""
        config = self._config
        assert self.nursery is not None, "the server is not running"
        request = None
        try:
            with trio.move_on_after(config.hello_timeout):
                # A drain task, when the connection needs one, runs in the server's nursery
                # (a nursery per connection would cost a kilobyte each) and ends when the
                # stream is closed below.
                request = await accept(
                    self.nursery, stream, max_message_size=config.max_message_bytes
                )
            ws = None if request is None else self._handshake.accept_request(request)
            if ws is not None:
                try:
                    await self._session(ws)
                finally:
                    ws.start_close()  # a bug or the shutdown's cancellation: say goodbye
            if request is not None:
                # Let what is written go out (a refusal's error and close frame), bounded.
                with trio.move_on_after(config.close_timeout) as cleanup:
                    cleanup.shield = True
                    await request.flushed()
        except Exception as exc:
            # Whatever one connection does, the server and other connections go on.
            if is_disconnect(exc):
                log.debug("connection ended: %r", exc)
            else:
                self._metrics.connection_failures += 1
                self._log_bug("connection task failed")
        finally:
            if request is not None:
                request.detach()  # before the close: its socket's number may be reused
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

    async def _greet(self, ws: Connection) -> Hello | None:
        if self._stopping():
            # Accepted while shutting down: tell it to go elsewhere at once.
            self._handshake.close_quietly(ws, CLOSE_GOING_AWAY)
            with trio.move_on_after(self._config.close_timeout):
                await ws.close()
            return None
        connections = self._connections
        connections.greeting.add(ws)  # until then a drain closes it (1001)
        try:
            hello = await self._handshake.read_hello(ws)
            if hello is None or not await self._handshake.hold_in_cluster(ws, hello.user):
                return None
            return hello
        finally:
            connections.greeting.discard(ws)
            connections.settled()

    async def _session(self, ws: Connection) -> None:
        hello = await self._greet(ws)  # with several nodes, its user's friends are held
        if hello is None:
            return
        user = hello.user
        if self._stopping() or not ws.open:
            # Not open: the transport failed it, e.g. a message after the hello, in the
            # same read, was too big (1009).
            self._handshake.count_transport_close(ws)
            self._handshake.released_in_cluster(user)
            return
        try:
            await self._serve_session(ws, hello)
        finally:
            self._handshake.released_in_cluster(user)

    async def _serve_session(self, ws: Connection, hello: Hello) -> None:
        user, device, request_id = hello.user, hello.device, hello.request_id
        hub = self._hub
        connections = self._connections
        c = connections.open(ws)
        conn = c.conn
        try:
            if not await self._handshake.own_in_cluster(ws, user):
                return
            since = await self._handshake.alive_in_cluster(ws, user, device)
            if since is None:
                return
            async with self._handshake.covering_in_cluster(user):
                hub.open_session(conn, user, device, self._now(), request_id, since)
            log.debug("conn %d: session opened: user %s, device %s", conn, user, device)
            await self._handshake.view_in_cluster(user)
            self._deadline_moved()
            ws.admit_ping = lambda: (
                c.close_request is None and hub.admit(c.conn, self._now(), answer=False)
            )
            with trio.CancelScope() as scope:
                c.scope = scope
                if c.close_request is not None:  # closed while opening (e.g. replaced)
                    scope.deadline = trio.current_time() + self._config.close_timeout
                self._handle_batch(c, hello.rest)
                await self._reader(ws, c)
        finally:
            connections.forget(conn)
            hub.close_session(conn)
            self._handshake.left_cluster(user)  # whatever own_in_cluster returned
            if log.isEnabledFor(logging.DEBUG):
                code = ws.close_code
                if code is None and c.close_request is not None:
                    code = c.close_request[0]
                log.debug(
                    "conn %d: session closed: user %s, device %s, close code %s",
                    conn, user, device, 1006 if code is None else int(code),
                )  # fmt: skip

    async def _reader(self, ws: Connection, c: OpenConnection) -> None:
        """Hand each batch of frames to the hub, then write what it produced: in the
        ``poller``'s task if there is one (this task then waits for the end), else here."""
        fd = ws.fileno
        if self.poller is not None and fd is not None:
            await self._polled(ws, c, self.poller, fd)
            return
        while True:
            try:
                frames = await ws.receive()
            except Closed:
                self._handshake.count_transport_close(ws)
                return
            self._handle_batch(c, frames)

    async def _polled(self, ws: Connection, c: OpenConnection, poller: ReadPoller, fd: int) -> None:
        ended = trio.Event()
        failure: list[Exception] = []

        def handle(frames: list[str | bytes]) -> None:
            while frames:  # then what was read with them but not returned yet
                self._handle_batch(c, frames)
                frames = ws.buffered()

        def readable() -> None:  # in the poller's task
            try:
                handle(ws.read_now())
            except Closed:
                poller.unregister(fd)
                ended.set()

        def failed(exc: Exception) -> None:  # the poller has unregistered fd
            failure.append(exc)  # raised below, in this session's task
            ended.set()

        try:
            handle(ws.buffered())  # what came with the hello's read
            # Once the poller has stopped (the server is stopping), nothing is registered
            # and this task waits for its cancellation.
            poller.register(fd, readable, failed)
            await ended.wait()
        except Closed:
            pass  # the end came with the hello's read: counted below, as any end
        finally:
            poller.unregister(fd)  # before the socket is closed: its number is reused
        if failure:
            raise failure[0]
        self._handshake.count_transport_close(ws)

    def _handle_batch(self, c: OpenConnection, frames: list[str | bytes]) -> None:
        if not frames:
            return
        # ``Connections.batch``, inline: this runs for every read of every connection.
        connections = self._connections
        connections.holding = True
        try:
            if len(frames) > 1:
                self._handle_several(c, frames)
            elif c.close_request is None:  # closing: what the peer says now is not read
                self._handle(c, frames[0])
        finally:
            connections.holding = False
            connections.flush()

    def _handle_several(self, c: OpenConnection, frames: list[str | bytes]) -> None:
        # Frames read at once (a client running ahead of the server): of consecutive moves,
        # only the newest reaches friends (``Nearby.defer_moves``).
        nearby = self._hub.nearby
        nearby.defer_moves()
        try:
            for frame in frames:
                if c.close_request is not None:
                    return  # closing: what the peer says now is not read
                self._handle(c, frame)
        finally:
            try:
                nearby.show_moves()
            except Exception:
                # A bug must cost one reply, never the server or another client.
                self._log_bug(f"conn {c.conn}: internal error showing its moves")
                self._hub.reply_error(c.conn, ProtocolError("internal", "internal error"))

    def _handle(self, c: OpenConnection, frame: str | bytes) -> None:
        hub = self._hub
        self._metrics.messages_in += 1
        now = self._now()
        message: ClientMessage | None = None
        try:
            try:
                message = decode(frame)
            except ProtocolError as exc:
                hub.activity(c.conn, now)
                if hub.admit(c.conn, now, exc.re):
                    hub.reply_error(c.conn, exc)
                return
            if not hub.admit(c.conn, now, getattr(message, "id", None)):
                hub.activity(c.conn, now)
                return
            if self.later is not None:
                hub.settle(message)  # what the moves before it make goes first
                if self.later(c.conn, message):
                    return
            hub.handle(c.conn, message, now)
            self._deadline_moved()
        except Exception:
            # A bug must cost one reply, never the server or another client: a bug in
            # handling the message, or in what an error reply runs first (the checks of
            # moves read before it, ``Sessions.before_error``).
            what = "a frame" if message is None else type(message).__name__
            self._log_bug(f"conn {c.conn}: internal error handling {what}")
            hub.reply_error(
                c.conn,
                ProtocolError("internal", "internal error", getattr(message, "id", None)),
            )
