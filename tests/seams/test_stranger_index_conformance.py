"""The ``StrangerIndex`` contract (geopresence.core.stranger_index), run against every
implementation: one node's grid and Redis' per-cell GEO sets (a standalone Redis and a
3-master Cluster). Told of the moves as ``Strangers`` tells it, a search answers exactly as a
grid holding every visible user does: the same coarse positions, distances, order, counts
and exclusions."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio

from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.redis_strangers import RedisStrangers
from geopresence.cluster.stranger_cells import CELL_PRECISION
from geopresence.core.grid import StrangerGrid
from geopresence.core.locations import Location
from geopresence.core.stranger_expiry import StrangerExpiry
from geopresence.core.stranger_index import Found, GridIndex, StrangerIndex
from geopresence.core.stranger_queries import snap
from geopresence.model.geocells import cell_of
from tests.redis_server import redis_client

NOW = 1_800_000_000.0
TTL = 600.0
SEOUL = Location(37.5665, 126.9780, NOW)


class Handler:
    """What ``Strangers`` does with an index: its own grid of the users it handles, and the
    index told of each change, with when strangers stop seeing the user (a ``ts`` here is
    also when the update was accepted)."""

    def __init__(
        self, index: StrangerIndex, grid: StrangerGrid, settle: Callable[[], Awaitable[None]]
    ) -> None:
        self.index = index
        self.grid = grid
        self.settle = settle
        self.expiry = StrangerExpiry(TTL)

    def place(self, user: str, at: Location) -> None:
        spot = snap(at)
        held = self.grid.get(user)
        if held is not None and (held.lat, held.lon) == (spot.lat, spot.lon):
            self.index.stayed(user, held, self.expiry.renewed(user, at.ts))
        else:
            until = self.expiry.entered(user, at.ts + TTL)
            self.index.entered(user, spot, self.grid.place(user, spot), until)

    def remove(self, user: str) -> None:
        cell = self.grid.remove(user)
        if cell is not None:
            self.index.left(user, cell)

    async def search(
        self,
        center: Location,
        radius: float,
        excluded: frozenset[str] = frozenset(),
        need: int = 20,
    ) -> tuple[int, Found] | None:
        await self.settle()
        got: list[tuple[int, Found] | None] = []
        self.index.search(snap(center), radius, excluded, need, got.append)
        with trio.fail_after(10):
            while not got:
                await trio.sleep(0.01)
        return got[0]


@pytest.fixture(params=["grid", "redis-standalone", "redis-cluster"])
async def handler(request: pytest.FixtureRequest) -> AsyncIterator[Handler]:
    if request.param == "grid":
        grid = StrangerGrid()

        async def nothing() -> None:
            return None

        yield Handler(GridIndex(grid), grid, nothing)
        return
    async with redis_client(request.param.removeprefix("redis-")) as client:
        strangers = RedisStrangers(client, Keys(f"t{random.randrange(10**9)}"), lambda: NOW)

        async def written() -> None:
            with trio.fail_after(10):
                while strangers._writes:
                    await trio.sleep(0.01)
                await trio.sleep(0.05)  # the pipeline in flight

        async with trio.open_nursery() as nursery:
            await nursery.start(strangers.run)
            yield Handler(strangers, StrangerGrid(), written)
            nursery.cancel_scope.cancel()


async def test_a_search_answers_as_a_grid_of_everyone(handler: Handler) -> None:
    """Random visible users around Seoul, spread over several cells of Redis' precision."""
    rng = random.Random(7)
    everyone = StrangerGrid()
    for i in range(300):
        at = Location(SEOUL.lat + rng.uniform(-0.4, 0.4), SEOUL.lon + rng.uniform(-0.5, 0.5), NOW)
        handler.place(f"u{i}", at)
        everyone.place(f"u{i}", snap(at))
    cells = {cell_of(loc.lat, loc.lon, CELL_PRECISION) for _, loc in everyone.members("")}
    assert len(cells) > 1
    cases = [(2_000.0, frozenset[str](), 20), (8_046.72, frozenset({"u1", "u2"}), 40)]
    for radius, excluded, need in cases:
        for center in (SEOUL, Location(37.7, 127.2, NOW)):
            expected = everyone.query(snap(center), radius, excluded, need)
            assert await handler.search(center, radius, excluded, need) == expected
    # The largest radius (50 km) counts everyone around.
    expected = everyone.query(snap(SEOUL), 50_000, frozenset(), 1)
    assert await handler.search(SEOUL, 50_000, need=1) == expected


async def test_moves_and_leaving(handler: Handler) -> None:
    """A user is found where it last entered a cell, with the ts of that entry; one that
    left is found nowhere."""
    busan = Location(35.1796, 129.0756, NOW + 10)
    handler.place("sam", SEOUL)
    handler.place("sam", Location(SEOUL.lat + 0.00001, SEOUL.lon, NOW + 5))  # same cell
    [(_, user, where)] = (await handler.search(SEOUL, 1_000) or (0, []))[1]
    assert (user, where) == ("sam", snap(SEOUL))  # the ts of the update that entered
    handler.place("sam", busan)
    assert await handler.search(SEOUL, 1_000) == (0, [])
    [(_, user, where)] = (await handler.search(busan, 1_000) or (0, []))[1]
    assert (user, where.ts) == ("sam", NOW + 10)
    handler.remove("sam")
    assert await handler.search(busan, 1_000) == (0, [])


async def test_a_lapse_nobody_renewed_is_told(handler: Handler) -> None:
    """A location this node dropped, renewed by no node, is told expired (at once on one
    node; with several, once Redis says no later update was accepted)."""
    told: list[str] = []
    handler.index.lapsed("sam", NOW, lambda: told.append("sam"))
    with trio.fail_after(10):
        while not told:
            await trio.sleep(0.01)
    assert told == ["sam"]


async def test_ties_at_the_page_s_end_are_broken_by_user_id(handler: Handler) -> None:
    """Users in one coarse cell are at one position, and cells on either side of the asker's
    are at one distance: the page ends where the user ids say, wherever the index keeps
    them (Redis orders by its own, rounded, distances)."""
    everyone = StrangerGrid()
    center = snap(SEOUL)
    for side, names in (
        (-1, "abcdefghij"),
        (1, "klmnopqrst"),
        (-2, "zyxwvutsrq"),
        (2, "ABCDEFGHIJ"),
    ):
        at = Location(center.lat, center.lon + side * 0.0015, NOW)
        for name in names:
            handler.place(f"{name}{side}", at)
            everyone.place(f"{name}{side}", snap(at))
    for need in (1, 5, 15, 25, 45):
        expected = everyone.query(center, 1_000, frozenset({"a-1"}), need)
        assert await handler.search(center, 1_000, frozenset({"a-1"}), need) == expected


async def test_near_the_poles_and_across_the_antimeridian(handler: Handler) -> None:
    """The contract's edge cases: searches at and near a pole (beyond Redis' GEO latitudes,
    and where geohash cells narrow), across a polar cap's edge, and across lon +-180."""
    everyone = StrangerGrid()

    def place(user: str, lat: float, lon: float) -> None:
        handler.place(user, Location(lat, lon, NOW))
        everyone.place(user, snap(Location(lat, lon, NOW)))

    for i, lon in enumerate((0.0, 120.0, -150.0, 179.9)):
        place(f"south{i}", -89.99, lon)
    for i, lat in enumerate((79.9, 79.99, 80.01, 80.2, 85.3, 89.9)):
        place(f"north{i}", lat, 15.0 + i * 0.01)
    place("fiji", -16.5, 179.9995)
    place("tonga", -16.5, -179.9995)
    cases = [
        (Location(-90.0, 0.0, NOW), 8_046.72),
        (Location(-89.95, 45.0, NOW), 50_000.0),
        (Location(79.95, 15.0, NOW), 20_000.0),
        (Location(80.05, 15.02, NOW), 20_000.0),
        (Location(85.3, 15.0, NOW), 50_000.0),
        (Location(89.99, -100.0, NOW), 50_000.0),
        (Location(-16.5, -179.9, NOW), 30_000.0),
    ]
    for center, radius in cases:
        expected = everyone.query(snap(center), radius, frozenset(), 20)
        assert await handler.search(center, radius, frozenset(), 20) == expected, center
    # Moves across a polar cap's edge: found where it went, once.
    for lat in (80.5, 79.5, 80.5):
        handler.place("north0", Location(lat, 15.0, NOW))
        everyone.place("north0", snap(Location(lat, 15.0, NOW)))
        center = Location(80.0, 15.0, NOW)
        expected = everyone.query(snap(center), 60_000, frozenset(), 20)
        assert await handler.search(center, 60_000, frozenset(), 20) == expected, lat
