"""The durability seam: where acknowledged changes go before they are acknowledged.

The hub appends a record for every change it must not lose (today: chat messages) and
acknowledges it only once the journal says it is durable. ``MemoryJournal`` is the embedded
default without a data directory: a record is "stored under the configured durability" as
soon as it is in memory, so it is durable at once. A file journal (length + checksum per
record, fsync policy always/everysec/no) implements the same contract.
"""

from __future__ import annotations

from typing import Protocol

from geopresence.chat_store import ChatMessage

JournalRecord = ChatMessage
"""What the hub journals (grows as more of the state becomes durable)."""


class Journal(Protocol):
    """An append-only log of durable changes.

    Contract:
    - ``append(record)`` never blocks and returns the record's sequence number: 1 for the
      first record, then strictly increasing by one.
    - ``durable_seq`` is the highest sequence number such that it and every record before it
      survive a crash under the configured policy. It only grows.
    - When ``durable_seq`` grows other than inside ``append`` (a background flush), the
      owner calls ``Hub.journal_advanced(now)`` so the hub can acknowledge what became durable.
    """

    def append(self, record: JournalRecord) -> int: ...

    @property
    def durable_seq(self) -> int: ...


class MemoryJournal:
    """Keeps nothing: without a data directory, memory is the configured durability."""

    def __init__(self) -> None:
        self._seq = 0

    def append(self, record: JournalRecord) -> int:
        self._seq += 1
        return self._seq

    @property
    def durable_seq(self) -> int:
        return self._seq
