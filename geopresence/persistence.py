"""Durability on disk (shell): the file journal, snapshot files, recovery at start-up.

Layout of ``DATA_DIR/state/`` (docs/durability.md):

- ``journal-<first seq>.log``: journal segments (format in ``geopresence.journal``). A new
  segment starts at every snapshot, so old ones can be deleted whole.
- ``snapshot-<journal seq>.snap``: snapshots (format in ``geopresence.snapshot``). The two
  newest are kept, with every segment needed to replay from the older one, so a corrupt
  newest snapshot falls back to the previous one without losing anything.
- ``DATA_DIR/lock``: held (flock) by the running server, so two servers never share a dir.
- ``DATA_DIR/corrupt/``: originals of files set aside or changed after damage (never read).

Recovery (``recover``) repairs a torn tail by itself; other damage makes a start-up refuse
(``DataDirCorrupt``) without changing anything, and ``geopresence.repair`` fixes it offline.

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
import shlex
import shutil
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
from geopresence.journal import FILE_MAGIC, Damage, Frame, Scan, encode_frame, scan_frames
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


CORRUPT_DIR: Final = "corrupt"
"""``DATA_DIR/corrupt/``: originals of the files that recovery or ``geopresence repair`` moved
aside or changed, as ``<name>.<UTC time>``. Never read, overwritten or deleted by geopresence."""


class DataDirCorrupt(Exception):
    """The data dir holds damage that start-up may not repair (anything but a torn tail)
    without losing or changing data: it refuses, having changed nothing, and says to run
    ``geopresence repair``. ``problems``: every such damage, one line each."""

    def __init__(self, data_dir: Path, problems: list[str]) -> None:
        self.data_dir = data_dir
        self.problems = problems
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        super().__init__(
            f"{data_dir}: {problems[0]}{more}; refusing to use it, so that nothing is lost (no "
            f"file was changed): run geopresence repair --data-dir {shlex.quote(str(data_dir))} "
            "(it keeps a copy of every file it changes)"
        )


@attrs.define
class Recovered:
    """What a data dir holds: the snapshot used (None: start empty), the journal records
    after it as (seq, record), the last sequence number, and problems found (log lines).
    ``corruption``: the problems that make a start-up refuse (then ``records`` are every
    intact record, as ``geopresence repair`` would keep them)."""

    snapshot: Snapshot | None
    records: list[tuple[int, Record]]
    last_seq: int
    problems: list[str] = attrs.Factory(list)
    snapshot_path: Path | None = None
    corruption: list[str] = attrs.Factory(list)


@attrs.frozen
class BadSnapshot:
    """An unreadable snapshot. ``lossless``: the snapshot used and the journal after it hold
    every record it held (so falling back loses nothing)."""

    seq: int
    path: Path
    error: str
    lossless: bool


@attrs.define
class SegmentState:
    """One journal segment as read: ``scan`` is None for an empty one (``partial_magic``:
    a crash cut its magic short); ``seqs``: the sequence number of each intact frame;
    ``counts``: records each damaged region held (as far as known: ``exact``); ``torn``: a
    torn tail (start-up truncates it); ``covered``: the snapshot used holds all of it."""

    first_seq: int
    path: Path
    scan: Scan | None
    seqs: list[int] = attrs.Factory(list)
    counts: list[int] = attrs.Factory(list)
    exact: bool = True
    partial_magic: bool = False
    torn: Damage | None = None
    covered: bool = False


@attrs.define
class Examination:
    """Everything ``examine`` read, and what it found (text, start-up refuses)."""

    snapshot: Snapshot | None = None
    snapshot_path: Path | None = None
    bad_snapshots: list[BadSnapshot] = attrs.Factory(list)
    segments: list[SegmentState] = attrs.Factory(list)
    records: list[tuple[int, Record]] = attrs.Factory(list)
    last_seq: int = 0
    found: list[tuple[str, bool]] = attrs.Factory(list)
    gaps: list[tuple[int, int]] = attrs.Factory(list)

    @property
    def base(self) -> int:
        return 0 if self.snapshot is None else self.snapshot.journal_seq

    @property
    def corruption(self) -> list[str]:
        return [text for text, fatal in self.found if fatal]


def _assign(first: int, scan: Scan, next_first: int | None) -> tuple[list[int], list[int], bool]:
    """Sequence numbers of ``scan``'s intact frames (record i of a file is ``first + i``,
    counting the records its damaged regions held), the records each damaged region held,
    and whether those counts are exact. A region whose count is unknown holds what the next
    segment's number leaves room for (that is exact when it is the only one), else one."""
    damage = scan.damage
    unknown = sum(1 for d in damage if d.records is None)
    spare: int | None = None
    if next_first is not None:
        known = sum(d.records for d in damage if d.records is not None)
        spare = max(0, next_first - first - len(scan.frames) - known)
    seqs: list[int] = []
    counts: list[int] = []
    seq = first
    for part in scan.parts:
        if isinstance(part, Frame):
            seqs.append(seq)
            seq += 1
            continue
        if part.records is not None:
            count = part.records
        else:
            unknown -= 1
            if spare is None:
                count = 1
            elif unknown == 0:
                count = spare
            else:
                count = min(1, spare)
            if spare is not None:
                spare -= count
        counts.append(count)
        seq += count
    unknown = sum(1 for d in damage if d.records is None)
    return seqs, counts, unknown == 0 or (next_first is not None and unknown == 1)


def _damage_text(name: str, scan: Scan, part: Frame | Damage) -> str:
    after = sum(1 for p in scan.parts if isinstance(p, Frame) and p.start > part.start)
    if isinstance(part, Frame):
        what = f"damaged frame length at byte {part.start} (its record is intact)"
    else:
        what = f"{part.problem}, {part.end - part.start} byte(s) unreadable"
    return f"journal {name}: {what}, then {after} intact record(s)"


def examine(data_dir: Path, *, every_snapshot: bool = False) -> Examination:
    """Read the newest readable snapshot and every journal segment, reading past damage,
    and classify what is found (blocking; changes nothing). ``every_snapshot``: also check
    the snapshots older than the one used."""
    directory = state_dir(data_dir)
    ex = Examination()
    bad: list[tuple[int, Path, str]] = []
    for seq, path in reversed(_numbered(directory, SNAPSHOT_PATTERN)):
        if ex.snapshot is not None and not every_snapshot:
            break
        try:
            snapshot = decode_snapshot(path.read_bytes())
            if snapshot.journal_seq != seq:
                raise SnapshotError(f"it says journal seq {snapshot.journal_seq}")
        except SnapshotError as exc:
            bad.append((seq, path, str(exc)))
            continue
        if ex.snapshot is None:
            ex.snapshot, ex.snapshot_path = snapshot, path
    base = ex.base
    last_seq = base
    journal: list[tuple[str, bool]] = []
    segments = _numbered(directory, JOURNAL_PATTERN)
    for index, (first_seq, path) in enumerate(segments):
        last = index + 1 == len(segments)
        next_first = None if last else segments[index + 1][0]
        data = path.read_bytes()
        if FILE_MAGIC.startswith(data):
            # Created, but a crash came before (or during) its magic: an empty segment.
            partial = 0 < len(data) < len(FILE_MAGIC)
            ex.segments.append(SegmentState(first_seq, path, None, partial_magic=partial))
            continue
        scan = scan_frames(data)
        seqs, counts, exact = _assign(first_seq, scan, next_first)
        segment = SegmentState(first_seq, path, scan, seqs, counts, exact)
        ex.segments.append(segment)
        expected = last_seq + 1
        if seqs and first_seq > expected and first_seq > base + 1:
            ex.gaps.append((expected, first_seq - 1))
            journal.append(
                (
                    f"journal gap: {path.name} starts at record {first_seq} but the journal "
                    f"before it ends at record {expected - 1}: records {expected}.."
                    f"{first_seq - 1} are in no file",
                    True,
                )
            )
        for seq, frame in zip(seqs, scan.frames, strict=True):
            if seq > base:
                ex.records.append((seq, frame.record))
        if seqs:
            last_seq = max(last_seq, seqs[-1])
        if not scan.damaged:
            continue
        # Every record of a segment that the next one starts within the snapshot's reach is
        # in the snapshot: damage there costs nothing (as long as that snapshot is readable).
        segment.covered = (
            ex.snapshot_path is not None and next_first is not None and next_first <= base + 1
        )
        for part in scan.parts:
            if isinstance(part, Frame) and not part.length_fixed:
                continue
            if (
                last
                and isinstance(part, Damage)
                and part.end == scan.size
                and part.start >= len(FILE_MAGIC)
                and not part.problem.startswith("unreadable record")
            ):
                # A torn tail, the usual crash mid-write: nothing intact after it. (A frame
                # that passes its checksum but is no record it knows was written whole.)
                segment.torn = part
                kept = sum(1 for p in scan.parts if isinstance(p, Frame))
                journal.append(
                    (
                        f"journal {path.name}: {part.problem}; keeping the {kept} good "
                        f"record(s) before byte {part.start} and dropping "
                        f"{part.end - part.start} byte(s)",
                        False,
                    )
                )
                continue
            text = _damage_text(path.name, scan, part)
            if segment.covered and ex.snapshot_path is not None:
                journal.append(
                    (
                        f"{text}; not needed ({ex.snapshot_path.name} holds all of that "
                        "segment): left as is (geopresence repair rewrites it)",
                        False,
                    )
                )
            else:
                journal.append((text, True))
    ex.last_seq = last_seq
    for seq, path, error in bad:
        lossless = seq <= last_seq
        ex.bad_snapshots.append(BadSnapshot(seq, path, error, lossless))
        if seq > base and not lossless:
            ex.found.append(
                (
                    f"snapshot {path.name} is unreadable ({error}), and records "
                    f"{last_seq + 1}..{seq} are in no other file",
                    True,
                )
            )
    ex.found.extend(journal)
    return ex


def _fallback_text(ex: Examination, bad: BadSnapshot, moved: str) -> str:
    if bad.seq < ex.base:
        return f"snapshot {bad.path.name} is unreadable ({bad.error}); {moved}; not needed"
    using = "the whole journal" if ex.snapshot_path is None else ex.snapshot_path.name
    return (
        f"snapshot {bad.path.name} unreadable ({bad.error}); {moved}; using {using} and the "
        "journal after it, which hold every record it held"
    )


def recover(data_dir: Path, *, repair: bool) -> Recovered:
    """Read the newest readable snapshot and the journal after it (blocking: call it in a
    thread). ``repair`` is a start-up: if the data dir holds damage other than a torn tail
    that costs records (``examine``), it raises ``DataDirCorrupt`` having changed nothing;
    else it truncates a torn tail, resets a half-written magic and moves an unreadable
    snapshot that the journal makes up for to ``DATA_DIR/corrupt/``. Without ``repair``
    nothing is changed (``geopresence inspect``)."""
    ex = examine(data_dir)
    corruption = ex.corruption
    if repair and corruption:
        raise DataDirCorrupt(data_dir, corruption)
    problems: list[str] = []
    for bad in ex.bad_snapshots:
        if not bad.lossless:
            continue  # in ``corruption``
        if repair:
            moved = f"moved to {keep_aside(data_dir, bad.path, move=True)}"
        else:
            moved = f"a start-up moves it to {data_dir / CORRUPT_DIR}/"
        problems.append(_fallback_text(ex, bad, moved))
    problems.extend(text for text, _ in ex.found)
    if repair:
        for segment in ex.segments:
            if segment.partial_magic:
                truncate_segment(segment.path, 0)
            elif segment.torn is not None:
                truncate_segment(segment.path, segment.torn.start)
    return Recovered(ex.snapshot, ex.records, ex.last_seq, problems, ex.snapshot_path, corruption)


def keep_aside(data_dir: Path, path: Path, *, move: bool, now: float | None = None) -> Path:
    """Keep ``path`` as ``DATA_DIR/corrupt/<name>.<UTC time>`` (never overwriting a file
    there), durably: renamed with ``move``, else copied. Returns where it is."""
    directory = data_dir / CORRUPT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    for n in itertools.count(1):
        kept = directory / (f"{path.name}.{stamp}" + ("" if n == 1 else f"-{n}"))
        try:
            if move:
                try:
                    os.link(path, kept)  # refuses an existing name, unlike rename
                except FileExistsError:
                    raise
                except OSError:  # no hard links here
                    if kept.exists():
                        continue
                    os.rename(path, kept)
            else:
                with open(path, "rb") as source, open(kept, "xb") as copy:
                    shutil.copyfileobj(source, copy, 1 << 20)
                    copy.flush()
                    os.fsync(copy.fileno())
        except FileExistsError:
            continue
        break
    fsync_dir(directory)
    if move:
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)
    return kept


def truncate_segment(path: Path, size: int) -> None:
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


def offline_hub() -> Hub:
    """A hub without connections, to rebuild a data dir's state in (offline tools)."""
    return Hub(HubSettings(), MemoryStore(), _Discard())


def load_offline(data_dir: Path, *, repair: bool) -> tuple[Hub, Recovered]:
    """Rebuild the durable state of ``data_dir`` in a connection-less hub (blocking)."""
    recovered = recover(data_dir, repair=repair)
    hub = offline_hub()
    rebuild(hub, recovered)
    return hub, recovered


def state_counts(hub: Hub) -> dict[str, int]:
    """What the durable state holds, in the words of ``Snapshot.counts``."""
    return capture(hub, 0, 0.0).counts()


def _files_summary(paths: list[Path]) -> dict[str, int]:
    return {"files": len(paths), "bytes": sum(p.stat().st_size for p in paths if p.exists())}


def inspect_data_dir(data_dir: Path) -> dict[str, Any]:
    """A read-only report of ``data_dir`` (nothing is repaired or locked). With damage
    that makes a start-up refuse, ``needs_repair`` is the refusal and ``state`` what
    ``geopresence repair`` would keep."""
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
        "needs_repair": str(DataDirCorrupt(data_dir, recovered.corruption))
        if recovered.corruption
        else None,
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
    Raises ``DataDirLocked`` while a server runs on ``data_dir``, and ``DataDirCorrupt``
    (changing nothing) where a start-up would refuse."""
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


# ------------------------------------------------------------------------------ repair
# ``geopresence repair``: make a data dir that a start-up refuses start again, keeping every
# intact record and a copy of every file it changes (what ``redis-check-aof --fix`` is to
# Redis' AOF). Offline, under the data dir's lock. In order: unreadable snapshots are moved
# to ``DATA_DIR/corrupt/``; each damaged segment is copied there, then rewritten (a new file
# renamed over it) as the magic plus every intact frame in order (a damaged magic is rebuilt,
# a frame whose length field alone is damaged is re-framed); the state (the newest readable
# snapshot plus every intact record after it) is written as a new snapshot if that adds
# records, so that no start-up replays across the records lost; and the data dir is read
# again the way a start-up reads it.


def repair_data_dir(
    data_dir: Path, *, dry_run: bool = False, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Repair ``data_dir`` (blocking); ``dry_run`` reads and reports only. ``progress`` gets
    one line per step as it is done. Raises ``DataDirLocked`` while a server runs on it."""
    lock = DataDirLock(data_dir)
    try:
        return _repair(data_dir, dry_run, progress)
    finally:
        lock.close()


def _repair(data_dir: Path, dry_run: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    directory = state_dir(data_dir)
    paths = [p for _, p in _numbered(directory, SNAPSHOT_PATTERN)]
    paths += [p for _, p in _numbered(directory, JOURNAL_PATTERN)]
    size = sum(p.stat().st_size for p in paths)
    progress(f"reading {len(paths)} file(s) ({size:,} bytes) in {directory}")
    ex = examine(data_dir, every_snapshot=True)
    found = [
        f"snapshot {bad.path.name} is unreadable ({bad.error}); "
        + ("not needed" if bad.seq < ex.base else "the journal holds every record it held")
        for bad in ex.bad_snapshots
        if bad.lossless
    ] + [text for text, _ in ex.found]
    for text in found:
        progress(f"found: {text}")
    report: dict[str, Any] = {
        "data_dir": str(data_dir),
        "dry_run": dry_run,
        "found": found,
        "files": [],
        "lost": [],
        "snapshot": None,
        "state": None,
        "corrupt_dir": str(data_dir / CORRUPT_DIR),
        "still_damaged": [],
    }
    files: list[dict[str, Any]] = report["files"]
    lost: list[str] = report["lost"]
    verb = "would be " if dry_run else ""

    for bad in ex.bad_snapshots:
        kept = None if dry_run else str(keep_aside(data_dir, bad.path, move=True))
        files.append(
            {
                "file": bad.path.name,
                "action": "moved aside",
                "records_kept": 0,
                "records_dropped": 0,
                "bytes_dropped": 0,
                "original": kept,
            }
        )
        where = kept or f"{data_dir / CORRUPT_DIR}/"
        progress(f"{bad.path.name}: {'would be moved' if dry_run else 'moved'} to {where}")
        if not bad.lossless:
            lost.append(
                f"records {ex.last_seq + 1}..{bad.seq}: only in unreadable snapshot {bad.path.name}"
            )
    for first, last in ex.gaps:
        lost.append(f"records {first}..{last}: in no file (a gap in the journal)")

    for segment in ex.segments:
        name = segment.path.name
        if segment.partial_magic:
            if not dry_run:
                truncate_segment(segment.path, 0)
            progress(f"{name}: half-written magic {verb}reset (it holds no record)")
            continue
        scan = segment.scan
        if scan is None or not scan.damaged:
            continue
        data = segment.path.read_bytes()
        frames = scan.frames
        fresh = FILE_MAGIC + b"".join(frame.bytes(data) for frame in frames)
        kept = None
        if not dry_run:
            kept = str(keep_aside(data_dir, segment.path, move=False))
            _replace_file(segment.path, fresh)
        dropped = sum(segment.counts)
        dropped_bytes = sum(d.end - d.start for d in scan.damage)
        reframed = sum(1 for frame in frames if frame.length_fixed)
        files.append(
            {
                "file": name,
                "action": "rewritten",
                "records_kept": len(frames),
                "records_dropped": dropped,
                "records_dropped_exact": segment.exact,
                "records_reframed": reframed,
                "bytes_dropped": dropped_bytes,
                "original": kept,
            }
        )
        about = "" if segment.exact else "about "
        progress(
            f"{name}: {verb}rewritten with {len(frames)} intact record(s)"
            + (f" ({reframed} re-framed)" if reframed else "")
            + f", dropping {about}{dropped} record(s) in {dropped_bytes} damaged byte(s)"
            + ("; magic rebuilt" if any(d.start == 0 for d in scan.damage) else "")
            + (f"; original kept as {kept}" if kept else "")
        )
        for damage in scan.damage:
            if damage is segment.torn:
                lost.append(
                    f"journal {name}: a torn tail at byte {damage.start} "
                    f"({damage.end - damage.start} byte(s), a write cut off by a crash)"
                )
        count = sum(
            n for d, n in zip(scan.damage, segment.counts, strict=True) if d is not segment.torn
        )
        if count and not segment.covered:
            lost.append(f"journal {name}: {about}{count} damaged record(s)")

    hub = offline_hub()
    rebuild(hub, Recovered(ex.snapshot, ex.records, ex.last_seq))
    report["state"] = state_counts(hub)
    if found and ex.last_seq > ex.base:
        snapshot = capture(hub, ex.last_seq, time.time())
        info: dict[str, Any] = {"journal_seq": ex.last_seq, "counts": snapshot.counts()}
        if dry_run:
            progress(f"a snapshot at journal seq {ex.last_seq} would be written")
        else:
            path, size = write_snapshot(data_dir, snapshot)
            info.update(path=str(path), bytes=size)
            progress(f"wrote {path.name} ({size:,} bytes, journal seq {ex.last_seq})")
        report["snapshot"] = info
    if not dry_run and (files or lost):
        report["still_damaged"] = _still_damaged(data_dir)
    return report


def _replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` as ``path`` atomically and durably."""
    temporary = path.with_name(path.name + ".tmp")  # pruned if a crash leaves it
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)


def _still_damaged(data_dir: Path) -> list[str]:
    """What would still stop a start-up (nothing, normally)."""
    return recover(data_dir, repair=False).corruption
