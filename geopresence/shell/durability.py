"""What makes the node's state durable (shell): recovery at start, waits for the journal,
snapshots, and the final flush at shutdown.

The journal itself (``storage.journal_file`` on disk, ``cluster.redis_state`` on Redis)
decides when a record is durable; this module turns that into released acks and awaited
HTTP responses, and keeps the data dir locked while the node runs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from geopresence.cluster.redis_state import RedisJournal
from geopresence.config import Config
from geopresence.core.hub import Hub
from geopresence.shell.metrics import Metrics
from geopresence.storage.datadir import (
    DataDirLock,
    holds_saved_state,
    purge_before,
    state_dir,
    write_snapshot,
)
from geopresence.storage.forked_snapshot import write_snapshot_forked
from geopresence.storage.journal_file import FileJournal
from geopresence.storage.recovery import rebuild, recover
from geopresence.storage.snapshot import Snapshot, capture

log = logging.getLogger("geopresence")

TakeSnapshot = Callable[[], Awaitable[dict[str, object]]]


class Durability:
    """Recovery, durability waits and snapshots of one node.

    ``journal`` is the disk journal (None with --in-memory or --redis); ``acks`` is what
    acks wait for: the disk journal, Redis, or nothing (--in-memory). Times are seconds;
    ``now`` is the server clock (epoch seconds)."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        hub: Hub,
        now: Callable[[], float],
        *,
        journal: FileJournal | None,
        acks: FileJournal | RedisJournal | None,
    ) -> None:
        self._config = config
        self._hub = hub
        self._now = now
        self.journal = journal
        self._acks = acks
        if acks is not None:
            acks.on_durable = self._journal_durable
        self._durable_waiters: list[tuple[int, trio.Event]] = []
        self._snapshot_lock = trio.Lock()
        self._snapshot_seq = -1
        self.last_snapshot: dict[str, object] | None = None
        """What the last snapshot wrote (path, bytes, seq, counts, seconds), for the API."""
        self._lock: DataDirLock | None = None
        self.keep_from: Callable[[], int | None] = lambda: None
        """The first journal record no snapshot may prune or purge (an unfinished forget's
        marker, ``Forgets.keep_from``; None: none), asked just before files are deleted."""
        if journal is not None:
            _register_journal_metrics(metrics, journal)

    @property
    def lag(self) -> Callable[[], int] | None:
        """Journal records not yet durable (for the status line); None without a journal."""
        acks = self._acks
        return None if acks is None else lambda: acks.last_seq - acks.durable_seq

    async def start(self) -> dict[str, int]:
        """Before serving: recover from the data dir (disk mode) or lock it (--redis keeps
        the location history there, one node per data dir). Returns the users whose forget
        may be unfinished, each with the seq of its first ``user_forgotten`` record still on
        disk, whether the snapshot loaded holds it or not (``Recovered.forgotten``): their
        history is to be scrubbed again, then ``purge_after_forget``."""
        data_dir = self._config.data_dir
        if self.journal is not None:
            return await self._recover(self.journal)
        if self._config.clustered:
            # No journal here, but the location history is per node: one per data dir.
            self._lock = DataDirLock(data_dir)
        elif holds_saved_state(data_dir):  # a snapshot, or a journal only (killed before one)
            log.warning(
                "--in-memory: the state saved in %s is not loaded (and not changed)",
                state_dir(data_dir),
            )
        return {}

    async def purge_after_forget(self) -> None:
        """Before serving, after a restart that found forgets (``start``): write a snapshot
        of the state as recovered and delete every older snapshot and segment (they hold the
        forgotten users; a crash had cut the forget short), but the segments from
        ``keep_from()`` on (a forget whose history scrub failed just now: the next start
        tries again)."""
        assert self.journal is not None
        hub, now, data_dir = self._hub, self._now(), self._config.data_dir
        seq = hub.last_seq
        snapshot = capture(hub.state, seq, now, hub.chat.pending_messages())
        keep = self.keep_from()  # a forget whose scrub just failed keeps its record
        await trio.to_thread.run_sync(
            lambda: write_snapshot(data_dir, snapshot, purge=True, keep_from=keep)
        )
        self._snapshot_seq = seq

    def release(self) -> None:
        """Unlock the data dir (after ``persist_at_shutdown``)."""
        if self._lock is not None:
            self._lock.close()

    async def _recover(self, journal: FileJournal) -> dict[str, int]:
        """Lock the data dir, load the newest snapshot, replay the journal after it, and
        open a new journal segment; returns ``Recovered.forgotten``. Problems (a torn tail)
        are logged, never fatal."""
        data_dir = self._config.data_dir
        self._lock = DataDirLock(data_dir)
        started = trio.current_time()
        recovered = await trio.to_thread.run_sync(lambda: recover(data_dir, repair=True))
        for problem in recovered.problems:
            log.warning("recovery: %s", problem)
        hub = self._hub
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
        # Not only the records replayed: a snapshot taken while a forget was unfinished
        # holds its record, which stays on disk until the forget is done (``keep_from``).
        return recovered.forgotten

    def _journal_durable(self) -> None:
        """The journal advanced: release acks and HTTP responses waiting for it."""
        assert self._acks is not None
        self._hub.journal_advanced(self._now())
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

    async def take_snapshot(self, *, force: bool = False, purge: bool = False) -> dict[str, object]:
        """Write a snapshot of the durable state and prune what it makes unnecessary (with
        ``purge``, after a forget: every older snapshot and segment, ``datadir.purge_before``),
        but never the segments from record ``keep_from()`` on (an unfinished forget's marker,
        which this snapshot may well hold). Without ``force`` nothing is written if nothing
        changed.

        The event loop only forks (``storage.forked_snapshot``, Redis' BGSAVE): a child
        process captures the state from its copy-on-write image of memory, as of the
        journal segment started here, and writes it, while the loop goes on serving.
        ``SnapshotWriterFailed`` (an ``OSError``) if the child fails or is killed; the
        previous snapshot and the journal are then untouched."""
        assert self.journal is not None
        async with self._snapshot_lock:
            if not force and self._hub.last_seq == self._snapshot_seq:
                return self.last_snapshot or {}
            started = trio.current_time()
            hub, now = self._hub, self._now()
            # No await from here to the fork: the child's memory is the state as of ``seq``.
            seq = self.journal.start_segment()

            def take() -> Snapshot:  # runs in the child
                return capture(hub.state, seq, now, hub.chat.pending_messages())

            data_dir = self._config.data_dir
            path, size, counts = await write_snapshot_forked(data_dir, seq, take, self.keep_from)
            if purge:
                # The segment after ``seq`` must exist first: the one before it is then
                # known to end at ``seq`` and goes with the others.
                await self.journal.settle()
                keep = self.keep_from()
                await trio.to_thread.run_sync(purge_before, state_dir(data_dir), seq, keep)
            self._snapshot_seq = seq
            seconds = trio.current_time() - started
            info: dict[str, object] = {
                "path": str(path),
                "bytes": size,
                "journal_seq": seq,
                "created_at": now,
                "seconds": round(seconds, 3),
                "counts": counts,
            }
            self.last_snapshot = info
            log.info("snapshot %s: %d bytes in %.2f s", path.name, size, seconds)
            return info

    async def snapshot_loop(self, take_snapshot: TakeSnapshot) -> None:
        """A snapshot every ``snapshot_interval`` seconds (when something changed).

        ``take_snapshot`` is the node's (``Server.take_snapshot``): the one place a test
        replaces to play a crash that leaves no snapshot."""
        while True:
            await trio.sleep(self._config.snapshot_interval)
            try:
                await take_snapshot()
            except OSError as exc:
                log.error("snapshot failed (the journal still has everything): %s", exc)

    @staticmethod
    async def run_journal(journal: FileJournal, scope: trio.CancelScope) -> None:
        """Run the journal's writer until ``scope`` is cancelled (by the shutdown)."""
        with scope:
            await journal.run()

    async def persist_at_shutdown(
        self, journal: FileJournal, scope: trio.CancelScope, take_snapshot: TakeSnapshot
    ) -> None:
        """Flush and close the journal, then write the final snapshot with ``take_snapshot``
        (as in ``snapshot_loop``); bounded in time."""
        scope.cancel()
        with trio.move_on_after(max(self._config.drain_timeout, 30.0)) as timeout:
            try:
                await take_snapshot()
            except OSError as exc:
                log.error("final snapshot failed (the journal still has everything): %s", exc)
            await journal.close()
        if timeout.cancelled_caught:
            log.error(
                "shutdown: the final snapshot and journal flush did not finish in time "
                "(see the errors above); what was acknowledged is on disk"
            )


def _register_journal_metrics(metrics: Metrics, journal: FileJournal) -> None:
    metrics.counter(
        "journal_records_total",
        "Records appended to the journal.",
        lambda: [("", journal.last_seq)],
    )
    metrics.counter(
        "journal_fsyncs_total",
        "fsync calls on the journal.",
        lambda: [("", journal.fsyncs)],
    )
    metrics.counter(
        "journal_bytes_total",
        "Bytes written to the journal.",
        lambda: [("", journal.bytes_written)],
    )
    metrics.counter(
        "journal_write_errors_total",
        "Failed journal writes or fsyncs (each retried; acks wait).",
        lambda: [("", journal.write_errors)],
    )
