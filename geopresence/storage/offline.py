"""The offline tools' reading side: ``geopresence inspect`` (a read-only report of a data
dir) and ``geopresence snapshot`` (compact: replay the journal into a new snapshot), both
without a server: the data dir is replayed into a ``DurableState`` (blocking)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from geopresence.core.state import DurableState
from geopresence.model.records import TAGS
from geopresence.storage.datadir import (
    JOURNAL_PATTERN,
    SNAPSHOT_PATTERN,
    DataDirLock,
    is_locked,
    numbered,
    state_dir,
    write_snapshot,
)
from geopresence.storage.history import history_dir
from geopresence.storage.recovery import DataDirCorrupt, load_offline
from geopresence.storage.snapshot import capture


def state_counts(state: DurableState) -> dict[str, int]:
    """What the durable state holds, in the words of ``Snapshot.counts``."""
    return capture(state, 0, 0.0).counts()


def _files_summary(paths: list[Path]) -> dict[str, int]:
    return {"files": len(paths), "bytes": sum(p.stat().st_size for p in paths if p.exists())}


def inspect_data_dir(data_dir: Path) -> dict[str, Any]:
    """A read-only report of ``data_dir`` (nothing is repaired or locked). With damage
    that makes a start-up refuse, ``needs_repair`` is the refusal and ``state`` what
    ``geopresence repair`` would keep."""
    directory = state_dir(data_dir)
    state, recovered = load_offline(data_dir, repair=False)
    snapshots = [p for _, p in numbered(directory, SNAPSHOT_PATTERN)]
    segments = [p for _, p in numbered(directory, JOURNAL_PATTERN)]
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
        "state": state_counts(state),
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
        state, recovered = load_offline(data_dir, repair=True)
        snapshot = capture(state, recovered.last_seq, time.time())
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
