"""Which chat message ids no node can still commit below (sans-I/O; several nodes only).

A device syncs with ``after`` = the highest message id it has seen (the protocol's
``cur_max_message_id``), so it must never see an id while a lower one can still appear:
with several nodes, node A may assign id 100, node B assign 101 and commit it at once, and
A commit 100 a second later; a device that got 101 first would sync after 101 and skip 100.

So each node tells the others, on every feed entry, its *watermark*: the smallest id it
could still commit after that entry (the smallest id issuable when the entry was queued:
every id assigned before is written ahead of it, every later one is at least that). A node
with nothing to write for ``WATERMARK_INTERVAL`` (``QUIET_WATERMARK_INTERVAL`` while no chat
goes on) writes an entry for its watermark alone. On a node, an id is
*stable* below ``min(its own lowest pending id or its smallest issuable id, every other
live node's latest watermark)``; chat holds back what is not stable yet: live deliveries,
``sent`` acks and ``sync`` pages (``Chat``). A node silent for ``silence`` seconds (its
lease, at least 3 s) is gone: it no longer holds the others back. A node that stopped
cleanly says so (the ``LEFT`` watermark of ``geopresence.cluster.watermarks``); one that
died never acknowledged what it assigned and did not write; one that only stalled that long
and then writes an older id can make a cursor pass it (docs/cluster.md, Limits).

A node that starts writes its first entry before it serves, so every node reads it before
any message the new node can commit (the feed is one ordered stream).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Final

from geopresence.model.snowflake import min_id_at

WATERMARK_INTERVAL: Final = 0.1
"""Seconds an idle node waits before it writes an entry for its watermark alone while chat
is active (a message on the feed in the last ``CHAT_ACTIVE``): how long another node's chat
may wait for this one (the feed's latency comes on top)."""
QUIET_WATERMARK_INTERVAL: Final = 1.0
"""The same when no message went through the feed for ``CHAT_ACTIVE`` seconds: a quiet
cluster's first message may wait this long; the feed stays nearly silent meanwhile."""
CHAT_ACTIVE: Final = 10.0


class Horizon:
    """The other nodes' watermarks, as their feed entries carry them. ``clock`` is the
    node's (epoch seconds), injected: this module reads no clock of its own."""

    def __init__(self, clock: Callable[[], float], silence: float) -> None:
        self._clock = clock
        self.silence = silence
        self._marks: dict[int, tuple[int, float]] = {}
        """node id -> (its latest watermark, when it was heard)."""
        self._holds: dict[int, int] = {}
        """token -> an id no delivery may reach while it holds (``hold``)."""
        self._tokens = itertools.count()
        self.on_gone: Callable[[int, int], None] | None = None
        """Called with a node that fell silent and its last watermark, as it stops holding
        the others back (before anything above that watermark can be released)."""
        self.on_wait: Callable[[], None] | None = None
        """Called as ``when_stable`` makes an action wait (the other nodes' watermarks are
        wanted now: ``Watermarks`` defers them while nothing waits)."""
        self._held: list[tuple[int, int, Callable[[], None]]] = []
        """(message id, arrival, what to do) waiting for the id to be stable: a heap."""
        self._order = itertools.count()

    def heard(self, node: int, watermark: int) -> None:
        """A feed entry of ``node`` said it commits no id below ``watermark`` any more."""
        current = self._current(node)
        best = watermark if current is None else max(current, watermark)
        self._marks[node] = (best, self._clock())

    def _current(self, node: int) -> int | None:
        """``node``'s watermark, unless it was silent for longer than ``silence`` (then it
        is gone first, ``on_gone``: a node that died and came back before anything asked
        is still a death, whatever it says now)."""
        current = self._marks.get(node)
        if current is None:
            return None
        if self._clock() - current[1] > self.silence:
            del self._marks[node]
            if self.on_gone is not None:
                self.on_gone(node, current[0])
            return None
        return current[0]

    def knows(self, node: int) -> bool:
        """Whether a watermark of ``node`` bounds the horizon (it is live, heard lately)."""
        return node in self._marks

    def alive(self, node: int) -> None:
        """``node`` wrote a feed entry just read (its watermark not applied yet: it waits
        for a round trip, ``Watermarks``): not silent, whatever that wait."""
        current = self._current(node)
        if current is not None:
            self._marks[node] = (current, self._clock())

    def left(self, node: int) -> None:
        """``node`` stopped cleanly: it commits nothing more (until it writes a watermark
        again, as a new run)."""
        self._marks.pop(node, None)

    def stable_below(self, own_lowest_pending: int | None) -> int:
        """Every message with an id below this is committed and received: this node's
        own lowest pending id (None: none pending) and the others' watermarks bound it, and
        the ``hold`` in force."""
        bound = self.committed_below(own_lowest_pending)
        return min(bound, *self._holds.values()) if self._holds else bound

    def hold(self, below: int) -> int:
        """Release nothing at or above ``below`` until ``unhold`` (a node catching up on
        messages it may have missed: they must be shown before any later one)."""
        token = next(self._tokens)
        self._holds[token] = below
        return token

    def unhold(self, token: int, own_lowest_pending: int | None) -> None:
        """End ``hold``'s hold, and run what it held that is stable now."""
        self._holds.pop(token, None)
        self.release(own_lowest_pending)

    def committed_below(self, own_lowest_pending: int | None) -> int:
        """``stable_below`` but for the holds: every message below it is committed."""
        for node in list(self._marks):
            self._current(node)  # a node silent too long is gone (``on_gone``)
        bound = min_id_at(self._clock()) if own_lowest_pending is None else own_lowest_pending
        return min([bound, *(mark for mark, _ in self._marks.values())])

    def when_stable(
        self, message_id: int, own_lowest_pending: int | None, action: Callable[[], None]
    ) -> None:
        """Run ``action`` (a delivery, an ack) now if ``message_id`` is stable, else once it
        is: ``release`` runs what waited in id order."""
        if message_id < self.stable_below(own_lowest_pending):
            action()
        else:
            heapq.heappush(self._held, (message_id, next(self._order), action))
            if self.on_wait is not None:
                self.on_wait()

    def release(self, own_lowest_pending: int | None) -> None:
        """Run, in id order, what waited for ids that are stable now."""
        if not self._held:
            return
        stable = self.stable_below(own_lowest_pending)
        while self._held and self._held[0][0] < stable:
            heapq.heappop(self._held)[2]()

    @property
    def held(self) -> int:
        """How many deliveries and acks wait now."""
        return len(self._held)
