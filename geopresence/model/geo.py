"""Great-circle geometry (sans-I/O): the contract's distance and coordinate rules.

Distance is haversine on a sphere of the mean Earth radius (docs/protocol.md, conventions), so every
implementation of the contract computes the same metres for the same two points.
"""

from __future__ import annotations

import math
from typing import Final, Protocol

EARTH_RADIUS_M: Final = 6_371_008.8
"""Mean Earth radius (IUGG R1), metres."""

RADIUS_TOLERANCE_M: Final = 1e-3
"""A point counts as within a radius up to 1 mm beyond it, so that a friend placed exactly on
the radius by another haversine implementation (float rounding differs by ~1e-9 relative) is
inside, as the contract's ``within`` means."""


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two WGS-84 points given in degrees.

    Correct across the antimeridian (179.99 vs -179.99 is 0.02° of longitude apart) and at the
    poles; symmetric in its two points.
    """
    phi1 = math.radians(lat1)
    phi2 = math.radians(lat2)
    dphi = phi2 - phi1
    dlambda = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


class RadianPoint(Protocol):
    """A point with its latitude ``phi`` and longitude ``lam`` in radians, and cos(phi)."""

    @property
    def phi(self) -> float: ...

    @property
    def lam(self) -> float: ...

    @property
    def cos_phi(self) -> float: ...


def distance_within(a: RadianPoint, b: RadianPoint, radius_m: float) -> float | None:
    """The haversine distance between two points with precomputed radians, or None when it
    exceeds ``radius_m`` (see ``within``). The latitude difference alone is a lower bound of
    the great-circle distance, so most far-away points are rejected without a square root."""
    dphi = b.phi - a.phi
    limit = radius_m + RADIUS_TOLERANCE_M
    if EARTH_RADIUS_M * abs(dphi) > limit:
        return None
    h = math.sin(dphi / 2) ** 2 + a.cos_phi * b.cos_phi * math.sin((b.lam - a.lam) / 2) ** 2
    distance = 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))
    return distance if distance <= limit else None


def within(distance_m: float, radius_m: float) -> bool:
    """True if ``distance_m`` is within ``radius_m`` (inclusive, see ``RADIUS_TOLERANCE_M``)."""
    return distance_m <= radius_m + RADIUS_TOLERANCE_M


def coordinate_problem(lat: float, lon: float) -> str | None:
    """Why (lat, lon) is not a valid coordinate, or None: finite, lat in [-90, 90],
    lon in [-180, 180]."""
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return "lat and lon must be finite numbers"
    if not -90.0 <= lat <= 90.0:
        return f"lat must be in [-90, 90], got {lat}"
    if not -180.0 <= lon <= 180.0:
        return f"lon must be in [-180, 180], got {lon}"
    return None
