"""The reads of Redis in flight (cluster), and the changes a node heard or made meanwhile.

``InFlight`` lets one read at a time fetch a key that several holders want: the others wait
for its outcome.

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
from collections.abc import Awaitable, Callable, Collection, Iterator
from typing import Final, Generic, TypeVar

import trio

RECENT_S: Final = 5.0
"""Seconds a change is kept to be applied again over a read: longer than a feed entry can
run ahead of its keys on a Cluster (they are written in one pipeline)."""

T = TypeVar("T")
K = TypeVar("K")


class InFlight(Generic[K]):
    """The keys being read, each with the event set once its read is over (or failed)."""

    def __init__(self) -> None:
        self._events: dict[K, trio.Event] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._events

    async def until_done(
        self, missing: Callable[[], list[K]], read: Callable[[list[K]], Awaitable[None]]
    ) -> None:
        """Until ``missing()`` is empty: wait for the reads in flight of the keys it lists,
        or ``read`` them (raises what ``read`` raises)."""
        while keys := missing():
            waiting = [self._events[key] for key in keys if key in self._events]
            if waiting:  # another holder is reading them: wait for its read
                for event in waiting:
                    await event.wait()
                continue
            await read(keys)

    @contextlib.contextmanager
    def reading(self, keys: Collection[K]) -> Iterator[None]:
        """For the block, ``keys`` are being read."""
        done = trio.Event()
        for key in keys:
            self._events[key] = done
        try:
            yield
        finally:
            for key in keys:
                del self._events[key]
            done.set()


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
