"""``load cluster``: the load model against ``--nodes`` nodes sharing one throwaway Redis.

The nodes (``geopresence serve --redis`` or ``--redis-cluster``, node ids 1..N) share a
Redis started here (``benchmarks.redisprocs``: standalone, or a Redis Cluster of 3 masters).
The friendships are written straight into Redis before the nodes start (each node loads them
at start-up): the HTTP import goes through the nodes' Redis journal one command at a time,
far too slowly for hundreds of thousands of friendships. User ``u<i>`` connects to node
``i mod N``, so most friends of a user are on another node and hear it through Redis. Node k
is pinned to CPU ``(k - 1) mod CPUs``; Redis and the load generator (the same lean generator
as ``run``) are not pinned. Besides the ``run`` table: per-node deliveries, CPU and Redis
traffic, the share and latency of cross-node deliveries, duplicates, Redis commands/s and
CPU; then, unless ``--no-baseline``, one node in memory with the same users, side by side.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import attrs
import trio

from benchmarks import procs, redisprocs
from benchmarks.loadgen import LoadGen
from benchmarks.population import Model, friendships
from benchmarks.report import Result, columns, fmt, percentile, ratio
from benchmarks.runner import RunOptions, Target, all_stats, measure, one_run, say

ENVELOPES_RECEIVED = 'geopresence_redis_envelopes_total{result="received"}'
"""A node's metric: live events (pub/sub envelopes) from other nodes delivered there."""
FEED_APPLIED = "geopresence_redis_feed_applied_total"
"""A node's metric: other nodes' changes (feed entries) applied to its replica."""


@attrs.frozen
class RedisCounts:
    commands: list[int]
    """``total_commands_processed`` of each master."""
    calls: dict[str, int]
    """Calls by command, summed over the masters."""
    cpu_seconds: float


async def _redis_counts(redis: redisprocs.Redis) -> RedisCounts:
    commands = []
    calls: dict[str, int] = {}
    for port in redis.ports:
        commands.append(int((await redisprocs.info(port, "stats"))["total_commands_processed"]))
        for name, count in (await redisprocs.command_calls(port)).items():
            calls[name] = calls.get(name, 0) + count
    cpu = sum(procs.proc_stats(pid).cpu_seconds for pid in redis.pids)
    return RedisCounts(commands, calls, cpu)


def redis_counts(redis: redisprocs.Redis) -> RedisCounts:
    """What the masters have done so far."""
    return trio.run(_redis_counts, redis)


def redis_settled(gen: LoadGen, targets: list[Target], quiet: bool) -> tuple[float, float, bool]:
    """Serve the users until no node has a backlog of Redis commands (the connection burst
    queues one SUBSCRIBE per new channel): seconds it took, the largest backlog, drained?"""
    started, peak, calm = time.monotonic(), 0.0, 0
    while time.monotonic() - started < 120:
        pending = [procs.metrics(t.http).get("geopresence_redis_pending", 0) for t in targets]
        peak = max(peak, *pending)
        calm = calm + 1 if max(pending) <= 20 else 0
        if not quiet:
            print(f"\r  Redis backlog: {' + '.join(f'{p:,.0f}' for p in pending)} commands  ",
                  end="", file=sys.stderr, flush=True)  # fmt: skip
        if calm >= 2:
            say("", quiet)
            return time.monotonic() - started, peak, True
        gen.run_until(time.monotonic() + 0.5)
    say("", quiet)
    return time.monotonic() - started, peak, False


async def _seed(redis: redisprocs.Redis, model: Model, quiet: bool) -> int:
    import coredis
    from coredis.connection import TCPLocation

    from geopresence.cluster.redis_keys import Keys

    friends: defaultdict[str, set[str]] = defaultdict(set)
    count = 0
    for a, b in friendships(model):
        if b not in friends[a]:
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
            if not quiet and i % 500 == 0:
                print(f"\r  seeding Redis {i:,}/{len(names):,}", end="", file=sys.stderr)
        for start in range(0, len(names), 10_000):
            await client.sadd(keys.users, names[start : start + 10_000])
    say("", quiet)
    return count


def start_node(spec: procs.ServerSpec, redis: redisprocs.Redis, k: int, workdir: Path
               ) -> procs.Started:  # fmt: skip
    """Node ``k`` (0-based; node id k + 1) on ``redis``, pinned to CPU k, its log in
    ``workdir/node<k+1>.log``."""
    args = procs.serve_args(spec, workdir / f"data{k + 1}")
    args += [*redis.serve_args(), "--node-id", str(k + 1)]
    with (workdir / f"node{k + 1}.log").open("wb") as log:
        return procs.start_process(args, cpu=node_cpu(k), stderr=log, src=spec.src)


def node_cpu(k: int) -> int:
    return k % (os.cpu_count() or 1)


def log_problems(workdir: Path, nodes: int, until: list[int] | None = None) -> list[str]:
    """What the nodes logged (at warning level), all of it or node k's first ``until[k]``
    bytes."""
    lines: list[str] = []
    for k in range(nodes):
        path = workdir / f"node{k + 1}.log"
        data = path.read_bytes() if path.exists() else b""
        data = data if until is None else data[: until[k]]
        text = data.decode(errors="replace").splitlines()
        lines += [f"node {k + 1}: {line}" for line in text if line.strip()]
    return lines


@attrs.define
class NodesRun:
    """One run of the load model against nodes sharing a fresh Redis: the figures, and what
    the ``cluster`` rows and ``scaleout`` (per node, per user) derive theirs from."""

    result: Result
    gen: LoadGen
    targets: list[Target]
    before: list[dict[str, float]]
    """Each node's metrics as the window opened."""
    after: list[dict[str, float]]
    """Each node's metrics as it closed."""
    elapsed: float
    redis: tuple[RedisCounts, RedisCounts]
    """What the Redis masters had done as the window opened, and as it closed."""
    deliveries: list[int]
    """Deliveries to each node's users in the window."""
    users: list[int]
    """Users connected to each node at the end of the window."""
    settled: tuple[float, float, bool]
    """``redis_settled`` after the ramp."""
    problems: tuple[int, int]
    """Lines the nodes logged until the window closed, and afterwards."""

    def rate(self, k: int, metric: str) -> float:
        """Node ``k``'s ``metric`` (a counter) per second over the window."""
        return (self.after[k].get(metric, 0) - self.before[k].get(metric, 0)) / self.elapsed

    def redis_calls(self) -> dict[str, float]:
        """Calls per second of each command over the window, summed over the masters."""
        before, after = self.redis
        return {name: (count - before.calls.get(name, 0)) / self.elapsed
                for name, count in after.calls.items()}  # fmt: skip


def _node_rows(run: NodesRun) -> None:
    result, gen = run.result, run.gen
    per_update = result.deliveries_per_s / result.locations_per_s if result.locations_per_s else 0
    result.extra.append(
        ("location updates/s", f"{result.locations_per_s:,.1f} ({per_update:.1f} deliveries each)")
    )
    share = len(gen.cross) / len(gen.latencies) * 100 if gen.latencies else math.nan

    def p50_p99(values: list[float]) -> str:
        return (f"p50 / p99 {fmt(percentile(values, 50) * 1000, '.1f')} / "
                f"{fmt(percentile(values, 99) * 1000, '.1f')} ms")  # fmt: skip

    result.extra += [
        ("cross-node deliveries (via Redis)", f"{fmt(share, '.0f')} % of samples, "
         f"{p50_p99(gen.cross)}"),
        ("same-node deliveries", p50_p99(gen.same)),
        ("duplicate deliveries", f"{gen.duplicates:,}"),
    ]  # fmt: skip
    after = run.after
    for k, node in enumerate(run.targets):
        parts = [f"deliveries {gen.node_deliveries[k]:,} since start"]
        received = run.rate(k, ENVELOPES_RECEIVED)
        applied = run.rate(k, FEED_APPLIED)
        dropped = after[k].get('geopresence_redis_envelopes_total{result="dropped"}', 0)
        failed = after[k].get('geopresence_redis_envelopes_total{result="failed"}', 0)
        parts.append(f"from Redis {received:,.0f} envelopes/s ({applied:,.0f} feed ops/s)")
        parts.append(f"dropped {dropped:,.0f}, failed {failed:,.0f} (since start)")
        parts.append(f"queued {after[k].get('geopresence_redis_pending', math.nan):,.0f}")
        result.extra.append((f"node {k + 1} (CPU {node.cpu})", ", ".join(parts)))


def _redis_rows(run: NodesRun) -> None:
    result, (before, after) = run.result, run.redis
    ops = [(a - b) / run.elapsed for b, a in zip(before.commands, after.commands, strict=True)]
    each = " + ".join(f"{op:,.0f}" for op in ops)
    masters = f"{len(ops)} masters: {each}" if len(ops) > 1 else "1 server"
    every = sorted(run.redis_calls().items(), key=lambda item: -item[1])
    per_user = sum(ops) / result.connected if result.connected else math.nan
    result.extra += [
        ("Redis ops/s", f"{sum(ops):,.0f} ({masters})"),
        ("Redis ops per user-second", f"{per_user:.3f} ({result.connected:,} users connected)"),
        # Every command, scripts' own included (Redis 7 counts them): which part costs what.
        ("Redis commands/s", ", ".join(f"{name} {rate:,.1f}" for name, rate in every if rate)),
        ("Redis CPU", f"{(result.redis_cpu or 0) * 100:.0f} % (sum)"),
    ]


def run_nodes(options: RunOptions, nodes: int, kind: str) -> NodesRun:
    """The load model against ``nodes`` nodes sharing a fresh Redis (``kind``)."""
    procs.raise_fd_limit()
    procs.unpin(os.getpid())
    with tempfile.TemporaryDirectory(prefix="geopresence-cluster-") as tmp:
        workdir = Path(tmp)
        (workdir / "redis").mkdir()
        with contextlib.ExitStack() as stack:
            redis = stack.enter_context(redisprocs.redis(kind, workdir / "redis"))
            t0 = time.monotonic()
            created = trio.run(_seed, redis, options.model, options.quiet)
            seconds = time.monotonic() - t0
            say(f"  {created:,} friendships ({options.model.describe()}) written to "
                f"{redis.label} in {seconds:.1f} s", options.quiet)  # fmt: skip
            started: list[procs.Started] = []

            @stack.callback
            def _stop_nodes() -> None:
                for node in started:
                    procs.stop(node)

            for k in range(nodes):
                started.append(start_node(options.spec, redis, k, workdir))
            targets = [Target(n.ws_host, n.ws_port, n.http_url, n.pid, node_cpu(k))
                       for k, n in enumerate(started)]  # fmt: skip
            settled: list[tuple[float, float, bool]] = []
            sizes: list[int] = []
            counts: list[RedisCounts] = []
            delivered: list[list[int]] = []
            gens: list[LoadGen] = []

            def between(gen: LoadGen) -> None:
                gens.append(gen)
                settled.append(redis_settled(gen, targets, options.quiet))

            def starting() -> None:
                delivered.append(list(gens[0].node_deliveries))
                counts.append(redis_counts(redis))

            def measured() -> None:
                delivered.append(list(gens[0].node_deliveries))
                counts.append(redis_counts(redis))
                for k in range(nodes):
                    path = workdir / f"node{k + 1}.log"
                    sizes.append(path.stat().st_size if path.exists() else 0)

            base = all_stats(targets)
            result, gen, before, after, elapsed = measure(
                options, targets, base, between, measured, starting
            )
            users = [0] * nodes
            for i, conn in enumerate(gen.by_user):
                users[gen.target_of(i)] += conn is not None
            gen.close_all()
        during = log_problems(workdir, nodes, sizes)
        everything = log_problems(workdir, nodes)
    for line in everything[:10]:
        print(f"  {line}", file=sys.stderr)
    result.friendships, result.friendship_seconds = created, seconds
    redis_before, redis_after = counts
    result.redis_ops_per_s = (sum(redis_after.commands) - sum(redis_before.commands)) / elapsed
    result.redis_cpu = (redis_after.cpu_seconds - redis_before.cpu_seconds) / elapsed
    deliveries = (
        [a - b for b, a in zip(*delivered, strict=True)]
        if nodes > 1
        else [round(result.deliveries_per_s * elapsed)]  # one node: not counted per node
    )
    problems = (len(during), len(everything) - len(during))
    return NodesRun(result, gen, targets, before, after, elapsed, (redis_before, redis_after),
                    deliveries, users, settled[0], problems)  # fmt: skip


def cluster_run(options: RunOptions, nodes: int, kind: str) -> Result:
    """The load model against ``nodes`` nodes sharing a fresh Redis, with every row."""
    run = run_nodes(options, nodes, kind)
    result = run.result
    _node_rows(run)
    seconds, peak, drained = run.settled
    result.extra.append(("Redis backlog after the ramp", f"peak {peak:,.0f} commands queued, "
                         + (f"drained {seconds:.1f} s" if drained
                            else f"NOT drained after {seconds:.0f} s")
                         + " after the last connection (then the warmup)"))  # fmt: skip
    result.extra.append(("node log warnings/errors", f"{run.problems[0]:,} until measured, "
                         f"{run.problems[1]:,} as the users left and the nodes "
                         "stopped"))  # fmt: skip
    _redis_rows(run)
    return result


def comparison(nodes: Result, one: Result, label: str) -> str:
    """The cluster run and the one-node run, side by side."""

    def times(a: float | None, b: float | None) -> str:
        change = ratio(a, b)
        return "" if math.isnan(change) else f"{change:.2f}x"

    def pct(value: float | None) -> float | None:
        return None if value is None else value * 100

    def per_update(r: Result) -> float:
        return r.deliveries_per_s / r.locations_per_s if r.locations_per_s else math.nan

    rows = [
        ("", label, "1 node in memory", "ratio"),
        ("users connected", f"{nodes.connected:,}", f"{one.connected:,}", ""),
        ("deliveries/s", fmt(nodes.deliveries_per_s, ",.0f"), fmt(one.deliveries_per_s, ",.0f"),
         times(nodes.deliveries_per_s, one.deliveries_per_s)),
        ("deliveries per location update", fmt(per_update(nodes), ".1f"),
         fmt(per_update(one), ".1f"), ""),
        ("latency p50 (ms)", fmt(nodes.p50_ms, ".1f"), fmt(one.p50_ms, ".1f"),
         times(nodes.p50_ms, one.p50_ms)),
        ("latency p99 (ms)", fmt(nodes.p99_ms, ".1f"), fmt(one.p99_ms, ".1f"),
         times(nodes.p99_ms, one.p99_ms)),
        ("lost sessions", f"{nodes.lost:,}", f"{one.lost:,}", ""),
        ("server CPU, all nodes (%)", fmt(pct(nodes.server_cpu), ".0f"),
         fmt(pct(one.server_cpu), ".0f"), times(nodes.server_cpu, one.server_cpu)),
        ("server CPU per delivery (µs)", fmt(nodes.cpu_per_delivery_us, ",.0f"),
         fmt(one.cpu_per_delivery_us, ",.0f"),
         times(nodes.cpu_per_delivery_us, one.cpu_per_delivery_us)),
        ("Redis ops/s", fmt(nodes.redis_ops_per_s, ",.0f"), "-", ""),
        ("Redis CPU (%)", fmt(pct(nodes.redis_cpu), ".0f"), "-", ""),
        ("load generator CPU (%)", fmt(nodes.generator_cpu * 100, ".0f"),
         fmt(one.generator_cpu * 100, ".0f"), ""),
    ]  # fmt: skip
    return columns(rows)


def cluster(options: RunOptions, nodes: int, kind: str, baseline: bool) -> None:
    """The ``cluster`` command: N nodes + Redis, then (``baseline``) 1 node in memory."""
    redis_procs = 1 if kind == "standalone" else 3
    label = f"{nodes} nodes + " + ("standalone Redis" if kind == "standalone" else "Redis Cluster")
    pinned = ", ".join(f"node {k + 1} on CPU {node_cpu(k)}" for k in range(nodes))
    users = options.model.users
    print(f"{label}: {users:,} users, round-robin over the nodes ({pinned}; Redis and the load "
          f"generator unpinned): {nodes} nodes + {redis_procs} redis-server + the load "
          f"generator share {os.cpu_count() or 1} CPUs", flush=True)  # fmt: skip
    result = cluster_run(options, nodes, kind)
    print(result.table(), flush=True)
    if not baseline:
        return
    print(f"1 node in memory: the same {users:,} users (server on CPU 0, load generator on "
          f"CPU 1, as `run`)", flush=True)  # fmt: skip
    one = one_run(attrs.evolve(options, spec=attrs.evolve(options.spec, in_memory=True)))
    print(one.table())
    print(f"comparison, {users:,} users, same load model:")
    print(comparison(result, one, label))
