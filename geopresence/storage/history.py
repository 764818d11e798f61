"""The location history on disk: append-only JSON Lines files, rotated by size.

Layout (documented in docs/operations.md, "Location history"): ``DATA_DIR/history/`` holds
``locations-000001.jsonl``, ``locations-000002.jsonl``, ... Each line is one accepted location
update::

    {"user":"alice","lat":37.5665,"lon":126.978,"ts":1763769600.5}

Lines are in acceptance order. When the current file reaches ``max_bytes`` the next update
starts a new file; files are never rewritten. Writes go through a buffered file object (no
thread, no fsync: history is a record, not acknowledged state) and are flushed by the server
at least once a second and at shutdown. A line torn by a crash is terminated on the next
start and skipped by readers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
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


def _name(number: int) -> str:
    return f"locations-{number:06d}.jsonl"


class HistoryWriter:
    """Appends records to the newest history file, starting a new one past ``max_bytes``."""

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.directory = directory
        self.max_bytes = max_bytes
        self.records = 0
        self._file: IO[bytes] | None = None
        self._number = 0
        self._size = 0
        self.dirty = False

    def _open(self) -> IO[bytes]:
        self.directory.mkdir(parents=True, exist_ok=True)
        files = numbered(self.directory, FILE_PATTERN)
        if files:
            self._number, path = files[-1]
            self._size = path.stat().st_size
            if self._size >= self.max_bytes:
                self._number += 1
                self._size = 0
        else:
            self._number, self._size = 1, 0
        path = self.directory / _name(self._number)
        handle = open(path, "ab")  # noqa: SIM115 - kept open across calls
        if self._size:
            with open(path, "rb") as check:
                check.seek(-1, 2)
                if check.read(1) != b"\n":
                    handle.write(b"\n")  # terminate a line torn by a crash
                    self._size += 1
        return handle

    def append(self, user: str, location: Location) -> None:
        """Record one accepted update (buffered; see ``flush``)."""
        if self._file is None:
            self._file = self._open()
        elif self._size >= self.max_bytes:
            self._file.close()
            self._number += 1
            self._size = 0
            self._file = open(self.directory / _name(self._number), "ab")  # noqa: SIM115
        line = orjson.dumps(
            {"user": user, "lat": location.lat, "lon": location.lon, "ts": location.ts}
        )
        self._file.write(line + b"\n")
        self._size += len(line) + 1
        self.records += 1
        self.dirty = True

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        self.dirty = False

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.dirty = False


@attrs.frozen
class HistoryEntry:
    user: str
    lat: float
    lon: float
    ts: float


def read_history(
    directory: Path, user: str | None = None, since: float | None = None
) -> Iterator[HistoryEntry]:
    """Every readable record, oldest file first, optionally of one ``user`` and with
    ``ts >= since``. Torn or foreign lines are skipped."""
    for _, path in numbered(directory, FILE_PATTERN):
        with open(path, "rb") as handle:
            for raw in handle:
                try:
                    record = orjson.loads(raw)
                    entry = HistoryEntry(
                        str(record["user"]),
                        float(record["lat"]),
                        float(record["lon"]),
                        float(record["ts"]),
                    )
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue
                if user is not None and entry.user != user:
                    continue
                if since is not None and entry.ts < since:
                    continue
                yield entry
