"""When strangers stop seeing a visible user (sans-I/O): a deadline of its own, not its location's.

A location lives ``ttl`` seconds from its last accepted update (``core.locations``). Ending a
stranger's view on that deadline would tell watchers when the user last sent an update, also
one inside its coarse cell, which strangers are not shown (not even its timing). So the view
strangers have of a visible user (the watchers' ``stranger_gone`` ``expired``, and
``nearby_people``) ends on a deadline that depends only on what they already see and on
coarse time:

- the update that enters a cell (published to strangers), or the one shown when the user
  turns visible, accepted at server time ``t``: the deadline is ``t + ttl``, the location's;
- each later update inside the cell, accepted at ``u``: the deadline becomes, if that is
  later, ``renewed_until(u)``: the latest multiple of ``ttl / 4`` (server seconds from the
  epoch) not after ``u + ttl / 2``.

So the deadline is never after the location's (``u + ttl``); an update keeps the user seen
for more than ``ttl / 4`` after it, so one sending an update at least every ``ttl / 4`` is
never dropped; and a watcher learns nothing of the updates in the first ``ttl / 2`` after
the entry and, afterwards, only whether the user sent an update in the last ``ttl / 2``, to
within ``ttl / 4``: when it leaves, its last update came between ``ttl / 2`` and
``ttl / 4`` before.

Every node that saw the user enter its cell (its moves are replicated with their origin's
time) reaches the same deadline. A node that starts keeping the user current while it is
inside a cell (a session of the user opens there) did not see the entry: it takes the step
rule alone (``joined``), which can end the view earlier, never more finely than ``ttl / 4``.
"""

from __future__ import annotations

import math
from typing import Final

from geopresence.core.deadlines import DeadlineIndex

STEP_OF_TTL: Final = 0.25
"""A renewed deadline falls on a multiple of this fraction of the location TTL."""

AHEAD_OF_TTL: Final = 0.5
"""... at most this fraction of the TTL after the update that renews it."""


def renewed_until(at: float, ttl: float) -> float:
    """The deadline an update accepted at ``at`` (server seconds) gives a visible user at
    most: the latest multiple of ``ttl * STEP_OF_TTL`` not after ``at + ttl * AHEAD_OF_TTL``,
    which is more than ``ttl * (AHEAD_OF_TTL - STEP_OF_TTL)`` after ``at``."""
    step = ttl * STEP_OF_TTL
    return math.floor((at + ttl * AHEAD_OF_TTL) / step) * step


class StrangerExpiry:
    """The strangers' deadline of each visible user in this node's grid, and the lapses of
    users it dropped while their location was live (several nodes: ``Strangers``)."""

    def __init__(self, ttl: float) -> None:
        if not ttl > 0:
            raise ValueError("ttl must be positive")
        self.ttl = ttl
        """The location TTL, seconds."""
        self._until: DeadlineIndex[str] = DeadlineIndex()
        self._lapsing: dict[str, tuple[str, float]] = {}
        """Users dropped from the grid while live: user -> (index geohash, ``ts`` of the last
        update)."""
        self._lapse_due: DeadlineIndex[str] = DeadlineIndex()
        """... and when each would have left strangers' views unless renewed."""

    def entered(self, user: str, until: float) -> float:
        """``user`` entered a cell as strangers see it (a published update, or turned
        visible), its location live until ``until``: that is its deadline, returned."""
        self._until.set(user, until)
        return until

    def joined(self, user: str, at: float) -> float:
        """This node starts keeping ``user`` current inside its cell from an update accepted
        at ``at``, without having seen it enter: its deadline is ``renewed_until(at)``."""
        until = renewed_until(at, self.ttl)
        self._until.set(user, until)
        return until

    def renewed(self, user: str, at: float) -> float:
        """An update of ``user`` accepted at ``at`` inside its cell: its deadline, moved to
        ``renewed_until(at)`` if that is later (it had none: as ``joined``)."""
        until = self._until.get(user)
        later = renewed_until(at, self.ttl)
        if until is None or later > until:
            self._until.set(user, later)
            return later
        return until

    def ended(self, user: str, now: float) -> bool:
        """Whether ``user``'s deadline is ``now`` or before (due, ``pop_due`` not yet run)."""
        until = self._until.get(user)
        return until is not None and until <= now

    def until(self, user: str) -> float | None:
        """``user``'s deadline (None: none)."""
        return self._until.get(user)

    def discard(self, user: str) -> float | None:
        """``user`` left the grid: forget its deadline, returned (None: it had none)."""
        until = self._until.get(user)
        self._until.discard(user)
        return until

    def lapse(self, user: str, code: str, ts: float, until: float) -> None:
        """``user``, at the index geohash ``code`` with its last update's ``ts``, was dropped
        from the grid while live: ask at ``until`` whether a node renewed it since."""
        self._lapsing[user] = (code, ts)
        self._lapse_due.set(user, until)

    def unlapse(self, user: str) -> None:
        """No lapse of ``user`` to watch any more (back in the grid, or forgotten)."""
        if self._lapsing.pop(user, None) is not None:
            self._lapse_due.discard(user)

    def pop_due(self, now: float) -> tuple[list[str], list[tuple[str, str, float]]]:
        """The users whose deadline came by ``now`` (forgotten here: take them out of the
        grid), and the lapses due, as (user, index geohash, ``ts``)."""
        lapsed = []
        for user in self._lapse_due.pop_due(now):
            code, ts = self._lapsing.pop(user)
            lapsed.append((user, code, ts))
        return self._until.pop_due(now), lapsed

    def next_deadline(self) -> float | None:
        """When ``pop_due`` has work next (None: nothing pending)."""
        deadlines = (self._until.next_deadline(), self._lapse_due.next_deadline())
        return min((d for d in deadlines if d is not None), default=None)
