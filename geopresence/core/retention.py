"""How long the location history is kept (sans-I/O): which files go, and when to look again.

The history is a series of files, each written from its first record to its newest and
never appended to afterwards (``geopresence.storage.history``). A file goes once everything
in it is at least ``retention`` old, that is once its newest record is; the file being
written stays until the writer has been idle that long. Files span at most ``file_span``
(a day, or a tenth of the retention if less), so a record is deleted at most about that long
after it passed the limit, and the check runs again exactly when the next file falls due.

Times are epoch seconds on the server's clock; ``retention`` is seconds, ``inf`` for ever
(nothing is deleted), 0 for nothing kept (nothing is written either).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final

import attrs

DAY: Final = 86_400.0
SPAN_PER_RETENTION: Final = 10
"""A file holds at most 1/10 of the retention: records outlive it by at most 10 %."""


@attrs.frozen
class HistoryFile:
    """One history file: its ``number`` and the time of its newest record (``newest``)."""

    number: int
    newest: float


def file_span(retention: float) -> float | None:
    """The longest time one history file may span (None: no limit needed, kept for ever)."""
    if math.isinf(retention):
        return None
    return min(DAY, retention / SPAN_PER_RETENTION)


def past_retention(files: Iterable[HistoryFile], now: float, retention: float) -> list[int]:
    """The numbers of ``files`` whose newest record is at least ``retention`` old at ``now``.
    ``files`` excludes the one being written."""
    if math.isinf(retention):
        return []
    limit = now - retention
    return [f.number for f in files if f.newest <= limit]


def next_check(
    files: Iterable[HistoryFile], writing_since: float | None, now: float, retention: float
) -> float | None:
    """When to look again (None: never, kept for ever): when the oldest of ``files`` (the
    ones kept) falls due, or the file being written would if no record came
    (``writing_since``: its last record's time); at the latest ``retention`` from now, when
    a file closed meanwhile can be due at the earliest."""
    if math.isinf(retention):
        return None
    due = [f.newest + retention for f in files]
    if writing_since is not None:
        due.append(writing_since + retention)
    return max(now, min([now + retention, *due]))
