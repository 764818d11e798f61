"""The composition root of one node (shell): builds the parts from ``Config`` and runs them.

The parts: ``Connections`` (the hub's Sink) and ``ConnectionHandler`` with its ``Handshake``
(``shell.connections``, ``shell.handshake``; the WebSocket library is behind
``shell.transport``), ``Durability`` (recovery, acks, snapshots), the timers (reaper, GC,
history flush), the HTTP API, the push webhook and the status line. ``Server`` wires them,
opens the listeners, and runs the graceful shutdown; it is the ``ApiHost`` the HTTP API
serves (``shell.http_api``). What it does differently as one node of several (its link to
Redis, the reads there, joining and leaving) is ``ClusterFacing`` (``shell.cluster_facing``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import attrs
import trio

from geopresence.cluster.redis_state import RedisJournal
from geopresence.config import Config
from geopresence.core.broker import Broker, Deliver, MemoryBroker
from geopresence.core.forget import ForgetReport
from geopresence.core.hub import Hub, HubSettings
from geopresence.core.store import MemoryStore
from geopresence.shell import logs
from geopresence.shell.auth import resolve_admin_key, resolve_secret
from geopresence.shell.clock import ServerClock, watch_skew
from geopresence.shell.cluster_answers import ClusterAnswers
from geopresence.shell.cluster_facing import ClusterFacing
from geopresence.shell.connection_handler import ConnectionHandler
from geopresence.shell.connections import Connections
from geopresence.shell.durability import Durability
from geopresence.shell.forgets import Forgets
from geopresence.shell.handshake import WS_PATH, Handshake
from geopresence.shell.history import HistoryFlusher, HistoryKeeper
from geopresence.shell.http_api import bind_host, serve_http
from geopresence.shell.listeners import CannotListen as CannotListen
from geopresence.shell.listeners import lone_os_error, open_listeners
from geopresence.shell.metrics import Metrics, register_hub_metrics
from geopresence.shell.push import PushNotifier
from geopresence.shell.read_poller import ReadPoller
from geopresence.shell.status import StatusLine
from geopresence.shell.timers import Reaper, gc_loop
from geopresence.storage.history import HistoryWriter
from geopresence.storage.journal_file import FileJournal
from geopresence.wire.errors import CLOSE_GOING_AWAY, CLOSE_REASONS

log = logging.getLogger("geopresence")


class Server(ClusterFacing):
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
        self.cluster = None
        self.journal: FileJournal | None = None
        """The disk journal (None with --in-memory or --redis)."""
        acks: FileJournal | RedisJournal | None = None
        broker_factory: Callable[[Deliver], Broker] = MemoryBroker
        if config.clustered:
            self.cluster = self._link_to_cluster()
            broker_factory = self.cluster.make_broker
            acks = self.cluster.journal
        elif not config.in_memory:
            self.journal = acks = FileJournal(config.data_dir, config.fsync)
        self.connections = Connections(config, self.metrics)
        """The hub's Sink: the live sessions and their outboxes."""
        self.metrics.counter(
            "log_records_dropped_total",
            "Log records dropped because the log's reader was not keeping up.",
            lambda: [("", logs.dropped_records())],
        )
        self.push = PushNotifier(config)
        self._history = HistoryFlusher(config, self.metrics, self.now)
        self.history_keeper = HistoryKeeper(config, self.metrics, self._history, self.now)
        """Retention and forgets of the location history files."""
        self.hub = Hub(
            HubSettings.from_config(config),
            # With several nodes, only the settings this node's sessions need (never sharing
            # by default: ``geopresence.cluster.kept_settings``).
            MemoryStore(partial_settings=self.cluster is not None),
            self.connections,
            broker_factory=broker_factory,
            errors=self.metrics.errors,
            history=self._history.record,
            journal=acks,
            push=self.push.submit,
            replicator=self.cluster,
            stranger_index=None if self.cluster is None else self.cluster.strangers,
        )
        register_hub_metrics(self.metrics, self.hub)
        if self.cluster is not None and self.cluster.broker is not None:
            # Envelopes from other nodes: their frames are written at the end of each read.
            self.cluster.broker.delivery = self.connections.batch
        self.push.register_metrics(self.metrics)
        self.durability = Durability(
            config, self.metrics, self.hub, self.now, journal=self.journal, acks=acks
        )
        self.forgets = Forgets(
            self.hub,
            self.history_keeper,
            self.push,
            self.durable,
            None if self.journal is None else self.durability.take_snapshot,
        )
        """What a forget does outside the core (pushes, history, old snapshots)."""
        self.durability.keep_from = self.forgets.keep_from
        self.status = StatusLine(
            self.metrics, lambda: len(self.connections), self.hub.online_count,
            self.durability.lag,
        )  # fmt: skip
        """The status line logged once a minute (``geopresence.shell.status``)."""
        self.reaper = Reaper(self.hub)
        self._stop_requested = trio.Event()
        self.handshake = Handshake(
            config, self.metrics, self.hub, self.now, secret=self.secret, cluster=self.cluster
        )
        self.handler = ConnectionHandler(
            config,
            self.metrics,
            self.hub,
            self.connections,
            self.handshake,
            self.now,
            deadline_moved=self.reaper.deadline_may_have_moved,
            stopping=self._stop_requested.is_set,
        )
        self.answers: ClusterAnswers | None = None
        if self.cluster is not None:
            self.answers = ClusterAnswers(self.hub, self.connections, self.cluster, self.now)
            self.handler.later = self.answers.later
            self.push.online = self._online_in_cluster
        self._conn_nursery: trio.Nursery | None = None
        self.clock: ServerClock | None = None
        self.ws_port: int | None = None
        """The bound WebSocket port (``config.port`` may be 0): the console's config."""

    # ------------------------------------------------------------------ ApiHost (HTTP API)

    @property
    def persistence(self) -> Literal["memory", "disk", "redis"]:
        """Where the durable state is kept."""
        if self.cluster is not None:
            return "redis"
        return "memory" if self.journal is None else "disk"

    @property
    def history(self) -> HistoryWriter:
        """The location history files (``history`` of the data dir)."""
        return self._history.history

    @property
    def last_snapshot(self) -> dict[str, object] | None:
        """What the last snapshot wrote (path, bytes, seq, counts, seconds)."""
        return self.durability.last_snapshot

    @property
    def stopping(self) -> bool:
        """True once a graceful shutdown has begun."""
        return self._stop_requested.is_set()

    async def durable(self, seq: int) -> None:
        """Wait until journal record ``seq`` is durable (at once without a journal)."""
        await self.durability.durable(seq)

    async def take_snapshot(self, *, force: bool = False) -> dict[str, object]:
        """Write a snapshot now (disk mode; without ``force``, only if something changed)."""
        return await self.durability.take_snapshot(force=force)

    async def forget_user(self, user: str) -> tuple[ForgetReport, str | None]:
        """Forget ``user``; return once it is durable and gone from the disk
        (``Forgets.forget_user``)."""
        return await self.forgets.forget_user(user, self.now())

    def now(self) -> float:
        """Server time, epoch seconds (trio time plus ``time_origin``)."""
        assert self.clock is not None, "the server is not running"
        return self.clock.now()

    def stop(self) -> None:
        """Begin a graceful shutdown (safe to call more than once)."""
        self._stop_requested.set()

    # ------------------------------------------------------------------ running

    async def run(
        self, *, task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on the configured ports and serve until ``stop()``; then close every
        connection with 1001 (waiting up to ``drain_timeout``) and return."""
        self.clock = clock = ServerClock(self.config.time_origin)
        self.metrics.gauge(
            "clock_skew_seconds",
            "The system clock minus the server's, read from it at start (watch_skew).",
            clock.skew,
        )
        try:
            forgotten = await self.durability.start()
            await self.history_keeper.start(forgotten)
            self.forgets.resumed(forgotten)
            if forgotten and self.journal is not None:
                await self.durability.purge_after_forget()
            await self._serve(task_status)
        finally:
            self._conn_nursery = None  # cancelled too: accept_stream says it is not running
            self._history.close()
            self.durability.release()

    def accept_stream(self, stream: trio.abc.Stream) -> None:
        """Serve ``stream``, a connected transport (TCP, or in memory in tests: see
        ``geopresence.testing``), as a connection, in the background until it ends."""
        if self._conn_nursery is None:
            raise RuntimeError("the server is not running (not started yet, or stopped)")
        self._conn_nursery.start_soon(self.handler.handle_stream, stream)

    async def _serve(self, task_status: trio.TaskStatus[RunningServer]) -> None:
        config = self.config
        assert self.clock is not None
        async with trio.open_nursery() as root:
            self.handler.poller = ReadPoller.create()
            if self.handler.poller is not None:
                root.start_soon(self.handler.poller.run)  # after the connections, cancelled
            if self.cluster is not None:
                await self._join_cluster(root, self.cluster)
            async with trio.open_nursery() as conns:
                self._conn_nursery = self.handler.nursery = conns
                if self.answers is not None:
                    self.answers.nursery = conns
                try:
                    listeners = await open_listeners(config.host, config.port)
                except OSError as exc:
                    raise CannotListen("port", config, exc) from exc
                ws_port = self.ws_port = listeners[0].socket.getsockname()[1]
                accept_scope = trio.CancelScope()
                root.start_soon(self._accept, listeners, conns, accept_scope)
                try:
                    http_port: int = await root.start(serve_http, self)
                except BaseException as exc:
                    cause = lone_os_error(exc)
                    if cause is None:
                        raise
                    raise CannotListen("http_port", config, cause) from exc
                self.handshake.http_port = http_port  # the console's origin (--allowed-origins)
                root.start_soon(self.connections.run)
                root.start_soon(self.reaper.run, self.clock)
                root.start_soon(watch_skew, self.clock)
                root.start_soon(self.status.run)
                root.start_soon(self._history.run)
                root.start_soon(self.history_keeper.run, self.clock)
                root.start_soon(self.push.run)
                if config.gc_freeze_interval > 0:
                    root.start_soon(gc_loop, config)
                journal_scope = trio.CancelScope()
                if self.journal is not None:
                    root.start_soon(Durability.run_journal, self.journal, journal_scope)
                    root.start_soon(self.durability.snapshot_loop, self.take_snapshot)
                running = RunningServer(self, config.host, ws_port, http_port)
                log.debug(
                    "serving ws=%s:%d http=%s:%d", config.host, ws_port, config.host, http_port
                )
                task_status.started(running)
                await self._stop_requested.wait()
                await self._drain(accept_scope, conns)
            self._conn_nursery = None  # closed: accept_stream says so
            if self.journal is not None:
                await self.durability.persist_at_shutdown(
                    self.journal, journal_scope, self.take_snapshot
                )
            # After the journal's last commits, which may push too; before leaving the
            # cluster, whose Redis a push's online check reads.
            await self.push.finish(config.drain_timeout)
            if self.cluster is not None:
                await self._leave_cluster(self.cluster)
            root.cancel_scope.cancel()

    async def _drain(self, accept_scope: trio.CancelScope, conns: trio.Nursery) -> None:
        """Stop accepting, close every connection with 1001, and wait for them to end (at
        most ``drain_timeout`` seconds; what is left is then cancelled)."""
        connections = self.connections
        log.info("shutting down: closing %d connections with 1001", len(connections))
        accept_scope.cancel()
        self.hub.close_all(CLOSE_GOING_AWAY, CLOSE_REASONS[CLOSE_GOING_AWAY])
        for ws in list(connections.greeting):  # not yet through their hello
            self.handshake.close_quietly(ws, CLOSE_GOING_AWAY)
        with trio.move_on_after(self.config.drain_timeout):
            await connections.wait_drained()
        conns.cancel_scope.cancel()

    async def _accept(
        self,
        listeners: list[trio.SocketListener],
        conns: trio.Nursery,
        scope: trio.CancelScope,
    ) -> None:
        with scope:
            await trio.serve_listeners(self.handler.handle_stream, listeners, handler_nursery=conns)


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
    """Where a local client reaches a server bound to ``host`` (wildcards -> loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    return bind_host("::1" if host == "::" else host)


async def serve(
    config: Config, *, task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a geopresence server until cancelled or stopped.

    ``running = await nursery.start(serve, config)`` returns once both ports listen; the
    ``RunningServer`` tells the ports and has ``stop()`` for a graceful shutdown.
    """
    await Server(config).run(task_status=task_status)
