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
from typing import Final

import attrs

from geopresence.core.retention import HistoryFile
from geopresence.storage.datadir import fsync_dir, numbered, replace_file
from geopresence.storage.history import FILE_PATTERN, file_name

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
    (None: all). A file's unterminated last line (torn by a crash) goes too if the file is
    rewritten or holds the start of such a line. Files without one are only read (at the
    speed of a substring search: a forget costs a read of the history, and a rewrite of the
    files the user is in)."""
    done = Scrubbed()
    remove_temporaries(directory)
    needles = [b'"user":"' + user.encode() + b'"' for user in sorted(set(users))]
    if not needles:
        return done
    for number, path in numbered(directory, FILE_PATTERN):
        if through is not None and number > through:
            break
        try:
            removed = _scrub_file(path, needles)
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


CHUNK: Final = 8 << 20
"""Bytes read at a time: a scrub never holds a whole (64 MiB) file."""


def _holds(path: Path, needles: list[bytes]) -> bool:
    """True if ``path`` holds a line of one of ``needles``, or ends with a torn line that
    starts one (``{"user":"alice`` cut off)."""
    overlap = max(len(n) for n in needles)
    window = b""
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            window = window[-overlap:] + chunk
            if any(n in window for n in needles):
                return True
    tail = window[window.rfind(b"\n") + 1 :]
    return any(n[:-1] in tail for n in needles)  # "" after a whole last line


def _drop_lines(block: bytes, needle: bytes) -> tuple[bytes, int]:
    """``block`` (whole lines) without the lines holding ``needle``, and how many went."""
    parts, position, removed = [], 0, 0
    while (hit := block.find(needle, position)) >= 0:
        start = block.rfind(b"\n", 0, hit) + 1
        end = block.find(b"\n", hit)
        end = len(block) if end < 0 else end + 1
        parts.append(block[position:start])
        position = end
        removed += 1
    if not removed:
        return block, 0
    parts.append(block[position:])
    return b"".join(parts), removed


def _scrub_file(path: Path, needles: list[bytes]) -> tuple[int, bool] | None:
    """Rewrite ``path`` without the lines holding ``needles`` (see the module); None if it
    holds none, else (lines removed, whether the file was deleted: nothing left)."""
    if not _holds(path, needles):
        return None
    temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
    removed = kept = 0
    with open(path, "rb") as source, open(temporary, "wb") as target:
        stat = os.fstat(source.fileno())
        carry = b""
        while True:
            chunk = source.read(CHUNK)
            data = carry + chunk
            cut = data.rfind(b"\n") + 1 if chunk else len(data)
            block, carry = data[:cut], data[cut:]
            for needle in needles:
                block, count = _drop_lines(block, needle)
                removed += count
            if not chunk and block and not block.endswith(b"\n"):
                # The last line, unterminated: torn by a crash unless it is a whole record.
                start = block.rfind(b"\n") + 1
                if not block.rstrip().endswith(b"}"):
                    block = block[:start]
                    removed += 1
            target.write(block)
            kept += len(block)
            if not chunk:
                break
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
