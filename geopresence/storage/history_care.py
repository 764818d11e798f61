"""Keeping the location history within its limits (blocking: the server runs these in worker
threads): whole files deleted past the retention, files rewritten without forgotten users.

Retention goes by a file's modification time, the time of its newest record (a writer never
appends to a file it did not start, ``geopresence.storage.history``); which files are past
the limit is decided by ``geopresence.core.retention``.

A rewrite is atomic per file, so that a crash at any point leaves the old file or the new
one, never neither: the kept lines go to ``locations-N.jsonl.tmp``, which is fsynced, given
the old file's modification time (the retention is unchanged), renamed over the old file,
and the directory is fsynced. A file left with no line is deleted instead. A ``.tmp`` a crash
left behind is an unfinished rewrite (the old file is whole): ``remove_temporaries``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from pathlib import Path

import attrs

from geopresence.core.retention import HistoryFile
from geopresence.storage.datadir import fsync_dir, numbered, replace_file
from geopresence.storage.history import FILE_PATTERN, file_name, line_user

TEMPORARY_SUFFIX = ".tmp"
SCRUBBED_THROUGH = "scrubbed-through"
"""``history/scrubbed-through`` (multi-node mode): the forget time (epoch seconds) up to which
the users forgotten in the cluster were scrubbed from this node's files."""


def history_files(directory: Path) -> list[HistoryFile]:
    """The history files with their modification times (epoch seconds), oldest first."""
    files = []
    for number, path in numbered(directory, FILE_PATTERN):
        try:
            files.append(HistoryFile(number, path.stat().st_mtime))
        except FileNotFoundError:
            continue
    return files


def delete_files(directory: Path, numbers: Collection[int]) -> int:
    """Delete history files ``numbers`` durably; returns the bytes freed."""
    freed = 0
    for number in numbers:
        path = directory / file_name(number)
        try:
            freed += path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
    if numbers:
        fsync_dir(directory)
    return freed


def remove_temporaries(directory: Path) -> int:
    """Delete what rewrites cut short by a crash left (their old files are whole)."""
    if not directory.is_dir():
        return 0
    stale = list(directory.glob("locations-*.jsonl" + TEMPORARY_SUFFIX))
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        fsync_dir(directory)
    return len(stale)


@attrs.define
class Scrubbed:
    """What ``scrub`` did: ``lines`` removed (the users' and torn ones), files
    ``rewritten`` and ``deleted`` (left with no line)."""

    lines: int = 0
    rewritten: int = 0
    deleted: int = 0


Progress = Callable[[str, int], None]
"""Told (file name, lines removed) after each file a scrub changed."""


def scrub(
    directory: Path,
    users: Collection[str],
    *,
    through: int | None = None,
    progress: Progress | None = None,
) -> Scrubbed:
    """Remove every line of ``users`` from the history files numbered up to ``through``
    (None: all), and the lines that are not records (a torn line may hold part of one).
    Files without such a line are only read."""
    done = Scrubbed()
    remove_temporaries(directory)
    wanted = set(users)
    for number, path in numbered(directory, FILE_PATTERN):
        if through is not None and number > through:
            break
        try:
            removed = _scrub_file(path, wanted)
        except FileNotFoundError:
            continue  # deleted meanwhile (the retention)
        if removed is None:
            continue
        lines, deleted = removed
        done.lines += lines
        if deleted:
            done.deleted += 1
        else:
            done.rewritten += 1
        if progress is not None:
            progress(path.name, lines)
    return done


def _doomed(raw: bytes, users: set[str]) -> bool:
    user = line_user(raw)
    return user is None or user in users


def _scrub_file(path: Path, users: set[str]) -> tuple[int, bool] | None:
    """Rewrite ``path`` without the lines of ``users`` (see the module); None if it has
    none, else (lines removed, whether the file was deleted)."""
    with open(path, "rb") as source:
        if not any(_doomed(raw, users) for raw in source):
            return None
    temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
    removed = kept = 0
    with open(path, "rb") as source, open(temporary, "wb") as target:
        stat = os.fstat(source.fileno())
        for raw in source:
            if _doomed(raw, users):
                removed += 1
            else:
                target.write(raw)
                kept += 1
        target.flush()
        os.fsync(target.fileno())
    if not kept:
        temporary.unlink()
        path.unlink()
        fsync_dir(path.parent)
        return removed, True
    os.utime(temporary, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(temporary, path)
    fsync_dir(path.parent)
    return removed, False


def scrubbed_through(directory: Path) -> float:
    """The time in ``SCRUBBED_THROUGH`` (0 if absent or unreadable: scrub them all)."""
    try:
        return float((directory / SCRUBBED_THROUGH).read_text().strip())
    except (OSError, ValueError):
        return 0.0


def set_scrubbed_through(directory: Path, when: float) -> None:
    """Write ``SCRUBBED_THROUGH`` atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    replace_file(directory / SCRUBBED_THROUGH, f"{when!r}\n".encode())
