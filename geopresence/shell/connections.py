"""The connections (shell): the hub's ``Sink``.

``Connections`` is the table of live sessions, each with its bounded ``Outbox``; ``send``
queues and marks the connection dirty, ``flush`` writes every dirty connection with one
non-blocking write each (no task switch per delivery), ``close`` asks for a close after
what is queued, and a full queue makes the client a slow consumer (4008). It also keeps the
drain bookkeeping the shutdown waits on. Each connection's life is
``shell.connection_handler``'s.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import attrs
import trio

from geopresence.config import Config
from geopresence.core.broker import ConnId
from geopresence.shell.metrics import Metrics
from geopresence.shell.transport import Connection, text_frame
from geopresence.wire.errors import CLOSE_REASONS, CLOSE_SLOW_CONSUMER
from geopresence.wire.outbox import Outbox
from geopresence.wire.outgoing import Outgoing

log = logging.getLogger("geopresence")


@attrs.define(eq=False)
class OpenConnection:
    """Shell-side state of one live session."""

    conn: ConnId
    ws: Connection
    outbox: Outbox
    dirty: bool = False
    """In ``Connections``' list of connections to write out at the next flush."""
    first: Outgoing | None = None
    """The one frame queued while nothing else is (the common case: a delivery to an idle
    connection), kept here rather than in ``outbox``: a delivery then touches neither the
    outbox nor its structures, whose memory is cold among thousands of connections."""
    backlog: bool = False
    """``outbox`` may hold frames (it was pushed to since it was last emptied)."""
    close_request: tuple[int, str] | None = None
    scope: trio.CancelScope | None = None
    """The session's reading scope: its deadline bounds a close in progress."""


class Connections:
    """The hub's Sink, the table of live sessions, the writes, and the drain bookkeeping.

    ``send`` queues a frame in the connection's bounded outbox (a batch's only frame for
    it waits beside, in ``OpenConnection.first``) and marks it dirty; ``flush`` writes each
    dirty connection's frames with one non-blocking write. The reader of a
    connection flushes after each batch of input it handled (``holding``); anything else
    (timers, the HTTP API, other nodes) is flushed by ``run``, woken once per batch."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self.by_id: dict[ConnId, OpenConnection] = {}
        """Live sessions (after a valid hello), by the hub's connection id."""
        self.greeting: set[Connection] = set()
        """Connections accepted but not yet through their hello."""
        self._ids = itertools.count(1)
        self._drained = trio.Event()
        self._dirty: list[OpenConnection] = []
        self.holding = False
        """True while a reader handles a batch: it flushes when done."""
        self._flush_wakeup = trio.Event()
        metrics.gauge("connections", "Open WebSocket sessions.", lambda: len(self.by_id))

    def __len__(self) -> int:
        return len(self.by_id)

    # ------------------------------------------------------------------ Sink (for the hub)

    def send(self, conn: ConnId, message: Outgoing) -> None:
        """Queue a frame; a full queue makes the client a slow consumer (closed 4008)."""
        c = self.by_id.get(conn)
        if c is None or c.close_request is not None:
            return
        if not c.dirty:
            # Nothing else queued in this batch (``OpenConnection.first``); frames waiting
            # in the outbox of a parked connection stay ahead of it (see ``write_out``).
            c.first = message
            self._mark(c)
            return
        first = c.first
        if first is not None:  # a second frame: both go through the outbox, in order
            c.first = None
            self._push(c, first)
            if c.close_request is not None:
                return  # it did not fit (4008): nothing may follow what was dropped
        self._push(c, message)
        if not c.dirty:
            self._mark(c)

    def _push(self, c: OpenConnection, message: Outgoing) -> None:
        outbox = c.outbox
        before = outbox.coalesced
        c.backlog = True
        if not outbox.push(message):
            self._slow_consumer(c)
            return
        if outbox.coalesced != before:
            self._metrics.coalesced += outbox.coalesced - before

    def _mark(self, c: OpenConnection) -> None:
        c.dirty = True
        self._dirty.append(c)
        if not self.holding and len(self._dirty) == 1:
            self._flush_wakeup.set()

    def close(self, conn: ConnId, code: int, reason: str) -> None:
        """Close after the frames already queued (the hub has forgotten ``conn``)."""
        c = self.by_id.get(conn)
        if c is not None and c.close_request is None:
            if code == CLOSE_SLOW_CONSUMER:  # rate limit abuse, or replies waiting overflowed
                log.warning("conn %d: closing 4008 (%s)", conn, reason)
            self._request_close(c, code, reason)

    def _request_close(self, c: OpenConnection, code: int, reason: str) -> None:
        """The close frame follows what is queued; the peer then has ``close_timeout`` to
        answer (and a connection that stopped reading to take its bytes) before the
        transport is cut: a peer must not keep a closed session alive."""
        c.close_request = (code, reason)
        self._metrics.closes[code] += 1
        if c.scope is not None:
            c.scope.deadline = min(
                c.scope.deadline, trio.current_time() + self._config.close_timeout
            )
        if not c.dirty:
            self._mark(c)

    def _slow_consumer(self, c: OpenConnection) -> None:
        log.warning("conn %d: send queue full (%d frames), closing 4008", c.conn, len(c.outbox))
        c.outbox.pop_all()  # nothing more will be sent; free the memory now
        self._request_close(c, CLOSE_SLOW_CONSUMER, CLOSE_REASONS[CLOSE_SLOW_CONSUMER])

    # ------------------------------------------------------------------ writing

    def flush(self) -> None:
        """Write out every dirty connection (never blocks; see ``write_out``)."""
        while self._dirty:
            dirty, self._dirty = self._dirty, []
            for c in dirty:
                c.dirty = False
                self.write_out(c)

    def write_out(self, c: OpenConnection) -> None:
        """Write ``c``'s queued frames in one write, then its close frame if one was asked
        for. While the socket is full (bytes parked) frames stay in the outbox, where newer
        state still replaces older; the transport calls this again once it has drained."""
        ws = c.ws
        first, c.first = c.first, None
        if first is not None and not c.backlog and not ws.parked:
            items = [first]  # the common case: one frame, and the outbox never touched
        else:
            if first is not None:
                self._push(c, first)  # it waits with the others
            if ws.parked:
                return
            items = c.outbox.pop_all() if c.backlog else []
            c.backlog = False
        if items:
            frames = []
            for item in items:
                framed = item.framed
                if framed is None:
                    framed = item.framed = text_frame(item.text.encode())
                frames.append(framed)
            ws.write_frames(frames[0] if len(frames) == 1 else b"".join(frames))
            self._metrics.messages_out += len(items)
        if c.close_request is not None:
            ws.start_close(*c.close_request)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Hold the writes while a batch of input is handled (a connection's frames,
        envelopes from other nodes), then write everything it queued: each connection
        once, and no task woken for it."""
        holding, self.holding = self.holding, True
        try:
            yield
        finally:
            self.holding = holding
            if not holding:
                self.flush()

    async def run(self) -> None:
        """Flush what was queued outside a reader's batch, once per batch (unbounded)."""
        while True:
            await self._flush_wakeup.wait()
            self._flush_wakeup = trio.Event()
            self.flush()

    # ------------------------------------------------------------------ the table

    def open(self, ws: Connection) -> OpenConnection:
        """A new live session with an empty outbox (its id is the hub's ``conn``)."""
        config = self._config
        conn = next(self._ids)
        c = OpenConnection(
            conn, ws, Outbox(config.queue_size, config.state_queue_size, config.queue_bytes)
        )
        ws.on_drained = lambda: self.write_out(c)
        self.by_id[conn] = c
        self._metrics.connections_total += 1
        return c

    def forget(self, conn: ConnId) -> None:
        c = self.by_id.pop(conn)
        c.ws.on_drained = None
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
