"""Changes a node heard or made lately, for the reads of Redis in flight (cluster).

A read of Redis can be older than a change this node hears or makes while it is in flight.
So the slices of state a node holds (``FriendSlices``, ``GroupSlices``) keep the changes they
hear or make while any read is in flight (and ``RECENT_S`` more), and apply again over each
read, in order:

- the changes heard or made since the read's subscriptions were confirmed (``Reading.mark``):
  one published earlier was written before it was published, so the read has it, or a later
  one heard since; applying an earlier one again could undo a later one this node never
  heard (it did not listen to that channel then);
- the changes that travel on the feed (a forget), from ``RECENT_S`` before the read: on a
  Cluster a feed entry can be read before its keys (another shard) are.
"""

from __future__ import annotations

import contextlib
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Final, Generic, TypeVar

RECENT_S: Final = 5.0
"""Seconds a feed change is kept to be applied again over a read: longer than a feed entry
can run ahead of its keys on a Cluster (they are written in one pipeline)."""

T = TypeVar("T")


class Reading(Generic[T]):
    """The changes one read needs applied again over it."""

    def __init__(self, changes: RecentChanges[T], started: float) -> None:
        self._changes = changes
        self._started = started
        self._marked: int | None = None

    def mark(self) -> None:
        """The read's subscriptions are confirmed: from now on every change is heard."""
        self._marked = self._changes.added

    def __call__(self) -> list[T]:
        """The changes to apply again over the read, oldest first."""
        return self._changes.since(self._marked, self._started - RECENT_S)


class RecentChanges(Generic[T]):
    """Changes with when they were heard (``now``: a monotonic clock, seconds); ``on_feed``
    tells those that travel on the feed."""

    def __init__(self, now: Callable[[], float], on_feed: Callable[[T], bool]) -> None:
        self.now = now
        self._on_feed = on_feed
        self._recent: deque[tuple[float, int, T]] = deque()
        """The changes, oldest first, with when and their number."""
        self.added = 0
        """How many changes were added so far (the number of the latest)."""
        self._read_starts: Counter[float] = Counter()
        """When each read in flight started."""

    def add(self, change: T) -> None:
        """Keep ``change``, and let go those no read can need any more."""
        now = self.now()
        recent = self._recent
        self.added += 1
        recent.append((now, self.added, change))
        oldest = min(self._read_starts, default=now)
        while recent and recent[0][0] < oldest - RECENT_S:
            recent.popleft()

    def since(self, after: int | None, feed_since: float) -> list[T]:
        """The changes added after the ``after``-th (None: those at or after
        ``feed_since``), and the feed's at or after ``feed_since``, oldest first."""
        return [
            change
            for at, number, change in self._recent
            if (number > after if after is not None else at >= feed_since)
            or (at >= feed_since and self._on_feed(change))
        ]

    @contextlib.contextmanager
    def reading(self) -> Iterator[Reading[T]]:
        """For a read: keeps the changes it may need while it runs (``Reading``)."""
        started = self.now()
        self._read_starts[started] += 1
        try:
            yield Reading(self, started)
        finally:
            self._read_starts[started] -= 1
            if self._read_starts[started] <= 0:
                del self._read_starts[started]
