"""The load benchmark: the design's load model against one server, its transport ceiling,
and a sweep for the largest population one process sustains.

    python -m benchmarks.load run --users 5000            # one run of the load model
    python -m benchmarks.load ceiling --users 2000        # geopresence saturated vs bare transport
    python -m benchmarks.load sweep                       # largest N with p99 <= 100 ms, no loss
    python -m benchmarks.load cluster --users 1000 --nodes 2 --redis cluster
                                                          # N nodes sharing a Redis, then 1 node
    python -m benchmarks.load run --users 500 --ws ws://HOST:8765/ws --http http://HOST:8766 \\
        --admin-key KEY                                   # a server you started yourself

The load model (seeds/nearby-friends-design.md): every simulated user keeps a WebSocket
session, heartbeats every 5 s, and sends its location every 30 s while moving at walking
(1.4 m/s) or driving (14 m/s) speed. Each has ``--friends`` friends (400), of which
``--online-share`` (10%) are simulated users online within a few km, the others offline
users. So each location update reaches ~40 friends as ``friend_location``; its latency is
measured from the ``ts`` the mover put in the update to the moment a friend's frame is read.

Processes: the server (started here with ``geopresence serve --in-memory``, unless URLs are
given) is pinned to CPU 0 and this load generator to CPU 1, so neither steals the other's
core; the generator reports its own CPU so that you can see it is not the bottleneck. It
uses raw sockets and a minimal WebSocket client (``benchmarks.wsclient``).

``cluster`` runs the same model against ``--nodes`` processes (``geopresence serve --redis``
or ``--redis-cluster``, node ids 1..N) sharing a throwaway Redis started here
(``benchmarks.redisprocs``: standalone, or a Redis Cluster of 3 masters). The friendships are
written straight into Redis before the nodes start (each node loads them at start-up): the
HTTP import goes through the nodes' Redis journal one command at a time, far too slowly for
hundreds of thousands of friendships. Simulated users are spread over the nodes round-robin
(user ``u<i>`` on node ``i mod N``), so most friends of a user are on another node and hear
it through Redis. Node k is pinned to CPU ``(k - 1) mod CPUs``; Redis and the load generator
are not pinned (on a 2-CPU machine everything shares the two cores, and the output says so).
Besides the ``run`` table it reports per-node deliveries, CPU and Redis traffic, the share
and latency of cross-node deliveries, duplicates, and Redis commands/s (``INFO stats``
``total_commands_processed`` over the measured window, summed over the masters) and CPU;
then, unless ``--no-baseline``, it runs one node in memory with the same users (as ``run``
does) and prints both side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import random
import re
import resource
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO, Any

import attrs
import httpx
import orjson
import trio

from benchmarks import redisprocs
from benchmarks.wsclient import Closed, RawWebSocket

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening ws=(?P<host>\S+):(?P<port>\d+)(?: http=\S+:(?P<http>\d+))?")
EARTH_M_PER_DEG = 111_195.0
SPEEDS = {"walking": 1.4, "driving": 14.0}


@attrs.define
class Options:
    users: int
    friends: int = 400
    online_share: float = 0.1
    duration: float = 60.0
    warmup: float = 10.0
    ramp: float = 1000.0
    location_interval: float = 30.0
    heartbeat_interval: float = 5.0
    speed: str = "walking"
    ws: str | None = None
    http: str | None = None
    admin_key: str | None = None
    quiet: bool = False
    nodes: int = 1
    """``cluster``: how many nodes share the Redis."""
    redis: str = "cluster"
    """``cluster``: ``standalone`` Redis or a 3-master Redis ``cluster``."""
    baseline: bool = True
    """``cluster``: also run one node in memory with the same users."""


# ---------------------------------------------------------------------------- processes


@attrs.define
class Started:
    proc: subprocess.Popen[str] | None
    ws_host: str
    ws_port: int
    http_url: str | None


def pin(pid: int, cpu: int) -> None:
    """Pin ``pid`` to one CPU (when the machine has more than one)."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, {cpu % (os.cpu_count() or 1)})


def unpin(pid: int) -> None:
    """Let ``pid`` run on every CPU again."""
    if hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, range(os.cpu_count() or 1))


def start_process(args: list[str], cpu: int = 0, stderr: IO[bytes] | None = None) -> Started:
    """Start ``python ARGS`` pinned to ``cpu``, once it printed its ``listening`` line; its
    stderr goes to ``stderr`` (default: nowhere)."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if stderr is None else stderr,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    pin(proc.pid, cpu)
    assert proc.stdout is not None
    for line in proc.stdout:
        match = LISTENING.search(line)
        if match:
            http = f"http://{match['host']}:{match['http']}" if match["http"] else None
            return Started(proc, match["host"], int(match["port"]), http)
    proc.kill()
    raise RuntimeError(f"{args} did not print its listening line")


def start_server(options: Options, data_dir: Path) -> Started:
    return start_process(
        [
            "-m", "geopresence", "serve", "--insecure", "--in-memory", "--port", "0",
            "--http-port", "0", "--data-dir", str(data_dir), "--log-level", "warning",
            "--heartbeat-interval", str(options.heartbeat_interval),
            "--offline-after", str(options.heartbeat_interval * 6),
        ]
    )  # fmt: skip


def stop(started: Started) -> None:
    if started.proc is not None and started.proc.poll() is None:
        started.proc.terminate()
        try:
            started.proc.wait(30)
        except subprocess.TimeoutExpired:
            started.proc.kill()


@attrs.frozen
class ProcStats:
    cpu_seconds: float
    rss_bytes: int


def proc_stats(pid: int) -> ProcStats:
    """CPU time (user + system) and RSS of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = 0
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return ProcStats(cpu, rss)


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------- the population


def cluster_size(options: Options) -> int:
    return max(2, round(options.friends * options.online_share) + 1)


def friendships(options: Options) -> Iterator[tuple[str, str]]:
    """Clusters of ``cluster_size`` simulated users are all friends with each other; every
    user also has offline friends from a pool, up to ``friends`` in all."""
    n = options.users
    size = cluster_size(options)
    for start in range(0, n, size):
        members = range(start, min(start + size, n))
        for i in members:
            for j in members:
                if i < j:
                    yield f"u{i}", f"u{j}"
    offline = max(0, options.friends - (size - 1))
    pool = max(offline, n)
    for i in range(n):
        for k in range(offline):
            yield f"u{i}", f"x{(i * 7919 + k) % pool}"


def home(index: int, options: Options) -> tuple[float, float]:
    """Where user ``index`` starts: its cluster sits on a 50 km grid (no two clusters within
    each other's 5-mile radius), the user within 1 km of the cluster's centre."""
    cluster = index // cluster_size(options)
    side = max(1, math.ceil(math.sqrt(options.users / cluster_size(options) + 1)))
    row, col = divmod(cluster, side)
    lat = -60 + (row * 50_000) / EARTH_M_PER_DEG
    lat = ((lat + 60) % 120) - 60
    lon = -170 + (col * 50_000) / (EARTH_M_PER_DEG * math.cos(math.radians(lat)))
    rng = random.Random(index)
    lat += rng.uniform(-500, 500) / EARTH_M_PER_DEG
    lon += rng.uniform(-500, 500) / (EARTH_M_PER_DEG * math.cos(math.radians(lat)))
    return lat, ((lon + 180) % 360) - 180


async def create_friendships(http: str, admin_key: str | None, options: Options) -> int:
    headers = {"authorization": f"Bearer {admin_key}"} if admin_key else {}
    created = 0
    batch: list[list[str]] = []
    async with httpx.AsyncClient(base_url=http, headers=headers, timeout=120) as client:

        async def flush() -> None:
            nonlocal created
            response = await client.post("/v1/friendships", content=orjson.dumps({"pairs": batch}))
            response.raise_for_status()
            created += response.json()["created"]
            batch.clear()

        for a, b in friendships(options):
            batch.append([a, b])
            if len(batch) == 10_000:
                await flush()
        if batch:
            await flush()
    return created


# ---------------------------------------------------------------------------- the generator


@attrs.define
class Counters:
    sent: int = 0
    locations: int = 0
    deliveries: int = 0
    gone: int = 0
    other: int = 0
    errors: int = 0
    closed: dict[int | None, int] = attrs.Factory(dict)
    latencies: list[float] = attrs.Factory(list)
    measuring: bool = False
    connected: int = 0
    nodes: int = 1
    """Nodes the users are spread over (user ``u<i>`` on node ``i mod nodes``)."""
    node_deliveries: list[int] = attrs.Factory(lambda: [0])
    """Deliveries read by the users of each node."""
    cross_latencies: list[float] = attrs.Factory(list)
    """With several nodes: the latencies (also in ``latencies``) of deliveries whose mover
    is on another node than the recipient..."""
    same_latencies: list[float] = attrs.Factory(list)
    """...and of those whose mover is on the recipient's node."""
    duplicates: int = 0
    """With several nodes: the same update (mover, ts) delivered twice to one user."""
    seen: set[tuple[int, str, float]] = attrs.Factory(set)


class Simulated:
    """One simulated user: a session that heartbeats, moves and reads."""

    def __init__(self, index: int, options: Options, counters: Counters) -> None:
        self.index = index
        self.user = f"u{index}"
        self.node = index % counters.nodes
        self.options = options
        self.counters = counters
        self.lat, self.lon = home(index, options)
        self.home = (self.lat, self.lon)
        self.rng = random.Random(index * 31 + 7)
        self.ws: RawWebSocket | None = None

    def _on_text(self, payload: bytes) -> None:
        counters = self.counters
        if payload.startswith(b'{"type":"friend_location"'):
            counters.deliveries += 1
            counters.node_deliveries[self.node] += 1
            if counters.measuring:
                frame = orjson.loads(payload)
                latency = time.time() - frame["ts"]
                counters.latencies.append(latency)
                if counters.nodes > 1:
                    mover: str = frame["user"]
                    if int(mover[1:]) % counters.nodes != self.node:
                        counters.cross_latencies.append(latency)
                    else:
                        counters.same_latencies.append(latency)
                    key = (self.index, mover, frame["ts"])
                    if key in counters.seen:
                        counters.duplicates += 1
                    counters.seen.add(key)
        elif payload.startswith(b'{"type":"friend_gone"'):
            counters.gone += 1
        elif payload.startswith(b'{"type":"error"'):
            counters.errors += 1
        else:
            counters.other += 1

    def _move(self) -> None:
        """Walk (or drive) ``location_interval`` seconds in a random direction, staying
        within 2 km of home so friends stay in range."""
        step = SPEEDS[self.options.speed] * self.options.location_interval
        bearing = self.rng.uniform(0, 2 * math.pi)
        lat = self.lat + step * math.cos(bearing) / EARTH_M_PER_DEG
        lon = self.lon + step * math.sin(bearing) / (
            EARTH_M_PER_DEG * math.cos(math.radians(self.lat))
        )
        if abs(lat - self.home[0]) * EARTH_M_PER_DEG > 2000:
            lat = self.home[0]
        if abs(lon - self.home[1]) * EARTH_M_PER_DEG * math.cos(math.radians(lat)) > 2000:
            lon = self.home[1]
        self.lat, self.lon = lat, lon

    async def _location(self) -> None:
        assert self.ws is not None
        frame = {"type": "location", "lat": self.lat, "lon": self.lon, "ts": time.time()}
        await self.ws.send_text(orjson.dumps(frame))
        self.counters.sent += 1
        self.counters.locations += 1

    async def run(self, host: str, port: int) -> None:
        counters = self.counters
        try:
            self.ws = ws = await RawWebSocket.connect(host, port)
            await ws.send_text(orjson.dumps({"type": "hello", "user": self.user, "device": "d"}))
            await self._location()
            counters.connected += 1
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sender)
                while True:
                    await ws.read_frames(self._on_text)
        except Closed as exc:
            counters.closed[exc.code] = counters.closed.get(exc.code, 0) + 1
        except (OSError, trio.BrokenResourceError, ConnectionError):
            counters.closed[None] = counters.closed.get(None, 0) + 1

    async def _sender(self) -> None:
        assert self.ws is not None
        options = self.options
        heartbeat = orjson.dumps({"type": "heartbeat"})
        now = trio.current_time()
        next_beat = now + self.rng.uniform(0, options.heartbeat_interval)
        next_move = now + self.rng.uniform(0, options.location_interval)
        while True:
            await trio.sleep_until(min(next_beat, next_move))
            now = trio.current_time()
            if now >= next_move:
                self._move()
                await self._location()
                next_move += options.location_interval
                next_beat = now + options.heartbeat_interval  # any message is activity
            else:
                await self.ws.send_text(heartbeat)
                self.counters.sent += 1
                next_beat += options.heartbeat_interval


def percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


async def server_metrics(http: str | None, key: str | None) -> dict[str, float]:
    if http is None:
        return {}
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=http, headers=headers, timeout=30) as client:
        text = (await client.get("/metrics")).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def progress(label: str, done: int, total: int, quiet: bool) -> None:
    if quiet:
        return
    width = 30
    filled = int(width * done / max(total, 1))
    bar = "#" * filled + "." * (width - filled)
    print(f"\r  {label} [{bar}] {done:,}/{total:,}", end="", file=sys.stderr, flush=True)
    if done >= total:
        print(file=sys.stderr, flush=True)


@attrs.define
class Result:
    users: int
    connected: int
    inbound_per_s: float
    deliveries_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    samples: int
    coalesced: float
    lost: int
    server_cpu: float | None
    server_rss_mb: float | None
    per_connection_kb: float | None
    generator_cpu: float
    errors: int
    servers: int = 1
    """Server processes measured (CPU and RSS are their sums)."""
    locations_per_s: float = math.nan
    redis_ops_per_s: float | None = None
    redis_cpu: float | None = None
    extra: list[tuple[str, str]] = attrs.Factory(list)
    """More rows (several nodes: per node, cross-node, Redis)."""

    @property
    def sustained(self) -> bool:
        return self.p99_ms <= 100 and self.lost == 0 and self.connected == self.users

    @property
    def cpu_per_delivery_us(self) -> float | None:
        """Server CPU (all nodes) per delivery, in µs."""
        if self.server_cpu is None or not self.deliveries_per_s:
            return None
        return self.server_cpu / self.deliveries_per_s * 1e6

    def table(self) -> str:
        latency = (
            f"{fmt(self.p50_ms, '.1f')} / {fmt(self.p95_ms, '.1f')} / "
            f"{fmt(self.p99_ms, '.1f')}  ({self.samples:,} samples)"
        )
        cpu = None if self.server_cpu is None else self.server_cpu * 100
        summed = f" (sum of {self.servers} nodes)" if self.servers > 1 else ""
        rows = [
            ("users (connected)", f"{self.users:,} ({self.connected:,})"),
            ("inbound msgs/s", fmt(self.inbound_per_s, ",.0f")),
            ("deliveries/s (friend_location)", fmt(self.deliveries_per_s, ",.0f")),
            ("latency p50 / p95 / p99 (ms)", latency),
            ("coalesced updates (latest-wins)", fmt(self.coalesced, ",.0f")),
            ("lost (closed sessions, 4008)", f"{self.lost:,}"),
            ("server CPU", fmt(cpu, ".0f") + " %" + summed),
            ("server RSS", fmt(self.server_rss_mb, ",.0f") + " MB" + summed),
            ("memory per connection", fmt(self.per_connection_kb, ",.1f") + " KB"),
            ("load generator CPU", f"{self.generator_cpu * 100:.0f} %"),
            ("error replies", f"{self.errors:,}"),
            *self.extra,
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def fmt(value: float | None, spec: str) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else format(value, spec)
    )


@attrs.frozen
class Target:
    """One server under test: where its users connect, its HTTP API, its pid (when this
    benchmark started it) and the CPU it is pinned to."""

    host: str
    port: int
    http: str | None
    pid: int | None
    cpu: int | None = None


def all_stats(targets: list[Target]) -> list[ProcStats] | None:
    """Every target's CPU and RSS (None when one was not started here)."""
    if any(t.pid is None for t in targets):
        return None
    return [proc_stats(t.pid) for t in targets if t.pid is not None]


@attrs.frozen
class RedisCounts:
    commands: list[int]
    """``total_commands_processed`` of each master."""
    calls: dict[str, int]
    """Calls by command, summed over the masters."""
    cpu_seconds: float
    """The masters' CPU time."""


async def redis_counts(redis: redisprocs.Redis) -> RedisCounts:
    """What the masters have done so far."""
    commands = []
    calls: dict[str, int] = {}
    for port in redis.ports:
        commands.append(int((await redisprocs.info(port, "stats"))["total_commands_processed"]))
        for name, count in (await redisprocs.command_calls(port)).items():
            calls[name] = calls.get(name, 0) + count
    cpu = sum(proc_stats(pid).cpu_seconds for pid in redis.pids)
    return RedisCounts(commands, calls, cpu)


async def redis_settled(options: Options, targets: list[Target]) -> tuple[float, float, bool]:
    """Wait until no node has a backlog of Redis commands (the connection burst queues one
    SUBSCRIBE per new channel, and publishes wait behind them): the seconds it took, the
    largest backlog seen, and whether it drained within 120 s."""
    started = time.monotonic()
    peak = 0.0
    calm = 0
    drained = False
    while not drained and time.monotonic() - started < 120:
        pending = [
            (await server_metrics(t.http, options.admin_key)).get("geopresence_redis_pending", 0)
            for t in targets
        ]
        peak = max(peak, *pending)
        calm = calm + 1 if max(pending) <= 20 else 0
        drained = calm >= 2
        if not options.quiet:
            each = " + ".join(f"{p:,.0f}" for p in pending)
            print(f"\r  Redis backlog: {each} commands  ", end="", file=sys.stderr, flush=True)
        if not drained:
            await trio.sleep(0.5)
    if not options.quiet:
        print(file=sys.stderr, flush=True)
    return time.monotonic() - started, peak, drained


async def run_load(
    options: Options,
    targets: list[Target],
    redis: redisprocs.Redis | None = None,
    measured: Callable[[], None] | None = None,
) -> Result:
    """Connect ``options.users`` simulated users (ramping up; user i to target i mod the
    number of targets), warm up, measure; ``measured`` is called once the figures are taken,
    before the users disconnect."""
    nodes = len(targets)
    counters = Counters(nodes=nodes, node_deliveries=[0] * nodes)
    base = all_stats(targets)
    users = [Simulated(i, options, counters) for i in range(options.users)]
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        for i, user in enumerate(users):
            node = targets[user.node]
            nursery.start_soon(user.run, node.host, node.port)
            if options.ramp > 0:
                await trio.sleep_until(started + (i + 1) / options.ramp)
            if i % 200 == 0:
                progress("connecting", counters.connected, options.users, options.quiet)
        with trio.move_on_after(max(30.0, options.users / 500)):
            while counters.connected + sum(counters.closed.values()) < options.users:
                progress("connecting", counters.connected, options.users, options.quiet)
                await trio.sleep(0.2)
        progress("connecting", counters.connected, options.users, True)
        progress("connecting", options.users, options.users, options.quiet)
        await trio.sleep(1.0)  # the initial locations fan out
        connected_stats = all_stats(targets)
        settled = await redis_settled(options, targets) if nodes > 1 else None
        await trio.sleep(options.warmup)
        before = [await server_metrics(t.http, options.admin_key) for t in targets]
        redis_before = await redis_counts(redis) if redis else None
        server_before = all_stats(targets)
        generator_before = self_cpu()
        sent_before, deliveries_before = counters.sent, counters.deliveries
        locations_before = counters.locations
        node_before = list(counters.node_deliveries)
        closed_before = sum(counters.closed.values())
        # The generator is the measuring instrument: its own garbage collector must not add
        # pauses to the latencies it records (the server keeps its normal GC).
        gc.collect()
        gc.freeze()
        gc.disable()
        counters.measuring = True
        window_start = time.monotonic()
        steps = max(1, int(options.duration))
        for step in range(steps):
            await trio.sleep(options.duration / steps)
            progress("measuring", step + 1, steps, options.quiet)
        counters.measuring = False
        elapsed = time.monotonic() - window_start
        gc.enable()
        gc.unfreeze()
        generator_cpu = (self_cpu() - generator_before) / elapsed
        server_after = all_stats(targets)
        redis_after = await redis_counts(redis) if redis else None
        after = [await server_metrics(t.http, options.admin_key) for t in targets]
        if measured is not None:
            measured()
        nursery.cancel_scope.cancel()

    def delta(name: str, node: int) -> float:
        return after[node].get(name, 0) - before[node].get(name, 0)

    coalesced = sum(delta("geopresence_coalesced_total", k) for k in range(nodes))
    lost = sum(counters.closed.values()) - closed_before
    lost += sum(int(values.get('geopresence_closes_total{code="4008"}', 0)) for values in after)
    per_conn = None
    if base is not None and connected_stats is not None and counters.connected:
        grown = sum(c.rss_bytes - b.rss_bytes for b, c in zip(base, connected_stats, strict=True))
        per_conn = grown / counters.connected / 1024
    cpus = (
        [
            (a.cpu_seconds - b.cpu_seconds) / elapsed
            for b, a in zip(server_before, server_after, strict=True)
        ]
        if server_after and server_before
        else None
    )
    result = Result(
        users=options.users,
        connected=counters.connected,
        inbound_per_s=(counters.sent - sent_before) / elapsed,
        deliveries_per_s=(counters.deliveries - deliveries_before) / elapsed,
        p50_ms=percentile(counters.latencies, 50) * 1000,
        p95_ms=percentile(counters.latencies, 95) * 1000,
        p99_ms=percentile(counters.latencies, 99) * 1000,
        samples=len(counters.latencies),
        coalesced=coalesced,
        lost=lost,
        server_cpu=sum(cpus) if cpus is not None else None,
        server_rss_mb=sum(s.rss_bytes for s in server_after) / 1e6 if server_after else None,
        per_connection_kb=per_conn,
        generator_cpu=generator_cpu,
        errors=counters.errors,
        servers=nodes,
        locations_per_s=(counters.locations - locations_before) / elapsed,
    )
    if nodes == 1:
        return result
    # Several nodes: who delivered what, what crossed Redis, what Redis did.
    per_update = result.deliveries_per_s / result.locations_per_s if result.locations_per_s else 0
    result.extra.append(
        ("location updates/s", f"{result.locations_per_s:,.1f} ({per_update:.1f} deliveries each)")
    )
    cross, same = counters.cross_latencies, counters.same_latencies
    share = len(cross) / len(counters.latencies) * 100 if counters.latencies else math.nan

    def p50_p99(values: list[float]) -> str:
        return (
            f"p50 / p99 {fmt(percentile(values, 50) * 1000, '.1f')} / "
            f"{fmt(percentile(values, 99) * 1000, '.1f')} ms"
        )

    result.extra.append(
        ("cross-node deliveries (via Redis)", f"{fmt(share, '.0f')} % of samples, {p50_p99(cross)}")
    )
    result.extra.append(("same-node deliveries", p50_p99(same)))
    result.extra.append(("duplicate deliveries", f"{counters.duplicates:,}"))
    if settled is not None:
        seconds, peak, drained = settled
        result.extra.append(
            (
                "Redis backlog after the ramp",
                f"peak {peak:,.0f} commands queued, "
                + (f"drained {seconds:.1f} s" if drained else f"NOT drained after {seconds:.0f} s")
                + " after the last connection (then the warmup)",
            )
        )
    for k, node in enumerate(targets):
        delivered = (counters.node_deliveries[k] - node_before[k]) / elapsed
        parts = [f"deliveries/s {delivered:,.0f}"]
        if cpus is not None and server_after is not None:
            parts.append(f"CPU {cpus[k] * 100:.0f} %")
            parts.append(f"RSS {server_after[k].rss_bytes / 1e6:,.0f} MB")
        received = delta('geopresence_redis_envelopes_total{result="received"}', k) / elapsed
        applied = delta("geopresence_redis_feed_applied_total", k) / elapsed
        dropped = after[k].get('geopresence_redis_envelopes_total{result="dropped"}', 0)
        failed = after[k].get('geopresence_redis_envelopes_total{result="failed"}', 0)
        parts.append(f"from Redis {received:,.0f} envelopes/s ({applied:,.0f} feed ops/s)")
        parts.append(f"dropped {dropped:,.0f}, failed {failed:,.0f} (since start)")
        parts.append(f"queued {after[k].get('geopresence_redis_pending', math.nan):,.0f}")
        cpu = f" (CPU {node.cpu})" if node.cpu is not None else ""
        result.extra.append((f"node {k + 1}{cpu}", ", ".join(parts)))
    if redis is not None and redis_before is not None and redis_after is not None:
        ops = [
            (a - b) / elapsed
            for b, a in zip(redis_before.commands, redis_after.commands, strict=True)
        ]
        result.redis_ops_per_s = sum(ops)
        result.redis_cpu = (redis_after.cpu_seconds - redis_before.cpu_seconds) / elapsed
        each = " + ".join(f"{op:,.0f}" for op in ops)
        masters = f"{len(ops)} masters: {each}" if len(ops) > 1 else "1 server"
        result.extra.append(("Redis ops/s", f"{sum(ops):,.0f} ({masters})"))
        calls = {
            name: (count - redis_before.calls.get(name, 0)) / elapsed
            for name, count in redis_after.calls.items()
        }
        top = sorted(calls.items(), key=lambda item: -item[1])[:6]
        result.extra.append(
            ("Redis commands/s", ", ".join(f"{name} {rate:,.0f}" for name, rate in top if rate))
        )
        result.extra.append(("Redis CPU", f"{result.redis_cpu * 100:.0f} % (sum)"))
    return result


@contextlib.asynccontextmanager
async def target(options: Options) -> AsyncIterator[tuple[str, int, str | None, int | None]]:
    """The server under test: the given URLs, or a fresh in-memory server subprocess."""
    if options.ws is not None:
        match = re.match(r"ws://(?P<host>[^:/]+):(?P<port>\d+)", options.ws)
        if match is None:
            raise SystemExit(f"--ws must look like ws://HOST:PORT/ws, got {options.ws!r}")
        yield match["host"], int(match["port"]), options.http, None
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="geopresence-load-") as tmp:
        started = await trio.to_thread.run_sync(start_server, options, Path(tmp))
        try:
            assert started.proc is not None
            yield started.ws_host, started.ws_port, started.http_url, started.proc.pid
        finally:
            await trio.to_thread.run_sync(stop, started)


async def one_run(options: Options) -> Result:
    pin(os.getpid(), 1)
    async with target(options) as (host, port, http, pid):
        if http is not None:
            if not options.quiet:
                print(
                    f"  creating friendships: {options.users:,} users x {options.friends} "
                    f"friends ({cluster_size(options) - 1} online nearby)",
                    file=sys.stderr,
                )
            t0 = time.monotonic()
            created = await create_friendships(http, options.admin_key, options)
            if not options.quiet:
                print(
                    f"  {created:,} friendships in {time.monotonic() - t0:.1f} s",
                    file=sys.stderr,
                )
        return await run_load(options, [Target(host, port, http, pid, 0 if pid else None)])


# ---------------------------------------------------------------------------- cluster


async def seed_friendships(redis: redisprocs.Redis, options: Options) -> int:
    """Write the model's friendships straight into Redis, in the layout the nodes load at
    start-up (``geopresence.cluster.redis_keys``): one SADD per user. Returns how many."""
    import coredis
    from coredis.connection import TCPLocation

    from geopresence.cluster.redis_keys import Keys

    friends: defaultdict[str, set[str]] = defaultdict(set)
    count = 0
    for a, b in friendships(options):
        if a != b and b not in friends[a]:
            count += 1
            friends[a].add(b)
            friends[b].add(a)
    keys = Keys()
    client: coredis.Redis[Any] | coredis.RedisCluster[Any] = (
        coredis.Redis(host="127.0.0.1", port=redis.ports[0])
        if redis.kind == "standalone"
        else coredis.RedisCluster(startup_nodes=[TCPLocation("127.0.0.1", p) for p in redis.ports])
    )
    async with client:
        names = sorted(friends)
        for i, user in enumerate(names):
            await client.sadd(keys.of("friends", user), list(friends[user]))
            if i % 500 == 0:
                progress("seeding Redis", i, len(names), options.quiet)
        for start in range(0, len(names), 10_000):
            await client.sadd(keys.users, names[start : start + 10_000])
        progress("seeding Redis", len(names), len(names), options.quiet)
    return count


def start_node(options: Options, redis: redisprocs.Redis, k: int, workdir: Path) -> Started:
    """Node ``k`` (0-based; node id k + 1) on ``redis``, pinned to CPU k, its log in
    ``workdir/node<k+1>.log``."""
    with (workdir / f"node{k + 1}.log").open("wb") as log:
        return start_process(
            [
                "-m", "geopresence", "serve", *redis.serve_args(), "--node-id", str(k + 1),
                "--insecure", "--port", "0", "--http-port", "0",
                "--data-dir", str(workdir / f"data{k + 1}"), "--log-level", "warning",
                "--heartbeat-interval", str(options.heartbeat_interval),
                "--offline-after", str(options.heartbeat_interval * 6),
            ],
            cpu=k,
            stderr=log,
        )  # fmt: skip


def node_cpu(k: int) -> int:
    return k % (os.cpu_count() or 1)


def log_sizes(workdir: Path, nodes: int) -> list[int]:
    """How many bytes each node has logged so far."""
    paths = [workdir / f"node{k + 1}.log" for k in range(nodes)]
    return [path.stat().st_size if path.exists() else 0 for path in paths]


def log_problems(workdir: Path, nodes: int, until: list[int] | None = None) -> list[str]:
    """The lines the nodes logged (at ``--log-level warning``: warnings, errors and their
    tracebacks), all of them or the first ``until[k]`` bytes of node k's log."""
    lines: list[str] = []
    for k in range(nodes):
        path = workdir / f"node{k + 1}.log"
        if not path.exists():
            continue
        data = path.read_bytes()
        if until is not None:
            data = data[: until[k]]
        lines += [
            f"node {k + 1}: {line}"
            for line in data.decode(errors="replace").splitlines()
            if line.strip()
        ]
    return lines


async def cluster_run(options: Options) -> Result:
    """The load model against ``options.nodes`` nodes sharing a fresh Redis."""
    import tempfile

    unpin(os.getpid())
    with tempfile.TemporaryDirectory(prefix="geopresence-cluster-") as tmp:
        workdir = Path(tmp)
        (workdir / "redis").mkdir()
        with contextlib.ExitStack() as stack:
            redis = await trio.to_thread.run_sync(
                stack.enter_context, redisprocs.redis(options.redis, workdir / "redis")
            )
            t0 = time.monotonic()
            created = await seed_friendships(redis, options)
            if not options.quiet:
                print(
                    f"  {created:,} friendships ({options.users:,} users x {options.friends} "
                    f"friends, {cluster_size(options) - 1} online nearby) written to "
                    f"{redis.label} in {time.monotonic() - t0:.1f} s",
                    file=sys.stderr,
                )
            nodes: list[Started] = []
            try:
                for k in range(options.nodes):
                    nodes.append(
                        await trio.to_thread.run_sync(start_node, options, redis, k, workdir)
                    )
                targets = []
                for k, node in enumerate(nodes):
                    assert node.proc is not None
                    cpu = node_cpu(k) if (os.cpu_count() or 1) > 1 else None
                    targets.append(Target(node.ws_host, node.ws_port, node.http_url,
                                          node.proc.pid, cpu))  # fmt: skip
                sizes: list[int] = []

                def measured() -> None:
                    sizes.extend(log_sizes(workdir, options.nodes))

                result = await run_load(options, targets, redis, measured)
            finally:
                for node in nodes:
                    await trio.to_thread.run_sync(stop, node)
                await trio.to_thread.run_sync(stack.close)
        during = log_problems(workdir, options.nodes, sizes)
        everything = log_problems(workdir, options.nodes)
    result.extra.append(
        (
            "node log warnings/errors",
            f"{len(during):,} until measured, {len(everything) - len(during):,} as the users "
            "left and the nodes stopped",
        )
    )
    for line in everything[:10]:
        print(f"  {line}", file=sys.stderr)
    return result


def comparison(nodes: Result, one: Result, label: str) -> str:
    """The cluster run and the one-node run, side by side."""

    def ratio(a: float | None, b: float | None) -> str:
        if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
            return ""
        return f"{a / b:.2f}x"

    def per_update(result: Result) -> float:
        if not result.locations_per_s:
            return math.nan
        return result.deliveries_per_s / result.locations_per_s

    def pct(value: float | None) -> float | None:
        return None if value is None else value * 100

    rows = [
        ("", label, "1 node in memory", "ratio"),
        ("users connected", f"{nodes.connected:,}", f"{one.connected:,}", ""),
        ("deliveries/s", fmt(nodes.deliveries_per_s, ",.0f"), fmt(one.deliveries_per_s, ",.0f"),
         ratio(nodes.deliveries_per_s, one.deliveries_per_s)),
        ("deliveries per location update", fmt(per_update(nodes), ".1f"),
         fmt(per_update(one), ".1f"), ""),
        ("latency p50 (ms)", fmt(nodes.p50_ms, ".1f"), fmt(one.p50_ms, ".1f"),
         ratio(nodes.p50_ms, one.p50_ms)),
        ("latency p99 (ms)", fmt(nodes.p99_ms, ".1f"), fmt(one.p99_ms, ".1f"),
         ratio(nodes.p99_ms, one.p99_ms)),
        ("lost sessions", f"{nodes.lost:,}", f"{one.lost:,}", ""),
        ("server CPU, all nodes (%)", fmt(pct(nodes.server_cpu), ".0f"),
         fmt(pct(one.server_cpu), ".0f"), ratio(nodes.server_cpu, one.server_cpu)),
        ("server CPU per delivery (µs)", fmt(nodes.cpu_per_delivery_us, ",.0f"),
         fmt(one.cpu_per_delivery_us, ",.0f"),
         ratio(nodes.cpu_per_delivery_us, one.cpu_per_delivery_us)),
        ("Redis ops/s", fmt(nodes.redis_ops_per_s, ",.0f"), "-", ""),
        ("Redis CPU (%)", fmt(pct(nodes.redis_cpu), ".0f"), "-", ""),
        ("load generator CPU (%)", fmt(nodes.generator_cpu * 100, ".0f"),
         fmt(one.generator_cpu * 100, ".0f"), ""),
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        f"  {a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}  {d:>{widths[3]}}".rstrip()
        for a, b, c, d in rows
    )


async def cluster(options: Options) -> None:
    cpus = os.cpu_count() or 1
    redis_procs = 1 if options.redis == "standalone" else 3
    label = f"{options.nodes} nodes + " + (
        "standalone Redis" if options.redis == "standalone" else "Redis Cluster"
    )
    pinned = ", ".join(f"node {k + 1} on CPU {node_cpu(k)}" for k in range(options.nodes))
    print(
        f"{label}: {options.users:,} users, round-robin over the nodes ({pinned}; Redis and "
        f"the load generator unpinned): {options.nodes} nodes + {redis_procs} redis-server + "
        f"the load generator share {cpus} CPUs"
    )
    result = await cluster_run(options)
    print(result.table())
    if not options.baseline:
        return
    print(
        f"1 node in memory: the same {options.users:,} users (server on CPU 0, load generator "
        f"on CPU 1, as `run`)"
    )
    one = await one_run(options)
    print(one.table())
    print(f"comparison, {options.users:,} users, same load model:")
    print(comparison(result, one, label))


# ---------------------------------------------------------------------------- ceiling


async def drain_rate(
    host: str, port: int, users: int, duration: float, quiet: bool
) -> tuple[float, float]:
    """Connect ``users`` raw clients that only read; frames/s they receive over
    ``duration`` seconds (and the generator's CPU share)."""
    received = [0]

    def on_text(_payload: bytes) -> None:
        received[0] += 1

    async def reader(ready: list[int]) -> None:
        ws = await RawWebSocket.connect(host, port)
        await ws.send_text(b'{"type":"hello","user":"c","device":"d"}')
        ready[0] += 1
        with contextlib.suppress(Closed, OSError, trio.BrokenResourceError):
            while True:
                await ws.read_frames(on_text)

    ready = [0]
    async with trio.open_nursery() as nursery:
        for _ in range(users):
            nursery.start_soon(reader, ready)
        while ready[0] < users:
            progress("connecting", ready[0], users, quiet)
            await trio.sleep(0.1)
        progress("connecting", users, users, quiet)
        await trio.sleep(2)
        start, cpu = received[0], self_cpu()
        t0 = time.monotonic()
        await trio.sleep(duration)
        elapsed = time.monotonic() - t0
        rate = (received[0] - start) / elapsed
        generator = (self_cpu() - cpu) / elapsed
        nursery.cancel_scope.cancel()
    return rate, generator


async def ceiling(options: Options) -> None:
    """geopresence saturated (locations every second) vs the bare transport."""
    pin(os.getpid(), 1)
    saturated = attrs.evolve(options, location_interval=1.0, warmup=5.0)
    print(f"geopresence saturated: {options.users:,} users, a location every second each")
    geo = await one_run(saturated)
    print(geo.table())
    rates: dict[int, float] = {}
    for batch in (1, 32):
        bare = await trio.to_thread.run_sync(
            start_process,
            ["-m", "benchmarks.ceiling", "--port", "0", "--frame-bytes", "120",
             "--batch", str(batch)],
        )  # fmt: skip
        try:
            rate, generator = await drain_rate(
                bare.ws_host, bare.ws_port, options.users, options.duration, options.quiet
            )
        finally:
            await trio.to_thread.run_sync(stop, bare)
        rates[batch] = rate
        how = "send_message per frame" if batch == 1 else f"{batch} frames per write"
        print(f"bare trio-websocket push ({how}), {options.users:,} connections: "
              f"{rate:,.0f} frames/s (load generator CPU {generator * 100:.0f} %)")  # fmt: skip
    ceiling_rate = max(rates.values())
    ratio = geo.deliveries_per_s / ceiling_rate if ceiling_rate else math.nan
    print(
        f"ratio: geopresence deliveries/s at saturation / transport ceiling "
        f"({ceiling_rate:,.0f} frames/s) = {ratio:.2f}"
    )


# ---------------------------------------------------------------------------- sweep


async def sweep(options: Options, start: int, limit: int) -> None:
    results: list[Result] = []
    n = start
    best: Result | None = None
    failed_at: int | None = None
    while n <= limit:
        print(f"\nN = {n:,}")
        result = await one_run(attrs.evolve(options, users=n))
        print(result.table())
        results.append(result)
        if result.sustained:
            best = result
            if failed_at is None:
                n *= 2
            else:
                n = (n + failed_at) // 2
        else:
            failed_at = n
            n = (best.users + n) // 2 if best else n // 2
        if best and failed_at and failed_at - best.users <= max(start // 2, failed_at // 8):
            break
        if n < start // 2 or n in [r.users for r in results]:
            break
    print("\nsweep:")
    for result in results:
        verdict = "ok" if result.sustained else "over"
        print(
            f"  N={result.users:>7,}  p99 {result.p99_ms:7.1f} ms  lost {result.lost:>4}  "
            f"deliveries/s {result.deliveries_per_s:>8,.0f}  server CPU "
            f"{(result.server_cpu or 0) * 100:3.0f} %  generator CPU "
            f"{result.generator_cpu * 100:3.0f} %  {verdict}"
        )
    if best is None:
        print(f"HEADLINE: no N >= {start:,} met p99 <= 100 ms with no loss")
    else:
        print(
            f"HEADLINE: one geopresence process sustains {best.users:,} users under the load "
            f"model (p99 {best.p99_ms:.1f} ms, no lost message)"
        )


# ---------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--friends", type=int, default=400)
    common.add_argument("--online-share", type=float, default=0.1)
    common.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    common.add_argument("--warmup", type=float, default=10.0)
    common.add_argument("--ramp", type=float, default=1000.0, help="connections per second")
    common.add_argument("--location-interval", type=float, default=30.0)
    common.add_argument("--speed", choices=sorted(SPEEDS), default="walking")
    common.add_argument("--ws", default=None, help="target server's ws:// URL (default: start one)")
    common.add_argument("--http", default=None, help="target server's HTTP API URL")
    common.add_argument("--admin-key", default=None)
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    run_cmd = commands.add_parser("run", parents=[common], help="one run of the load model")
    run_cmd.add_argument("--users", type=int, default=2000)
    ceiling_cmd = commands.add_parser(
        "ceiling", parents=[common], help="saturation vs bare transport"
    )
    ceiling_cmd.add_argument("--users", type=int, default=1000)
    sweep_cmd = commands.add_parser("sweep", parents=[common], help="largest N sustained")
    sweep_cmd.add_argument("--start", type=int, default=1000)
    sweep_cmd.add_argument("--max", type=int, default=64_000)
    cluster_cmd = commands.add_parser(
        "cluster", parents=[common], help="N nodes sharing a Redis, then 1 node in memory"
    )
    cluster_cmd.add_argument("--users", type=int, default=1000)
    cluster_cmd.add_argument("--nodes", type=int, default=2, help="nodes sharing the Redis")
    cluster_cmd.add_argument(
        "--redis",
        choices=["standalone", "cluster"],
        default="cluster",
        help="one Redis, or a Redis Cluster of 3 masters (sharded pub/sub)",
    )
    cluster_cmd.add_argument(
        "--no-baseline", action="store_true", help="skip the run of 1 node in memory"
    )
    args = parser.parse_args(argv)
    if args.command == "cluster" and (args.ws or args.http):
        parser.error("cluster starts its own Redis and nodes: --ws/--http do not apply")
    if args.command == "cluster" and not 1 <= args.nodes <= 1023:
        parser.error("--nodes must be 1..1023")
    options = Options(
        users=getattr(args, "users", 0), friends=args.friends, online_share=args.online_share,
        duration=args.duration, warmup=args.warmup, ramp=args.ramp,
        location_interval=args.location_interval, speed=args.speed, ws=args.ws, http=args.http,
        admin_key=args.admin_key, quiet=args.quiet, nodes=getattr(args, "nodes", 1),
        redis=getattr(args, "redis", "cluster"), baseline=not getattr(args, "no_baseline", False),
    )  # fmt: skip
    if args.command == "cluster":
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs", flush=True)
        try:
            trio.run(cluster, options)
        except redisprocs.RedisMissing as exc:
            raise SystemExit(f"cluster: {exc}") from None
        return
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; server on CPU 0, "
          f"load generator on CPU 1")  # fmt: skip
    if args.command == "run":
        result = trio.run(one_run, options)
        print(result.table())
    elif args.command == "ceiling":
        trio.run(ceiling, options)
    else:
        trio.run(sweep, options, args.start, args.max)


if __name__ == "__main__":
    main()
