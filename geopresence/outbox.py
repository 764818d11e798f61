"""Bounded per-connection send queue with latest-wins coalescing (sans-I/O).

Publishers never wait on a slow client: they ``push`` and move on. A message with a
``coalesce_key`` (presence of a user, later a friend's location) replaces an undelivered one
with the same key in place, so a client that cannot keep up sees the latest state instead of
a growing backlog. Anything else that does not fit means the client is too slow for reliable
traffic: ``push`` says so and the server closes the connection with 4008.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

import attrs


@attrs.frozen(slots=True)
class Outgoing:
    """One encoded server frame.

    ``text`` is the frame's JSON, encoded once and shared by every recipient of a fan-out.
    ``coalesce_key`` is set for state updates where only the latest matters.
    """

    text: str
    coalesce_key: Hashable | None = None
    seals: str | None = None
    """When set, undelivered frames whose coalesce key is a tuple starting with this tag can
    no longer be replaced: a newer state about the same thing is queued after this frame.
    A snapshot (e.g. a ``nearby_friends`` reply) seals the updates queued before it, so a
    later update can never jump ahead of the snapshot it supersedes."""


@attrs.define(slots=True)
class _Slot:
    item: Outgoing  # mutable so that a newer frame with the same key can take its place


class Outbox:
    """FIFO of ``Outgoing`` holding at most ``max_depth`` frames.

    Invariant: at most one queued frame per coalesce key; order is the order of first push
    (a replacement keeps the replaced frame's position, so a user's state never reorders
    ahead of replies queued after it).
    """

    def __init__(self, max_depth: int) -> None:
        if max_depth < 1:
            raise ValueError("max_depth must be at least 1")
        self.max_depth = max_depth
        self._queue: deque[_Slot] = deque()
        self._by_key: dict[Hashable, _Slot] = {}
        self.coalesced = 0
        """How many frames were replaced by a newer one before delivery (for metrics)."""

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, item: Outgoing) -> bool:
        """Queue ``item``; False when it does not fit (the caller must drop the client)."""
        if item.seals is not None:
            tag = item.seals
            for sealed in [k for k in self._by_key if isinstance(k, tuple) and k[:1] == (tag,)]:
                del self._by_key[sealed]
        key = item.coalesce_key
        if key is not None:
            slot = self._by_key.get(key)
            if slot is not None:
                slot.item = item
                self.coalesced += 1
                return True
        if len(self._queue) >= self.max_depth:
            return False
        slot = _Slot(item)
        self._queue.append(slot)
        if key is not None:
            self._by_key[key] = slot
        return True

    def pop_all(self) -> list[Outgoing]:
        """Take every queued frame, oldest first."""
        items = [slot.item for slot in self._queue]
        self._queue.clear()
        self._by_key.clear()
        return items
