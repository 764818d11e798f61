"""The location history of a running node (shell): recording, retention, and forgets.

``HistoryFlusher`` is the hub's history recorder: it appends to the ``HistoryWriter`` and
flushes within ``history_flush_interval``. ``HistoryKeeper`` keeps the files within
``history_retention`` (``geopresence.core.retention`` decides which files go and when to
look again; the files are listed and deleted in a worker thread) and rewrites them without
each forgotten user (``geopresence.storage.history_care``, in a worker thread too). One pass
at a time: a retention pass never deletes a file a scrub is rewriting.

The history is a record, not the service: a full or broken disk costs history lines
(counted in ``history_errors_total`` and logged), never a location update or the server.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import trio

from geopresence.config import Config
from geopresence.core.locations import Location
from geopresence.core.retention import file_span, next_check, past_retention
from geopresence.shell.clock import ServerClock
from geopresence.shell.metrics import Metrics
from geopresence.storage.history import HistoryWriter, history_dir
from geopresence.storage.history_care import (
    Scrubbed,
    delete_files,
    history_files,
    remove_temporaries,
    scrub,
    scrubbed_through,
    set_scrubbed_through,
)
from geopresence.units import duration

log = logging.getLogger("geopresence")

RETRY_AFTER_ERROR_S = 10.0

ForgottenSince = Callable[[float, float], Awaitable[tuple[list[str], float]]]
"""(since, retention) -> the users forgotten in the cluster after ``since`` and the latest
forget time (``ClusterLink.forgotten_since``)."""


class HistoryFlusher:
    """The hub's location history recorder: appends to the ``HistoryWriter`` and flushes
    it at most ``history_flush_interval`` seconds after a write. With a retention of 0
    nothing is written."""

    def __init__(self, config: Config, metrics: Metrics, now: Callable[[], float]) -> None:
        self._interval = config.history_flush_interval
        self._metrics = metrics
        self._now = now
        self._off = config.history_retention <= 0
        self.history = HistoryWriter(
            history_dir(config.data_dir),
            config.history_max_bytes,
            max_age=file_span(config.history_retention),
        )
        self._dirty = trio.Event()
        metrics.counter(
            "history_records_total",
            "Location records appended to the history files.",
            lambda: [("", self.history.records)],
        )

    def record(self, user: str, location: Location) -> None:
        """Append one location (the hub's ``history`` hook)."""
        if self._off:
            return
        try:
            self.history.append(user, location, self._now())
        except OSError as exc:
            self.failed(exc)
            return
        self._dirty.set()

    def failed(self, exc: OSError) -> None:
        self._metrics.history_errors += 1
        errors = self._metrics.history_errors
        if errors in (1, 10, 100) or errors % 1000 == 0:
            log.error("location history write failed (%d so far): %s", errors, exc)

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            await trio.sleep(self._interval)
            self._dirty = trio.Event()
            try:
                self.history.flush()
            except OSError as exc:
                self.failed(exc)

    def close(self) -> None:
        """Flush and close the history file (errors are counted and logged); the next
        record starts a new file."""
        try:
            self.history.close()
        except OSError as exc:
            self.failed(exc)


class HistoryKeeper:
    """Retention and forgets of the history files (see the module). Times are epoch
    seconds on the server clock ``now``."""

    def __init__(
        self, config: Config, metrics: Metrics, flusher: HistoryFlusher, now: Callable[[], float]
    ) -> None:
        self.directory = history_dir(config.data_dir)
        self.retention = config.history_retention
        self._flusher = flusher
        self._now = now
        self._lock = trio.Lock()
        self._next: float | None = None
        self._wakeup = trio.Event()
        self._pending: dict[str, int] = {}
        """Users to scrub -> the number of the last forget that asked for it."""
        self._through: int | None = 0
        """The scrub rewrites the files numbered up to this (None: all): the ones written
        before the forgets it serves."""
        self.requested = 0
        """Forgets asked of the keeper so far (``scrubbed`` waits for a count)."""
        self.done = 0
        self.error: str | None = None
        """Why the last scrub failed (None: it worked); it is retried meanwhile."""
        self._progress = trio.Event()
        self.files_deleted = 0
        self.run_sync: Callable[..., Awaitable[Any]] = trio.to_thread.run_sync
        """How the file work runs: in a worker thread. (A test on virtual time may run it
        inline: a ``MockClock`` jumps while a thread runs.)"""
        metrics.counter(
            "history_files_deleted_total",
            "History files deleted because all they held was past --history-retention.",
            lambda: [("", self.files_deleted)],
        )

    # ---------------------------------------------------------------- forgets

    def forget(self, user: str) -> None:
        """Scrub ``user`` from the files written so far (the hub's ``on_forgotten``): the
        current file is closed at once, later records start a new one."""
        try:
            fence = self._flusher.history.rotate()
        except OSError as exc:
            self._flusher.failed(exc)
            fence = None
        if fence is None or self._through is None:
            self._through = None  # every file (later ones hold new facts only)
        else:
            self._through = max(self._through, fence)
        self.requested += 1
        self._pending[user] = self.requested
        self._wakeup.set()

    async def scrubbed(self, count: int) -> str | None:
        """Wait until the first ``count`` forgets are scrubbed (None), or the scrub
        failed (why; it is retried every 10 s)."""
        while self.done < count:
            if self.error is not None:
                return self.error
            progress = self._progress
            await progress.wait()
        return None

    async def _scrub_requested(self) -> None:
        asked, through, count = dict(self._pending), self._through, self.requested
        users = set(asked)
        try:
            async with self._lock:
                result: Scrubbed = await self.run_sync(
                    lambda: scrub(self.directory, users, through=through)
                )
        except OSError as exc:
            self.error = f"the location history could not be rewritten ({exc})"
            log.error("%s; retrying in %g s", self.error, RETRY_AFTER_ERROR_S)
            self._signal()
            await trio.sleep(RETRY_AFTER_ERROR_S)
            return
        for user, number in asked.items():
            if self._pending.get(user) == number:  # not asked again meanwhile
                del self._pending[user]
        if not self._pending:
            self._through = 0
        self.done, self.error = max(self.done, count), None
        self._signal()
        log.info(
            "location history: %d forgotten user(s) scrubbed: %d line(s) removed, "
            "%d file(s) rewritten, %d deleted",
            len(users), result.lines, result.rewritten, result.deleted,
        )  # fmt: skip

    def _signal(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def catch_up(self, forgotten_since: ForgottenSince) -> None:
        """Multi-node, as the node joins: scrub the users forgotten in the cluster since this
        node last looked (it may have been down; each node keeps its own history).
        ``forgotten_since(since, retention)`` reads them from Redis."""
        since = await self.run_sync(scrubbed_through, self.directory)
        try:
            users, latest = await forgotten_since(since, self.retention)
        except Exception as exc:  # a Redis hiccup: the next start looks again
            log.warning("could not read the users forgotten meanwhile from Redis: %s", exc)
            return
        if users and await self.scrub_now(users) is not None:
            return  # logged; the next start tries again
        if latest > since:
            await self.run_sync(set_scrubbed_through, self.directory, latest)

    # ---------------------------------------------------------------- retention

    async def start(self, forgotten: Collection[str] = ()) -> None:
        """Before serving: a retention check, and the scrub of the users whose forget a
        restart replayed (a crash may have cut their scrub short)."""
        await self.run_sync(remove_temporaries, self.directory)
        await self.enforce()
        if forgotten:
            await self.scrub_now(forgotten)

    async def scrub_now(self, users: Collection[str]) -> str | None:
        """Scrub ``users`` from every history file now (before serving, or as a node
        joins); returns why it failed (None: done)."""
        self.requested += 1
        self._pending.update(dict.fromkeys(users, self.requested))
        self._through = None
        await self._scrub_requested()
        return self.error

    async def enforce(self, due: float | None = None) -> None:
        """Delete the files past the retention now (at least ``due``: a check that fell
        due); plan the next check."""
        retention, now = self.retention, self._now()
        if due is not None:
            now = max(now, due)  # float rounding must never leave a due file in place
        if math.isinf(retention):
            return
        writer = self._flusher.history
        if writer.last_write is not None and writer.last_write <= now - retention:
            self._flusher.close()  # idle that long: its file may go too
        async with self._lock:
            try:
                files = await self.run_sync(history_files, self.directory)
                kept = [f for f in files if f.number != writer.current]
                doomed = past_retention(kept, now, retention)
                if doomed:
                    freed = await self.run_sync(delete_files, self.directory, doomed)
                    self.files_deleted += len(doomed)
                    log.info(
                        "location history: %d file(s) past --history-retention (%s) deleted, "
                        "%d bytes freed",
                        len(doomed), duration(retention), freed,
                    )  # fmt: skip
            except OSError as exc:
                log.error("location history retention failed (%s); retrying in 1 min", exc)
                self._next = now + 60.0
                return
        if retention <= 0:
            self._next = None  # nothing is written: the start's check was the only one
            return
        gone = set(doomed)
        left = [f for f in kept if f.number not in gone]
        self._next = next_check(left, writer.last_write, now, retention)

    async def run(self, clock: ServerClock) -> None:
        """Retention checks when due, and scrubs when asked, until cancelled."""
        while True:
            if self.done < self.requested:
                await self._scrub_requested()
                continue
            self._wakeup = trio.Event()
            if self._next is None:
                await self._wakeup.wait()
                continue
            due = self._next
            with trio.move_on_at(clock.to_trio(due)) as timer:
                await self._wakeup.wait()
            if timer.cancelled_caught:
                await self.enforce(due)
