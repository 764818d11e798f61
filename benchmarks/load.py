"""The load benchmark: the design's load model against one server, the sweep for the largest
population one process sustains, the transport ceilings, chat, and the plot.

    python -m benchmarks.load run --users 2000 [--model design|all-online]
    python -m benchmarks.load sweep --users 1000,2000,4000 --out benchmarks/results/after.json
    python -m benchmarks.load sweep --start 2000 --max 19000      # search N_max by bisection
    python -m benchmarks.load ceiling --users 2000                # geopresence vs write floor
    python -m benchmarks.load chat                                # acked 1:1 messages/s
    python -m benchmarks.load plot benchmarks/results/*.json --out benchmarks/results/sweep.png
    python -m benchmarks.load all                                 # all of the above, in order
    python -m benchmarks.load cluster --users 1000 --nodes 2 --redis cluster
    python -m benchmarks.load scaleout --users-per-node 1000 --nodes 1,2,4 --redis cluster
    python -m benchmarks.load run --users 500 --ws ws://HOST:8765/ws --http http://HOST:8766 \\
        --admin-key KEY                                           # a server you started

The load model (seeds/nearby-friends-design.md): every simulated user keeps a WebSocket
session, heartbeats every 5 s and sends its location every 30 s while walking; 400 friends
each. ``--model design``: 40 of them are simulated users online and near (their updates reach
each other), 360 offline users; ``--model all-online``: all 400 online, 10 % near
(``benchmarks.population``). Latency runs from the ``ts`` the mover put in its update to the
moment the friend's frame is read.

Processes: the server (``geopresence serve`` in its default durable configuration: a data
dir with journal and snapshots; ``--in-memory`` to compare; ``--server-src DIR`` runs another
checkout's server) is pinned to CPU 0, this load generator to CPU 1. The generator is one
thread on one epoll (``benchmarks.wsclient``, ``benchmarks.loadgen``); it reports its own
CPU, and a run where it used more than 85 % of its core is marked GENERATOR-BOUND and is not
a server figure. This machine allows 20,000 open files per process: 19,000 users at most.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import attrs

from benchmarks import procs, redisprocs
from benchmarks.chat import chat
from benchmarks.cluster import cluster
from benchmarks.population import MODELS, SPEEDS, Model
from benchmarks.report import Result, save_sweep
from benchmarks.runner import RunOptions, data_path, one_run
from benchmarks.saturation import ceiling
from benchmarks.scaleout import scaleout

ROOT = Path(__file__).resolve().parent.parent


def sweep_search(options: RunOptions, start: int, limit: int) -> list[Result]:
    """Double N from ``start`` while it holds, then bisect between the last good N and the
    first failing one (to within an eighth), never above ``limit``."""
    results: list[Result] = []
    n, best, failed_at = start, 0, 0
    while True:
        result = run_at(options, n)
        results.append(result)
        if result.generator_bound:
            break
        if result.sustained:
            best = n
            if n >= limit:
                break
            n = min(limit, n * 2) if not failed_at else (n + failed_at) // 2
        else:
            failed_at = n
            n = (best + n) // 2 if best else n // 2
        if (best and failed_at and failed_at - best <= max(start // 4, failed_at // 8)) or (
            n < 1 or n in [r.users for r in results]
        ):
            break
    return results


def run_at(options: RunOptions, n: int) -> Result:
    print(f"\nN = {n:,} ({options.model.model})", flush=True)
    result = one_run(attrs.evolve(options, model=attrs.evolve(options.model, users=n)))
    print(result.table(), flush=True)
    return result


def sweep(options: RunOptions, args: argparse.Namespace) -> None:
    if args.users:
        results = [run_at(options, int(n)) for n in str(args.users).split(",")]
        for _ in range(args.refine):
            low = max((r.users for r in results if r.sustained), default=0)
            failing = [r.users for r in results if not r.sustained and not r.generator_bound]
            high = min((n for n in failing if n > low), default=0)
            if not high or high - low <= max(500, high // 16):
                break
            results.append(run_at(options, (low + high) // 2))
    else:
        results = sweep_search(options, args.start, args.max)
    print("\nsweep:")
    for result in results:
        print(result.line())
    passed = [r for r in results if r.sustained]
    where = "in memory" if options.spec.in_memory else "durable (data dir, journal, snapshots)"
    if passed:
        best = max(passed, key=lambda r: r.users)
        print(f"HEADLINE: one geopresence process ({where}) sustains {best.users:,} users "
              f"under the {options.model.model} model (p99 {best.p99_ms:.1f} ms, no lost "
              f"session, server CPU {(best.server_cpu or 0) * 100:.0f} %)")  # fmt: skip
    else:
        print(f"HEADLINE: no N tried met p99 <= 100 ms with no loss ({where})")
    out = Path(args.out) if args.out else data_path(f"sweep-{args.label}-{args.model}.json")
    config = {"model": options.model.model, "duration": options.duration,
              "warmup": options.warmup, "in_memory": options.spec.in_memory,
              "server_src": str(options.spec.src or ROOT), "argv": sys.argv[1:]}  # fmt: skip
    save_sweep(out, args.label, options.spec.src or ROOT, config, results)
    print(f"points written to {out}")


def everything(args: argparse.Namespace) -> None:
    """Both sweeps, the ceiling, chat and the plot: the final figures in one command."""
    outs = []
    for model in MODELS:
        print(f"\n===== sweep, model {model} =====", flush=True)
        args.model, args.out = model, None
        sweep(options_of(args, 0), args)
        outs.append(data_path(f"sweep-{args.label}-{model}.json"))
    print(f"\n===== ceiling, {args.ceiling_users:,} connections =====", flush=True)
    args.model = "design"
    ceiling(options_of(args, args.ceiling_users))
    print("\n===== chat, --fsync always =====", flush=True)
    chat(200, 8, 30.0, args.quiet)
    from benchmarks.plot import plot

    plot([p for p in args.before if p.exists()] + outs, data_path("sweep.png"))


def common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", choices=MODELS, default="design")
    common.add_argument("--friends", type=int, default=400)
    common.add_argument("--near-share", type=float, default=0.1,
                        help="share of the friends online and near")  # fmt: skip
    common.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    common.add_argument("--warmup", type=float, default=10.0)
    common.add_argument("--ramp", type=float, default=1000.0, help="connections per second")
    common.add_argument("--location-interval", type=float, default=30.0)
    common.add_argument("--speed", choices=sorted(SPEEDS), default="walking")
    common.add_argument("--sample-every", type=int, default=0,
                        help="parse 1 delivery in N for latency (0: ~2,000/s)")  # fmt: skip
    common.add_argument(
        "--in-memory",
        action="store_true",
        help="serve --in-memory (default: the durable default configuration)",
    )
    common.add_argument(
        "--server-src",
        type=Path,
        default=None,
        help="run the server of this checkout (e.g. a git worktree)",
    )
    common.add_argument("--ws", default=None, help="target server's ws:// URL (default: start one)")
    common.add_argument("--http", default=None, help="target server's HTTP API URL")
    common.add_argument("--admin-key", default=None)
    common.add_argument("--quiet", action="store_true", help="no progress lines")
    return common


def redis_parser() -> argparse.ArgumentParser:
    """``--redis``, for the commands that start nodes sharing a Redis."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--redis",
        choices=["standalone", "cluster"],
        default="cluster",
        help="one Redis, or a Redis Cluster of 3 masters (sharded pub/sub)",
    )
    return parser


def options_of(args: argparse.Namespace, users: int) -> RunOptions:
    model = Model(users=users, friends=args.friends, near_share=args.near_share,
                  model=args.model, location_interval=args.location_interval,
                  speed=args.speed)  # fmt: skip
    spec = procs.ServerSpec(in_memory=args.in_memory, src=args.server_src)
    return RunOptions(model=model, duration=args.duration, warmup=args.warmup, ramp=args.ramp,
                      spec=spec, ws=args.ws, http=args.http, admin_key=args.admin_key,
                      quiet=args.quiet, sample_every=args.sample_every,
                      grouped=getattr(args, "grouped", False))  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    common = common_parser()
    run_cmd = commands.add_parser("run", parents=[common], help="one run of the load model")
    run_cmd.add_argument("--users", type=int, default=2000)
    sweep_cmd = commands.add_parser("sweep", parents=[common], help="largest N sustained")
    sweep_cmd.add_argument("--users", default=None, help="comma-separated N (else: search)")
    sweep_cmd.add_argument(
        "--refine",
        type=int,
        default=0,
        help="then bisect between the last good and first bad N this often",
    )
    sweep_cmd.add_argument("--start", type=int, default=1000)
    sweep_cmd.add_argument("--max", type=int, default=19_000)
    sweep_cmd.add_argument("--label", default="after", help="curve name in the JSON and plot")
    sweep_cmd.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/"
                           "sweep-LABEL-MODEL.json)")  # fmt: skip
    ceiling_cmd = commands.add_parser(
        "ceiling", parents=[common], help="saturation: geopresence, write floor, websockets"
    )
    ceiling_cmd.add_argument("--users", type=int, default=2000, help="connections of each")
    all_cmd = commands.add_parser(
        "all", parents=[common], help="every figure of issue 16, one after the other"
    )
    all_cmd.add_argument("--users", default="2000,5000,10000,15000,19000")
    all_cmd.add_argument("--refine", type=int, default=2)
    all_cmd.add_argument("--ceiling-users", type=int, default=10000)
    all_cmd.add_argument("--label", default="after")
    all_cmd.add_argument("--before", type=Path, nargs="*",
                         default=[data_path("sweep-before-design.json")],
                         help="sweep files of the before curve, for the plot")  # fmt: skip
    chat_cmd = commands.add_parser("chat", help="acked 1:1 messages/s, --fsync always")
    chat_cmd.add_argument("--senders", type=int, default=200)
    chat_cmd.add_argument("--in-flight", type=int, default=8, help="sends outstanding each")
    chat_cmd.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    chat_cmd.add_argument("--quiet", action="store_true")
    plot_cmd = commands.add_parser("plot", help="PNG of p99 and server CPU against users")
    plot_cmd.add_argument("files", nargs="+", type=Path, help="sweep JSON files")
    plot_cmd.add_argument("--out", type=Path, default=data_path("sweep.png"))
    cluster_cmd = commands.add_parser(
        "cluster",
        parents=[common, redis_parser()],
        help="N nodes sharing a Redis, then 1 node in memory",
    )
    cluster_cmd.add_argument("--users", type=int, default=1000)
    cluster_cmd.add_argument("--nodes", type=int, default=2, help="nodes sharing the Redis")
    cluster_cmd.add_argument("--no-baseline", action="store_true",
                             help="skip the run of 1 node in memory")  # fmt: skip
    scaleout_cmd = commands.add_parser(
        "scaleout", parents=[common, redis_parser()],
        help="weak scaling: k nodes sharing a Redis, the same users on each",
    )  # fmt: skip
    scaleout_cmd.add_argument("--users-per-node", type=int, default=1000)
    scaleout_cmd.add_argument("--nodes", default="1,2,4", help="comma-separated node counts")
    scaleout_cmd.add_argument("--grouped", action="store_true",
                              help="each cluster of near friends on one node: no live event "
                              "crosses nodes (a control run)")  # fmt: skip
    scaleout_cmd.add_argument("--rounds", type=int, default=1,
                              help="repeat the runs, alternating the order of k; the tables "
                              "show each k's median run")  # fmt: skip
    scaleout_cmd.add_argument("--out", type=Path, default=None, help="JSON file (default: "
                              "benchmarks/results/scaleout-REDIS.json)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "plot":
        from benchmarks.plot import plot

        plot(args.files, args.out)
        return
    if args.command in ("cluster", "scaleout"):
        if args.ws or args.http:
            parser.error(f"{args.command} starts its own Redis and nodes: --ws/--http do not apply")
        counts = [int(k) for k in str(args.nodes).split(",")]
        if not all(1 <= k <= 1023 for k in counts):
            parser.error("--nodes must be 1..1023")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs", flush=True)
        try:
            if args.command == "cluster":
                cluster(options_of(args, args.users), args.nodes, args.redis, not args.no_baseline)
            else:
                out = args.out or data_path(f"scaleout-{args.redis}.json")
                if args.rounds < 1:
                    parser.error("--rounds must be at least 1")
                scaleout(options_of(args, 0), counts, args.users_per_node, args.redis, out,
                         args.server_src or ROOT, args.rounds)  # fmt: skip
        except redisprocs.RedisMissing as exc:
            raise SystemExit(f"{args.command}: {exc}") from None
        return
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; server on CPU 0, "
          f"load generator on CPU 1", flush=True)  # fmt: skip
    if args.command == "run":
        print(one_run(options_of(args, args.users)).table())
    elif args.command == "sweep":
        sweep(options_of(args, 0), args)
    elif args.command == "ceiling":
        ceiling(options_of(args, args.users))
    elif args.command == "all":
        everything(args)
    elif args.command == "chat":
        chat(args.senders, args.in_flight, args.duration, args.quiet)


if __name__ == "__main__":
    main()
