"""Distances and coordinates, without an event loop."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geopresence.core.locations import Location, LocationCache
from geopresence.model.geo import EARTH_RADIUS_M, coordinate_problem, haversine_m, within

lats = st.floats(-90, 90)
lons = st.floats(-180, 180)


def test_known_distances() -> None:
    # one degree of latitude on the mean sphere
    assert haversine_m(0, 0, 1, 0) == pytest.approx(EARTH_RADIUS_M * math.pi / 180, rel=1e-12)
    # Seoul City Hall to Gangnam station, about 8.9 km
    assert haversine_m(37.5665, 126.978, 37.4979, 127.0276) == pytest.approx(8_760, abs=150)
    # antipodes: half the circumference
    assert haversine_m(0, 0, 0, 180) == pytest.approx(math.pi * EARTH_RADIUS_M)


def test_antimeridian_neighbours_are_close() -> None:
    d = haversine_m(10, 179.99, 10, -179.99)
    assert d == pytest.approx(haversine_m(10, -0.01, 10, 0.01), rel=1e-9)
    assert d < 2_200


def test_poles() -> None:
    # every longitude is the same point at the pole
    assert haversine_m(90, 0, 90, 123) == pytest.approx(0, abs=1e-6)
    assert haversine_m(89.99, 0, 89.99, 180) == pytest.approx(
        2 * 0.01 * math.pi / 180 * EARTH_RADIUS_M, rel=1e-6
    )


@given(lats, lons, lats, lons)
def test_symmetric_and_bounded(lat1: float, lon1: float, lat2: float, lon2: float) -> None:
    d = haversine_m(lat1, lon1, lat2, lon2)
    assert d == pytest.approx(haversine_m(lat2, lon2, lat1, lon1), abs=1e-6)
    assert 0 <= d <= math.pi * EARTH_RADIUS_M + 1e-6


def test_within_is_inclusive() -> None:
    assert within(8046.72, 8046.72)
    assert within(8046.7205, 8046.72)  # float noise of another implementation
    assert not within(8046.73, 8046.72)


@pytest.mark.parametrize(
    ("lat", "lon", "ok"),
    [(0, 0, True), (90, 180, True), (-90, -180, True), (90.0001, 0, False),
     (0, -180.5, False), (math.nan, 0, False), (0, math.inf, False)],
)  # fmt: skip
def test_coordinates(lat: float, lon: float, ok: bool) -> None:
    assert (coordinate_problem(lat, lon) is None) == ok


def test_location_cache_ttl_at_exact_times() -> None:
    cache = LocationCache(ttl=600)
    assert cache.update("alice", Location(1, 2, ts=100), now=100)
    assert cache.get("alice", 699.999) == Location(1, 2, 100)
    assert cache.next_deadline() == 700
    assert cache.expire(699.999) == []
    assert cache.get("alice", 700) is None  # due, even before the reaper ran
    assert cache.expire(700) == ["alice"]
    assert len(cache) == 0


def test_location_cache_ignores_older_and_restarts_ttl() -> None:
    cache = LocationCache(ttl=600)
    cache.update("alice", Location(1, 2, ts=100), now=100)
    assert not cache.update("alice", Location(5, 5, ts=99), now=150)
    assert cache.get("alice", 150) == Location(1, 2, 100)
    assert cache.next_deadline() == 700  # an ignored update does not refresh the TTL
    assert cache.update("alice", Location(3, 3, ts=100), now=200)  # same ts: accepted
    assert cache.next_deadline() == 800
    assert cache.remove("alice")
    assert not cache.remove("alice")
    assert cache.next_deadline() is None
