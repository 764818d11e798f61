"""Changes a node heard or made lately, for the reads of Redis in flight (cluster).

A read of Redis can be older than a change this node heard of: sent before the change was
written, or, on a Cluster, answered by a shard the change had not reached yet when its feed
entry (on another shard) was read. So the slices of state a node holds
(``FriendSlices``, ``GroupSlices``) keep every change they hear or make for ``RECENT_S``,
and while any read is in flight, and apply again over each read, in order, those since a
little before it started.
"""

from __future__ import annotations

import contextlib
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Final, Generic, TypeVar

RECENT_S: Final = 5.0
"""Seconds a change is kept to be applied again over a read: longer than a feed entry can
run ahead of its keys on a Cluster (they are written in one pipeline)."""

T = TypeVar("T")


class RecentChanges(Generic[T]):
    """Changes with when they were heard (``now``: a monotonic clock, seconds)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._recent: deque[tuple[float, T]] = deque()
        """The changes, oldest first."""
        self._read_starts: Counter[float] = Counter()
        """When each read in flight started."""

    def add(self, change: T) -> None:
        """Keep ``change``, and let go those no read can need any more."""
        now = self._now()
        recent = self._recent
        recent.append((now, change))
        oldest = min(self._read_starts, default=now)
        while recent and recent[0][0] < oldest - RECENT_S:
            recent.popleft()

    @contextlib.contextmanager
    def reading(self) -> Iterator[Callable[[], Iterator[T]]]:
        """For a read: keeps the changes it may need while it runs; gives the function that
        yields them, in order (those from ``RECENT_S`` before it started on)."""
        started = self._now()
        self._read_starts[started] += 1
        try:
            yield lambda: (change for at, change in self._recent if at >= started - RECENT_S)
        finally:
            self._read_starts[started] -= 1
            if self._read_starts[started] <= 0:
                del self._read_starts[started]
