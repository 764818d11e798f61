"""``load scaleout``: weak scaling. k nodes (``--nodes``, 1,2,4) with the same users each
(``--users-per-node``) under the design's load model, sharing one throwaway Redis: does the
work of one node, and the work Redis does per user, stay flat as nodes are added?

Each k is one ``load cluster`` run (``benchmarks.cluster.run_nodes``) with k x N users: the
friendships written straight into Redis, user ``u<i>`` on node ``i mod k``, node n pinned to
CPU ``(n - 1) mod CPUs``, Redis and the load generator unpinned. With ``--rounds R`` each k
runs R times, the order of k reversed each round, and the tables show each k's run with the
median node CPU per user (on this VM one run's CPU moves by ±15 % from minute to minute).
Per node:

- CPU seconds per user-second: the node's CPU seconds over the measured window / its users /
  the window's seconds (printed in µs per user-second);
- RSS per user: the node's RSS growth from connecting the users, as ``run`` measures it
  (after the friendships are loaded, to one second after the last connection), divided by
  the node's own users. It is not RSS / users: it leaves out the interpreter and the
  friendship graph. With several nodes the growth includes what the other nodes' users
  cost this one (their locations and presence in its replica, its Redis subscriptions);
- deliveries/s and the delivery p99 of its users (the latency of sampled deliveries);
- the other nodes' changes it applied (feed ops/s) and live events it received (envelopes/s).

Redis: commands per user-second (the ``total_commands_processed`` deltas over the window,
summed over the masters, / every connected user; Redis 7 counts the commands a script runs
inside it as well), by command name (``INFO commandstats``) and by cause, and Redis CPU per
user-second. Flat: per-node CPU per user and Redis commands per user at the largest k within
``FLAT`` (1.25x) of the smallest (k = 1). On this machine k nodes, Redis and the generator
share 2 cores: compare CPU seconds per process, not latency.

What issues each command (``geopresence/cluster/*.py``): the causes of ``CAUSES``.

- feed append: XADD. ``RedisJournal`` (``redis_state``) appends every change to the feed
  for the other nodes' replicas: each presence transition, chat, settings..., and the
  location updates of users visible to strangers (``LocationSet``; others' are not on it).
- feed read: XREAD, XRANGE, XREVRANGE. ``RedisFeed.run``: each node's reader, one XREAD per
  wake-up (up to 1,000 entries); every node reads every entry, its own too. XRANGE: its gap
  check every 10 s; XREVRANGE: at start-up.
- location cache: the SET of ``gp:loc:{U}`` with its expiry (``state_writes._location``),
  one per location update.
- session views: GET ``gp:loc:{F}`` of a session's user and online friends as it opens
  (``ClusterLink.open_view``).
- live events: PUBLISH, or SPUBLISH on a Cluster. ``RedisBroker``: one per channel an event
  goes to (a location update: its mover's user channel).
- subscriptions: (S)SUBSCRIBE, (S)UNSUBSCRIBE. ``RedisBroker``: a channel's first local
  subscriber, its last one leaving (up to 512 channels a command).
- presence & leases: EVALSHA, EVAL, SCRIPT, HGET, HGETALL, HDEL, SADD, SREM, SRANDMEMBER and
  the rest of HSET. ``RedisPresence``: the ALIVE and END scripts as a device's session opens
  or ends, the ``gp:held`` and ``gp:presence_users`` indexes, an offline user's location, the
  sweeper's HGETALL of ``gp:nodes`` twice a second per node; ``NodeLease``: the RENEW script
  once a second per node. The HGET/HSET/HGETALL/HDEL run inside these scripts count here.
- other changes: ZADD, ZREM, HSETNX, HKEYS, DEL, SSCAN, ZSCAN: chat messages, groups,
  settings, forgets (none in this load).
- start-up: SMEMBERS, GET, SET, HMGET, ZRANGE, ZRANGEBYSCORE, ZREMRANGEBYSCORE: a node loading
  the state, its shared-key check, the forgotten users it scrubs.
- connections: HELLO, PING, CLIENT, CLUSTER, COMMAND...: coredis connecting, the slot map.
- benchmark (INFO): this benchmark counting.

Several causes share some command names (``SHARED`` says which); INFO cannot tell them
apart. HSET is split: as many as the window's location updates (the generator's count) go to
the location cache, the rest (the scripts') to presence & leases. The other shared names go
to the cause that issues them under this load (no chat, friendship or settings changes are
made in the window).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from benchmarks.cluster import ENVELOPES_RECEIVED, FEED_APPLIED, NodesRun, node_cpu, run_nodes
from benchmarks.report import Result, columns, fmt, percentile, ratio, save_points
from benchmarks.runner import RunOptions, say

FLAT: Final = 1.25
"""Per-node CPU per user and Redis commands per user at the largest k, against k = 1."""

FEED_APPEND, FEED_READ = "feed append", "feed read"
LOCATION_CACHE, LIVE_EVENTS, SUBSCRIPTIONS = "location cache", "live events", "subscriptions"
PRESENCE, CHANGES, START_UP = "presence & leases", "other changes", "start-up"
VIEWS = "session views"
CONNECTIONS, BENCHMARK, OTHER = "connections", "benchmark (INFO)", "other"

CAUSES: Final[dict[str, str]] = {
    "xadd": FEED_APPEND,
    "xread": FEED_READ,
    "xrange": FEED_READ,
    "xrevrange": FEED_READ,
    "hset": PRESENCE,
    "set": LOCATION_CACHE,
    "publish": LIVE_EVENTS,
    "spublish": LIVE_EVENTS,
    "subscribe": SUBSCRIPTIONS,
    "unsubscribe": SUBSCRIPTIONS,
    "ssubscribe": SUBSCRIPTIONS,
    "sunsubscribe": SUBSCRIPTIONS,
    "evalsha": PRESENCE,
    "eval": PRESENCE,
    "script": PRESENCE,
    "hget": PRESENCE,
    "hgetall": PRESENCE,
    "hdel": PRESENCE,
    "sadd": PRESENCE,
    "srem": PRESENCE,
    "srandmember": PRESENCE,
    "zadd": CHANGES,
    "zrem": CHANGES,
    "hsetnx": CHANGES,
    "hkeys": CHANGES,
    "del": CHANGES,
    "sscan": CHANGES,
    "zscan": CHANGES,
    "smembers": START_UP,
    "get": VIEWS,
    "hmget": START_UP,
    "zrange": START_UP,
    "zrangebyscore": START_UP,
    "zremrangebyscore": START_UP,
    "hello": CONNECTIONS,
    "ping": CONNECTIONS,
    "client": CONNECTIONS,
    "cluster": CONNECTIONS,
    "command": CONNECTIONS,
    "readonly": CONNECTIONS,
    "select": CONNECTIONS,
    "auth": CONNECTIONS,
    "info": BENCHMARK,
}
"""Command name (``client|setinfo``: its part before ``|``) -> the cause it is counted under."""
ORDER: Final = (FEED_APPEND, FEED_READ, LOCATION_CACHE, VIEWS, LIVE_EVENTS, SUBSCRIPTIONS, PRESENCE,
                CHANGES, START_UP, CONNECTIONS, BENCHMARK, OTHER)  # fmt: skip

SHARED: Final[dict[str, str]] = {
    "xadd": "every kind of change (location updates here; presence transitions, chat...)",
    "set": "the location cache (SET gp:loc:{U} PXAT, one per location update); also each "
    "node's shared-key check at start (SET NX)",
    "get": "the locations a session reads as it opens; also each node's start-up",
    "del": "an offline user's location (gp:loc:{U}); also group changes and forgets",
    "evalsha": "presence scripts (a device's session opened or ended) and node leases "
    "(RENEW, once a second per node)",
    "hgetall": "the sweepers (HGETALL gp:nodes, twice a second per node), the END script, start-up",
    "hget": "the presence and lease scripts",
    "hdel": "the lease scripts (LEAVE, LAPSE), a forget",
    "sadd": "the presence indexes (gp:held, gp:presence_users); also chat (gp:chats) and "
    "friendships, none of which this load makes",
    "srem": "the presence index gp:held; also unfriending, a forget",
}
"""The command names with several causes, and which."""


def by_cause(calls: Mapping[str, float]) -> dict[str, float]:
    """Command rates (by name) summed by cause (``CAUSES``)."""
    causes = dict.fromkeys(ORDER, 0.0)
    for name, rate in calls.items():
        causes[CAUSES.get(name.partition("|")[0], OTHER)] += rate
    return causes


@attrs.frozen
class NodeFigures:
    """One node of one run."""

    node: int
    cpu: int | None
    """The CPU it was pinned to."""
    users: int
    cpu_share: float
    """CPU seconds per second over the window."""
    cpu_s_per_user_s: float
    rss_kb_per_user: float | None
    """Its RSS growth from connecting the users, per user of its own."""
    deliveries_per_s: float
    p99_ms: float
    samples: int
    feed_ops_per_s: float
    """Other nodes' changes applied to its replica."""
    envelopes_per_s: float
    """Live events from other nodes delivered here."""


def _per(value: float, users: int) -> float:
    return value / users if users else math.nan


def node_figures(run: NodesRun) -> list[NodeFigures]:
    result, figures = run.result, []
    for k, target in enumerate(run.targets):
        users = run.users[k]
        cpu = result.server_cpus[k] if result.server_cpus else math.nan
        grown = result.server_grown_kb[k] if result.server_grown_kb else None
        latencies = run.gen.node_latencies[k]
        figures.append(NodeFigures(
            node=k + 1, cpu=target.cpu, users=users, cpu_share=cpu,
            cpu_s_per_user_s=_per(cpu, users),
            rss_kb_per_user=None if grown is None else _per(grown, users),
            deliveries_per_s=run.deliveries[k] / run.elapsed,
            p99_ms=percentile(latencies, 99) * 1000, samples=len(latencies),
            feed_ops_per_s=run.rate(k, FEED_APPLIED),
            envelopes_per_s=run.rate(k, ENVELOPES_RECEIVED),
        ))  # fmt: skip
    return figures


@attrs.frozen
class Step:
    """One k: its run's figures, per node and for Redis."""

    nodes: int
    result: Result
    per_node: list[NodeFigures]
    calls: dict[str, float]
    """Redis commands per second, by name, over the window (all masters)."""
    problems: tuple[int, int]

    @property
    def users(self) -> int:
        return self.result.connected

    @property
    def cpu_s_per_user_s(self) -> float:
        """The nodes' CPU seconds per user-second (all nodes' CPU / all their users)."""
        cpu = sum(n.cpu_share for n in self.per_node)
        return _per(cpu, sum(n.users for n in self.per_node))

    @property
    def rss_kb_per_user(self) -> float | None:
        return self.result.per_user_kb

    @property
    def redis_ops_per_user_s(self) -> float:
        return _per(self.result.redis_ops_per_s or 0.0, self.users)

    @property
    def redis_cpu_s_per_user_s(self) -> float:
        return _per(self.result.redis_cpu or 0.0, self.users)

    def calls_per_user_s(self) -> dict[str, float]:
        return {name: _per(rate, self.users) for name, rate in self.calls.items() if rate}

    def causes_per_user_s(self) -> dict[str, float]:
        causes = by_cause(self.calls)
        return {cause: _per(rate, self.users) for cause, rate in causes.items()}

    def point(self, per_node_users: int) -> dict[str, Any]:
        """The figures as a JSON object."""
        point: dict[str, Any] = {
            "nodes": self.nodes,
            "users_per_node": per_node_users,
            "cpu_s_per_user_s": self.cpu_s_per_user_s,
            "rss_kb_per_user": self.rss_kb_per_user,
            "p99_ms": self.result.p99_ms,
            "redis_ops_per_user_s": self.redis_ops_per_user_s,
            "redis_cpu_s_per_user_s": self.redis_cpu_s_per_user_s,
            "redis_causes_per_user_s": self.causes_per_user_s(),
            "redis_calls_per_user_s": self.calls_per_user_s(),
            "redis_calls_per_s": {name: rate for name, rate in self.calls.items() if rate},
            "generator_bound": self.result.generator_bound,
            "node_log_lines": {"until_measured": self.problems[0], "after": self.problems[1]},
            "per_node": [attrs.asdict(node) for node in self.per_node],
            "run": self.result.point(),
        }
        return point  # orjson writes NaN as null


def _us(seconds: float | None) -> str:
    return fmt(None if seconds is None else seconds * 1e6, ",.1f")


def summary(steps: list[Step]) -> str:
    """One row per k."""
    rows = [("k", "users", "node CPU µs/user-s", "(min-max)", "RSS KB/user", "deliv./s/node",
             "p99 ms", "Redis ops/user-s", "Redis CPU µs/user-s", "generator CPU")]  # fmt: skip
    for step in steps:
        per_user = [n.cpu_s_per_user_s for n in step.per_node]
        deliveries = sum(n.deliveries_per_s for n in step.per_node) / step.nodes
        generator = f"{step.result.generator_cpu * 100:.0f} %"
        if step.result.generator_bound:
            generator += " GENERATOR-BOUND"
        rows.append((
            str(step.nodes), f"{step.users:,}", _us(step.cpu_s_per_user_s),
            f"({_us(min(per_user))}-{_us(max(per_user))})", fmt(step.rss_kb_per_user, ",.1f"),
            fmt(deliveries, ",.0f"), fmt(step.result.p99_ms, ".1f"),
            fmt(step.redis_ops_per_user_s, ".4f"), _us(step.redis_cpu_s_per_user_s), generator,
        ))  # fmt: skip
    return columns(rows)


def per_node_table(steps: list[Step]) -> str:
    rows = [("k", "node", "CPU", "users", "CPU %", "µs/user-s", "RSS KB/user", "deliveries/s",
             "p99 ms", "feed ops in/s", "envelopes in/s")]  # fmt: skip
    for step in steps:
        for n in step.per_node:
            rows.append((
                str(step.nodes), str(n.node), str(n.cpu), f"{n.users:,}",
                fmt(n.cpu_share * 100, ".1f"), _us(n.cpu_s_per_user_s),
                fmt(n.rss_kb_per_user, ",.1f"), fmt(n.deliveries_per_s, ",.0f"),
                fmt(n.p99_ms, ".1f"), fmt(n.feed_ops_per_s, ",.1f"),
                fmt(n.envelopes_per_s, ",.1f"),
            ))  # fmt: skip
    return columns(rows)


def redis_table(steps: list[Step], rates: list[dict[str, float]], names: list[str]) -> str:
    """``names`` (causes or commands) per user-second at each k, and the last k's against
    the first."""
    ks = [f"k={step.nodes}" for step in steps]
    rows = [("per user-second", *ks, f"{ks[-1]} / {ks[0]}")]
    for name in [*names, "total"]:
        values = [sum(r.values()) if name == "total" else r.get(name, 0.0) for r in rates]
        if not any(values):
            continue
        change = ratio(values[-1], values[0])
        rows.append((name, *(f"{v:.4f}" for v in values), fmt(change, ".2f") + "x"))
    return columns(rows)


def changes(steps: list[Step]) -> dict[str, float]:
    """Per-node CPU per user and Redis commands per user at the largest k against the
    smallest (NaN where a figure is missing)."""
    first, last = steps[0], steps[-1]
    return {
        "node_cpu_per_user": ratio(last.cpu_s_per_user_s, first.cpu_s_per_user_s),
        "redis_ops_per_user": ratio(last.redis_ops_per_user_s, first.redis_ops_per_user_s),
    }


def flatness(steps: list[Step]) -> str:
    parts = []
    for what, change in zip(("node CPU per user", "Redis commands per user"),
                            changes(steps).values(), strict=True):  # fmt: skip
        verdict = "n/a" if math.isnan(change) else "flat" if change <= FLAT else "NOT FLAT"
        parts.append(f"{what} {fmt(change, '.2f')}x ({verdict})")
    bound = [str(s.nodes) for s in steps if s.result.generator_bound]
    tail = f"; GENERATOR-BOUND at k = {', '.join(bound)}" if bound else ""
    return (f"flatness, k = {steps[-1].nodes} against k = {steps[0].nodes} (target within "
            f"{FLAT}x): " + ", ".join(parts) + tail)  # fmt: skip


def foreign_cost(steps: list[Step]) -> tuple[float, float] | None:
    """A node's CPU (share of a core) as ``a + b x`` in ``x``, the other nodes' events it
    receives per second, feed ops and live events (least squares over every node of every
    k): ``a`` is what its own users cost it, ``b`` the CPU seconds each event of another
    node costs it, the deliveries it makes of it included. None without two different
    ``x``."""
    points = [
        (n.feed_ops_per_s + n.envelopes_per_s, n.cpu_share) for s in steps for n in s.per_node
    ]
    points = [(x, y) for x, y in points if not math.isnan(y)]
    mean_x = sum(x for x, _ in points) / len(points) if points else 0.0
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if len(points) < 2 or spread < 1e-9:
        return None
    mean_y = sum(y for _, y in points) / len(points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
    return mean_y - slope * mean_x, slope


def report(steps: list[Step]) -> str:
    """Every table, the notes on shared command names, and the flatness line."""
    cause_rates = [step.causes_per_user_s() for step in steps]
    call_rates = [step.calls_per_user_s() for step in steps]
    names = sorted(
        {name for r in call_rates for name in r}, key=lambda n: -call_rates[-1].get(n, 0)
    )
    shared = [f"    {name}: {SHARED[name]}" for name in names if name in SHARED]
    return "\n".join([
        "weak scaling, one row per k:", summary(steps), "",
        "per node:", per_node_table(steps), "",
        "Redis commands per user-second, by cause (benchmarks/scaleout.py, CAUSES):",
        redis_table(steps, cause_rates, list(ORDER)),
        "  command names with several causes:", *shared, "",
        "Redis commands per user-second, by command:", redis_table(steps, call_rates, names),
        "", flatness(steps), *cost_line(steps),
    ])  # fmt: skip


def cost_line(steps: list[Step]) -> list[str]:
    fit = foreign_cost(steps)
    if fit is None:
        return []
    own, each = fit
    return [f"node CPU ~ {own * 1000:.1f} ms/s (its own {steps[0].per_node[0].users:,} users) + "
            f"{each * 1e6:,.0f} µs per event of another node it receives (feed op or live "
            "event), least squares over every node of every k"]  # fmt: skip


def median_step(steps: list[Step]) -> Step:
    """The run of one k whose node CPU per user is the median (the lower one of two)."""
    ordered = sorted(steps, key=lambda step: step.cpu_s_per_user_s)
    return ordered[(len(ordered) - 1) // 2]


def rounds_table(by_k: dict[int, list[Step]]) -> str:
    """Node CPU per user-second at each k in each round, the medians, and each round's
    largest k against its smallest."""
    ks = sorted(by_k)
    rounds = len(by_k[ks[0]])
    rows = [("node CPU µs/user-s", *(f"round {r + 1}" for r in range(rounds)), "median")]
    for k in ks:
        rows.append((f"k={k}", *(_us(step.cpu_s_per_user_s) for step in by_k[k]),
                     _us(median_step(by_k[k]).cpu_s_per_user_s)))  # fmt: skip
    first, last = by_k[ks[0]], by_k[ks[-1]]
    each = [ratio(b.cpu_s_per_user_s, a.cpu_s_per_user_s) for a, b in zip(first, last, strict=True)]
    of_medians = ratio(median_step(last).cpu_s_per_user_s, median_step(first).cpu_s_per_user_s)
    rows.append((f"k={ks[-1]} / k={ks[0]}", *(fmt(r, ".2f") + "x" for r in each),
                 fmt(of_medians, ".2f") + "x"))  # fmt: skip
    return columns(rows)


def scaleout(options: RunOptions, counts: list[int], per_node: int, kind: str, out: Path,
             src: Path, rounds: int = 1) -> list[Step]:  # fmt: skip
    """The ``scaleout`` command: one run per k in ``counts``, ``per_node`` users per node,
    then the tables; the figures are written to ``out``. With several ``rounds`` the runs
    are repeated, each round in the order opposite to the one before (drift of the machine
    then weighs on every k alike), and the tables show the run of each k with the median
    node CPU per user, after a table of every round."""
    cpus = os.cpu_count() or 1
    redis_procs = 1 if kind == "standalone" else 3
    shared = (f"{max(counts)} nodes + {redis_procs} redis-server + the load generator share "
              f"{cpus} CPUs: compare CPU seconds per process, not latency")  # fmt: skip
    print(f"weak scaling: {per_node:,} users per node, k = {', '.join(map(str, counts))} "
          f"nodes on a {'standalone Redis' if kind == 'standalone' else 'Redis Cluster'}, "
          f"model {options.model.model} ({options.model.friends} friends each, a location "
          f"every {options.model.location_interval:g} s); {options.duration:g} s measured "
          f"after {options.warmup:g} s of warmup each", flush=True)  # fmt: skip
    print(f"  node n on CPU (n - 1) mod {cpus}, Redis and the load generator unpinned; "
          f"{shared}", flush=True)  # fmt: skip
    by_k: dict[int, list[Step]] = {k: [] for k in counts}
    order, orders = list(counts), []
    for round_ in range(1, rounds + 1):
        orders.append(list(order))
        if rounds > 1:
            say(f"\nround {round_} of {rounds}: k = {', '.join(map(str, order))}", options.quiet)
        for k in order:
            users = k * per_node
            pinned = ", ".join(f"node {n + 1} on CPU {node_cpu(n)}" for n in range(k))
            say(f"\nk = {k}: {users:,} users ({pinned})", options.quiet)
            model = attrs.evolve(options.model, users=users)
            run = run_nodes(attrs.evolve(options, model=model), k, kind)
            step = Step(k, run.result, node_figures(run), run.redis_calls(), run.problems)
            by_k[k].append(step)
            say(f"  k = {k}: node CPU {_us(step.cpu_s_per_user_s)} µs per user-second, Redis "
                f"{step.redis_ops_per_user_s:.4f} commands per user-second, p99 "
                f"{fmt(run.result.p99_ms, '.1f')} ms", options.quiet)  # fmt: skip
        order.reverse()
    steps = [median_step(by_k[k]) for k in counts]
    if rounds > 1:
        print(f"every round ({rounds}, alternating the order of k):", rounds_table(by_k),
              "the tables below: the run of each k with the median node CPU per user\n",
              sep="\n", flush=True)  # fmt: skip
    print(report(steps), flush=True)
    print(f"({shared})")
    config = {
        "users_per_node": per_node, "nodes": counts, "redis": kind,
        "model": options.model.model, "friends": options.model.friends,
        "near_share": options.model.near_share,
        "location_interval": options.model.location_interval, "duration": options.duration,
        "warmup": options.warmup, "cpus": cpus, "note": shared, "flat_within": FLAT,
        "server_src": str(src), "argv": sys.argv[1:], "rounds": rounds, "orders": orders,
    }  # fmt: skip
    fit = foreign_cost(steps)
    every = {str(k): [step.point(per_node) for step in by_k[k]] for k in counts}
    save_points(out, "scaleout", src, config, [step.point(per_node) for step in steps],
                changes=changes(steps), rounds=every,
                foreign_cost=None if fit is None else {"own_cpu_share": fit[0],
                                                       "cpu_s_per_change": fit[1]})  # fmt: skip
    print(f"figures written to {out}")
    return steps
