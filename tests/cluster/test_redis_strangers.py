"""``RedisStrangers``, the shared stranger index, on a real Redis and a 3-master Redis
Cluster: what it keeps per geohash cell, expiry, the replicated state's filter, forgets and
an unreachable Redis (the contract it shares with one node's grid:
tests/seams/test_stranger_index_conformance.py)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import coredis
import orjson
import pytest
import trio

from geopresence.cluster import redis_strangers
from geopresence.cluster.redis_forget import forget_user
from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.redis_strangers import RedisStrangers
from geopresence.cluster.stranger_cells import CELL_PRECISION
from geopresence.core.grid import StrangerGrid
from geopresence.core.locations import Location
from geopresence.core.stranger_expiry import StrangerExpiry
from geopresence.core.stranger_index import Found
from geopresence.core.stranger_queries import snap
from geopresence.model.geocells import INDEX_PRECISION, cell_of
from geopresence.model.records import UserForgotten
from tests.redis_server import AnyRedis, redis_server

NOW = 1_800_000_000.0
TTL = 600.0
SEOUL = Location(37.5665, 126.9780, NOW)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def index(any_redis: AnyRedis) -> AsyncIterator[tuple[RedisStrangers, Clock]]:
    clock = Clock()
    strangers = RedisStrangers(any_redis, Keys(f"t{random.randrange(10**9)}"), clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(strangers.run)
        yield strangers, clock
        nursery.cancel_scope.cancel()


async def search(
    strangers: RedisStrangers,
    center: Location,
    radius: float,
    excluded: frozenset[str] = frozenset(),
    need: int = 20,
) -> tuple[int, Found] | None:
    await settle(strangers)
    got: list[tuple[int, Found] | None] = []
    strangers.search(snap(center), radius, excluded, need, got.append)
    with trio.fail_after(10):
        while not got:
            await trio.sleep(0.01)
    return got[0]


async def settle(strangers: RedisStrangers) -> None:
    """Let the writes queued so far reach Redis."""
    with trio.fail_after(10):
        while strangers._writes:
            await trio.sleep(0.01)
        await trio.sleep(0.05)  # the pipeline in flight


def place(
    strangers: RedisStrangers, grid: StrangerGrid, user: str, at: Location, expiry: StrangerExpiry
) -> None:
    """What ``Strangers.on_location`` does for a visible user handled here, with when
    strangers stop seeing it (``expiry``; ``at.ts`` is also when the update was accepted)."""
    spot = snap(at)
    held = grid.get(user)
    if held is not None and (held.lat, held.lon) == (spot.lat, spot.lon):
        strangers.stayed(user, held, expiry.renewed(user, at.ts))
        return
    until = expiry.entered(user, at.ts + TTL)
    strangers.entered(user, spot, grid.place(user, spot), until)


async def test_moves_expiry_and_leaving(
    index: tuple[RedisStrangers, Clock], any_redis: AnyRedis
) -> None:
    strangers, clock = index
    grid, expiry = StrangerGrid(), StrangerExpiry(TTL)
    place(strangers, grid, "sam", SEOUL, expiry)
    # A move within the coarse cell renews the expiry only, to the strangers' deadline (the
    # latest multiple of TTL / 4 not after the update + TTL / 2: NOW + 750): the ts shown
    # stays the one of the update that entered the cell.
    clock.now = NOW + 500
    place(strangers, grid, "sam", Location(SEOUL.lat + 0.00001, SEOUL.lon, NOW + 500), expiry)
    clock.now = NOW + 700  # past the entry's deadline (NOW + TTL), not the renewed one
    total, found = await search(strangers, SEOUL, 1_000) or (0, [])
    assert total == 1 and found[0][1] == "sam" and found[0][2].ts == NOW
    # Searches stop finding it when the watchers' views end, not at NOW + 500 + TTL.
    seoul_cell = cell_of(SEOUL.lat, SEOUL.lon, CELL_PRECISION)
    prefix = strangers._keys.prefix
    exp = f"{prefix}:strangers-exp:{{{seoul_cell}}}"
    assert await any_redis.zscore(exp, "sam") == expiry.until("sam") == NOW + 750
    # Not shown: offline or hidden on the replicated state (Redis may still list it).
    strangers.live = lambda user: user != "sam"
    assert await search(strangers, SEOUL, 1_000) == (0, [])
    strangers.live = lambda user: True
    # A move to another Redis cell leaves the first.
    far = Location(35.1796, 129.0756, NOW + 1000)  # Busan
    place(strangers, grid, "sam", far, expiry)
    assert await search(strangers, SEOUL, 1_000) == (0, [])
    total, found = await search(strangers, far, 1_000) or (0, [])
    assert [user for _, user, _ in found] == ["sam"] and found[0][2].ts == NOW + 1000
    assert await any_redis.zcard(f"{prefix}:strangers:{{{seoul_cell}}}") == 0
    # Its location expires: not found, and the search removes it from Redis.
    clock.now = NOW + 1000 + TTL
    assert await search(strangers, far, 1_000) == (0, [])
    busan = cell_of(far.lat, far.lon, CELL_PRECISION)
    for kind in ("strangers", "strangers-exp", "strangers-ts"):
        assert await any_redis.exists([f"{prefix}:{kind}:{{{busan}}}"]) == 0
    # Leaving (hidden, offline, forgotten) removes it at once.
    clock.now = NOW + 2000
    place(strangers, grid, "sam", Location(far.lat, far.lon, NOW + 2000), expiry)
    code = grid.remove("sam")
    assert code is not None and len(code) == INDEX_PRECISION
    strangers.left("sam", code)
    assert await search(strangers, far, 1_000) == (0, [])
    assert await any_redis.zcard(f"{prefix}:strangers:{{{busan}}}") == 0


async def test_a_search_without_redis_answers_none() -> None:
    """Redis unreachable: the answer is None (the client gets an ``internal`` error), and
    writes are dropped, counted, not queued forever."""
    client = coredis.Redis(host="127.0.0.1", port=1, connect_timeout=0.5)
    strangers = RedisStrangers(client, Keys("t"), Clock())
    got: list[object] = []
    strangers.search(SEOUL, 1_000, frozenset(), 20, got.append)
    assert got == [None]  # not running
    async with trio.open_nursery() as nursery:
        await nursery.start(strangers.run)
        strangers.entered("sam", snap(SEOUL), None, NOW + TTL)
        strangers.search(SEOUL, 1_000, frozenset(), 20, got.append)
        with trio.fail_after(10):
            while len(got) < 2 or strangers.dropped < 1:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert got == [None, None] and strangers.errors == 2


async def test_a_forget_takes_the_user_out_of_every_cell(
    index: tuple[RedisStrangers, Clock], any_redis: AnyRedis
) -> None:
    """Also where its location expired and no search has cleaned the cell yet, and where no
    node holds it any more (its node died): its name stays nowhere."""
    strangers, clock = index
    grid, expiry = StrangerGrid(), StrangerExpiry(TTL)
    place(strangers, grid, "sam", SEOUL, expiry)
    place(strangers, grid, "ann", SEOUL, expiry)
    place(strangers, grid, "pole", Location(-89.99, 0.0, NOW), expiry)  # the polar caps too
    await settle(strangers)
    clock.now = NOW + TTL + 1
    await forget_user(any_redis, strangers._keys, UserForgotten("sam"))
    await forget_user(any_redis, strangers._keys, UserForgotten("pole"))
    cell = cell_of(SEOUL.lat, SEOUL.lon, CELL_PRECISION)
    prefix = strangers._keys.prefix
    assert await any_redis.hkeys(f"{prefix}:strangers-ts:{{{cell}}}") == (b"ann",)
    assert await any_redis.zrange(f"{prefix}:strangers-exp:{{{cell}}}", 0, -1) == (b"ann",)
    assert await any_redis.zrange(f"{prefix}:strangers:{{{cell}}}", 0, -1) == (b"ann",)
    assert await any_redis.hkeys(f"{prefix}:strangers-polar:{{polar-s}}") == ()
    assert await any_redis.hkeys(f"{prefix}:strangers-ts:{{polar-s}}") == ()


async def test_stale_members_leave_no_page_short(index: tuple[RedisStrangers, Clock]) -> None:
    """Members Redis still lists that the replicated state says hid or went offline (their
    removal not written yet) are searched again without: the page is full and exact."""
    strangers, _ = index
    live = StrangerGrid()
    for i in range(30):
        at = snap(Location(SEOUL.lat + 0.001 * (i + 1), SEOUL.lon, NOW))
        user = f"stale{i}" if i < 5 else f"live{i:02d}"
        strangers.entered(user, at, None, NOW + TTL)
        if i >= 5:
            live.place(user, at)
    strangers.live = lambda user: user.startswith("live")
    total, found = await search(strangers, SEOUL, 5_000) or (0, [])
    assert found == live.query(snap(SEOUL), 5_000, frozenset(), 20)[1] and len(found) == 20
    assert total >= 25  # stale members beyond the page are counted until removed (a limit)


async def test_a_user_not_visible_going_offline_costs_redis_nothing(
    index: tuple[RedisStrangers, Clock],
) -> None:
    strangers, _ = index
    strangers.visible = lambda user: user == "sam"
    told: list[str] = []
    strangers.went_offline("ann", Location(37.5665, 126.978, 1.0), lambda: told.append("ann"))
    assert strangers.pending == 0
    strangers.went_offline("sam", Location(37.5665, 126.978, 1.0), lambda: told.append("sam"))
    assert strangers.pending == 1
    await settle(strangers)
    assert told == []  # no cell listed sam: no watcher can show him


async def test_a_user_listed_going_offline_is_told_to_the_watchers_once_out(
    index: tuple[RedisStrangers, Clock],
) -> None:
    strangers, _ = index
    last = Location(37.5665, 126.978, 1.0)
    strangers.entered("sam", snap(last), None, NOW + TTL)
    await settle(strangers)
    told: list[str] = []
    strangers.went_offline("sam", last, lambda: told.append("sam"))
    await settle(strangers)
    assert told == ["sam"]
    assert await search(strangers, SEOUL, 5_000) == (0, [])


async def test_a_lapse_is_told_unless_a_node_renewed_the_location(
    index: tuple[RedisStrangers, Clock],
) -> None:
    """A node that dropped sam's location asks when it would have expired: told (the
    watchers hear it expired) if ``gp:loc:{sam}`` is gone or still holds the update the node
    knew; not if another node accepted a later one (that node keeps it current)."""
    strangers, _ = index
    key = strangers._keys.location("sam")

    async def lapse() -> bool:
        told: list[str] = []
        strangers.lapsed("sam", 5.0, lambda: told.append("sam"))
        with trio.move_on_after(0.5):
            while not told:
                await trio.sleep(0.01)
        return told == ["sam"]

    assert await lapse()  # expired: Redis dropped the key
    await strangers._client.set(key, orjson.dumps([37.5, 127.0, 5.0, NOW]))
    assert await lapse()  # the same update: nobody renewed it
    await strangers._client.set(key, orjson.dumps([37.5, 127.0, 6.0, NOW]))
    assert not await lapse()


async def test_a_user_taken_out_just_before_going_offline_is_still_told(
    index: tuple[RedisStrangers, Clock],
) -> None:
    """Node b's hub hears sam went offline before it let his location go: it takes him out
    of his cell itself, so the removal ``went_offline`` then makes finds him out already.
    The watchers are told all the same (they may show him)."""
    strangers, _ = index
    last = Location(37.5665, 126.978, 1.0)
    strangers.entered("sam", snap(last), None, NOW + TTL)
    await settle(strangers)
    strangers.left("sam", cell_of(snap(last).lat, snap(last).lon, INDEX_PRECISION))
    await settle(strangers)
    told: list[str] = []
    strangers.went_offline("sam", last, lambda: told.append("sam"))
    await settle(strangers)
    assert told == ["sam"]
    strangers.went_offline("sam", last, lambda: told.append("again"))
    await settle(strangers)
    assert told == ["sam"]  # once


class FailingFirst:
    """A client whose first pipeline fails (Redis unreachable for a moment)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def pipeline(self, **kwargs: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise ConnectionError("redis went away")
        return self.client.pipeline(**kwargs)


async def test_a_removal_redis_failed_is_written_once_it_answers() -> None:
    """A node that keeps no settings of a stranger trusts the cell's listing: a user who
    hid or went offline must leave it even if Redis failed the first time; moves are
    dropped (the next one writes them again)."""
    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            keys = Keys("t")
            writer = RedisStrangers(client, keys, Clock())
            flaky = RedisStrangers(FailingFirst(client), keys, Clock())
            last = Location(37.5665, 126.978, 1.0)
            told: list[str] = []
            async with trio.open_nursery() as nursery:
                await nursery.start(writer.run)
                writer.entered("sam", snap(last), None, NOW + TTL)
                await settle(writer)
                await nursery.start(flaky.run)
                flaky.entered("ann", snap(last), None, NOW + TTL)  # a move: dropped
                flaky.went_offline("sam", last, lambda: told.append("sam"))
                with trio.fail_after(10):
                    while not told:
                        await trio.sleep(0.05)
                assert flaky.dropped == 1 and flaky.errors == 1
                assert await search(writer, SEOUL, 5_000) == (0, [])
                nursery.cancel_scope.cancel()


async def test_a_stranger_listed_but_hidden_in_redis_is_not_shown(
    index: tuple[RedisStrangers, Clock],
) -> None:
    """From a review: a cell can still list one who hid (a removal not written yet). A node
    that keeps no settings of hers reads them before showing her: she is not shown."""
    strangers, _ = index
    for user, lat in (("sam", 0.001), ("zoe", 0.002)):
        strangers.entered(user, snap(Location(SEOUL.lat + lat, SEOUL.lon, NOW)), None, NOW + TTL)
    hidden = b'{"v":5,"share_location":true,"radius_m":null,"visible_to_strangers":false}'
    await strangers._client.set(strangers._keys.of("settings", "zoe"), hidden)
    strangers.settings_kept = lambda user: False
    result = await search(strangers, SEOUL, 5_000)
    assert result is not None and [user for _, user, _ in result[1]] == []  # sam: defaults
    await strangers._client.set(
        strangers._keys.of("settings", "sam"), hidden.replace(b"false}", b"true}")
    )
    result = await search(strangers, SEOUL, 5_000)
    assert result is not None and [user for _, user, _ in result[1]] == ["sam"]


def test_what_offline_calls_back_is_not_kept_for_a_dropped_removal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From a review: with the write queue full, a removal is dropped, and with it what
    it would call back (a closure over the hub), not kept for ever."""
    monkeypatch.setattr(redis_strangers, "MAX_PENDING_WRITES", 1)
    strangers = RedisStrangers(None, Keys("gp"), Clock())
    for i in range(100):
        strangers.went_offline(f"u{i}", Location(37.5665, 126.978 + i, 1.0), lambda: None)
    assert strangers.pending == 1 and len(strangers._listed) == 1
