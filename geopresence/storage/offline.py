"""The offline tools' side: ``geopresence inspect`` (a read-only report of a data dir),
``geopresence snapshot`` (compact: replay the journal into a new snapshot) and ``geopresence
forget`` (a user, from a stopped server's files), all without a server: the data dir is
replayed into a ``DurableState`` (blocking)."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from geopresence.core.state import DurableState
from geopresence.model.records import TAGS, UserForgotten
from geopresence.storage.datadir import (
    CORRUPT_DIR,
    JOURNAL_PATTERN,
    SNAPSHOT_PATTERN,
    DataDirLock,
    fsync_dir,
    is_locked,
    numbered,
    state_dir,
    write_snapshot,
)
from geopresence.storage.history import history_dir
from geopresence.storage.history_care import Progress, scrub
from geopresence.storage.journal_file import append_offline, open_segment
from geopresence.storage.recovery import DataDirCorrupt, Recovered, load_offline
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
        "needs_repair": _refusal(data_dir, recovered),
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
    snapshot and prune (what a running server does every ``--snapshot-interval``), keeping
    the segment of any ``user_forgotten`` record: a forget cut short is the next start's to
    finish, and that record is how it knows (``Recovered.forgotten``). Raises
    ``DataDirLocked`` while a server runs on ``data_dir``, and ``DataDirCorrupt`` (changing
    nothing) where a start-up would refuse."""
    lock = DataDirLock(data_dir)
    try:
        started = time.monotonic()
        state, recovered = load_offline(data_dir, repair=True)
        snapshot = capture(state, recovered.last_seq, time.time())
        # A new (empty) segment first, as a running server starts one with each snapshot:
        # the snapshot then holds every record of the older segments, so damage found in
        # them later costs nothing (and pruning may delete them).
        os.close(open_segment(state_dir(data_dir), recovered.last_seq + 1))
        path, size = write_snapshot(data_dir, snapshot, keep_from=recovered.keep_from)
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


def forget_offline(data_dir: Path, user: str, progress: Progress | None = None) -> dict[str, Any]:
    """Offline: forget ``user`` in a stopped server's data dir, as ``DELETE /v1/users/{user}``
    does: journal a ``UserForgotten`` record (so that, if this is cut short, the next start
    finishes it), scrub the history files (``progress`` per file changed), write a snapshot
    of the state without the user and delete every older snapshot and segment. A data dir
    without ``state/`` (a Redis node's) only has its history scrubbed. Forgets an earlier
    run left unfinished (their records are still on disk) are finished first: the deletion
    takes their records too. Raises ``DataDirLocked`` while a server runs on it,
    ``DataDirCorrupt`` (changing nothing) where a start-up would refuse."""
    lock = DataDirLock(data_dir)
    try:
        started = time.monotonic()
        report: dict[str, Any] = {
            "user": user,
            **{"friends": 0, "groups": 0, "settings": False, "messages": 0},
            "snapshot": None,
            "problems": [],
        }
        with_state = state_dir(data_dir).is_dir()
        if with_state:
            state, recovered = load_offline(data_dir, repair=True)
            report["problems"] = recovered.problems
            unfinished = set(recovered.forgotten) - {user}
            if unfinished:  # apart, so that the report counts this user's lines only
                scrub(history_dir(data_dir), unfinished)
            seq = recovered.last_seq + 1
            segment = append_offline(data_dir, seq, UserForgotten(user))
            removed = state.forget(user)
            report.update(
                friends=len(removed.friends),
                groups=len(removed.groups),
                settings=removed.settings,
                messages=removed.messages,
            )
        scrubbed = scrub(history_dir(data_dir), [user], progress=progress)
        report["history"] = {
            "lines": scrubbed.lines,
            "rewritten": scrubbed.rewritten,
            "deleted": scrubbed.deleted,
        }
        if with_state:
            snapshot = capture(state, seq, time.time())
            path, _ = write_snapshot(data_dir, snapshot, purge=True)
            segment.unlink()  # it held the forget record only: the snapshot has it
            fsync_dir(segment.parent)
            report["snapshot"] = str(path)
        corrupt = data_dir / CORRUPT_DIR
        report["corrupt_dir"] = str(corrupt) if corrupt.is_dir() else None
        report["seconds"] = round(time.monotonic() - started, 3)
        return report
    finally:
        lock.close()


def _refusal(data_dir: Path, recovered: Recovered) -> str | None:
    """Why a start-up would refuse ``data_dir`` (``DataDirCorrupt``), if it would."""
    refused = DataDirCorrupt.of(data_dir, recovered.newer, recovered.corruption)
    return None if refused is None else str(refused)
