"""The trio shell: listeners, one task group per connection, the expiry reaper.

Everything here reads, calls the hub (``geopresence.core.hub``) with ``now``, and writes. Each
connection has a reader (frames -> hub) and a writer (its ``Outbox`` -> socket); the hub
never awaits, so one slow client can only ever fill its own bounded queue.
"""

from __future__ import annotations

import errno
import gc
import itertools
import logging
import math
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import attrs
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from geopresence.cluster.redis_state import RedisJournal
from geopresence.config import Config
from geopresence.core.broker import Broker, ConnId, Deliver, MemoryBroker
from geopresence.core.hub import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOO_BIG,
    Hub,
    HubSettings,
)
from geopresence.core.locations import Location
from geopresence.core.store import MemoryStore
from geopresence.shell import logs
from geopresence.shell.auth import AuthError, resolve_admin_key, resolve_secret, verify_token
from geopresence.shell.clock import ServerClock
from geopresence.shell.http_api import serve_http
from geopresence.shell.metrics import Metrics
from geopresence.shell.push import PushNotifier
from geopresence.shell.status import StatusLine
from geopresence.storage.datadir import DataDirLock, state_dir, write_snapshot
from geopresence.storage.history import HistoryWriter, history_dir
from geopresence.storage.journal_file import FileJournal
from geopresence.storage.recovery import rebuild, recover
from geopresence.storage.snapshot import capture
from geopresence.wire.outbox import Outbox, Outgoing
from geopresence.wire.protocol import Error, Hello, ProtocolError, RequestId, decode, encode

if TYPE_CHECKING:
    from geopresence.cluster.link import ClusterLink
from geopresence.shell.transport import ServerWebSocket, accept_stream, send_texts

log = logging.getLogger("geopresence")

WS_PATH = "/ws"
TRACEBACK_INTERVAL = 60.0
"""Seconds between two logged tracebacks of failed connection tasks (the rest are counted)."""
GC_THRESHOLDS = (20_000, 50, 100)
"""``gc.set_threshold`` of a serving process (see ``Server._gc_loop``)."""


@attrs.define(eq=False)
class _Connection:
    """Shell-side state of one live session."""

    conn: ConnId
    outbox: Outbox
    wakeup: trio.Event = attrs.Factory(trio.Event)
    close_request: tuple[int, str] | None = None
    send_scope: trio.CancelScope | None = None


class Server:
    """One geopresence server: the hub plus the I/O around it.

    Create it, then ``await nursery.start(server.run)``; or use ``serve(config)``.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        # --in-memory writes nothing to the data dir but the location history.
        in_memory = config.in_memory and config.redis is None and not config.redis_cluster
        self.secret = resolve_secret(config.secret, config.data_dir, in_memory=in_memory)
        self.admin_key: str | None = (
            None
            if config.insecure
            else resolve_admin_key(config.admin_key, config.data_dir, in_memory=in_memory)
        )
        settings = HubSettings.from_config(config)
        self.history = HistoryWriter(history_dir(config.data_dir), config.history_max_bytes)
        self._history_dirty = trio.Event()
        self.push = PushNotifier(config)
        self.cluster: ClusterLink | None = None
        """This node's Redis side when it is one of several (``--redis``)."""
        self.journal: FileJournal | None = None
        acks: FileJournal | RedisJournal | None = None
        broker_factory: Callable[[Deliver], Broker] = MemoryBroker
        if config.clustered:
            from geopresence.cluster.link import ClusterLink, connect  # imports coredis

            self.cluster = ClusterLink(
                connect(config),
                node_id=config.node_id,
                sharded=bool(config.redis_cluster),
                prefix=config.redis_prefix,
                # Every node must accept the others' tokens and admin key (an --insecure
                # node, for development, takes no part in the check).
                shared_keys={}
                if config.insecure
                else {"secret": self.secret, "admin_key": self.admin_key or ""},
            )
            self.cluster.presence.sweep_interval = config.redis_sweep_interval
            broker_factory = self.cluster.make_broker
            acks = self.cluster.journal
        elif not config.in_memory:
            self.journal = acks = FileJournal(config.data_dir, config.fsync)
        self._acks = acks
        """What acks wait for: the disk journal, Redis, or nothing (--in-memory)."""
        if acks is not None:
            acks.on_durable = self._journal_durable
        self.hub = Hub(
            settings,
            MemoryStore(),
            self,
            broker_factory=broker_factory,
            errors=self.metrics.errors,
            history=self._record_location,
            journal=acks,
            push=self.push.submit,
            replicator=self.cluster,
        )
        self.status = StatusLine(
            self.metrics,
            lambda: len(self._conns),
            self.hub.online_count,
            None if acks is None else lambda: acks.last_seq - acks.durable_seq,
        )
        """The status line logged once a minute (``geopresence.shell.status``)."""
        self._durable_waiters: list[tuple[int, trio.Event]] = []
        self._snapshot_lock = trio.Lock()
        self._snapshot_seq = -1
        self.last_snapshot: dict[str, object] | None = None
        """What the last snapshot wrote (path, bytes, seq, counts, seconds), for the API."""
        self._lock: DataDirLock | None = None
        self._conns: dict[ConnId, _Connection] = {}
        self._ids = itertools.count(1)
        self._reaper_wakeup = trio.Event()
        self._reaper_target = math.inf
        self._stop_requested = trio.Event()
        self._conn_nursery: trio.Nursery | None = None
        self._no_connections = trio.Event()
        self._greeting: set[WebSocketConnection] = set()
        self._last_traceback = -math.inf  # time.monotonic() of the last logged traceback
        self._tracebacks_suppressed = 0
        self.clock: ServerClock | None = None
        self.metrics.gauge("connections", "Open WebSocket sessions.", lambda: len(self._conns))
        self.metrics.counter(
            "log_records_dropped_total",
            "Log records dropped because the log's reader was not keeping up.",
            lambda: [("", logs.dropped_records())],
        )
        self.metrics.gauge(
            "users_online", "Users online now (in the whole cluster with --redis).",
            lambda: self.hub.online_count(),
        )  # fmt: skip
        nearby = self.hub.nearby
        self.metrics.gauge(
            "locations", "Users with a live location in the cache.", lambda: len(nearby.locations)
        )
        self.metrics.counter(
            "location_updates_total",
            "Location updates by result (ignored: older than the stored one).",
            lambda: [
                ('{result="accepted"}', nearby.updates_accepted),
                ('{result="ignored"}', nearby.updates_ignored),
            ],
        )
        hub = self.hub
        self.metrics.counter(
            "rate_limited_total",
            "Client messages refused by the per-connection rate limit.",
            lambda: [("", hub.rate_limited)],
        )
        chat = self.hub.chat
        self.metrics.gauge(
            "chat_messages_stored", "Chat messages held in the store.", lambda: len(chat.store)
        )
        self.metrics.counter(
            "chat_messages_total",
            "Chat sends by result (duplicate: a resend answered with the stored message).",
            lambda: [('{result="stored"}', chat.sent), ('{result="duplicate"}', chat.duplicates)],
        )
        push = self.push
        self.metrics.counter(
            "pushes_total",
            "Push hook calls for recipients without a connected device, by outcome.",
            lambda: [
                (f'{{result="{result}"}}', push.results[result])
                for result in ("delivered", "failed", "dropped", "logged")
            ],
        )
        self.metrics.gauge("push_queue", "Pushes waiting for the webhook.", lambda: push.queued)
        journal = self.journal
        if journal is not None:
            self.metrics.counter(
                "journal_records_total",
                "Records appended to the journal.",
                lambda: [("", journal.last_seq)],
            )
            self.metrics.counter(
                "journal_fsyncs_total",
                "fsync calls on the journal.",
                lambda: [("", journal.fsyncs)],
            )
            self.metrics.counter(
                "journal_bytes_total",
                "Bytes written to the journal.",
                lambda: [("", journal.bytes_written)],
            )
            self.metrics.counter(
                "journal_write_errors_total",
                "Failed journal writes or fsyncs (each retried; acks wait).",
                lambda: [("", journal.write_errors)],
            )
        self.metrics.counter(
            "history_records_total",
            "Location records appended to the history files.",
            lambda: [("", self.history.records)],
        )

    # ------------------------------------------------------------------ Sink (for the hub)

    def send(self, conn: ConnId, message: Outgoing) -> None:
        """Queue a frame; a full queue makes the client a slow consumer (closed 4008)."""
        c = self._conns.get(conn)
        if c is None or c.close_request is not None:
            return
        before = c.outbox.coalesced
        if not c.outbox.push(message):
            self._slow_consumer(c)
            return
        self.metrics.coalesced += c.outbox.coalesced - before
        c.wakeup.set()

    def close(self, conn: ConnId, code: int, reason: str) -> None:
        """Close after the frames already queued (the hub has forgotten ``conn``)."""
        c = self._conns.get(conn)
        if c is not None and c.close_request is None:
            c.close_request = (code, reason)
            self._bound_send(c)
            c.wakeup.set()

    def _bound_send(self, c: _Connection) -> None:
        """A send already in progress gets ``close_timeout`` more, then the transport is cut:
        a peer that stopped reading must not keep a closed session alive."""
        if c.send_scope is not None:
            c.send_scope.deadline = min(
                c.send_scope.deadline, trio.current_time() + self.config.close_timeout
            )

    def _record_location(self, user: str, location: Location) -> None:
        try:
            self.history.append(user, location)
        except OSError as exc:
            self._history_failed(exc)
            return
        self._history_dirty.set()

    def _history_failed(self, exc: OSError) -> None:
        # The history is a record, not the service: a full or broken disk costs history
        # lines (counted and logged), never a location update or the server.
        self.metrics.history_errors += 1
        if self.metrics.history_errors in (1, 10, 100) or self.metrics.history_errors % 1000 == 0:
            log.error(
                "location history write failed (%d so far): %s", self.metrics.history_errors, exc
            )

    async def _flush_history(self) -> None:
        """Flush the history file at most ``history_flush_interval`` after a write."""
        while True:
            await self._history_dirty.wait()
            await trio.sleep(self.config.history_flush_interval)
            self._history_dirty = trio.Event()
            try:
                self.history.flush()
            except OSError as exc:
                self._history_failed(exc)

    def _slow_consumer(self, c: _Connection) -> None:
        log.warning("conn %d: send queue full (%d frames), closing 4008", c.conn, len(c.outbox))
        c.outbox.pop_all()  # nothing more will be sent; free the memory now
        c.close_request = (CLOSE_SLOW_CONSUMER, "slow consumer")
        self._bound_send(c)
        c.wakeup.set()

    # ------------------------------------------------------------------ running

    @property
    def persistence(self) -> Literal["memory", "disk", "redis"]:
        """Where the durable state is kept."""
        if self.cluster is not None:
            return "redis"
        return "memory" if self.journal is None else "disk"

    async def flush_cluster_presence(self) -> None:
        """Multi-node: return once this node's presence reports reached Redis."""
        if self.cluster is not None:
            await self.cluster.presence.flush()

    def now(self) -> float:
        assert self.clock is not None, "the server is not running"
        return self.clock.now()

    async def run(
        self, *, task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on the configured ports and serve until ``stop()``; then close every
        connection with 1001 (waiting up to ``drain_timeout``) and return."""

        config = self.config
        self.clock = ServerClock(config.time_origin)
        try:
            if self.journal is not None:
                await self._recover(self.journal)
            elif self.cluster is not None:
                # No journal here, but the location history is per node: one per data dir.
                self._lock = DataDirLock(config.data_dir)
            elif any(state_dir(config.data_dir).glob("snapshot-*.snap")):
                log.warning(
                    "--in-memory: the state saved in %s is not loaded (and not changed)",
                    state_dir(config.data_dir),
                )
            await self._serve(task_status)
        finally:
            try:
                self.history.close()
            except OSError as exc:
                self._history_failed(exc)
            if self._lock is not None:
                self._lock.close()

    # ------------------------------------------------------------------ durability

    async def _recover(self, journal: FileJournal) -> None:
        """Lock the data dir, load the newest snapshot, replay the journal after it, and
        open a new journal segment. Problems (a torn tail) are logged, never fatal."""
        data_dir = self.config.data_dir
        self._lock = DataDirLock(data_dir)
        started = trio.current_time()
        recovered = await trio.to_thread.run_sync(lambda: recover(data_dir, repair=True))
        for problem in recovered.problems:
            log.warning("recovery: %s", problem)
        hub = self.hub
        rebuild(hub.state, recovered)
        if recovered.snapshot is not None:
            self._snapshot_seq = recovered.snapshot.journal_seq
        await trio.to_thread.run_sync(journal.open, recovered.last_seq)
        hub.last_seq = recovered.last_seq
        if recovered.snapshot is not None or recovered.records:
            log.info(
                "restored %d messages, %d friendships, %d groups from %s "
                "(snapshot %s + %d journal records) in %.2f s",
                len(hub.chat.store),
                sum(1 for _ in hub.store.friendships()),
                sum(1 for _ in hub.store.groups()),
                data_dir,
                recovered.snapshot_path.name if recovered.snapshot_path else "none",
                len(recovered.records),
                trio.current_time() - started,
            )

    def _journal_durable(self) -> None:
        """The journal advanced: release acks and HTTP responses waiting for it."""
        assert self._acks is not None
        self.hub.journal_advanced(self.now())
        durable = self._acks.durable_seq
        if self._durable_waiters:
            waiting = []
            for seq, event in self._durable_waiters:
                if seq <= durable:
                    event.set()
                else:
                    waiting.append((seq, event))
            self._durable_waiters = waiting

    async def durable(self, seq: int) -> None:
        """Wait until journal record ``seq`` is durable (at once without a journal)."""
        if self._acks is None or self._acks.durable_seq >= seq:
            return
        event = trio.Event()
        self._durable_waiters.append((seq, event))
        await event.wait()

    async def take_snapshot(self, *, force: bool = False) -> dict[str, object]:
        """Write a snapshot of the durable state (in a worker thread) and prune what it
        makes unnecessary. Without ``force`` nothing is written if nothing changed."""
        assert self.journal is not None
        async with self._snapshot_lock:
            if not force and self.hub.last_seq == self._snapshot_seq:
                return self.last_snapshot or {}
            started = trio.current_time()
            seq = self.journal.start_segment()
            hub = self.hub
            snapshot = capture(hub.state, seq, self.now(), hub.chat.pending_messages())
            path, size = await trio.to_thread.run_sync(
                write_snapshot, self.config.data_dir, snapshot
            )
            self._snapshot_seq = seq
            seconds = trio.current_time() - started
            info: dict[str, object] = {
                "path": str(path),
                "bytes": size,
                "journal_seq": seq,
                "created_at": snapshot.created_at,
                "seconds": round(seconds, 3),
                "counts": snapshot.counts(),
            }
            self.last_snapshot = info
            log.info("snapshot %s: %d bytes in %.2f s", path.name, size, seconds)
            return info

    async def _snapshot_loop(self) -> None:
        while True:
            await trio.sleep(self.config.snapshot_interval)
            try:
                await self.take_snapshot()
            except OSError as exc:
                log.error("snapshot failed (the journal still has everything): %s", exc)

    async def _serve(self, task_status: trio.TaskStatus[RunningServer]) -> None:

        config = self.config
        async with trio.open_nursery() as root:
            if self.cluster is not None:
                await self._join_cluster(root, self.cluster)
            async with trio.open_nursery() as conns:
                self._conn_nursery = conns
                try:
                    listeners = await _open_listeners(config.host, config.port)
                except OSError as exc:
                    raise CannotListen("port", config, exc) from exc
                ws_port = listeners[0].socket.getsockname()[1]
                accept_scope = trio.CancelScope()
                root.start_soon(self._accept, listeners, conns, accept_scope)
                try:
                    http_port: int = await root.start(serve_http, self)
                except BaseException as exc:
                    cause = _lone_os_error(exc)
                    if cause is None:
                        raise
                    raise CannotListen("http_port", config, cause) from exc
                root.start_soon(self._reaper)
                root.start_soon(self.status.run)
                root.start_soon(self._flush_history)
                root.start_soon(self.push.run)
                if config.gc_freeze_interval > 0:
                    root.start_soon(self._gc_loop)
                journal_scope = trio.CancelScope()
                if self.journal is not None:
                    root.start_soon(self._run_journal, self.journal, journal_scope)
                    root.start_soon(self._snapshot_loop)
                running = RunningServer(self, config.host, ws_port, http_port)
                log.debug(
                    "serving ws=%s:%d http=%s:%d", config.host, ws_port, config.host, http_port
                )
                task_status.started(running)
                await self._stop_requested.wait()
                log.info("shutting down: closing %d connections with 1001", len(self._conns))
                accept_scope.cancel()
                self.hub.close_all(CLOSE_GOING_AWAY, "server shutting down")
                for ws in list(self._greeting):  # not yet through their hello
                    conns.start_soon(self._close_quietly, ws, CLOSE_GOING_AWAY)
                with trio.move_on_after(config.drain_timeout):
                    while self._conns or self._greeting:
                        self._no_connections = trio.Event()
                        await self._no_connections.wait()
                conns.cancel_scope.cancel()
            if self.journal is not None:
                await self._persist_at_shutdown(self.journal, journal_scope)
            if self.cluster is not None:
                with trio.move_on_after(self.config.drain_timeout):
                    await self.cluster.flush()  # acked writes and device reports reach Redis
                # Tasks cancelled under an unresponsive Redis make coredis log each attempt.
                logging.getLogger("coredis").setLevel(logging.CRITICAL)
                with trio.move_on_after(2):  # Redis may be unresponsive: the lease expires
                    await self.cluster.leave()
            root.cancel_scope.cancel()

    async def _join_cluster(self, nursery: trio.Nursery, cluster: ClusterLink) -> None:
        """Load the shared state from Redis and start the node's Redis side."""
        started = trio.current_time()
        counts: dict[str, int] = await nursery.start(cluster.run, self.hub, self.now)
        log.info(
            "node %d joined %s: %s loaded in %.2f s",
            self.config.node_id,
            self.config.redis or ",".join(self.config.redis_cluster),
            ", ".join(f"{n} {name}" for name, n in counts.items()),
            trio.current_time() - started,
        )
        broker = cluster.broker
        assert broker is not None
        m = self.metrics
        m.counter(
            "redis_envelopes_total",
            "Channel publishes: received from other nodes, dropped (Redis queue full), or "
            "failed (Redis unreachable; pub/sub commands included).",
            lambda: [
                ('{result="received"}', broker.received),
                ('{result="dropped"}', broker.dropped),
                ('{result="failed"}', broker.failed),
            ],
        )
        m.gauge(
            "redis_pending",
            "Commands queued for Redis.",
            lambda: broker.pending + cluster.journal.pending + cluster.presence.pending,
        )
        m.counter(
            "redis_feed_applied_total",
            "Changes of other nodes applied here.",
            lambda: [("", cluster.journal.feed.applied)],
        )
        m.counter(
            "presence_transitions_decided_total",
            "Online/offline transitions this node decided.",
            lambda: [("", cluster.presence.transitions)],
        )
        m.counter(
            "redis_errors_total",
            "Failed Redis round trips, retried (journal: acks wait; presence: reports wait).",
            lambda: [
                ('{part="journal"}', cluster.journal.write_errors),
                ('{part="presence"}', cluster.presence.errors),
            ],
        )
        m.counter(
            "presence_swept_total",
            "Devices whose deadline passed found by this node's sweeper.",
            lambda: [("", cluster.presence.swept)],
        )

    async def _gc_loop(self) -> None:
        """Keep full garbage collections short (see ``Config.gc_freeze_interval``)."""
        config = self.config
        # Fewer, larger young collections: CPython's default (700 allocations) runs one every
        # few fan-outs and promotes short-lived frames into older generations whose
        # collections then walk far more objects (measured: p99 104-166 ms -> 37 ms at
        # 2,000 users, benchmarks/RESULTS.md).
        gc.set_threshold(GC_THRESHOLDS[0], GC_THRESHOLDS[1], GC_THRESHOLDS[2])
        gc.freeze()  # the restored state and everything set up so far
        last_full = trio.current_time()
        while True:
            await trio.sleep(config.gc_freeze_interval)
            if trio.current_time() - last_full >= config.gc_full_interval:
                gc.unfreeze()
                started = time.perf_counter()
                found = gc.collect()
                log.info(
                    "full garbage collection: %d unreachable objects in %.0f ms",
                    found,
                    (time.perf_counter() - started) * 1000,
                )
                last_full = trio.current_time()
            gc.freeze()

    async def _run_journal(self, journal: FileJournal, scope: trio.CancelScope) -> None:
        with scope:
            await journal.run()

    async def _persist_at_shutdown(self, journal: FileJournal, scope: trio.CancelScope) -> None:
        """Flush and close the journal, then write the final snapshot (bounded in time)."""
        scope.cancel()
        with trio.move_on_after(max(self.config.drain_timeout, 30.0)) as timeout:
            try:
                await self.take_snapshot()
            except OSError as exc:
                log.error("final snapshot failed (the journal still has everything): %s", exc)
            await journal.close()
        if timeout.cancelled_caught:
            log.error(
                "shutdown: the final snapshot and journal flush did not finish in time "
                "(see the errors above); what was acknowledged is on disk"
            )

    def stop(self) -> None:
        """Begin a graceful shutdown (safe to call more than once)."""
        self._stop_requested.set()

    async def _accept(
        self,
        listeners: list[trio.SocketListener],
        conns: trio.Nursery,
        scope: trio.CancelScope,
    ) -> None:
        with scope:
            await trio.serve_listeners(self.handle_stream, listeners, handler_nursery=conns)

    def open_memory_connection(self, *, lockstep: bool = False) -> trio.abc.Stream:
        """A client-side stream connected to this server in memory, for tests under
        ``MockClock``: no sockets, so virtual time never jumps while bytes are in flight.

        ``lockstep=True`` gives a transport without buffering (a send completes only when the
        peer reads), so a client that stops reading blocks the server's writer at once: the
        slow-consumer path without megabytes of kernel buffers in the way."""
        assert self._conn_nursery is not None, "the server is not running"
        pair = trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
        client, server = pair()
        self._conn_nursery.start_soon(self.handle_stream, server)
        return client

    def _deadline_may_have_moved(self) -> None:
        """Wake the reaper if the hub's earliest deadline is now before the one it sleeps to
        (an O(1) check, so it is cheap after every message)."""
        deadline = self.hub.next_deadline()
        if deadline is not None and deadline < self._reaper_target:
            self._reaper_wakeup.set()

    async def _reaper(self) -> None:
        """Expire heartbeat deadlines and location TTLs exactly when they fall due."""
        assert self.clock is not None
        while True:
            deadline = self.hub.next_deadline()
            self._reaper_wakeup = trio.Event()
            if deadline is None:
                self._reaper_target = math.inf
                await self._reaper_wakeup.wait()
                continue
            self._reaper_target = deadline
            with trio.move_on_at(self.clock.to_trio(deadline)) as scope:
                await self._reaper_wakeup.wait()
            if scope.cancelled_caught:
                # max(): float rounding must never leave a due deadline unexpired.
                self.hub.expire(max(self.now(), deadline))

    # ------------------------------------------------------------------ connections

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one transport stream (TCP or in-memory) as a WebSocket session."""
        config = self.config
        try:
            async with trio.open_nursery() as nursery:
                with trio.move_on_after(config.hello_timeout) as handshake_scope:
                    request = await accept_stream(
                        nursery, stream, max_message_size=config.max_message_bytes
                    )
                if handshake_scope.cancelled_caught:
                    await trio.aclose_forcefully(stream)
                    nursery.cancel_scope.cancel()
                    return
                ws = await self._accept_request(request)
                if ws is not None:
                    assert isinstance(ws, ServerWebSocket)
                    try:
                        await self._session(ws, stream)
                    finally:
                        with trio.move_on_after(config.close_timeout) as cleanup:
                            cleanup.shield = True
                            await ws.aclose()
                nursery.cancel_scope.cancel()
        except Exception as exc:
            # Whatever one connection does, the server and other connections go on.
            if _is_disconnect(exc):
                log.debug("connection ended: %r", exc)
            else:
                self.metrics.connection_failures += 1
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

    async def _accept_request(self, request: WebSocketRequest) -> WebSocketConnection | None:
        path = request.path.split("?", 1)[0]
        if path != WS_PATH:
            await request.reject(404, body=b"geopresence: the WebSocket endpoint is /ws\n")
            return None
        return await request.accept()

    async def _session(self, ws: ServerWebSocket, stream: trio.abc.Stream) -> None:
        hello = await self._read_hello(ws)
        if hello is None:
            return
        user, device, request_id = hello
        conn = next(self._ids)
        c = _Connection(
            conn,
            Outbox(self.config.queue_size, self.config.state_queue_size, self.config.queue_bytes),
        )
        self._conns[conn] = c
        self.metrics.connections_total += 1
        try:
            if self.cluster is not None:
                await self._alive_in_cluster(user, device)
            self.hub.open_session(conn, user, device, self.now(), request_id)
            log.debug("conn %d: session opened: user %s, device %s", conn, user, device)
            self._deadline_may_have_moved()
            ws.admit_ping = lambda: (
                c.close_request is None and self.hub.admit(c.conn, self.now(), answer=False)
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, ws, stream, c, nursery.cancel_scope)
                await self._reader(ws, c)
                if c.close_request is None:
                    nursery.cancel_scope.cancel()  # the peer went away: stop the writer
                # else the writer is closing: let it finish the close handshake (bounded)
        finally:
            del self._conns[conn]
            self._maybe_drained()
            self.hub.close_session(conn)
            if log.isEnabledFor(logging.DEBUG):
                code = ws.closed.code if ws.closed is not None else None
                if code is None and c.close_request is not None:
                    code = c.close_request[0]
                log.debug(
                    "conn %d: session closed: user %s, device %s, close code %s",
                    conn, user, device, 1006 if code is None else int(code),
                )  # fmt: skip

    async def _refuse(self, ws: WebSocketConnection, error: ProtocolError, code: int) -> None:
        log.debug("connection refused before its session (%s), close %d", error.message, code)
        self.metrics.errors[error.code] += 1
        self.metrics.closes[code] += 1
        with trio.move_on_after(self.config.close_timeout):
            try:
                await ws.send_message(
                    encode(Error(re=error.re, code=error.code, message=error.message))
                )
            except ConnectionClosed:
                return
            await ws.aclose(code, error.message[:120])

    async def _read_hello(self, ws: ServerWebSocket) -> tuple[str, str, RequestId] | None:
        """Wait for a valid hello; refuse (1008) anything else.

        Returns (user, device, the hello's id)."""
        if self._stop_requested.is_set():
            # Accepted while shutting down: tell it to go elsewhere at once.
            await self._close_quietly(ws, CLOSE_GOING_AWAY)
            return None
        self._greeting.add(ws)
        try:
            return await self._hello_or_refusal(ws)
        finally:
            self._greeting.discard(ws)
            self._maybe_drained()

    async def _hello_or_refusal(self, ws: ServerWebSocket) -> tuple[str, str, RequestId] | None:
        config = self.config
        # Before hello there is no session to charge: up to rate_burst pings are answered,
        # the next abuse_limit ignored, and one more ends the connection with 4008.
        flooded = False

        def admit_ping() -> bool:
            nonlocal flooded
            if config.rate_limit <= 0 or ws.pings <= config.rate_burst:
                return True
            if ws.pings > config.rate_burst + config.abuse_limit:
                flooded = True
                hello_scope.cancel()
            return False

        ws.admit_ping = admit_ping
        with trio.move_on_after(config.hello_timeout) as hello_scope:
            try:
                frame = await ws.get_message()
            except ConnectionClosed:
                self._count_1009(ws)
                return None
            self.metrics.messages_in += 1
            if len(frame) * 4 > self.config.max_message_bytes and _utf8_len(frame) > (
                self.config.max_message_bytes
            ):
                await self._too_big(ws)
                return None
            try:
                message = decode(frame)
                if not isinstance(message, Hello):
                    raise ProtocolError(
                        "bad_request",
                        "the first message must be a hello",
                        getattr(message, "id", None),
                    )
                return self._authenticate(message)
            except ProtocolError as exc:
                await self._refuse(ws, exc, CLOSE_POLICY)
                return None
        if flooded:
            self.hub.rate_limited += 1
            refusal = ProtocolError("rate_limited", "too many pings before hello")
            await self._refuse(ws, refusal, CLOSE_SLOW_CONSUMER)
            return None
        await self._refuse(ws, ProtocolError("unauthorized", "no hello in time"), CLOSE_POLICY)
        return None

    def _authenticate(self, hello: Hello) -> tuple[str, str, RequestId]:
        if hello.token is not None:
            try:
                user = verify_token(self.secret, hello.token, self.now())
            except AuthError as exc:
                raise ProtocolError("unauthorized", str(exc), hello.id) from None
        elif self.config.insecure and hello.user is not None:
            user = hello.user
        elif self.config.insecure:
            raise ProtocolError("unauthorized", "hello needs a token or a user", hello.id)
        else:
            raise ProtocolError("unauthorized", "hello needs a token", hello.id)
        refusal = self.hub.session_refusal(user, hello.device, hello.id)
        if refusal is not None:
            raise refusal
        return user, hello.device, hello.id

    async def _alive_in_cluster(self, user: str, device: str) -> None:
        """Before the welcome: the device is alive in Redis (one round trip), so nothing
        the client does after the welcome can reach Redis ahead of it. If Redis is slow or
        down, the session starts anyway and the queued report catches up."""
        assert self.cluster is not None
        now = self.now()
        with trio.move_on_after(self.config.hello_timeout):
            try:
                await self.cluster.presence.alive_now(
                    user, device, now + self.config.offline_after, now
                )
            except Exception as exc:
                log.warning("redis: %s/%s not yet alive in Redis (%s)", user, device, exc)

    async def _reader(self, ws: WebSocketConnection, c: _Connection) -> None:
        hub = self.hub
        limit = self.config.max_message_bytes
        while True:
            try:
                frame = await ws.get_message()
            except ConnectionClosed:
                self._count_1009(ws)
                return
            self.metrics.messages_in += 1
            now = self.now()
            # trio-websocket limits characters; the contract limits UTF-8 bytes.
            if len(frame) * 4 > limit and _utf8_len(frame) > limit:
                hub.close_session(c.conn)
                await self._too_big(ws)
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
                self._deadline_may_have_moved()
            except Exception:
                # A bug must cost one reply, never the server or another client.
                self._log_bug(f"conn {c.conn}: internal error handling {type(message).__name__}")
                hub.reply_error(
                    c.conn,
                    ProtocolError("internal", "internal error", getattr(message, "id", None)),
                )

    def _maybe_drained(self) -> None:
        if not self._conns and not self._greeting:
            self._no_connections.set()

    async def _close_quietly(self, ws: WebSocketConnection, code: int) -> None:
        self.metrics.closes[code] += 1
        with trio.move_on_after(self.config.close_timeout):
            await ws.aclose(code, "server shutting down")

    def _count_1009(self, ws: WebSocketConnection) -> None:
        if ws.closed is not None and ws.closed.code == CLOSE_TOO_BIG:
            self.metrics.closes[CLOSE_TOO_BIG] += 1
            self.metrics.errors["too_large"] += 1

    async def _too_big(self, ws: WebSocketConnection) -> None:
        self.metrics.closes[CLOSE_TOO_BIG] += 1
        self.metrics.errors["too_large"] += 1
        with trio.move_on_after(self.config.close_timeout):
            await ws.aclose(
                CLOSE_TOO_BIG, f"frame larger than {self.config.max_message_bytes} bytes"
            )

    async def _writer(
        self,
        ws: WebSocketConnection,
        stream: trio.abc.Stream,
        c: _Connection,
        session_scope: trio.CancelScope,
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
                    await send_texts(ws, [item.text for item in batch])
                    self.metrics.messages_out += len(batch)
                c.send_scope = None
                if scope.cancelled_caught:
                    code = c.close_request[0] if c.close_request else CLOSE_SLOW_CONSUMER
                    self.metrics.closes[code] += 1
                    await trio.aclose_forcefully(stream)
                    session_scope.cancel()
                    return
                if c.close_request is not None and not len(c.outbox):
                    code, reason = c.close_request
                    self.metrics.closes[code] += 1
                    with trio.move_on_after(self.config.close_timeout):
                        await ws.aclose(code, reason)
                    session_scope.cancel()
                    return
        except ConnectionClosed:
            session_scope.cancel()


class CannotListen(OSError):
    """A listener could not be opened. ``field`` is the ``Config`` field to change (``port``,
    ``http_port``, or ``host`` when the address is the problem); ``problem`` says why."""

    def __init__(self, field: str, config: Config, cause: OSError) -> None:
        port = getattr(config, field)
        if isinstance(cause, socket.gaierror):
            field, problem = "host", f"cannot resolve it ({cause.strerror})"
        elif cause.errno == errno.EADDRNOTAVAIL:
            field, problem = "host", f"not an address of this machine ({cause.strerror})"
        elif cause.errno == errno.EADDRINUSE:
            problem = "already in use (another server on it?); pick another port, or 0 for any"
        elif cause.errno == errno.EACCES:
            problem = f"no permission to listen on port {port} (below 1024 needs privileges)"
        else:
            problem = f"cannot listen on {config.host}:{port} ({cause.strerror or cause})"
        super().__init__(cause.errno, f"{field} {getattr(config, field)}: {problem}")
        self.field = field
        self.problem = problem


def _lone_os_error(exc: BaseException) -> OSError | None:
    """The ``OSError`` that ``exc`` is, or is the only leaf of (through nurseries)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, OSError) else None


async def _open_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """Listen on every address of ``host``. With port 0 and several addresses (``localhost``
    is ::1 and 127.0.0.1), all of them get the port the first one drew, so the one printed
    port is right for each."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    if port == 0 and len(listeners) > 1:
        chosen = listeners[0].socket.getsockname()[1]
        for listener in listeners:
            await listener.aclose()
        listeners = await trio.open_tcp_listeners(chosen, host=host)
    return listeners


def _is_disconnect(exc: BaseException) -> bool:
    """True if ``exc`` (or every exception in a group) is just a peer going away."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_disconnect(e) for e in exc.exceptions)
    return isinstance(exc, ConnectionClosed | trio.BrokenResourceError | trio.ClosedResourceError)


def _utf8_len(text: str | bytes) -> int:
    return len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))


@attrs.define(eq=False)
class RunningServer:
    """What ``serve`` hands to ``nursery.start``: ports, keys and control of a live server."""

    server: Server
    host: str
    ws_port: int
    http_port: int

    @property
    def ws_url(self) -> str:
        return f"ws://{_url_host(self.host)}:{self.ws_port}{WS_PATH}"

    @property
    def http_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.http_port}"

    @property
    def hub(self) -> Hub:
        return self.server.hub

    @property
    def admin_key(self) -> str | None:
        return self.server.admin_key

    def mint_token(self, user: str, ttl: float = 3600.0) -> str:
        """A token for ``user`` signed with this server's secret, valid ``ttl`` seconds."""
        from geopresence.shell.auth import mint_token

        return mint_token(self.server.secret, user, ttl, self.server.now())

    def stop(self) -> None:
        """Graceful shutdown: stop accepting, close clients with 1001, return from serve."""
        self.server.stop()


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def serve(
    config: Config, *, task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a geopresence server until cancelled or stopped.

    ``running = await nursery.start(serve, config)`` returns once both ports listen; the
    ``RunningServer`` tells the ports and has ``stop()`` for a graceful shutdown.
    """
    await Server(config).run(task_status=task_status)
