"""Bounded per-connection send queue with latest-wins coalescing (sans-I/O).

Publishers never wait on a slow client: they ``push`` and move on. A frame with a
``coalesce_key`` carries state (a user's presence, a friend's position): it replaces an
undelivered frame with the same key in place, so a client that cannot keep up sees the latest
state instead of a backlog. Such frames have their own bound (``max_state``): there is at most
one per key, and a burst of distinct keys (a popular user's friends all logging in) must not
count against the queue of replies. Anything else that does not fit means the client is too
slow: ``push`` says so and the server closes the connection with 4008.
"""

from __future__ import annotations

from collections.abc import Hashable

import attrs

from geopresence.wire.outgoing import KeyPrefix, Outgoing


@attrs.define(slots=True)
class _Slot:
    item: Outgoing  # mutable so that a newer frame with the same key can take its place


class Outbox:
    """FIFO of ``Outgoing``: at most ``max_depth`` frames without a key, holding at most
    ``max_chars`` characters together (None: no such bound), and ``max_state`` frames with
    a key. The character bound is what keeps memory bounded when the frames are large
    (``sync`` replies of up to 512 KiB): a count alone would allow hundreds of MB.

    Invariant: at most one replaceable frame per coalesce key; order is the order of first
    push (a replacement keeps the replaced frame's position).
    """

    def __init__(
        self, max_depth: int, max_state: int | None = None, max_chars: int | None = None
    ) -> None:
        if max_depth < 1:
            raise ValueError("max_depth must be at least 1")
        self.max_depth = max_depth
        self.max_state = max_depth if max_state is None else max_state
        self.max_chars = max_chars
        self._chars = 0
        # A list, not a deque: an empty deque costs ~600 bytes, per connection.
        self._queue: list[_Slot] = []
        self._by_key: dict[Hashable, _Slot] = {}
        self._plain = 0
        self._state = 0
        self.coalesced = 0
        """How many frames were replaced by a newer one before delivery (for metrics)."""

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, item: Outgoing) -> bool:
        """Queue ``item``; False when it does not fit (the caller must drop the client)."""
        for prefix in item.seals:
            self._seal(prefix)
        key = item.coalesce_key
        if key is not None:
            slot = self._by_key.get(key)
            if slot is not None:
                slot.item = item
                self.coalesced += 1
                return True
            if self._state >= self.max_state:
                return False
            self._state += 1
        else:
            if self._plain >= self.max_depth:
                return False
            size = len(item.text)
            # One frame always fits an empty queue, however large: a reply must get out.
            if self.max_chars is not None and self._plain and self._chars + size > self.max_chars:
                return False
            self._plain += 1
            self._chars += size
        slot = _Slot(item)
        self._queue.append(slot)
        if key is not None:
            self._by_key[key] = slot
        return True

    def _seal(self, prefix: KeyPrefix) -> None:
        if not self._by_key:
            return
        if len(prefix) > 1:
            self._by_key.pop(prefix, None)  # a full key: O(1)
            return
        for key in [k for k in self._by_key if k[: len(prefix)] == prefix]:  # type: ignore[index]
            del self._by_key[key]

    def pop_all(self) -> list[Outgoing]:
        """Take every queued frame, oldest first."""
        items = [slot.item for slot in self._queue]
        self._queue.clear()
        self._by_key.clear()
        self._plain = self._state = self._chars = 0
        return items
