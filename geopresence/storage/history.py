"""The location history on disk: JSON Lines files, written in acceptance order, read back.

Layout (documented in docs/operations.md, "Location history"): ``DATA_DIR/history/`` holds
``locations-000001.jsonl``, ``locations-000002.jsonl``, ... Each line is one accepted location
update::

    {"user":"alice","lat":37.5665,"lon":126.978,"ts":1763769600.5}

Writes go through a buffered file object (no thread, no fsync: history is a record, not
acknowledged state) and are flushed by the server at least once a second and at shutdown.
A writer always starts a new file: for its first record, once the current file reaches
``max_bytes`` or holds ``max_age`` seconds of records, and after ``rotate`` (a forget
rewrites the files before it). So a closed file's modification time is the time of its
newest record (to the flush interval): what the retention goes by
(``geopresence.storage.history_care``), and a file never spans more than ``max_age``.

A line torn by a crash is skipped by readers (and dropped by a rewrite).
"""

from __future__ import annotations

import re
from collections.abc import Generator
from pathlib import Path
from typing import IO, Final

import attrs
import orjson

from geopresence.core.locations import Location
from geopresence.storage.datadir import numbered

FILE_PATTERN: Final = re.compile(r"^locations-(\d{6,})\.jsonl$")
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024


def history_dir(data_dir: Path) -> Path:
    return data_dir / "history"


def file_name(number: int) -> str:
    return f"locations-{number:06d}.jsonl"


class HistoryWriter:
    """Appends records to its current history file, starting a new one as said above.

    ``max_bytes``: size at which a file is full; ``max_age`` (seconds; None: no limit): the
    time from a file's first record after which the next record starts a new file, on the
    clock of the ``now`` given to ``append``."""

    def __init__(
        self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES, max_age: float | None = None
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.records = 0
        self._file: IO[bytes] | None = None
        self._number = 0
        """The current file's number, or the last one's once closed (0: none yet)."""
        self._size = 0
        self._started = 0.0
        self.last_write: float | None = None
        """``now`` of the last record appended to the current file (None: no file open)."""
        self.dirty = False

    @property
    def current(self) -> int | None:
        """The number of the file being written (None: none open)."""
        return self._number if self._file is not None else None

    def _open(self, now: float) -> IO[bytes]:
        self.directory.mkdir(parents=True, exist_ok=True)
        files = numbered(self.directory, FILE_PATTERN)
        self._number = max(files[-1][0] if files else 0, self._number) + 1
        self._size, self._started = 0, now
        return open(self.directory / file_name(self._number), "ab")

    def append(self, user: str, location: Location, now: float = 0.0) -> None:
        """Record one accepted update at ``now`` (buffered; see ``flush``)."""
        if self._file is not None and (
            self._size >= self.max_bytes
            or (self.max_age is not None and now - self._started >= self.max_age)
        ):
            self.close()
        if self._file is None:
            self._file = self._open(now)
        line = orjson.dumps(
            {"user": user, "lat": location.lat, "lon": location.lon, "ts": location.ts}
        )
        self._file.write(line + b"\n")
        self._size += len(line) + 1
        self.records += 1
        self.last_write = now
        self.dirty = True

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        self.dirty = False

    def close(self) -> None:
        """Flush and close the current file; the next record starts a new one."""
        if self._file is not None:
            file, self._file = self._file, None
            self.last_write = None
            file.close()
        self.dirty = False

    def rotate(self) -> int:
        """Close the current file, so that the files so far can be rewritten; returns the
        highest file number so far (every later record goes to a higher one)."""
        self.close()
        files = numbered(self.directory, FILE_PATTERN)
        return max(files[-1][0] if files else 0, self._number)


@attrs.frozen
class HistoryEntry:
    user: str
    lat: float
    lon: float
    ts: float


_PREFIX: Final = b'{"user":"'


def line_user(raw: bytes) -> str | None:
    """The user of a history line, cheaply (None: not a record, e.g. a torn line). Ids never
    hold a quote or a backslash, so the writer's lines start ``{"user":"<id>"``."""
    if raw.startswith(_PREFIX):
        end = raw.find(b'"', len(_PREFIX))
        if end > 0 and raw.rstrip().endswith(b"}"):
            return raw[len(_PREFIX) : end].decode("utf-8", "replace")
    entry = parse_line(raw)
    return None if entry is None else entry.user


def parse_line(raw: bytes) -> HistoryEntry | None:
    """The record of one line, or None for a torn or foreign line."""
    try:
        record = orjson.loads(raw)
        return HistoryEntry(
            str(record["user"]), float(record["lat"]), float(record["lon"]), float(record["ts"])
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def read_history(
    directory: Path, user: str | None = None, since: float | None = None
) -> Generator[HistoryEntry, None, None]:
    """Every readable record, oldest file first, optionally of one ``user`` and with
    ``ts >= since`` (blocking). Torn or foreign lines are skipped; a file deleted while it
    is read (the retention) ends it early."""
    for _, path in numbered(directory, FILE_PATTERN):
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            continue
        with handle:
            for raw in handle:
                if user is not None and line_user(raw) != user:
                    continue
                entry = parse_line(raw)
                if entry is None or (since is not None and entry.ts < since):
                    continue
                yield entry


class HistoryCursor:
    """``read_history`` of one user a batch at a time: each ``next_batch`` blocks (run it in
    a worker thread), so an export streams a long history without holding it."""

    def __init__(self, directory: Path, user: str) -> None:
        self._records = read_history(directory, user)

    def next_batch(self, limit: int) -> list[HistoryEntry]:
        """Up to ``limit`` more records; an empty list at the end."""
        batch: list[HistoryEntry] = []
        for entry in self._records:
            batch.append(entry)
            if len(batch) == limit:
                break
        return batch

    def close(self) -> None:
        self._records.close()
