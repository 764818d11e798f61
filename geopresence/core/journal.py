"""The durability seam (sans-I/O): the journal the hub writes every change to.

The hub appends a record (``geopresence.model.records``) for every change it must not lose and
acknowledges the change only once the journal says it is durable. ``MemoryJournal`` is the
seam's in-memory implementation (``--in-memory``, and tests of the core): a record is
"stored under the configured durability" as soon as it is in memory. The file journal
(``geopresence.storage.journal_file.FileJournal``) writes ``storage.journal_format``.
"""

from __future__ import annotations

from typing import Protocol

from geopresence.model.records import Record


class Journal(Protocol):
    """An append-only log of durable changes.

    Contract:
    - ``append(record)`` never blocks and returns the record's sequence number: one more
      than the previous record's (the first record of a fresh journal gets 1).
    - ``durable_seq`` is the highest sequence number such that it and every record before it
      survive a crash under the configured policy. It only grows.
    - When ``durable_seq`` grows other than inside ``append`` (a background flush), the
      owner calls ``Hub.journal_advanced(now)`` so the hub can acknowledge what became durable.
    """

    def append(self, record: Record) -> int: ...

    @property
    def durable_seq(self) -> int: ...


class MemoryJournal:
    """Keeps nothing: without persistence, memory is the configured durability."""

    def __init__(self, last_seq: int = 0) -> None:
        self._seq = last_seq

    def append(self, record: Record) -> int:
        self._seq += 1
        return self._seq

    @property
    def durable_seq(self) -> int:
        return self._seq
