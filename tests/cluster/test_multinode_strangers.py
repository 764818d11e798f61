"""Nearby strangers across real nodes (standalone Redis and a 3-master Cluster): searched in
Redis' per-cell GEO sets, never held by a node that has no session of theirs, and every
reason a stranger leaves a watcher's view reaches a watcher on another node."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import trio

from geopresence.cluster.link import SUBSCRIBE_DELAY_ENV
from tests.cluster.test_multinode import (
    Node,
    _gauge,
    expect,
    nothing_of,
    redis_of,
    session,
    start_node,
    stranger_cells_with,
)
from tests.redis_server import redis_cluster, redis_server

TTL = 3.0
SEOUL = {"lat": 37.5665, "lon": 126.9780}


@contextmanager
def two_nodes(kind: str, tmp_path: Path, ttl: float) -> Iterator[tuple[list[Node], list[str]]]:
    """Two nodes on a fresh standalone Redis or 3-master Cluster, locations living ``ttl``."""
    with ExitStack() as stack:
        if kind == "standalone":
            args = ["--redis", f"redis://127.0.0.1:{stack.enter_context(redis_server())}/0"]
        else:
            ports = stack.enter_context(redis_cluster())
            args = ["--redis-cluster", ",".join(f"127.0.0.1:{p}" for p in ports)]
        started = []
        try:
            for node_id in (1, 2):
                started.append(start_node(args, node_id, tmp_path, "--location-ttl", str(ttl)))
            yield started, args
        finally:
            for node in started:
                if node.proc.poll() is None:
                    node.proc.terminate()
                    node.proc.wait(15)


@pytest.fixture(params=[("standalone", TTL), ("cluster", TTL)], ids=["standalone", "cluster"])
def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[list[Node], list[str]]]:
    """Two nodes on each kind of Redis, whose locations live ``TTL`` seconds (a test may
    ask for other ``(kind, ttl)`` with ``indirect`` parametrization)."""
    kind, ttl = request.param
    with two_nodes(kind, tmp_path, ttl) as started:
        yield started


LASTING = pytest.mark.parametrize("nodes", [("standalone", 600.0)], indirect=True)
"""One standalone Redis, locations outliving the test: for what the nodes decide
themselves (the Redis side is the conformance suite's and the first test's)."""


def near(dlat: float) -> dict[str, float]:
    return {"lat": SEOUL["lat"] + dlat, "lon": SEOUL["lon"]}


async def test_strangers_on_another_node(nodes: tuple[list[Node], list[str]]) -> None:
    (a, b), args = nodes
    async with (
        session(a, "alice") as alice,
        session(b, "sam") as sam,
        session(b, "carol") as carol,
        a.admin() as admin_a,
    ):
        for stranger, dlat in ((sam, 0.002), (carol, 0.004)):
            await stranger.request("settings", visible_to_strangers=True)
            await stranger.send({"type": "location", **near(dlat)})
        await alice.send({"type": "location", **SEOUL})
        await alice.request("watch_strangers", on=True)
        await trio.sleep(0.3)  # the positions are in Redis
        people = await alice.request("nearby_people")
        assert [p["user"] for p in people["people"]] == ["sam", "carol"]
        # Node a holds no stranger's location: only alice's own.
        assert _gauge(await admin_a.metrics(), "locations") == 1
        # sam hides: alice, on the other node, sees him leave.
        await sam.request("settings", visible_to_strangers=False)
        await expect(alice, "stranger_gone", user="sam", reason="hidden")
        assert [p["user"] for p in (await alice.request("nearby_people"))["people"]] == ["carol"]
        # carol's location expires on node b (she stops moving): node a cannot see that
        # happen, node b tells it. alice keeps hers live meanwhile.
        async with session(b, "dan") as dan:
            await dan.request("settings", visible_to_strangers=True)
            await dan.send({"type": "location", **near(0.001)})
            await expect(alice, "stranger_nearby", user="dan")
            await trio.sleep(TTL - 1)
            await alice.send({"type": "location", **SEOUL})
            await expect(alice, "stranger_gone", user="carol", reason="expired", within=TTL)
            # dan logs out, his location fresh: node b, which decides he is offline, tells.
            await dan.send({"type": "location", **near(0.001)})
            await trio.sleep(0.3)  # accepted, in gp:loc:{dan}
            await dan.logout()
            await expect(alice, "stranger_gone", user="dan", reason="offline")
        assert (await alice.request("nearby_people"))["people"] == []
    # Locations never went on the feed, visible users' included.
    client = redis_of(args)
    async with client:
        ops = [entry.field_values[b"op"] for entry in await client.xrange("gp:feed")]
        assert not any(b'"t":"location"' in op for op in ops), ops


@pytest.mark.parametrize(
    "nodes", [("standalone", 600.0), ("cluster", 600.0)], indirect=True, ids=str
)
async def test_a_dead_node_s_strangers_leave_redis_and_views(
    nodes: tuple[list[Node], list[str]],
) -> None:
    """sam's node dies: the node that ends him (its sweeper) takes him out of his cell in
    Redis, where nobody else would (he would still be counted by searches until his
    location expired), and alice's view loses him."""
    (a, b), args = nodes
    client = redis_of(args)
    async with client, session(a, "alice") as alice:
        await alice.send({"type": "location", **SEOUL})
        await alice.request("watch_strangers", on=True)
        async with session(b, "sam") as sam:
            await sam.request("settings", visible_to_strangers=True)
            await sam.send({"type": "location", **near(0.002)})
            await expect(alice, "stranger_nearby", user="sam")
            with trio.fail_after(5):  # the cell's write may follow the live event
                while not await stranger_cells_with(client, "sam"):
                    await trio.sleep(0.05)
            b.kill()
        await expect(alice, "stranger_gone", user="sam", reason="offline")
        with trio.fail_after(5):
            while await stranger_cells_with(client, "sam"):
                await trio.sleep(0.05)
        assert (await alice.request("nearby_people"))["total"] == 0


@pytest.mark.parametrize("nodes", [("standalone", TTL)], indirect=True)
async def test_a_stranger_whose_location_expires_after_his_connection_dropped_leaves(
    nodes: tuple[list[Node], list[str]],
) -> None:
    """dan's connection drops (no logout): he stays online for the grace window, during
    which his location expires. Node b let his location go with the connection, and no
    other node keeps it current: node b tells alice's node it expired, and nobody tells her
    again when he goes offline."""
    (a, b), _ = nodes
    async with session(a, "alice") as alice:
        await alice.send({"type": "location", **SEOUL})
        await alice.request("watch_strangers", on=True)
        async with session(b, "dan") as dan:
            await dan.request("settings", visible_to_strangers=True)
            await dan.send({"type": "location", **near(0.001)})
            await expect(alice, "stranger_nearby", user="dan")
            await trio.sleep(TTL - 0.5)  # he goes offline after his location expired
        for _ in range(4):  # alice's own location stays live
            await trio.sleep(1.0)
            await alice.send({"type": "location", **SEOUL})
        await expect(alice, "stranger_gone", user="dan", reason="expired", within=1.0)
        await nothing_of(alice, "stranger_gone", 1.0)


@pytest.mark.parametrize("nodes", [("standalone", TTL)], indirect=True)
async def test_a_stranger_s_second_node_keeps_him_current(
    nodes: tuple[list[Node], list[str]],
) -> None:
    """sam, visible but not sharing his location with friends, moves through node a and has
    a session on node b too. Node b hears his moves anyway (on his channel, shown to nobody):
    it never expires him while he moves (an update at least every TTL / 4 keeps strangers
    seeing him), and Redis lists him throughout."""
    (a, b), args = nodes
    client = redis_of(args)
    async with client, session(a, "sam", "phone") as sam, session(a, "alice") as alice:
        await alice.send({"type": "location", **SEOUL})
        await alice.request("watch_strangers", on=True)
        await sam.request("settings", visible_to_strangers=True, share_location=False)
        await sam.send({"type": "location", **near(0.002)})
        await expect(alice, "stranger_nearby", user="sam")
        async with session(b, "sam", "laptop"):
            for _ in range(int(2 * TTL / 0.25)):  # past the TTL of every single move
                await sam.send({"type": "location", **near(0.002)})
                await alice.send({"type": "location", **SEOUL})
                assert await stranger_cells_with(client, "sam")
                await trio.sleep(0.25)
            await sam.send({"type": "location", **near(0.002)})
            await nothing_of(alice, "stranger_gone", 0.5)  # under TTL / 4 after it


@pytest.mark.parametrize("nodes", [("standalone", TTL)], indirect=True)
async def test_an_update_inside_a_cell_does_not_time_when_another_node_s_watcher_sees_him_go(
    nodes: tuple[list[Node], list[str]],
) -> None:
    """sam (node b) enters a cell, then sends one more update from the same spot within half
    a TTL: alice, watching on node a, sees him leave a TTL after he entered, not a TTL after
    that update, and nearby_people stops finding him then (his cell's expiry in Redis is the
    strangers' deadline, not his location's)."""
    (a, b), _ = nodes
    async with session(a, "alice") as alice, session(b, "sam") as sam:
        await alice.send({"type": "location", **SEOUL})
        await alice.request("watch_strangers", on=True)
        await sam.request("settings", visible_to_strangers=True)
        await sam.send({"type": "location", **near(0.002)})
        await expect(alice, "stranger_nearby", user="sam")
        shown = trio.current_time()
        await trio.sleep(1.2)
        await sam.send({"type": "location", **near(0.002)})  # inside his cell

        async def keep_alice_live() -> None:
            while True:
                await alice.send({"type": "location", **SEOUL})
                await trio.sleep(0.5)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_alice_live)
            await expect(alice, "stranger_gone", user="sam", reason="expired", within=2 * TTL)
            gone = trio.current_time() - shown
            nursery.cancel_scope.cancel()
        assert gone < TTL + 0.6, gone  # a TTL after he entered, not after his last update
        assert (await alice.request("nearby_people"))["total"] == 0


@LASTING
async def test_a_node_that_lets_a_stranger_go_keeps_no_stale_position(
    nodes: tuple[list[Node], list[str]],
) -> None:
    """Node b held sam's location while his friend fred and a device of his own were
    connected there; both leave, node b stops hearing sam, and forgets where he was: a
    watcher on b judges sam by what the cells say, not by that old position."""
    (a, b), _ = nodes
    async with a.admin() as admin:
        await admin.befriend("sam", "fred")
    async with session(a, "sam") as sam, session(b, "walt") as walt:
        await sam.request("settings", visible_to_strangers=True)
        await sam.send({"type": "location", **SEOUL})
        await trio.sleep(0.3)
        async with session(b, "fred"), session(b, "sam", "laptop"):
            await trio.sleep(0.5)  # node b reads sam's location for both
        await trio.sleep(0.3)  # both gone: sam's channel released
        await walt.request("settings", radius_m=2000)
        await walt.send({"type": "location", **near(0.052)})
        await walt.request("watch_strangers", on=True)
        await trio.sleep(0.3)  # node b subscribes to the cells in Redis
        await sam.send({"type": "location", **near(0.05)})  # ~5.5 km north of SEOUL
        await expect(walt, "stranger_nearby", user="sam")
        await walt.send({"type": "location", **near(0.054)})  # sam ~450 m away
        await nothing_of(walt, "stranger_gone", 2.0)


@pytest.mark.parametrize("nodes", [("standalone", TTL)], indirect=True)
async def test_strangers_a_page_shows_from_outside_a_watch_s_cells_still_leave(
    nodes: tuple[list[Node], list[str]],
) -> None:
    """walt (node b) watches far away, then moves near sam and ann (node a): his move waits
    out the watch's interval, but his nearby_people takes the watch there at once, so node b
    hears the cells the page shows: sam going 30 km away, ann's location expiring."""
    (a, b), _ = nodes
    async with session(a, "sam") as sam, session(a, "ann") as ann, session(b, "walt") as walt:
        for stranger, dlat in ((sam, 0.0), (ann, 0.001)):
            await stranger.request("settings", visible_to_strangers=True)
            await stranger.send({"type": "location", **near(dlat)})
        await walt.request("settings", radius_m=2000)
        await walt.send({"type": "location", **near(0.30)})  # ~33 km north
        await walt.request("watch_strangers", on=True)
        await walt.send({"type": "location", **near(0.31)})  # applied at once
        await walt.send({"type": "location", **near(0.005)})  # near them: due in 10 s
        await trio.sleep(0.3)
        people = await walt.request("nearby_people")
        assert sorted(p["user"] for p in people["people"]) == ["ann", "sam"]
        await sam.send({"type": "location", **near(-0.30)})  # 30 km south
        await expect(walt, "stranger_gone", user="sam", reason="out_of_range")
        await walt.send({"type": "location", **near(0.005)})  # his own stays live
        await expect(walt, "stranger_gone", user="ann", reason="expired", within=2 * TTL)


async def test_a_stranger_entering_once_the_watch_is_answered_is_seen_live(
    tmp_path: Path,
) -> None:
    """Node a's subscriptions take a second to reach Redis. alice's `watch_strangers` reply
    waits for her cells' subscriptions, so sam entering her cell right after it (published
    once, from node b) reaches her live; answered at once, it was missed until sam changed
    cells."""
    with redis_server() as port:
        args = ["--redis", f"redis://127.0.0.1:{port}/0"]
        a = start_node(args, 1, tmp_path, env={SUBSCRIBE_DELAY_ENV: "1.0"})
        b = start_node(args, 2, tmp_path)
        try:
            async with session(a, "alice") as alice, session(b, "sam") as sam:
                await sam.request("settings", visible_to_strangers=True)
                await alice.send({"type": "location", **SEOUL})
                await alice.request("watch_strangers", on=True)
                await sam.send({"type": "location", **near(0.002)})
                await expect(alice, "stranger_nearby", user="sam", within=5)
        finally:
            for node in (a, b):
                node.proc.terminate()
                node.proc.wait(15)
