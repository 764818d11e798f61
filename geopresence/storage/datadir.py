"""The data dir on disk: its layout, its lock, and the file operations the rest of storage
builds on (durable renames, the ``corrupt/`` folder, snapshot files and pruning).

Layout of ``DATA_DIR/`` (docs/durability.md):

- ``state/journal-<first seq>.log``: journal segments (format in ``storage.journal_format``,
  written by ``geopresence.storage.journal_file``). A new segment starts at every snapshot, so
  old ones can be deleted whole.
- ``state/snapshot-<journal seq>.snap``: snapshots (format in ``geopresence.storage.snapshot``).
  The two newest are kept, with every segment needed to replay from the older one, so a
  corrupt newest snapshot falls back to the previous one without losing anything.
- ``lock``: held (flock) by the running server, so two servers never share a dir.
- ``corrupt/``: originals of files set aside or changed after damage (never read).
- ``history/``: the location history (``geopresence.storage.history``).

Everything here blocks: a server calls it in a worker thread (or, for a snapshot's file, in
its forked writer, ``geopresence.storage.forked_snapshot``).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import shutil
import time
import zlib
from pathlib import Path
from typing import IO, Final

from geopresence.storage.journal_format import FILE_MAGIC
from geopresence.storage.snapshot import HEADER_SIZE, Snapshot, header, payload_chunks

JOURNAL_PATTERN: Final = re.compile(r"^journal-(\d{20})\.log$")
SNAPSHOT_PATTERN: Final = re.compile(r"^snapshot-(\d{20})\.snap$")
SNAPSHOTS_KEPT: Final = 2
CORRUPT_DIR: Final = "corrupt"
"""``DATA_DIR/corrupt/``: originals of the files that recovery or ``geopresence repair`` moved
aside or changed, as ``<name>.<UTC time>``. Never read, overwritten or deleted by geopresence."""


def state_dir(data_dir: Path) -> Path:
    return data_dir / "state"


def journal_path(directory: Path, first_seq: int) -> Path:
    return directory / f"journal-{first_seq:020d}.log"


def snapshot_path(directory: Path, journal_seq: int) -> Path:
    return directory / f"snapshot-{journal_seq:020d}.snap"


def numbered(directory: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    """(number, path) of the files in ``directory`` whose name matches ``pattern`` (its
    first group is the number), ascending; none if ``directory`` does not exist."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = pattern.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def holds_saved_state(data_dir: Path) -> bool:
    """True if ``data_dir`` holds a snapshot or a journal segment with a record in it."""
    directory = state_dir(data_dir)
    if numbered(directory, SNAPSHOT_PATTERN):
        return True
    for _, path in numbered(directory, JOURNAL_PATTERN):
        try:
            if path.stat().st_size > len(FILE_MAGIC):
                return True
        except FileNotFoundError:
            continue
    return False


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` as ``path`` atomically and durably (temp file created with ``mode``,
    fsync, rename, fsync the dir). A write that fails (a full disk) leaves no temp file
    behind: it raises, and ``path`` is as it was."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


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
            holder = self._file.read()
            self._file.close()
            self._file = None
            raise _in_use(data_dir, holder) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"geopresence pid {os.getpid()}\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the flock
            self._file = None


def _in_use(data_dir: Path, holder: str) -> DataDirLocked:
    """The refusal for ``data_dir`` held by ``holder`` (the lock file's text)."""
    holder = holder.strip() or "another process"
    return DataDirLocked(f"{data_dir} is in use by {holder}: one geopresence process per data dir")


def refuse_if_in_use(data_dir: Path) -> None:
    """``DataDirLocked`` if a running process holds ``data_dir``, taking no lock and writing
    nothing (for a reader that must work on a read-only data dir: ``repair --dry-run``)."""
    if is_locked(data_dir):
        try:
            holder = (data_dir / "lock").read_text()
        except OSError:
            holder = ""
        raise _in_use(data_dir, holder)


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


# ------------------------------------------------------------------------------ damage


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


def snapshot_temporary(directory: Path, journal_seq: int) -> Path:
    """Where snapshot ``journal_seq`` is written before it is renamed into place."""
    final = snapshot_path(directory, journal_seq)
    return final.with_name(final.name + ".tmp")


def write_snapshot_temporary(directory: Path, snapshot: Snapshot) -> tuple[Path, int]:
    """Write ``snapshot`` to its temporary file and fsync it; returns (path, bytes). Run in
    a worker thread or in the forked writer (``geopresence.storage.forked_snapshot``): it
    takes no lock and logs nothing.

    The payload is streamed in pieces (``payload_chunks``), its length and CRC-32 written
    into the header last, so no second copy of the whole state is ever in memory. A stale
    temporary file (a writer killed earlier) is unlinked first, never written over: a
    writer that outlived its server would then write to a file nobody renames."""
    temporary = snapshot_temporary(directory, snapshot.journal_seq)
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _write_all(fd, bytes(HEADER_SIZE))  # a placeholder until the length is known
        length, crc = 0, 0
        for chunk in payload_chunks(snapshot):
            crc = zlib.crc32(chunk, crc)
            length += len(chunk)
            _write_all(fd, chunk)
        os.pwrite(fd, header(length, crc), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    return temporary, HEADER_SIZE + length


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def install_snapshot(temporary: Path) -> Path:
    """Rename a written temporary snapshot into place and fsync the directory; returns
    the snapshot's path."""
    final = temporary.with_name(temporary.name.removesuffix(".tmp"))
    os.replace(temporary, final)
    fsync_dir(final.parent)
    return final


def write_snapshot(
    data_dir: Path, snapshot: Snapshot, *, purge: bool = False, keep_from: int | None = None
) -> tuple[Path, int]:
    """Write ``snapshot`` atomically (temp file, fsync, rename, fsync the dir) and prune old
    snapshots and journal segments, or with ``purge`` delete every older one
    (``purge_before``), either way keeping the segments from record ``keep_from`` on
    (``prune``) (blocking: call it in a thread). Returns (path, bytes)."""
    directory = state_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    temporary, size = write_snapshot_temporary(directory, snapshot)
    final = install_snapshot(temporary)
    if purge:
        purge_before(directory, snapshot.journal_seq, keep_from)
    else:
        prune(directory, keep_from)
    return final, size


def prune(directory: Path, keep_from: int | None = None) -> None:
    """Keep the ``SNAPSHOTS_KEPT`` newest snapshots and the journal segments needed to
    replay from the oldest of them; delete the rest (and stray temp files).

    ``keep_from``: the first record of an unfinished forget (None: there is none). The
    segment holding it, and every later one, stays even if a snapshot holds their records:
    that record is the forget's only to-do marker (``recovery.Recovered.forgotten``), which
    a start-up that finds it finishes. Deleting older snapshots meanwhile is harmless: the
    forget wants them gone. (A prune that deletes the record's segment without
    ``keep_from`` deletes with it every snapshot from before the forget.)"""
    snapshots = numbered(directory, SNAPSHOT_PATTERN)
    for _, path in snapshots[:-SNAPSHOTS_KEPT]:
        path.unlink(missing_ok=True)
    kept = snapshots[-SNAPSHOTS_KEPT:]
    if len(kept) < SNAPSHOTS_KEPT:
        return  # the fallback for a lone snapshot is the whole journal: keep it
    _delete_covered(directory, kept[0][0], keep_from)


def purge_before(directory: Path, journal_seq: int, keep_from: int | None = None) -> None:
    """After a forget: keep only the snapshot of ``journal_seq`` (and newer ones) and the
    journal after it; delete every older snapshot and every segment whose records it holds
    (they still hold the forgotten user), but the last segment, which may hold later ones,
    and those from record ``keep_from`` on (another forget's marker: ``prune``). Unlike
    ``prune`` this leaves no older snapshot to fall back on until the next one.

    Snapshots go first and segments in ascending order: the forget's record goes only
    after every older snapshot and every segment before it, so a crash part-way leaves it
    for the next start to finish."""
    for seq, path in numbered(directory, SNAPSHOT_PATTERN):
        if seq < journal_seq:
            path.unlink(missing_ok=True)
    _delete_covered(directory, journal_seq, keep_from)
    fsync_dir(directory)


def _delete_covered(directory: Path, journal_seq: int, keep_from: int | None) -> None:
    """Delete the journal segments whose every record is at most ``journal_seq`` and below
    ``keep_from`` (the last segment always stays: it may hold later ones) and stray
    temporary files."""
    if keep_from is not None:
        journal_seq = min(journal_seq, keep_from - 1)
    segments = numbered(directory, JOURNAL_PATTERN)
    for (_, path), (next_first, _) in itertools.pairwise(segments):
        # A segment ends where the next begins: all of it is in the snapshot if so.
        if next_first <= journal_seq + 1:
            path.unlink(missing_ok=True)
    for path in directory.glob("*.tmp"):
        path.unlink(missing_ok=True)
