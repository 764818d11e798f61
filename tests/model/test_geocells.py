"""The geohash cover never misses anyone within the radius: anywhere, antimeridian and poles
included. Strangers are generated at a random bearing and distance inside the circle."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from geopresence.model.geo import EARTH_RADIUS_M, haversine_m
from geopresence.model.geocells import MAX_COVER_CELLS, cell_of, cover, normalize_lon


def destination(
    lat: float, lon: float, bearing_deg: float, distance_m: float
) -> tuple[float, float]:
    """The point ``distance_m`` from (lat, lon) along ``bearing_deg`` on the sphere."""
    phi1, lam1 = math.radians(lat), math.radians(lon)
    theta, delta = math.radians(bearing_deg), distance_m / EARTH_RADIUS_M
    phi2 = math.asin(
        math.sin(phi1) * math.cos(delta) + math.cos(phi1) * math.sin(delta) * math.cos(theta)
    )
    lam2 = lam1 + math.atan2(
        math.sin(theta) * math.sin(delta) * math.cos(phi1),
        math.cos(delta) - math.sin(phi1) * math.sin(phi2),
    )
    return math.degrees(phi2), normalize_lon(math.degrees(lam2))


edgy_lats = st.one_of(
    st.floats(-90, 90),
    st.floats(89, 90),
    st.floats(-90, -89),
    st.sampled_from([0.0, 45.0, -45.0, 60.0, 89.9, -89.9, 90.0, -90.0]),
)
edgy_lons = st.one_of(
    st.floats(-180, 180),
    st.floats(179, 180),
    st.floats(-180, -179),
    st.sampled_from([0.0, 180.0, -180.0, 179.999, -179.999]),
)
radii = st.one_of(st.just(8046.72), st.floats(50, 50_000))


@given(
    lat=edgy_lats,
    lon=edgy_lons,
    radius=radii,
    bearing=st.floats(0, 360),
    fraction=st.floats(0, 1),
)
@example(lat=0.0, lon=179.99, radius=8046.72, bearing=90.0, fraction=1.0)
@example(lat=89.99, lon=0.0, radius=8046.72, bearing=0.0, fraction=1.0)
@example(lat=-89.95, lon=-180.0, radius=8046.72, bearing=180.0, fraction=0.999)
@example(lat=60.0, lon=10.0, radius=8046.72, bearing=45.0, fraction=1.0)
@example(lat=0.0, lon=0.0, radius=50.0, bearing=0.0, fraction=2.676999113387675e-288)
def test_cover_contains_every_point_within_radius(
    lat: float, lon: float, radius: float, bearing: float, fraction: float
) -> None:
    other = destination(lat, lon, bearing, radius * fraction)
    assert haversine_m(lat, lon, *other) <= radius + 1e-3
    precision, cells = cover(lat, lon, radius)
    assert len(cells) <= MAX_COVER_CELLS or precision == 1
    assert cell_of(other[0], other[1], precision) in cells


def test_precision_five_and_neighbours_would_miss() -> None:
    """Why the design's 3x3 block is not enough: a friend 8 km east at 60°N is outside it."""
    import geohash

    lat, lon = 60.0, 10.0
    here = cell_of(lat, lon, 5)
    block = {here, *geohash.neighbors(here)}
    there = destination(lat, lon, 90, 8000)
    assert cell_of(*there, 5) not in block
    precision, cells = cover(lat, lon, 8046.72)
    assert cell_of(*there, precision) in cells


@pytest.mark.parametrize(
    ("lat", "lon"), [(37.5, 127.0), (0.0, 0.0), (60.0, 10.0), (-33.9, 151.2), (0.0, 179.999)]
)
def test_five_miles_uses_fine_cells_in_populated_latitudes(lat: float, lon: float) -> None:
    precision, cells = cover(lat, lon, 8046.72)
    assert precision >= 5
    assert len(cells) <= MAX_COVER_CELLS


def test_pole_cap_covers_every_longitude() -> None:
    precision, cells = cover(89.999, 0.0, 8046.72)
    for lon in range(-180, 180, 7):
        assert cell_of(89.99, float(lon), precision) in cells
