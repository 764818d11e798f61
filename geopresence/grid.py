"""The stranger grid: visible users indexed by geohash, queried by exact distance (sans-I/O).

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

import heapq
import math
from collections.abc import Iterator, Set
from typing import Final

from sortedcontainers import SortedList

from geopresence.geo import EARTH_RADIUS_M, RADIUS_TOLERANCE_M, distance_within
from geopresence.geocells import INDEX_PRECISION, cell_box, cell_of, cover
from geopresence.locations import Location

LEAF_PRECISION: Final = 6
"""Rim cells are split down to this precision; their members are then checked one by one."""
_BASE32: Final = "0123456789bcdefghjkmnpqrstuvwxyz"
_END: Final = "~"  # sorts after every geohash character
_OPEN_AT: Final = 32
"""An inside cell with at most this many members is opened rather than split further."""
_SPLIT_RIM_AT: Final = 64
"""A rim cell with more members than this is split into its 32 children (classifying a cell
costs about as much as checking a few dozen members)."""


def _keep_smallest(heap: list[float], distance: float, need: int) -> None:
    """Keep the ``need`` smallest distances in ``heap`` (a max-heap of negated values)."""
    if len(heap) < need:
        heapq.heappush(heap, -distance)
    elif distance < -heap[0]:
        heapq.heapreplace(heap, -distance)


class StrangerGrid:
    """user -> Location for users visible to strangers, queryable by cell and by radius."""

    def __init__(self) -> None:
        self._keys: SortedList = SortedList()  # (geohash, user)
        self._where: dict[str, tuple[str, Location]] = {}

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
        return None if entry is None else entry[0]

    def place(self, user: str, location: Location) -> str | None:
        """Put ``user`` at ``location``; returns its previous index geohash (None if new)."""
        code = cell_of(location.lat, location.lon, INDEX_PRECISION)
        previous = self._where.get(user)
        if previous is not None:
            if previous[0] != code:
                self._keys.remove((previous[0], user))
                self._keys.add((code, user))
        else:
            self._keys.add((code, user))
        self._where[user] = (code, location)
        return None if previous is None else previous[0]

    def remove(self, user: str) -> str | None:
        """Take ``user`` out; returns the index geohash it had (None if absent)."""
        previous = self._where.pop(user, None)
        if previous is None:
            return None
        self._keys.remove((previous[0], user))
        return previous[0]

    def count(self, cell: str) -> int:
        """Members inside ``cell`` (any precision), O(log n)."""
        return int(self._keys.bisect_left((cell + _END,)) - self._keys.bisect_left((cell,)))

    def members(self, cell: str) -> Iterator[tuple[str, Location]]:
        """(user, location) of the members inside ``cell``."""
        for _, user in self._keys.irange((cell,), (cell + _END,), inclusive=(True, False)):
            yield user, self._where[user][1]

    def query(
        self, center: Location, radius_m: float, excluded: Set[str], need: int
    ) -> tuple[int, list[tuple[float, str, Location]]]:
        """Members within ``radius_m`` of ``center`` that are not in ``excluded``: their
        count, and at least the ``need`` nearest as (distance, user, location) sorted by
        distance then user id (all of them when fewer). ``excluded`` is checked member by
        member only where members are looked at, so it may be large (a user's friends)."""
        total = 0
        found: list[tuple[float, str, Location]] = []
        inside: list[tuple[float, str]] = []  # (lower bound of distance, cell)
        _, cells = cover(center.lat, center.lon, radius_m)
        pending = list(cells)
        # within(d, r) <=> chord <= 2 sin((r + tolerance) / 2R), for r up to half the globe
        half_angle = min(math.pi / 2, (radius_m + RADIUS_TOLERANCE_M) / (2 * EARTH_RADIUS_M))
        chord2_limit = (2 * math.sin(half_angle)) ** 2
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
            else:
                # The rim: exact check of each member by chord length (no trigonometry
                # unless the member is inside).
                cx, cy, cz = center.xyz
                for user, location in self.members(cell):
                    x, y, z = location.xyz
                    chord2 = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2
                    if chord2 <= chord2_limit:
                        total += 1
                        if user not in excluded:
                            distance = (
                                2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(chord2) / 2))
                            )
                            found.append((distance, user, location))
        # Excluded members are not in ``found``; take them out of the count too.
        smaller = excluded if len(excluded) <= len(self._where) else self._where.keys() & excluded
        for user in smaller:
            spot = self.get(user)
            if spot is not None and distance_within(center, spot, radius_m) is not None:
                total -= 1
        # Best-first over the inside cells: split the nearest one until cells are small,
        # open small ones, and stop once the need-th nearest member found so far is closer
        # than anything left could be.
        heapq.heapify(inside)
        nearest: list[float] = []  # max-heap (negated) of the ``need`` smallest distances
        for distance, _, _ in found:
            _keep_smallest(nearest, distance, need)
        while inside:
            low, cell = heapq.heappop(inside)
            if len(nearest) >= need and -nearest[0] <= low:
                break
            if len(cell) < INDEX_PRECISION and self.count(cell) > _OPEN_AT:
                for child in (cell + c for c in _BASE32):
                    if self.count(child):
                        heapq.heappush(inside, (_distance_bounds(center, child)[0], child))
                continue
            cx, cy, cz = center.xyz
            for user, location in self.members(cell):
                if user not in excluded:
                    x, y, z = location.xyz
                    chord = math.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2)
                    distance = 2 * EARTH_RADIUS_M * math.asin(min(1.0, chord / 2))
                    found.append((distance, user, location))
                    _keep_smallest(nearest, distance, need)
        found.sort(key=lambda entry: (entry[0], entry[1]))
        return total, found

    def users_within(self, center: Location, radius_m: float) -> Iterator[tuple[float, str]]:
        """Every member within ``radius_m`` (unsorted): a full walk of the cover."""
        _, cells = cover(center.lat, center.lon, radius_m)
        for cell in cells:
            for user, location in self.members(cell):
                distance = distance_within(center, location, radius_m)
                if distance is not None:
                    yield distance, user


def _distance_bounds(center: Location, cell: str) -> tuple[float, float]:
    """(lower bound of the distance from ``center`` to any point of ``cell``, distance to its
    farthest corner), metres.

    The farthest point of a latitude/longitude box from a point is one of its corners (for
    boxes narrower than 180° of longitude); corners are compared by chord length against the
    centre's unit vector (8 trigonometric calls per cell, one arcsine). The lower bound takes
    the larger of the latitude gap and the cross-track distance to the nearest bounding
    meridian.
    """
    south, north, west, east = cell_box(cell)
    cx, cy, cz = center.xyz
    lat_s, lat_n = math.radians(south), math.radians(north)
    lon_w, lon_e = math.radians(west), math.radians(east)
    cos_s, sin_s, cos_n, sin_n = math.cos(lat_s), math.sin(lat_s), math.cos(lat_n), math.sin(lat_n)
    cos_w, sin_w, cos_e, sin_e = math.cos(lon_w), math.sin(lon_w), math.cos(lon_e), math.sin(lon_e)
    farthest = max(
        (cos_lat * cos_lon - cx) ** 2 + (cos_lat * sin_lon - cy) ** 2 + (sin_lat - cz) ** 2
        for cos_lat, sin_lat in ((cos_s, sin_s), (cos_n, sin_n))
        for cos_lon, sin_lon in ((cos_w, sin_w), (cos_e, sin_e))
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
