"""The stranger grid: visible users indexed by geohash, queried by exact distance (sans-I/O).

The strangers part places users at their COARSE positions (``geocells.coarse``: the centre of
their ~100 m cell) and queries from the asker's coarse position, so "exact" here means exact
between cell centres: nothing it returns depends on more than the cells of both parties.

Members are kept in one sorted list of ``(geohash, user)`` keys at ``INDEX_PRECISION``, so the
members of ANY cell are one contiguous key range (a cell is a prefix): listing them is
O(log n + k) and counting them is O(log n), whatever the cell's precision.

A radius query visits only the cells of the circle's cover (``geocells.cover``), never the
whole population. Each cell is classified against the circle: cells entirely inside are
counted without looking at their members; cells entirely outside are skipped; cells on the
rim are split into their 32 children down to ``LEAF_PRECISION``, whose members are checked
by exact distance. The nearest members for a page are then found best-first, so a page costs
the members near the centre plus the rim, not everyone inside.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Iterator, Set
from typing import Final

from sortedcontainers import SortedList

from geopresence.core.locations import Location
from geopresence.model.geo import EARTH_RADIUS_M, RADIUS_TOLERANCE_M, distance_within
from geopresence.model.geocells import INDEX_PRECISION, cell_box, cell_of, cover

LEAF_PRECISION: Final = 6
"""Rim cells are split down to this precision; their members are then checked one by one."""
_BASE32: Final = "0123456789bcdefghjkmnpqrstuvwxyz"
_END: Final = "~"  # sorts after every geohash character
_OPEN_AT: Final = 32
"""An inside cell with at most this many members is opened rather than split further."""
_SPLIT_RIM_AT: Final = 64
"""A rim cell with more members than this is split into its 32 children (classifying a cell
costs about as much as checking a few dozen members)."""


_Key = tuple[str, str, float, float, float]


@functools.lru_cache(maxsize=65536)
def _cell_spans(cell: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """((south, north), (west, east)) of a cell; cached: the same cells recur query after
    query in the same neighbourhood."""
    south, north, west, east = cell_box(cell)
    return (south, north), (west, east)


def _chord2(distance_m: float) -> float:
    """Squared chord length (unit sphere) of a great-circle distance."""
    return (2 * math.sin(min(math.pi, distance_m / EARTH_RADIUS_M) / 2)) ** 2


class StrangerGrid:
    """user -> Location for users visible to strangers, queryable by cell and by radius."""

    def __init__(self) -> None:
        # Keys are (geohash, user, x, y, z): ordered by cell, and carrying the unit vector
        # so that checking a member's distance needs no other lookup.
        self._keys: SortedList = SortedList()
        self._where: dict[str, tuple[_Key, Location]] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, user: object) -> bool:
        return user in self._where

    def get(self, user: str) -> Location | None:
        entry = self._where.get(user)
        return None if entry is None else entry[1]

    def cell(self, user: str) -> str | None:
        """The user's index geohash (every cell containing the user is a prefix of it)."""
        entry = self._where.get(user)
        return None if entry is None else entry[0][0]

    def place(self, user: str, location: Location) -> str | None:
        """Put ``user`` at ``location``; returns its previous index geohash (None if new)."""
        key: _Key = (cell_of(location.lat, location.lon, INDEX_PRECISION), user, *location.xyz)
        previous = self._where.get(user)
        if previous is not None:
            self._keys.remove(previous[0])
        self._keys.add(key)
        self._where[user] = (key, location)
        return None if previous is None else previous[0][0]

    def remove(self, user: str) -> str | None:
        """Take ``user`` out; returns the index geohash it had (None if absent)."""
        previous = self._where.pop(user, None)
        if previous is None:
            return None
        self._keys.remove(previous[0])
        return previous[0][0]

    def count(self, cell: str) -> int:
        """Members inside ``cell`` (any precision), O(log n)."""
        return int(self._keys.bisect_left((cell + _END,)) - self._keys.bisect_left((cell,)))

    def _in(self, cell: str) -> Iterator[_Key]:
        keys: Iterator[_Key] = self._keys.irange((cell,), (cell + _END,), inclusive=(True, False))
        return keys

    def members(self, cell: str) -> Iterator[tuple[str, Location]]:
        """(user, location) of the members inside ``cell``."""
        for key in self._in(cell):
            yield key[1], self._where[key[1]][1]

    def query(
        self, center: Location, radius_m: float, excluded: Set[str], need: int
    ) -> tuple[int, list[tuple[float, str, Location]]]:
        """Members within ``radius_m`` of ``center`` that are not in ``excluded``: their
        count, and the ``need`` nearest as (distance, user, location) sorted by distance then
        user id (all of them when fewer). ``excluded`` is checked member by member only where
        members are looked at, so it may be large (a user's friends).

        Members are compared by squared chord length to the centre (monotonic in distance);
        the great-circle distance is computed only for the members returned.
        """
        total, found, inside = self._count_cells(center, radius_m, excluded)
        # Excluded members are not in ``found``; take them out of the count too.
        total -= self._excluded_within(center, radius_m, excluded)
        self._open_nearest(center, inside, excluded, need, found)
        best = heapq.nsmallest(need, found)
        return total, [
            (
                2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(c2) / 2)),
                user,
                self._where[user][1],
            )
            for c2, user in best
        ]

    def _count_cells(
        self, center: Location, radius_m: float, excluded: Set[str]
    ) -> tuple[int, list[tuple[float, str]], list[tuple[float, str]]]:
        """Walk the cells of the circle's cover, splitting rim cells. Returns the members
        within ``radius_m`` of ``center``, excluded ones included: their count; (squared
        chord, user) of those checked one by one on the rim, excluded ones left out; and
        (lower bound of the distance in metres, cell) of the cells entirely inside, counted
        but not opened."""
        total = 0
        found: list[tuple[float, str]] = []  # (squared chord, user), within and not excluded
        inside: list[tuple[float, str]] = []  # (lower bound of distance, cell)
        cx, cy, cz = center.xyz
        # within(d, r) <=> chord <= 2 sin((r + tolerance) / 2R), for r up to half the globe
        half_angle = min(math.pi / 2, (radius_m + RADIUS_TOLERANCE_M) / (2 * EARTH_RADIUS_M))
        limit = (2 * math.sin(half_angle)) ** 2
        _, cells = cover(center.lat, center.lon, radius_m)
        pending = list(cells)
        while pending:
            cell = pending.pop()
            count = self.count(cell)
            if not count:
                continue
            low, high = _distance_bounds(center, cell)
            if low > radius_m + RADIUS_TOLERANCE_M:
                continue
            if high <= radius_m:
                total += count
                inside.append((low, cell))
            elif len(cell) < LEAF_PRECISION and count > _SPLIT_RIM_AT:
                pending.extend(cell + c for c in _BASE32)
            else:  # the rim: check each member
                for _, user, x, y, z in self._in(cell):
                    chord2 = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2
                    if chord2 <= limit:
                        total += 1
                        if user not in excluded:
                            found.append((chord2, user))
        return total, found, inside

    def _excluded_within(self, center: Location, radius_m: float, excluded: Set[str]) -> int:
        """How many members in ``excluded`` are within ``radius_m`` of ``center`` (looking
        up the smaller of ``excluded`` and the members)."""
        within = 0
        smaller = excluded if len(excluded) <= len(self._where) else self._where.keys() & excluded
        for user in smaller:
            spot = self.get(user)
            if spot is not None and distance_within(center, spot, radius_m) is not None:
                within += 1
        return within

    def _open_nearest(
        self,
        center: Location,
        inside: list[tuple[float, str]],
        excluded: Set[str],
        need: int,
        found: list[tuple[float, str]],
    ) -> None:
        """Add to ``found`` the (squared chord, user) of the members not in ``excluded`` of
        the ``inside`` cells ((lower bound of the distance in metres, cell); consumed) that
        may be among the ``need`` nearest to ``center``."""
        # Best-first over the inside cells: split the nearest one until cells are small,
        # open small ones, and stop once the need-th nearest member found so far is closer
        # than anything left could be.
        cx, cy, cz = center.xyz
        heapq.heapify(inside)
        nearest = heapq.nsmallest(need, (c2 for c2, _ in found))
        bound = [-c2 for c2 in nearest]  # max-heap (negated) of the ``need`` smallest
        heapq.heapify(bound)
        while inside:
            low, cell = heapq.heappop(inside)
            if len(bound) >= need and -bound[0] <= _chord2(low):
                break
            if len(cell) < INDEX_PRECISION and self.count(cell) > _OPEN_AT:
                for child in (cell + c for c in _BASE32):
                    if self.count(child):
                        heapq.heappush(inside, (_distance_bounds(center, child)[0], child))
                continue
            for _, user, x, y, z in self._in(cell):
                if user not in excluded:
                    chord2 = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2
                    found.append((chord2, user))
                    if len(bound) < need:
                        heapq.heappush(bound, -chord2)
                    elif chord2 < -bound[0]:
                        heapq.heapreplace(bound, -chord2)


def _distance_bounds(center: Location, cell: str) -> tuple[float, float]:
    """(lower bound of the distance from ``center`` to any point of ``cell``, distance to its
    farthest corner), metres.

    The farthest point of a latitude/longitude box from a point is one of its corners (for
    boxes narrower than 180° of longitude); corners are compared by chord length against the
    centre's unit vector (8 trigonometric calls per cell, one arcsine). The lower bound takes
    the larger of the latitude gap and the cross-track distance to the nearest bounding
    meridian.
    """
    (south, north), (west, east) = _cell_spans(cell)
    cx, cy, cz = center.xyz
    lat_s, lat_n = math.radians(south), math.radians(north)
    lon_w, lon_e = math.radians(west), math.radians(east)
    cos_s, sin_s, cos_n, sin_n = math.cos(lat_s), math.sin(lat_s), math.cos(lat_n), math.sin(lat_n)
    cos_w, sin_w, cos_e, sin_e = math.cos(lon_w), math.sin(lon_w), math.cos(lon_e), math.sin(lon_e)
    dzs, dzn = (sin_s - cz) ** 2, (sin_n - cz) ** 2
    farthest = max(
        (cos_s * cos_w - cx) ** 2 + (cos_s * sin_w - cy) ** 2 + dzs,
        (cos_s * cos_e - cx) ** 2 + (cos_s * sin_e - cy) ** 2 + dzs,
        (cos_n * cos_w - cx) ** 2 + (cos_n * sin_w - cy) ** 2 + dzn,
        (cos_n * cos_e - cx) ** 2 + (cos_n * sin_e - cy) ** 2 + dzn,
    )
    high = 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(farthest) / 2))
    lat = center.lat
    lat_gap = 0.0 if south <= lat <= north else min(abs(lat - south), abs(lat - north))
    low = EARTH_RADIUS_M * math.radians(lat_gap)
    lon = center.lon
    if not west <= lon <= east:
        gap = min((west - lon) % 360.0, (lon - east) % 360.0)
        if gap < 90.0:
            cross = math.asin(min(1.0, center.cos_phi * math.sin(math.radians(gap))))
            low = max(low, EARTH_RADIUS_M * cross)
    return low, high
