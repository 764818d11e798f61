"""Where ``nearby_people`` searches: the ``StrangerIndex`` seam and its one-node implementation.

The strangers part keeps its own grid of the visible users whose moves it handles (coarse
positions, ``core.grid``). On one node that grid holds every visible user, so the search is a
query of it (``GridIndex``). With several nodes each node's grid holds only its own users',
and the index is shared (``geopresence.cluster.redis_strangers``: a GEO set per geohash
cell in Redis): the strangers part tells it what its users do (``entered``, ``stayed``,
``left``), with when strangers stop seeing each (``core.stranger_expiry``), and asks it to
search, whose answer may come later (a Redis round trip).
"""

from __future__ import annotations

from collections.abc import Callable, Set
from typing import Protocol

from geopresence.core.grid import StrangerGrid
from geopresence.core.locations import Location

Found = list[tuple[float, str, Location]]
"""(distance in metres, user, coarse location with the ``ts`` shown), nearest first."""

Answer = Callable[[tuple[int, Found] | None], None]
"""Takes a search's result, ``(total, nearest)``, or None if it could not be made."""


class StrangerIndex(Protocol):
    """Visible users' coarse positions, searchable by distance (times: server seconds)."""

    def entered(self, user: str, spot: Location, left: str | None, until: float) -> None:
        """``user``, visible to strangers and handled here, is now at ``spot`` (a coarse
        cell's centre; ``spot.ts`` is the update that entered it), leaving the cell ``left``
        (an index geohash, ``core.grid``; None: it was nowhere); searches find it until
        ``until`` (server seconds: its strangers' deadline) unless told again."""

    def stayed(self, user: str, spot: Location, until: float) -> None:
        """``user`` moved within its coarse cell ``spot``: searches find it, as before, until
        ``until`` (its strangers' deadline, renewed or not; nothing else a stranger sees
        changes)."""

    def left(self, user: str, cell: str) -> None:
        """``user`` is no longer visible at ``cell`` (an index geohash): it went offline,
        hid, was forgotten, or its location expired."""

    def lapsed(self, user: str, ts: float, then: Callable[[], None]) -> None:
        """``user``'s location, whose last update this node knew had ``ts``, has expired by
        this node's reckoning, but this node stopped keeping it current: call ``then`` (the
        watchers are told) unless a node renewed it with a later update since, which that
        node keeps current."""

    def search(
        self, center: Location, radius_m: float, excluded: Set[str], need: int, answer: Answer
    ) -> None:
        """Visible users (not in ``excluded``) whose coarse position is within ``radius_m``
        of ``center``: ``answer`` gets their count and the ``need`` nearest, as
        ``StrangerGrid.query`` gives them, now or later (None: the search failed)."""


class GridIndex:
    """One node: its grid holds every visible user, so the search is a query of it (at
    once) and the grid's own updates are all there is to record."""

    def __init__(self, grid: StrangerGrid) -> None:
        self._grid = grid

    def entered(self, user: str, spot: Location, left: str | None, until: float) -> None:
        return None  # the grid's own: ``Strangers`` takes the user out at ``until``

    def stayed(self, user: str, spot: Location, until: float) -> None:
        return None

    def left(self, user: str, cell: str) -> None:
        return None

    def lapsed(self, user: str, ts: float, then: Callable[[], None]) -> None:
        then()  # no other node could have renewed it

    def search(
        self, center: Location, radius_m: float, excluded: Set[str], need: int, answer: Answer
    ) -> None:
        answer(self._grid.query(center, radius_m, excluded, need))
