"""The load benchmark: the design's load model against one server, its transport ceiling,
and a sweep for the largest population one process sustains.

    python -m benchmarks.load run --users 5000            # one run of the load model
    python -m benchmarks.load ceiling --users 2000        # geopresence saturated vs bare transport
    python -m benchmarks.load sweep                       # largest N with p99 <= 100 ms, no loss
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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import httpx
import orjson
import trio

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


def start_process(args: list[str]) -> Started:
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    pin(proc.pid, 0)
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
    deliveries: int = 0
    gone: int = 0
    other: int = 0
    errors: int = 0
    closed: dict[int | None, int] = attrs.Factory(dict)
    latencies: list[float] = attrs.Factory(list)
    measuring: bool = False
    connected: int = 0


class Simulated:
    """One simulated user: a session that heartbeats, moves and reads."""

    def __init__(self, index: int, options: Options, counters: Counters) -> None:
        self.index = index
        self.user = f"u{index}"
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
            if counters.measuring:
                frame = orjson.loads(payload)
                counters.latencies.append(time.time() - frame["ts"])
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

    @property
    def sustained(self) -> bool:
        return self.p99_ms <= 100 and self.lost == 0 and self.connected == self.users

    def table(self) -> str:
        def fmt(value: float | None, spec: str) -> str:
            return (
                "n/a"
                if value is None or (isinstance(value, float) and math.isnan(value))
                else format(value, spec)
            )

        latency = (
            f"{fmt(self.p50_ms, '.1f')} / {fmt(self.p95_ms, '.1f')} / "
            f"{fmt(self.p99_ms, '.1f')}  ({self.samples:,} samples)"
        )
        cpu = None if self.server_cpu is None else self.server_cpu * 100
        rows = [
            ("users (connected)", f"{self.users:,} ({self.connected:,})"),
            ("inbound msgs/s", fmt(self.inbound_per_s, ",.0f")),
            ("deliveries/s (friend_location)", fmt(self.deliveries_per_s, ",.0f")),
            ("latency p50 / p95 / p99 (ms)", latency),
            ("coalesced updates (latest-wins)", fmt(self.coalesced, ",.0f")),
            ("lost (closed sessions, 4008)", f"{self.lost:,}"),
            ("server CPU", fmt(cpu, ".0f") + " %"),
            ("server RSS", fmt(self.server_rss_mb, ",.0f") + " MB"),
            ("memory per connection", fmt(self.per_connection_kb, ",.1f") + " KB"),
            ("load generator CPU", f"{self.generator_cpu * 100:.0f} %"),
            ("error replies", f"{self.errors:,}"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


async def run_load(
    options: Options, host: str, port: int, http: str | None, pid: int | None
) -> Result:
    """Connect ``options.users`` simulated users (ramping up), warm up, measure."""
    counters = Counters()
    base = proc_stats(pid) if pid else None
    users = [Simulated(i, options, counters) for i in range(options.users)]
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        for i, user in enumerate(users):
            nursery.start_soon(user.run, host, port)
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
        connected_stats = proc_stats(pid) if pid else None
        await trio.sleep(options.warmup)
        before = await server_metrics(http, options.admin_key)
        server_before = proc_stats(pid) if pid else None
        generator_before = self_cpu()
        sent_before, deliveries_before = counters.sent, counters.deliveries
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
        server_after = proc_stats(pid) if pid else None
        after = await server_metrics(http, options.admin_key)
        nursery.cancel_scope.cancel()
    coalesced = after.get("geopresence_coalesced_total", 0) - before.get(
        "geopresence_coalesced_total", 0
    )
    lost = sum(counters.closed.values()) - closed_before
    lost += int(after.get('geopresence_closes_total{code="4008"}', 0))
    per_conn = None
    if base is not None and connected_stats is not None and counters.connected:
        per_conn = (connected_stats.rss_bytes - base.rss_bytes) / counters.connected / 1024
    return Result(
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
        server_cpu=(
            (server_after.cpu_seconds - server_before.cpu_seconds) / elapsed
            if server_after and server_before
            else None
        ),
        server_rss_mb=server_after.rss_bytes / 1e6 if server_after else None,
        per_connection_kb=per_conn,
        generator_cpu=generator_cpu,
        errors=counters.errors,
    )


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
        return await run_load(options, host, port, http, pid)


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
    args = parser.parse_args(argv)
    options = Options(
        users=getattr(args, "users", 0), friends=args.friends, online_share=args.online_share,
        duration=args.duration, warmup=args.warmup, ramp=args.ramp,
        location_interval=args.location_interval, speed=args.speed, ws=args.ws, http=args.http,
        admin_key=args.admin_key, quiet=args.quiet,
    )  # fmt: skip
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
