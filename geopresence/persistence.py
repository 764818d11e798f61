"""Durability on disk (shell): the file journal, snapshot files, recovery at start-up.

Layout of ``DATA_DIR/state/`` (docs/durability.md):

- ``journal-<first seq>.log``: journal segments (format in ``geopresence.journal``). A new
  segment starts at every snapshot, so old ones can be deleted whole.
- ``snapshot-<journal seq>.snap``: snapshots (format in ``geopresence.snapshot``). The two
  newest are kept, with every segment needed to replay from the older one, so a corrupt
  newest snapshot falls back to the previous one without losing anything.
- ``DATA_DIR/lock``: held (flock) by the running server, so two servers never share a dir.

Writes and fsyncs run in worker threads (``trio.to_thread``), never in the event loop.
``--fsync`` has Redis' appendfsync meaning: ``always`` fsyncs before anything is
acknowledged, and every record written while one fsync runs shares the next one (group
commit); ``everysec`` acknowledges once the record is written to the OS (it survives a
crash of the process) and fsyncs once a second (an OS crash or power cut may lose the last
second); ``no`` leaves fsync to the OS.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final

import attrs
import trio

from geopresence.config import FsyncPolicy
from geopresence.history import history_dir
from geopresence.hub import Hub, HubSettings
from geopresence.journal import FILE_MAGIC, decode_frames, encode_frame
from geopresence.records import TAGS, Record
from geopresence.recovery import apply, capture, restore
from geopresence.snapshot import Snapshot, SnapshotError, decode_snapshot, encode_snapshot
from geopresence.store import MemoryStore

log = logging.getLogger("geopresence.persistence")

JOURNAL_PATTERN: Final = re.compile(r"^journal-(\d{20})\.log$")
SNAPSHOT_PATTERN: Final = re.compile(r"^snapshot-(\d{20})\.snap$")
SNAPSHOTS_KEPT: Final = 2
RETRY_AFTER_WRITE_ERROR_S: Final = 1.0


def state_dir(data_dir: Path) -> Path:
    return data_dir / "state"


def journal_path(directory: Path, first_seq: int) -> Path:
    return directory / f"journal-{first_seq:020d}.log"


def snapshot_path(directory: Path, journal_seq: int) -> Path:
    return directory / f"snapshot-{journal_seq:020d}.snap"


def _numbered(directory: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    """(number, path) of the files matching ``pattern``, ascending."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = pattern.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ the lock


class DataDirLocked(Exception):
    """Another process holds the data dir."""


class DataDirLock:
    """An exclusive ``flock`` on ``DATA_DIR/lock``, released on close or process exit."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "lock"
        self._file: IO[str] | None = open(self.path, "a+")  # noqa: SIM115 - held until close
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            self._file = None
            raise DataDirLocked(
                f"{data_dir} is in use by {holder}: one geopresence process per data dir"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"geopresence pid {os.getpid()}\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the flock
            self._file = None


def is_locked(data_dir: Path) -> bool:
    """True if a running process holds ``data_dir`` (the lock file is only read)."""
    path = data_dir / "lock"
    try:
        with open(path, "rb") as file:
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)
    except FileNotFoundError:
        return False
    return False


# ------------------------------------------------------------------------------ recovery


@attrs.define
class Recovered:
    """What a data dir holds: the snapshot used (None: start empty), the journal records
    after it as (seq, record), the last sequence number, and problems found (log lines)."""

    snapshot: Snapshot | None
    records: list[tuple[int, Record]]
    last_seq: int
    problems: list[str] = attrs.Factory(list)
    snapshot_path: Path | None = None


def recover(data_dir: Path, *, repair: bool) -> Recovered:
    """Read the newest readable snapshot and the journal after it (blocking: call it in a
    thread). With ``repair``, a torn or corrupt tail is truncated to the last good record
    (the file is kept up to there) and segments that come after a corrupt one are renamed
    ``*.orphaned`` so that they are neither replayed nor overwritten."""
    directory = state_dir(data_dir)
    problems: list[str] = []
    snapshot: Snapshot | None = None
    used: Path | None = None
    for seq, path in reversed(_numbered(directory, SNAPSHOT_PATTERN)):
        try:
            snapshot = decode_snapshot(path.read_bytes())
            if snapshot.journal_seq != seq:
                raise SnapshotError(f"it says journal seq {snapshot.journal_seq}")
        except (OSError, SnapshotError) as exc:
            snapshot = None
            problems.append(f"snapshot {path.name} unreadable ({exc}); trying an older one")
            if repair:
                # Out of the way, so that pruning never counts it among those kept.
                path.rename(path.with_name(path.name + ".corrupt"))
            continue
        used = path
        break
    base = 0 if snapshot is None else snapshot.journal_seq
    records: list[tuple[int, Record]] = []
    last_seq = base
    segments = _numbered(directory, JOURNAL_PATTERN)
    for index, (first_seq, path) in enumerate(segments):
        data = path.read_bytes()
        if FILE_MAGIC.startswith(data):
            # Created, but a crash came before (or during) its magic: an empty segment.
            if data and repair:
                _truncate(path, 0)
            continue
        decoded = decode_frames(data)
        expected = last_seq + 1
        if decoded.records and first_seq > expected and first_seq > base + 1:
            problems.append(
                f"journal gap: {path.name} starts at {first_seq}, expected {expected}; "
                "records in between are missing"
            )
        for offset, record in enumerate(decoded.records):
            seq = first_seq + offset
            if seq > base:
                records.append((seq, record))
            last_seq = max(last_seq, seq)
        if decoded.problem is None:
            continue
        good = decoded.good_end
        problems.append(
            f"journal {path.name}: {decoded.problem}; keeping the {len(decoded.records)} "
            f"good record(s) before byte {good} and dropping {len(data) - good} byte(s)"
        )
        if repair:
            _truncate(path, good)
        if index + 1 == len(segments):
            break  # a torn tail: the usual crash mid-write
        next_first = segments[index + 1][0]
        good_last = first_seq + len(decoded.records) - 1
        if next_first <= max(good_last, base) + 1:
            # What was dropped is older than the snapshot (or than the next segment): the
            # records after it are still whole, so recovery goes on with them.
            problems.append(f"journal {path.name}: the dropped part was not needed; continuing")
            continue
        for _, later in segments[index + 1 :]:
            problems.append(f"journal {later.name} follows a damaged one: renamed .orphaned")
            if repair:
                later.rename(later.with_name(later.name + ".orphaned"))
        break
    return Recovered(snapshot, records, last_seq, problems, used)


def _truncate(path: Path, size: int) -> None:
    """Cut ``path`` to ``size`` bytes, durably; shorter than the magic means a fresh
    segment (just the magic)."""
    with open(path, "r+b") as file:
        if size < len(FILE_MAGIC):
            file.truncate(0)
            file.write(FILE_MAGIC)
        else:
            file.truncate(size)
        file.flush()
        os.fsync(file.fileno())


# ------------------------------------------------------------------------------ snapshots


def write_snapshot(data_dir: Path, snapshot: Snapshot) -> tuple[Path, int]:
    """Write ``snapshot`` atomically (temp file, fsync, rename, fsync the dir) and prune old
    snapshots and journal segments (blocking: call it in a thread). Returns (path, bytes)."""
    directory = state_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    data = encode_snapshot(snapshot)
    final = snapshot_path(directory, snapshot.journal_seq)
    temporary = final.with_name(final.name + ".tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, final)
    fsync_dir(directory)
    prune(directory)
    return final, len(data)


def prune(directory: Path) -> None:
    """Keep the ``SNAPSHOTS_KEPT`` newest snapshots and the journal segments needed to
    replay from the oldest of them; delete the rest (and stray temp files)."""
    snapshots = _numbered(directory, SNAPSHOT_PATTERN)
    for _, path in snapshots[:-SNAPSHOTS_KEPT]:
        path.unlink(missing_ok=True)
    kept = snapshots[-SNAPSHOTS_KEPT:]
    if len(kept) < SNAPSHOTS_KEPT:
        return  # the fallback for a lone snapshot is the whole journal: keep it
    oldest_seq = kept[0][0]
    segments = _numbered(directory, JOURNAL_PATTERN)
    for (_, path), (next_first, _) in itertools.pairwise(segments):
        # A segment ends where the next begins: all of it is in the snapshot if so.
        if next_first <= oldest_seq + 1:
            path.unlink(missing_ok=True)
    for path in directory.glob("*.tmp"):
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ the journal


class FileJournal:
    """The ``Journal`` seam on disk. ``append`` only buffers; ``run`` (a task) writes the
    buffer in a worker thread, fsyncs per policy, advances ``durable_seq`` and calls
    ``on_durable``. Whatever is appended while a write is in flight goes out with the next
    one, so under load one fsync covers many records (group commit)."""

    def __init__(self, data_dir: Path, policy: FsyncPolicy) -> None:
        self.directory = state_dir(data_dir)
        self.policy = policy
        self.on_durable: Callable[[], None] = lambda: None
        self._seq = 0
        self._durable = 0
        self._written = 0
        self._synced = 0
        self._frames: list[bytes] = []
        self._frames_first = 1  # seq of self._frames[0]
        self._segment_starts: list[int] = []  # pending new segments (first seqs)
        self._fd: int | None = None
        self._progress = (0, 0)  # (frames written, segment starts done) of the current batch
        self._wakeup = trio.Event()
        self._io = trio.Lock()  # one thread at a time touches the segment file
        self.fsyncs = 0
        self.bytes_written = 0
        self.write_errors = 0
        self._failing = False
        self._last_error_log = 0.0

    # The Journal protocol

    def append(self, record: Record) -> int:
        self._frames.append(encode_frame(record))
        self._seq += 1
        self._wakeup.set()
        return self._seq

    @property
    def durable_seq(self) -> int:
        return self._durable

    @property
    def last_seq(self) -> int:
        return self._seq

    # Control

    def open(self, last_seq: int) -> None:
        """Continue after ``last_seq`` in a new segment (blocking; before ``run``)."""
        self._seq = self._durable = self._written = self._synced = last_seq
        self._frames_first = last_seq + 1
        self.directory.mkdir(parents=True, exist_ok=True)
        self._open_segment(last_seq + 1)

    def start_segment(self) -> int:
        """Records appended from now on go to a new segment; returns the last seq before it
        (the ``journal_seq`` of a snapshot captured at this instant)."""
        self._segment_starts.append(self._seq + 1)
        self._wakeup.set()
        return self._seq

    async def run(self) -> None:
        """Write, fsync and advance until cancelled (then ``close`` finishes the job)."""
        async with trio.open_nursery() as nursery:
            if self.policy == "everysec":
                nursery.start_soon(self._fsync_every_second)
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                await self.flush()

    async def flush(self) -> None:
        """Write (and, with ``always``, fsync) everything appended so far."""
        while self._frames or self._segment_starts:
            frames, first = self._frames, self._frames_first
            self._frames = []
            self._frames_first = first + len(frames)
            starts, self._segment_starts = self._segment_starts, []
            last = first + len(frames) - 1
            # Shielded: a batch taken from the buffer is written and accounted for even if
            # the server is shutting down (close() then finds the buffer consistent).
            with trio.CancelScope(shield=True):
                try:
                    async with self._io:
                        await trio.to_thread.run_sync(self._write, frames, first, starts)
                except OSError as exc:
                    # Nothing is acknowledged that is not written: re-queue what was not
                    # written and retry (what was, stays: it is never written twice).
                    self.write_errors += 1
                    self._log_write_error(exc)
                    done, rotations = self._progress
                    if done:
                        self._written = max(self._written, first + done - 1)
                    self._frames = frames[done:] + self._frames
                    self._frames_first = first + done
                    self._segment_starts = sorted(starts)[rotations:] + self._segment_starts
                    failed = True
                else:
                    failed = False
                    if self._failing:
                        log.warning(
                            "journal writes work again after %d error(s)", self.write_errors
                        )
                        self._failing = False
                    self._written = max(self._written, last)
                    if self.policy == "always":
                        self._synced = self._written
                    self._durable = self._written
                    self.on_durable()
            if failed:
                await trio.sleep(RETRY_AFTER_WRITE_ERROR_S)

    async def close(self) -> None:
        """Flush, fsync (any policy) and close the segment (at shutdown)."""
        await self.flush()
        async with self._io:
            await trio.to_thread.run_sync(self._fsync_and_close)

    # Worker-thread side. The segment is a raw file descriptor (no Python buffer that could
    # keep half a batch after a failed write and write it again later).

    def _write(self, frames: list[bytes], first: int, starts: list[int]) -> None:
        """Write ``frames`` (seq ``first``...) starting new segments at ``starts``. Progress
        is recorded in ``_progress`` as it is made, so that after an error the caller
        re-queues only what was not written."""
        self._progress = (0, 0)
        position = 0
        for done, start in enumerate(sorted(starts)):
            count = max(0, min(start - first, len(frames)) - position)
            self._write_frames(frames[position : position + count])
            position += count
            self._progress = (position, done)
            self._sync()
            self._close_fd()
            self._open_segment(start)
            self._progress = (position, done + 1)
        self._write_frames(frames[position:])
        self._progress = (len(frames), len(starts))
        if self.policy == "always":
            self._sync()

    def _write_frames(self, frames: list[bytes]) -> None:
        if not frames:
            return
        assert self._fd is not None
        data = memoryview(b"".join(frames))
        before = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            while data:
                written = os.write(self._fd, data)  # to the OS: a process crash cannot lose it
                data = data[written:]
        except OSError:
            # Cut a partial write off, so that the retry does not follow a torn frame.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, before)
            raise
        self.bytes_written += sum(len(frame) for frame in frames)

    def _sync(self) -> None:
        assert self._fd is not None
        os.fsync(self._fd)
        self.fsyncs += 1

    def _open_segment(self, first_seq: int) -> None:
        path = journal_path(self.directory, first_seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size < len(FILE_MAGIC):
                # New, or cut short by a crash before its magic was complete.
                os.ftruncate(fd, 0)
                os.write(fd, FILE_MAGIC)
                os.fsync(fd)
                fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _fsync_and_close(self) -> None:
        if self._fd is not None:
            self._sync()
            self._close_fd()

    def _log_write_error(self, exc: OSError, *, fsync_only: bool = False) -> None:
        # The first failure and then one line a minute: a full disk must not flood the log.
        now = time.monotonic()
        if not self._failing or now - self._last_error_log >= 60:
            if fsync_only:
                log.error(
                    "journal fsync failed (%d so far): %s; retrying next second (the records "
                    "are written: only an OS crash could lose them)",
                    self.write_errors,
                    exc,
                )
            else:
                log.error(
                    "journal write failed (%d so far): %s; acks wait, retrying every %g s",
                    self.write_errors,
                    exc,
                    RETRY_AFTER_WRITE_ERROR_S,
                )
            self._last_error_log = now
        self._failing = True

    async def _fsync_every_second(self) -> None:
        while True:
            await trio.sleep(1.0)
            if self._written > self._synced and self._fd is not None:
                target = self._written
                try:
                    async with self._io:
                        if self._fd is None:
                            return
                        await trio.to_thread.run_sync(self._sync)
                except OSError as exc:
                    self.write_errors += 1
                    self._log_write_error(exc, fsync_only=True)
                    continue
                self._synced = max(self._synced, target)


# ------------------------------------------------------------------------------ offline tools


class _Discard:
    """A sink for a hub that has no connections (offline tools)."""

    def send(self, conn: int, message: object) -> None:
        pass

    def close(self, conn: int, code: int, reason: str) -> None:
        pass


def rebuild(hub: Hub, recovered: Recovered) -> None:
    """Load what ``recover`` read into a fresh hub: the snapshot, then the journal after it."""
    if recovered.snapshot is not None:
        restore(hub, recovered.snapshot)
    for _, record in recovered.records:
        apply(hub, record)


def load_offline(data_dir: Path, *, repair: bool) -> tuple[Hub, Recovered]:
    """Rebuild the durable state of ``data_dir`` in a connection-less hub (blocking)."""
    recovered = recover(data_dir, repair=repair)
    hub = Hub(HubSettings(), MemoryStore(), _Discard())
    rebuild(hub, recovered)
    return hub, recovered


def state_counts(hub: Hub) -> dict[str, int]:
    """What the durable state holds, in the words of ``Snapshot.counts``."""
    return capture(hub, 0, 0.0).counts()


def _files_summary(paths: list[Path]) -> dict[str, int]:
    return {"files": len(paths), "bytes": sum(p.stat().st_size for p in paths if p.exists())}


def inspect_data_dir(data_dir: Path) -> dict[str, Any]:
    """A read-only report of ``data_dir`` (nothing is repaired or locked)."""
    directory = state_dir(data_dir)
    hub, recovered = load_offline(data_dir, repair=False)
    snapshots = [p for _, p in _numbered(directory, SNAPSHOT_PATTERN)]
    segments = [p for _, p in _numbered(directory, JOURNAL_PATTERN)]
    history = sorted(history_dir(data_dir).glob("locations-*.jsonl"))
    kinds = Counter(TAGS[type(record)] for _, record in recovered.records)
    report: dict[str, Any] = {
        "data_dir": str(data_dir),
        "in_use": is_locked(data_dir) if data_dir.is_dir() else False,
        "snapshots": _files_summary(snapshots),
        "journal": _files_summary(segments),
        "history": _files_summary(history),
        "last_snapshot": None,
        "journal_after_snapshot": {"records": len(recovered.records), **dict(kinds)},
        "last_seq": recovered.last_seq,
        "state": state_counts(hub),
        "problems": recovered.problems,
    }
    if recovered.snapshot is not None and recovered.snapshot_path is not None:
        snapshot = recovered.snapshot
        report["last_snapshot"] = {
            "file": recovered.snapshot_path.name,
            "bytes": recovered.snapshot_path.stat().st_size,
            "created_at": snapshot.created_at,
            "journal_seq": snapshot.journal_seq,
            "counts": snapshot.counts(),
        }
    return report


def compact(data_dir: Path) -> dict[str, Any]:
    """Offline: replay the journal onto the newest snapshot, write the result as a new
    snapshot and prune (what a running server does every ``--snapshot-interval``).
    Raises ``DataDirLocked`` while a server runs on ``data_dir``."""
    lock = DataDirLock(data_dir)
    try:
        started = time.monotonic()
        hub, recovered = load_offline(data_dir, repair=True)
        snapshot = capture(hub, recovered.last_seq, time.time())
        path, size = write_snapshot(data_dir, snapshot)
        return {
            "path": str(path),
            "bytes": size,
            "journal_seq": recovered.last_seq,
            "replayed_records": len(recovered.records),
            "seconds": round(time.monotonic() - started, 3),
            "counts": snapshot.counts(),
            "problems": recovered.problems,
        }
    finally:
        lock.close()
