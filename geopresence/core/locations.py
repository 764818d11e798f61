"""The location cache: each user's latest position, kept for ``ttl`` seconds (sans-I/O).

This is the design's "location cache with TTL" (a Redis key per user in the book). Expiry uses
a sorted deadline index, so ``expire(now)`` costs O(log n) per expired user and never scans the
population. The TTL restarts at each accepted update (like ``SET key value EX ttl``).
"""

from __future__ import annotations

import math

import attrs

from geopresence.core.deadlines import DeadlineIndex


@attrs.frozen(slots=True)
class Location:
    """A position (degrees) and the time it was taken (``ts``, epoch seconds).

    The radian forms used by every distance computation are derived once here, not once per
    friend a location is compared with.
    """

    lat: float
    lon: float
    ts: float
    phi: float = attrs.field(init=False, eq=False, repr=False)
    """Latitude in radians."""
    lam: float = attrs.field(init=False, eq=False, repr=False)
    """Longitude in radians."""
    cos_phi: float = attrs.field(init=False, eq=False, repr=False)
    xyz: tuple[float, float, float] = attrs.field(init=False, eq=False, repr=False)
    """Unit vector of the point: chord length between two points gives their exact
    great-circle distance, 2 R asin(chord / 2), with three multiplications."""

    @phi.default
    def _phi(self) -> float:
        return math.radians(self.lat)

    @lam.default
    def _lam(self) -> float:
        return math.radians(self.lon)

    @cos_phi.default
    def _cos_phi(self) -> float:
        return math.cos(self.phi)

    @xyz.default
    def _xyz(self) -> tuple[float, float, float]:
        return (
            self.cos_phi * math.cos(self.lam),
            self.cos_phi * math.sin(self.lam),
            math.sin(self.phi),
        )


class LocationCache:
    """user -> latest ``Location``, each expiring ``ttl`` seconds after it was stored."""

    def __init__(self, ttl: float) -> None:
        if not ttl > 0:
            raise ValueError("ttl must be positive")
        self.ttl = ttl
        self._locations: dict[str, Location] = {}
        self._deadlines: DeadlineIndex[str] = DeadlineIndex()

    def __len__(self) -> int:
        return len(self._locations)

    def update(self, user: str, location: Location, now: float) -> bool:
        """Store ``location`` at ``now``; False (and nothing stored) if it is older than the
        stored one (``ts`` strictly smaller): a late-arriving update never moves a user back."""
        current = self._locations.get(user)
        if current is not None and location.ts < current.ts:
            return False
        self._locations[user] = location
        self._deadlines.set(user, now + self.ttl)
        return True

    def get(self, user: str, now: float) -> Location | None:
        """The user's live location at ``now`` (None if absent or past its TTL)."""
        location = self._locations.get(user)
        if location is None:
            return None
        deadline = self._deadlines.get(user)
        if deadline is not None and deadline <= now:
            return None
        return location

    def deadline(self, user: str) -> float | None:
        """When the user's location expires unless renewed (None: the cache has none)."""
        return self._deadlines.get(user)

    def remove(self, user: str) -> bool:
        """Forget the user's location (it went offline); True if there was one."""
        return self.pop(user) is not None

    def pop(self, user: str) -> tuple[Location, float] | None:
        """Forget the user's location and return it with the time its TTL ends (None: the
        cache had none)."""
        deadline = self._deadlines.get(user)
        location = self._locations.pop(user, None)
        self._deadlines.discard(user)
        if location is None or deadline is None:
            return None
        return location, deadline

    def expire(self, now: float) -> list[str]:
        """Remove and return the users whose location TTL ended at or before ``now``."""
        users = self._deadlines.pop_due(now)
        for user in users:
            del self._locations[user]
        return users

    def next_deadline(self) -> float | None:
        """When ``expire`` next has work (None: the cache is empty)."""
        return self._deadlines.next_deadline()
