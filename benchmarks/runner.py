"""One run of the load model: start (or reach) the server, load the friendships, connect the
users, warm up, measure a window, take the figures (``report.Result``).

The generator (``loadgen.LoadGen``) runs in this process, pinned to CPU 1; the server it
starts is pinned to CPU 0. RSS per connected user is the server's RSS growth from connecting
the users, measured after their friendships are loaded.
"""

from __future__ import annotations

import contextlib
import gc
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

from benchmarks import procs
from benchmarks.loadgen import LoadGen
from benchmarks.population import Model, create_friendships
from benchmarks.report import Result, percentile


@attrs.frozen
class RunOptions:
    """A run: the model, the windows, the server (started here, or given by URL)."""

    model: Model
    duration: float = 60.0
    warmup: float = 10.0
    ramp: float = 1000.0
    """Connections started per second."""
    spec: procs.ServerSpec = attrs.Factory(procs.ServerSpec)
    ws: str | None = None
    http: str | None = None
    admin_key: str | None = None
    quiet: bool = False
    sample_every: int = 0
    """Parse one ``friend_location`` in this many (0: about 2,000 a second)."""
    hold_moves: bool = False
    """Periodic locations start once every user is connected (see ``LoadGen.hold_moves``)."""
    grouped: bool = False
    """Several targets: each cluster of near friends on one target (``LoadGen.grouped``)."""


@attrs.frozen
class Target:
    """One server under test: where users connect, its HTTP API, its pid (when started
    here) and the CPU it is pinned to."""

    host: str
    port: int
    http: str | None
    pid: int | None
    cpu: int | None = None


def all_stats(targets: list[Target]) -> list[procs.ProcStats] | None:
    """Every target's CPU and RSS (None when one was not started here)."""
    if any(t.pid is None for t in targets):
        return None
    return [procs.proc_stats(t.pid) for t in targets if t.pid is not None]


def say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def measure(
    options: RunOptions,
    targets: list[Target],
    base: list[procs.ProcStats] | None,
    between: Callable[[LoadGen], None] | None = None,
    measured: Callable[[], None] | None = None,
    starting: Callable[[], None] | None = None,
) -> tuple[Result, LoadGen, list[dict[str, float]], list[dict[str, float]], float]:
    """Connect the users (user i to target i mod the number of targets), warm up, measure;
    ``between`` runs after the ramp (before the warmup), ``starting`` as the window opens,
    ``measured`` once the figures are taken. ``base``: the servers' stats before the users
    connected (friendships loaded). Returns the result, the generator, the servers' metrics
    before and after, and the window's length."""
    model = options.model
    gen = LoadGen(model, [(t.host, t.port) for t in targets], options.sample_every)
    gen.hold_moves = options.hold_moves
    gen.grouped = options.grouped
    gen.ramp(options.ramp, max(30.0, model.users / 500), options.quiet)
    gen.run_until(time.monotonic() + 1.0)  # the first locations fan out
    connected_stats = all_stats(targets)
    if between is not None:
        between(gen)
    say(f"  warming up {options.warmup:.0f} s", options.quiet)
    gen.run_until(time.monotonic() + options.warmup)
    before = [procs.metrics(t.http, options.admin_key) for t in targets]
    server_before = all_stats(targets)
    generator_before = procs.self_cpu()
    sent, deliveries, locations = gen.sent, gen.deliveries, gen.locations
    frames = gen.frames_in + gen.frames_out
    closed_before = sum(gen.closed.values())
    if starting is not None:
        starting()
    # The generator is the measuring instrument: its own garbage collector must not add
    # pauses to the latencies it records (the server keeps its normal GC).
    gc.collect()
    gc.freeze()
    gc.disable()
    gen.measuring = True
    start = time.monotonic()
    last = [start]

    def progress(now: float) -> bool:
        if not options.quiet and (now - last[0] >= 1.0):
            last[0] = now
            print(f"\r  measuring {now - start:3.0f}/{options.duration:.0f} s, "
                  f"{gen.deliveries - deliveries:,} deliveries", end="", file=sys.stderr,
                  flush=True)  # fmt: skip
        return False

    gen.run_until(start + options.duration, progress, every=0.2)
    gen.measuring = False
    elapsed = time.monotonic() - start
    generator_cpu = procs.self_cpu() - generator_before
    gc.enable()
    gc.unfreeze()
    say("", options.quiet)
    server_after = all_stats(targets)
    after = [procs.metrics(t.http, options.admin_key) for t in targets]
    if measured is not None:
        measured()
    lost = sum(gen.closed.values()) - closed_before
    lost += sum(int(m.get('geopresence_closes_total{code="4008"}', 0)) for m in after)
    coalesced = sum(
        a.get("geopresence_coalesced_total", 0) - b.get("geopresence_coalesced_total", 0)
        for b, a in zip(before, after, strict=True)
    )
    per_user, grown_kb = None, []
    if base is not None and connected_stats is not None:
        grown_kb = [(c.rss_bytes - b.rss_bytes) / 1024
                    for b, c in zip(base, connected_stats, strict=True)]  # fmt: skip
        per_user = sum(grown_kb) / gen.connected if gen.connected else None
    cpu, cpus = None, []
    if server_before is not None and server_after is not None:
        cpus = [(a.cpu_seconds - b.cpu_seconds) / elapsed
                for b, a in zip(server_before, server_after, strict=True)]  # fmt: skip
        cpu = sum(cpus)
    handled = gen.frames_in + gen.frames_out - frames
    result = Result(
        users=model.users,
        connected=gen.connected,
        inbound_per_s=(gen.sent - sent) / elapsed,
        deliveries_per_s=(gen.deliveries - deliveries) / elapsed,
        p50_ms=percentile(gen.latencies, 50) * 1000,
        p95_ms=percentile(gen.latencies, 95) * 1000,
        p99_ms=percentile(gen.latencies, 99) * 1000,
        max_ms=max(gen.latencies, default=math.nan) * 1000,
        samples=len(gen.latencies),
        coalesced=coalesced,
        lost=lost,
        server_cpu=cpu,
        server_rss_mb=sum(s.rss_bytes for s in server_after) / 1e6 if server_after else None,
        per_user_kb=per_user,
        generator_cpu=generator_cpu / elapsed,
        generator_us_per_frame=generator_cpu / handled * 1e6 if handled else math.nan,
        errors=gen.errors,
        model=model.model,
        servers=len(targets),
        locations_per_s=(gen.locations - locations) / elapsed,
        server_cpus=cpus,
        server_grown_kb=grown_kb,
    )
    return result, gen, before, after, elapsed


@contextlib.contextmanager
def target(options: RunOptions) -> Iterator[Target]:
    """The server under test: the given URLs, or a fresh server (``options.spec``) on CPU 0."""
    if options.ws is not None:
        match = re.match(r"ws://(?P<host>[^:/]+):(?P<port>\d+)", options.ws)
        if match is None:
            raise SystemExit(f"--ws must look like ws://HOST:PORT/ws, got {options.ws!r}")
        yield Target(match["host"], int(match["port"]), options.http, None)
        return
    with procs.server(options.spec, cpu=0) as started:
        yield Target(started.ws_host, started.ws_port, started.http_url, started.pid, 0)


def one_run(options: RunOptions) -> Result:
    """The load model against one server."""
    procs.raise_fd_limit()
    procs.pin(0, 1)
    model = options.model
    with target(options) as server:
        created, seconds = 0, math.nan
        if server.http is not None:
            say(f"  creating friendships: {model.describe()}", options.quiet)
            created, seconds = create_friendships(
                server.http, options.admin_key, model, options.quiet
            )
            say(f"  {created:,} friendships in {seconds:.1f} s", options.quiet)
        gc.collect()
        base = all_stats([server])
        result, gen, *_ = measure(options, [server], base)
        gen.close_all()
    result.friendships, result.friendship_seconds = created, seconds
    return result


def data_path(name: str) -> Path:
    """Where sweeps keep their JSON by default: benchmarks/results/NAME."""
    return Path(__file__).resolve().parent / "results" / name
