"""The stranger grid against a brute-force scan on random populations."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopresence.core.grid import StrangerGrid
from geopresence.core.locations import Location
from geopresence.model.geo import haversine_m, within
from geopresence.model.geocells import coarse


def brute(
    people: dict[str, Location], center: Location, radius: float, excluded: set[str]
) -> list[tuple[float, str]]:
    out = []
    for user, loc in people.items():
        d = haversine_m(center.lat, center.lon, loc.lat, loc.lon)
        if within(d, radius) and user not in excluded:
            out.append((d, user))
    return sorted(out)


def test_place_move_remove_count() -> None:
    grid = StrangerGrid()
    grid.place("a", Location(37.5, 127.0, 0))
    grid.place("b", Location(37.5001, 127.0001, 0))
    cell = grid.cell("a")
    assert cell is not None
    assert grid.count(cell[:5]) == 2
    grid.place("a", Location(-33.9, 151.2, 1))  # moved to Sydney
    assert grid.count(cell[:5]) == 1
    assert grid.remove("b") is not None
    assert grid.remove("b") is None
    assert len(grid) == 1
    assert [u for u, _ in grid.members(grid.cell("a") or "")] == ["a"]


@settings(max_examples=60)
@given(
    seed=st.integers(0, 10_000),
    center_lat=st.sampled_from([0.0, 37.5, 60.0, 89.95, -89.95, -33.9]),
    center_lon=st.sampled_from([0.0, 127.0, 179.99, -179.99]),
    radius=st.sampled_from([500.0, 8046.72, 20_000.0]),
    need=st.sampled_from([1, 20, 60]),
)
def test_query_matches_brute_force(
    seed: int, center_lat: float, center_lon: float, radius: float, need: int
) -> None:
    rnd = random.Random(seed)
    grid = StrangerGrid()
    people: dict[str, Location] = {}
    spread = 3 * radius / 111_000
    for i in range(300):
        # (not clamped onto a pole: identical points would tie at float-noise level)
        lat = max(-89.999, min(89.999, center_lat + rnd.uniform(-spread, spread)))
        lon = center_lon + rnd.uniform(-spread, spread) * 3
        lon = (lon + 180) % 360 - 180
        loc = Location(lat, lon, float(i))
        people[f"u{i}"] = loc
        grid.place(f"u{i}", loc)
    excluded = {f"u{i}" for i in range(0, 300, 7)}
    center = Location(center_lat, center_lon, 0.0)
    total, found = grid.query(center, radius, excluded, need)
    expected = brute(people, center, radius, excluded)
    assert total == len(expected)
    assert [u for _, u, _ in found[:need]] == [u for _, u in expected[:need]]
    assert [d for d, _, _ in found[:need]] == pytest.approx([d for d, _ in expected[:need]])


@settings(max_examples=40)
@given(
    seed=st.integers(0, 10_000),
    center_lat=st.sampled_from([0.0, 37.5, 60.0, 89.995, -89.999]),
    center_lon=st.sampled_from([0.0, 127.0, 179.999, -179.999]),
    radius=st.sampled_from([150.0, 1000.0, 8046.72]),
)
def test_query_over_coarse_positions_matches_the_coarse_rule(
    seed: int, center_lat: float, center_lon: float, radius: float
) -> None:
    """What the strangers part does: members at their coarse cell centres (many share one),
    queried from the asker's cell centre, near the poles and across the antimeridian too.
    The grid finds exactly the members whose centres are within the radius of the asker's,
    with those distances, nearest first (members of one cell tie and are ordered by user id;
    cells at the same distance, such as the north and south neighbours, tie up to float
    rounding, and their order is the grid's, the same on every node)."""
    rnd = random.Random(seed)
    grid = StrangerGrid()
    people: dict[str, Location] = {}
    spread = 2 * radius / 111_000
    for i in range(200):
        lat = max(-90.0, min(90.0, center_lat + rnd.uniform(-spread, spread)))
        lon = (center_lon + rnd.uniform(-spread, spread) * 3 + 180) % 360 - 180
        loc = Location(*coarse(lat, lon), float(i))
        people[f"u{i:03d}"] = loc
        grid.place(f"u{i:03d}", loc)
    center = Location(*coarse(center_lat, center_lon), 0.0)
    total, found = grid.query(center, radius, set(), len(people))
    expected = brute(people, center, radius, set())
    assert total == len(expected) == len(found)
    assert {u for _, u, _ in found} == {u for _, u in expected}
    for d, user, loc in found:
        assert loc == people[user]
        assert d == pytest.approx(haversine_m(center.lat, center.lon, loc.lat, loc.lon), abs=1e-6)
    distances = [d for d, _, _ in found]
    assert all(a <= b + 1e-6 for a, b in itertools.pairwise(distances))
    same_cell = [(loc.lat, loc.lon, u) for _, u, loc in found]
    for (lat1, lon1, u1), (lat2, lon2, u2) in itertools.pairwise(same_cell):
        if (lat1, lon1) == (lat2, lon2):
            assert u1 < u2
