"""The reads of Redis in flight (cluster), and the changes that make one stale.

A node holds slices of the shared state (``FriendSlices``, ``GroupSlices``) and keeps them
current by reading them again whenever a notice says they changed. ``InFlight`` lets one
read at a time fetch a key that several holders want: the others wait for its outcome.
``Touches`` tells a read whether what it fetched may be older than a change this node
already applied or heard of while it ran: such a result is dropped and the key read again
(the next read starts after the change, so it sees it); ``Retries`` bounds how often in a
row, after which the result is applied and the key read once more.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator
from typing import Final, Generic, Protocol, TypeVar

import trio

K = TypeVar("K")


class Listener(Protocol):
    """Channels a node listens to for itself (``RedisBroker.hold``/``release``, nested)."""

    def hold(self, channel: str) -> None: ...

    def release(self, channel: str) -> None: ...

    async def subscribed(self) -> None:
        """Returns once every channel held so far is subscribed in Redis."""


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


class Touches(Generic[K]):
    """Changes to keys being read: a read's result for a key touched while it ran may be
    older than the change, so it is dropped and the key read again."""

    def __init__(self) -> None:
        self._counts: Counter[K] = Counter()
        """Touches of each key some read in flight follows."""
        self._readers: Counter[K] = Counter()
        self._everything = 0
        """Touches of every key at once (a forget: which keys name the user is unknown)."""

    def touch(self, keys: Iterable[K]) -> None:
        """``keys`` changed (in Redis, or in this node's state)."""
        for key in keys:
            if key in self._readers:
                self._counts[key] += 1

    def touch_everything(self) -> None:
        self._everything += 1

    @contextlib.contextmanager
    def reading(self, keys: Collection[K]) -> Iterator[Callable[[K], bool]]:
        """For a read of ``keys``: gives the function that says whether a key was left
        untouched since the read began (its result may be applied)."""
        before = {key: self._counts[key] for key in keys}
        everything = self._everything
        self._readers.update(keys)
        try:
            yield lambda key: self._everything == everything and self._counts[key] == before[key]
        finally:
            self._readers.subtract(keys)
            for key in keys:
                if self._readers[key] <= 0:
                    del self._readers[key]
                    self._counts.pop(key, None)


MAX_TOUCHED_READS: Final = 3
"""Reads of a key in a row that a change touched, after which the next result is applied
all the same and the key read again after it (a key that changes more often than a read
takes would otherwise never be read in)."""


class Retries(Generic[K]):
    """Counts the touched reads of each key in a row (``MAX_TOUCHED_READS``)."""

    def __init__(self) -> None:
        self._counts: Counter[K] = Counter()

    def retry(self, key: K) -> bool:
        """A read of ``key`` was touched: True to drop its result and read it again; False
        (the ``MAX_TOUCHED_READS``-th time in a row) to apply it and read it again after
        (the caller marks it stale)."""
        self._counts[key] += 1
        if self._counts[key] < MAX_TOUCHED_READS:
            return True
        del self._counts[key]
        return False

    def done(self, key: K) -> None:
        """A read of ``key`` was applied, or is not wanted any more."""
        self._counts.pop(key, None)
