"""``geopresence repair``: make a data dir that a start-up refuses start again, keeping every
intact record and a copy of every file it changes (what ``redis-check-aof --fix`` is to
Redis' AOF). Offline, under the data dir's lock (blocking).

In order: unreadable snapshots are moved to ``DATA_DIR/corrupt/``; each damaged segment is
copied there, then rewritten (a new file renamed over it) as the magic plus every intact
frame in order (a damaged magic is rebuilt, a frame whose length field alone is damaged is
re-framed); the state (the newest readable snapshot plus every intact record after it) is
written as a new snapshot if that adds records, so that no start-up replays across the
records lost; and the data dir is read again the way a start-up reads it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geopresence.core.state import DurableState
from geopresence.storage.datadir import (
    CORRUPT_DIR,
    JOURNAL_PATTERN,
    SNAPSHOT_PATTERN,
    DataDirLock,
    keep_aside,
    numbered,
    refuse_if_in_use,
    replace_file,
    state_dir,
    truncate_segment,
    write_snapshot,
)
from geopresence.storage.examine import Examination, SegmentState, examine
from geopresence.storage.journal_format import FILE_MAGIC, Scan
from geopresence.storage.offline import state_counts
from geopresence.storage.recovery import DataDirCorrupt, Recovered, rebuild, recover
from geopresence.storage.snapshot import capture


def repair_data_dir(
    data_dir: Path, *, dry_run: bool = False, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Repair ``data_dir`` (blocking); ``dry_run`` reads and reports only. ``progress`` gets
    one line per step as it is done. Raises ``DataDirLocked`` while a server runs on it, and
    ``DataDirCorrupt`` (``newer``), changing nothing, if a newer geopresence wrote it."""
    if dry_run:
        # It only reads, as ``inspect`` does, so it takes no lock: it works where nothing
        # can be written (a disk the kernel remounted read-only after errors, a copy).
        refuse_if_in_use(data_dir)
        return _repair(data_dir, dry_run, progress)
    lock = DataDirLock(data_dir)
    try:
        return _repair(data_dir, dry_run, progress)
    finally:
        lock.close()


def _repair(data_dir: Path, dry_run: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    """Read ``data_dir``, then repair it step by step (or, with ``dry_run``, only say what
    each step would do), and return the report ``repair_data_dir`` documents."""
    ex = _examine(data_dir, progress)
    found = _found(ex)
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
    _set_aside_snapshots(data_dir, ex, dry_run, files, lost, progress)
    for first, last in ex.gaps:
        lost.append(f"records {first}..{last}: in no file (a gap in the journal)")
    for segment in ex.segments:
        _repair_segment(data_dir, segment, dry_run, files, lost, progress)
    _write_state(data_dir, ex, found, dry_run, report, progress)
    if not dry_run and (files or lost):
        report["still_damaged"] = _still_damaged(data_dir)
    return report


def _examine(data_dir: Path, progress: Callable[[str], None]) -> Examination:
    """Read every snapshot and segment of ``data_dir`` (saying how much first). Raises
    ``DataDirCorrupt`` (``newer``) if a newer geopresence wrote any of them."""
    directory = state_dir(data_dir)
    paths = [p for _, p in numbered(directory, SNAPSHOT_PATTERN)]
    paths += [p for _, p in numbered(directory, JOURNAL_PATTERN)]
    size = sum(p.stat().st_size for p in paths)
    progress(f"reading {len(paths)} file(s) ({size:,} bytes) in {directory}")
    ex = examine(data_dir, every_snapshot=True)
    if ex.newer:  # sound files a newer version reads: setting them aside would lose them
        raise DataDirCorrupt(data_dir, ex.newer, newer=True)
    return ex


def _found(ex: Examination) -> list[str]:
    """One line per problem found: the unreadable snapshots that cost no record (those that
    do are among ``ex.found``), then everything ``examine`` found."""
    return [
        f"snapshot {bad.path.name} is unreadable ({bad.error}); "
        + ("not needed" if bad.seq < ex.base else "the journal holds every record it held")
        for bad in ex.bad_snapshots
        if bad.lossless
    ] + [text for text, _ in ex.found]


def _set_aside_snapshots(
    data_dir: Path,
    ex: Examination,
    dry_run: bool,
    files: list[dict[str, Any]],
    lost: list[str],
    progress: Callable[[str], None],
) -> None:
    """Move every unreadable snapshot to ``DATA_DIR/corrupt/``, adding a row per snapshot
    to ``files`` and, for one whose records are in no other file, a line to ``lost``."""
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


def _repair_segment(
    data_dir: Path,
    segment: SegmentState,
    dry_run: bool,
    files: list[dict[str, Any]],
    lost: list[str],
    progress: Callable[[str], None],
) -> None:
    """Reset a segment whose magic a crash cut short; rewrite a damaged one with its intact
    records (``_rewrite_segment``); leave a sound one as is."""
    if segment.partial_magic:
        if not dry_run:
            truncate_segment(segment.path, 0)
        verb = "would be " if dry_run else ""
        progress(f"{segment.path.name}: half-written magic {verb}reset (it holds no record)")
        return
    scan = segment.scan
    if scan is None or not scan.damaged:
        return
    _rewrite_segment(data_dir, segment, scan, dry_run, files, lost, progress)


def _rewrite_segment(
    data_dir: Path,
    segment: SegmentState,
    scan: Scan,
    dry_run: bool,
    files: list[dict[str, Any]],
    lost: list[str],
    progress: Callable[[str], None],
) -> None:
    """Copy the damaged ``segment`` to ``DATA_DIR/corrupt/`` and replace it with the magic
    plus its intact frames in order (``scan``: how it was read). Adds its row to ``files``
    and to ``lost`` a line per torn tail and one for damaged records no snapshot holds."""
    name = segment.path.name
    data = segment.path.read_bytes()
    frames = scan.frames
    fresh = FILE_MAGIC + b"".join(frame.bytes(data) for frame in frames)
    kept = None
    if not dry_run:
        kept = str(keep_aside(data_dir, segment.path, move=False))
        replace_file(segment.path, fresh)
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
    verb = "would be " if dry_run else ""
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


def _write_state(
    data_dir: Path,
    ex: Examination,
    found: list[str],
    dry_run: bool,
    report: dict[str, Any],
    progress: Callable[[str], None],
) -> None:
    """Rebuild the state from what ``ex`` read (its counts go to ``report["state"]``) and,
    if anything was ``found`` and the journal adds records to the snapshot, write it as a
    new snapshot (``report["snapshot"]``), so that no start-up replays across the records
    lost."""
    state = DurableState()
    recovered = Recovered(ex.snapshot, ex.records, ex.last_seq, forgets=ex.forgets)
    rebuild(state, recovered)
    report["state"] = state_counts(state)
    if found and ex.last_seq > ex.base:
        snapshot = capture(state, ex.last_seq, time.time())
        info: dict[str, Any] = {"journal_seq": ex.last_seq, "counts": snapshot.counts()}
        if dry_run:
            progress(f"a snapshot at journal seq {ex.last_seq} would be written")
        else:
            # A forget cut short keeps its record's segment: the next start finishes it.
            path, size = write_snapshot(data_dir, snapshot, keep_from=recovered.keep_from)
            info.update(path=str(path), bytes=size)
            progress(f"wrote {path.name} ({size:,} bytes, journal seq {ex.last_seq})")
        report["snapshot"] = info


def _still_damaged(data_dir: Path) -> list[str]:
    """What would still stop a start-up (nothing, normally)."""
    return recover(data_dir, repair=False).corruption
