"""nearby_people against Redis GEOSEARCH on the same data, side by side in one run.

    python benchmarks/bench_strangers.py [--users 100000] [--queries 200] [--quick]

Population: ``--users`` visible users spread uniformly over a 50 km x 50 km box (Seoul).
Each query asks for the 20 nearest within 5 miles (8046.72 m) plus the total count, from a
random point in the middle of the box. Three figures per query:

- geopresence core: ``StrangerGrid.query`` in process (what the server runs per query);
- geopresence end to end: a ``nearby_people`` request over a loopback WebSocket to an
  in-process server holding the same population (JSON, framing, the event loop included);
- Redis: ``GEOSEARCH ... BYRADIUS 8046.72 m ASC COUNT 20 WITHDIST`` plus the total, counted
  server side by a Lua script (``#GEOSEARCH ...``) so that 8,000 members are not shipped to the
  client, over loopback from the same Python process (coredis on trio);
- geopresence with several nodes: ``RedisStrangers.search`` (the cluster's stranger index:
  the population written as nodes write it, one GEO set per geohash-4 cell, in the same
  Redis), the answer a node replies with.

Redis is Debian's ``redis-server``, started here on a free loopback port and stopped after;
without it the Redis column says so.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

import trio

from geopresence.core.grid import StrangerGrid
from geopresence.core.locations import Location
from geopresence.testing import open_server
from geopresence.wire.client_messages import LocationUpdate, SettingsUpdate

RADIUS_M = 8046.72
CENTER = (37.5665, 126.978)
BOX_M = 50_000.0


def population(users: int, seed: int) -> list[tuple[str, float, float]]:
    rnd = random.Random(seed)
    dlat = math.degrees(BOX_M / 2 / 6_371_008.8)
    dlon = dlat / math.cos(math.radians(CENTER[0]))
    return [
        (f"u{i}", CENTER[0] + rnd.uniform(-dlat, dlat), CENTER[1] + rnd.uniform(-dlon, dlon))
        for i in range(users)
    ]


def query_points(count: int, seed: int) -> list[tuple[float, float]]:
    rnd = random.Random(seed + 1)
    dlat = math.degrees(BOX_M / 4 / 6_371_008.8)
    dlon = dlat / math.cos(math.radians(CENTER[0]))
    return [
        (CENTER[0] + rnd.uniform(-dlat, dlat), CENTER[1] + rnd.uniform(-dlon, dlon))
        for _ in range(count)
    ]


def summary(label: str, samples: list[float], extra: str = "") -> None:
    ms = sorted(s * 1e3 for s in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(
        f"{label:<34} mean {statistics.fmean(ms):7.3f} ms   p50 {statistics.median(ms):7.3f}"
        f" ms   p99 {p99:7.3f} ms  {extra}"
    )


def bench_core(people: list[tuple[str, float, float]], points: list[tuple[float, float]]) -> float:
    grid = StrangerGrid()
    for user, lat, lon in people:
        grid.place(user, Location(lat, lon, 0.0))
    samples, totals = [], []
    for lat, lon in points:
        start = time.perf_counter()
        total, found = grid.query(Location(lat, lon, 0.0), RADIUS_M, frozenset(), 20)
        samples.append(time.perf_counter() - start)
        totals.append(total)
        assert len(found) >= min(20, total)
    summary("geopresence core (in process)", samples, f"avg total {statistics.fmean(totals):.0f}")
    return statistics.fmean(samples)


async def bench_end_to_end(
    people: list[tuple[str, float, float]], points: list[tuple[float, float]]
) -> float:
    async with open_server(
        time_origin=None, strangers_query_burst=len(points) + 10, strangers_query_interval=0.001
    ) as server:
        hub = server.running.server.hub
        for user, lat, lon in people:
            # Straight into the grid, as visible users' location updates would put them.
            hub.strangers.grid.place(user, Location(lat, lon, 0.0))
        samples = []
        async with server.connect("watcher", memory=False, heartbeat=True) as watcher:
            conn = next(iter(hub.connections_of("watcher")))
            hub.handle(conn, SettingsUpdate(visible_to_strangers=False), server.now())
            for lat, lon in points:
                hub.handle(conn, LocationUpdate(lat=lat, lon=lon), server.now())
                start = time.perf_counter()
                reply = await watcher.request("nearby_people")
                samples.append(time.perf_counter() - start)
                assert reply["type"] == "nearby_people", reply
        summary("geopresence nearby_people (WS)", samples)
        return statistics.fmean(samples)


async def wait_for_port(port: int) -> None:
    """Until something accepts TCP connections on the loopback port (at most 10 s)."""
    with trio.fail_after(10):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def bench_redis(
    people: list[tuple[str, float, float]], points: list[tuple[float, float]]
) -> float | None:
    binary = shutil.which("redis-server")
    if binary is None:
        print(f"{'Redis GEOSEARCH':<34} skipped: redis-server not installed")
        return None
    import coredis

    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await wait_for_port(port)
            client = coredis.Redis(host="127.0.0.1", port=port, decode_responses=True)
            async with client:
                members = [(lon, lat, user) for user, lat, lon in people]
                for first in range(0, len(members), 10_000):
                    await client.geoadd("people", members[first : first + 10_000])
                count = client.register_script(
                    "return #redis.call('GEOSEARCH', KEYS[1], 'FROMLONLAT', ARGV[1], ARGV[2],"
                    " 'BYRADIUS', ARGV[3], 'm')"
                )
                page_samples: list[float] = []
                samples: list[float] = []
                totals: list[int] = []
                for lat, lon in points:
                    start = time.perf_counter()
                    page = await client.geosearch(
                        "people", longitude=lon, latitude=lat, radius=RADIUS_M,
                        circle_unit=coredis.PureToken.M, order=coredis.PureToken.ASC,
                        count=20, withdist=True,
                    )  # fmt: skip
                    middle = time.perf_counter()
                    total: object = await count(keys=["people"], args=[lon, lat, RADIUS_M])
                    end = time.perf_counter()
                    page_samples.append(middle - start)
                    samples.append(end - start)
                    totals.append(int(str(total)))
                    assert isinstance(page, tuple) and len(page) == min(20, totals[-1])
                summary("Redis GEOSEARCH page only", page_samples)
                summary(
                    "Redis GEOSEARCH page + total", samples,
                    f"avg total {statistics.fmean(totals):.0f}",
                )  # fmt: skip
                await bench_cluster_index(port, people, points)
                return statistics.fmean(samples)
        finally:
            proc.terminate()
            proc.wait(10)


async def bench_cluster_index(
    port: int, people: list[tuple[str, float, float]], points: list[tuple[float, float]]
) -> None:
    """The stranger index of several nodes (``RedisStrangers``) on the same Redis."""
    import coredis

    from geopresence.cluster.redis_keys import Keys
    from geopresence.cluster.redis_strangers import RedisStrangers
    from geopresence.core.stranger_queries import snap

    client = coredis.Redis(host="127.0.0.1", port=port)
    async with client, trio.open_nursery() as nursery:
        index = RedisStrangers(client, Keys("bench"), time.time)
        await nursery.start(index.run)
        for user, lat, lon in people:
            index.entered(user, snap(Location(lat, lon, 0.0)), None, time.time() + 3600.0)
        while index.pending:
            await trio.sleep(0.05)
        await trio.sleep(0.2)
        samples: list[float] = []
        totals: list[int] = []
        for lat, lon in points:
            got: list[object] = []
            start = time.perf_counter()
            index.search(snap(Location(lat, lon, 0.0)), RADIUS_M, frozenset(), 20, got.append)
            while not got:
                await trio.sleep(0)
            samples.append(time.perf_counter() - start)
            answer = got[0]
            assert isinstance(answer, tuple), answer
            totals.append(answer[0])
        summary(
            "geopresence nodes (RedisStrangers)",
            samples,
            f"avg total {statistics.fmean(totals):.0f}",
        )
        nursery.cancel_scope.cancel()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2,000 users, 20 queries (CI)")
    args = parser.parse_args()
    users, queries = (2_000, 20) if args.quick else (args.users, args.queries)
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{users:,} visible users in 50 km x 50 km; {queries} queries, radius {RADIUS_M} m"
    )
    people = population(users, args.seed)
    points = query_points(queries, args.seed)
    core = bench_core(people, points)
    end_to_end = await bench_end_to_end(people, points)
    redis = await bench_redis(people, points)
    if redis is not None:
        print(
            f"ratio Redis / geopresence core: {redis / core:.2f}x; "
            f"Redis / geopresence end to end: {redis / end_to_end:.2f}x (above 1: we are faster)"
        )


if __name__ == "__main__":
    trio.run(main)
