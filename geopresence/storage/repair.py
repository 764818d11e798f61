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
from geopresence.storage.examine import examine
from geopresence.storage.journal_format import FILE_MAGIC
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
    directory = state_dir(data_dir)
    paths = [p for _, p in numbered(directory, SNAPSHOT_PATTERN)]
    paths += [p for _, p in numbered(directory, JOURNAL_PATTERN)]
    size = sum(p.stat().st_size for p in paths)
    progress(f"reading {len(paths)} file(s) ({size:,} bytes) in {directory}")
    ex = examine(data_dir, every_snapshot=True)
    if ex.newer:  # sound files a newer version reads: setting them aside would lose them
        raise DataDirCorrupt(data_dir, ex.newer, newer=True)
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
    if not dry_run and (files or lost):
        report["still_damaged"] = _still_damaged(data_dir)
    return report


def _still_damaged(data_dir: Path) -> list[str]:
    """What would still stop a start-up (nothing, normally)."""
    return recover(data_dir, repair=False).corruption
