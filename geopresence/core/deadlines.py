"""A sorted deadline index: which keys are due, in O(log n) per change.

Used for heartbeat deadlines, location TTLs and the strangers' expiry and pacing. Removing
or moving a key and popping the due ones never scans the whole population, unlike a sweep
over every entry.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

from sortedcontainers import SortedList

K = TypeVar("K", bound=Hashable)


class DeadlineIndex(Generic[K]):
    """Map of key -> deadline (seconds, any monotone clock) ordered by deadline.

    ``set`` inserts or moves a key, ``discard`` removes it, ``pop_due(now)`` removes and returns
    every key whose deadline is ``<= now`` in deadline order. Ties are broken by insertion
    sequence so keys never need to be comparable.
    """

    def __init__(self) -> None:
        self._deadline_of: dict[K, tuple[float, int]] = {}
        self._order: SortedList = SortedList()  # of (deadline, seq); values in _key_of
        self._key_of: dict[tuple[float, int], K] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._deadline_of)

    def __contains__(self, key: object) -> bool:
        return key in self._deadline_of

    def get(self, key: K) -> float | None:
        """The key's deadline, or None when it has none."""
        entry = self._deadline_of.get(key)
        return None if entry is None else entry[0]

    def set(self, key: K, deadline: float) -> None:
        """Give ``key`` the deadline ``deadline`` (replacing any earlier one)."""
        self.discard(key)
        self._seq += 1
        entry = (deadline, self._seq)
        self._deadline_of[key] = entry
        self._key_of[entry] = key
        self._order.add(entry)

    def discard(self, key: K) -> None:
        """Forget ``key``'s deadline; nothing happens if it has none."""
        entry = self._deadline_of.pop(key, None)
        if entry is not None:
            del self._key_of[entry]
            self._order.remove(entry)

    def next_deadline(self) -> float | None:
        """The earliest deadline, or None when the index is empty."""
        if not self._order:
            return None
        deadline: float = self._order[0][0]
        return deadline

    def pop_due(self, now: float) -> list[K]:
        """Remove and return the keys whose deadline is ``<= now``, earliest first."""
        due: list[K] = []
        while self._order and self._order[0][0] <= now:
            entry = self._order.pop(0)
            key = self._key_of.pop(entry)
            del self._deadline_of[key]
            due.append(key)
        return due
