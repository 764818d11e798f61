"""The ``geopresence`` command: ``serve`` and ``token`` (PROTOCOL.md, Command line)."""

from __future__ import annotations

import argparse
import datetime
import errno
import logging
import math
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import orjson
import trio

from geopresence import __version__
from geopresence.aio import collapse_exception_groups
from geopresence.auth import DEFAULT_TOKEN_TTL, SECRET_FILE, mint_token, resolve_secret
from geopresence.cluster import ClusterError
from geopresence.config import Config, webhook_problem
from geopresence.history import history_dir, read_history
from geopresence.ids import id_problem
from geopresence.logs import configure as configure_logging
from geopresence.server import RunningServer, serve
from geopresence.storage.datadir import DataDirLocked
from geopresence.storage.offline import compact, inspect_data_dir
from geopresence.storage.recovery import DataDirCorrupt
from geopresence.storage.repair import repair_data_dir


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _int_in(text: str, low: int, high: int | None = None) -> int:
    """An integer argument in low..high (no upper bound when ``high`` is None)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < low or (high is not None and value > high):
        if high is not None:
            bound = f"{low}..{high}"
        else:
            bound = "a positive integer" if low == 1 else f"{low} or more"
        raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_in(text, 1)


def _non_negative_int(text: str) -> int:
    return _int_in(text, 0)


def _node_id(text: str) -> int:
    return _int_in(text, 0, 1023)


def _webhook(text: str) -> str:
    problem = webhook_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535 (0 picks a free one): {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geopresence",
        description="Real-time presence and nearby-friends server (WebSocket + HTTP API).",
    )
    parser.add_argument("--version", action="version", version=f"geopresence {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = Config()
    s = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the server. Without flags: state in memory, journaled and "
        "snapshotted to the data dir ./geopresence-data (--fsync everysec), WebSocket on "
        "127.0.0.1:8765, HTTP API on 127.0.0.1:8766.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("--host", default=d.host, help="interface to listen on (0.0.0.0: all)")
    s.add_argument("--port", type=_port, default=d.port, help="WebSocket port (0: any free)")
    s.add_argument(
        "--http-port", type=_port, default=d.http_port, help="HTTP API port (0: any free)"
    )
    s.add_argument(
        "--data-dir",
        type=Path,
        default=d.data_dir,
        help="directory for the secret, the admin key and durable state",
    )
    s.add_argument(
        "--insecure",
        action="store_true",
        help="accept hello with a bare user and HTTP calls without the admin key "
        "(local development only)",
    )
    s.add_argument(
        "--admin-key",
        default=None,
        help="HTTP API bearer key (default: env GEOPRESENCE_ADMIN_KEY, else "
        "generated in DATA_DIR/admin_key)",
    )
    s.add_argument(
        "--secret",
        default=None,
        help="token signing secret (default: env GEOPRESENCE_SECRET, else "
        "generated in DATA_DIR/secret)",
    )
    s.add_argument(
        "--heartbeat-interval",
        type=_seconds,
        default=d.heartbeat_interval,
        metavar="S",
        help="heartbeat period clients are told to use",
    )
    s.add_argument(
        "--offline-after",
        type=_seconds,
        default=d.offline_after,
        metavar="S",
        help="a device without activity for this long is offline",
    )
    s.add_argument(
        "--location-ttl",
        type=_seconds,
        default=d.location_ttl,
        metavar="S",
        help="lifetime of a user's latest location (nearby friends)",
    )
    s.add_argument(
        "--radius",
        type=_positive_number,
        default=d.radius,
        metavar="M",
        help="default nearby radius in metres (5 miles)",
    )
    s.add_argument(
        "--max-radius",
        type=_positive_number,
        default=d.max_radius,
        metavar="M",
        help="largest radius_m a user may set, metres",
    )
    s.add_argument(
        "--strangers-query-burst",
        type=_positive_int,
        default=d.strangers_query_burst,
        metavar="N",
        help="nearby_people queries a connection may make at once",
    )
    s.add_argument(
        "--strangers-query-interval",
        type=_seconds,
        default=d.strangers_query_interval,
        metavar="S",
        help="seconds per nearby_people query refilled",
    )
    s.add_argument(
        "--history-max-bytes",
        type=_positive_int,
        default=d.history_max_bytes,
        metavar="B",
        help="size at which the location history starts a new file",
    )
    s.add_argument(
        "--in-memory",
        action="store_true",
        help="keep state in memory only: no journal or snapshots, nothing survives a restart",
    )
    s.add_argument(
        "--snapshot-interval",
        type=_seconds,
        default=d.snapshot_interval,
        metavar="S",
        help="seconds between state snapshots",
    )
    s.add_argument(
        "--fsync",
        choices=["always", "everysec", "no"],
        default=d.fsync,
        help="journal fsync policy, as Redis' appendfsync",
    )
    s.add_argument(
        "--presence-fanout-limit",
        type=_positive_int,
        default=d.presence_fanout_limit,
        metavar="N",
        help="groups up to this size get co-member presence events",
    )
    s.add_argument(
        "--max-friends",
        type=_positive_int,
        default=d.max_friends,
        metavar="N",
        help="friends per user (more: HTTP 409)",
    )
    s.add_argument(
        "--max-message-bytes",
        type=_positive_int,
        default=d.max_message_bytes,
        metavar="B",
        help="largest client frame (larger: close 1009)",
    )
    s.add_argument(
        "--hello-timeout",
        type=_seconds,
        default=d.hello_timeout,
        metavar="S",
        help="time to send a valid hello (else close 1008)",
    )
    s.add_argument(
        "--queue-size",
        type=_positive_int,
        default=d.queue_size,
        metavar="N",
        help="replies queued per connection before it is a slow consumer (4008)",
    )
    s.add_argument(
        "--queue-bytes",
        type=_positive_int,
        default=d.queue_bytes,
        metavar="B",
        help="bytes of replies and messages queued per connection before it is a slow "
        "consumer (4008)",
    )
    s.add_argument(
        "--state-queue-size",
        type=_positive_int,
        default=d.state_queue_size,
        metavar="N",
        help="latest-wins state frames (one per user) queued per connection",
    )
    s.add_argument(
        "--node-id",
        type=_node_id,
        default=d.node_id,
        metavar="N",
        help="Snowflake node id in message ids, 0..1023 (default: %(default)s); with "
        "several nodes each needs its own (a second node with the same id refuses to start)",
    )
    s.add_argument(
        "--redis",
        metavar="URL",
        default=None,
        help="redis://HOST:PORT/DB: be one node of several sharing this standalone Redis "
        "(state and pub/sub; no journal in the data dir); unset, this is the only node and "
        "needs no Redis",
    )
    s.add_argument(
        "--redis-cluster",
        metavar="HOST:PORT[,HOST:PORT...]",
        default=None,
        help="like --redis over a Redis 7 Cluster (sharded pub/sub), given one or more of "
        "its nodes",
    )
    s.add_argument(
        "--redis-prefix",
        metavar="PREFIX",
        default=d.redis_prefix,
        help="prefix of every Redis key (default: %(default)s)",
    )
    s.add_argument(
        "--redis-sweep-interval",
        type=_seconds,
        metavar="S",
        default=d.redis_sweep_interval,
        help="how often each node ends devices whose deadline passed on a node that stopped "
        "(a dead node's users go offline at most this long after their deadline; "
        "default: %(default)s)",
    )
    s.add_argument(
        "--push-webhook",
        type=_webhook,
        default=None,
        metavar="URL",
        help="POST each message for a recipient without a connected device to URL "
        "(default: log it)",
    )
    s.add_argument(
        "--push-timeout",
        type=_seconds,
        default=d.push_timeout,
        metavar="S",
        help="time one webhook POST may take (default: %(default)s)",
    )
    s.add_argument(
        "--push-retries",
        type=_non_negative_int,
        default=d.push_retries,
        metavar="N",
        help="retries of a failed webhook POST, with backoff (default: %(default)s)",
    )
    s.add_argument(
        "--gc-freeze-interval",
        type=float,
        default=d.gc_freeze_interval,
        metavar="S",
        help="move long-lived objects out of the garbage collector's reach every S seconds "
        "(keeps GC pauses short with many users; 0: off)",
    )
    s.add_argument(
        "--max-devices-per-user",
        type=_positive_int,
        default=d.max_devices_per_user,
        metavar="N",
        help="alive devices a user may have (one more is refused at hello)",
    )
    s.add_argument(
        "--max-connections-per-user",
        type=_positive_int,
        default=d.max_connections_per_user,
        metavar="N",
        help="live connections a user may have",
    )
    s.add_argument(
        "--rate-limit",
        type=float,
        default=d.rate_limit,
        metavar="R",
        help="client messages per second per connection, sustained (0: no limit)",
    )
    s.add_argument(
        "--rate-burst",
        type=_positive_int,
        default=d.rate_burst,
        metavar="N",
        help="client messages a connection may send at once",
    )
    s.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity",
    )
    s.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text lines, or one JSON object per line (ts, level, logger, message)",
    )
    s.set_defaults(run=_cmd_serve)

    t = commands.add_parser(
        "token",
        help="print a token for a user",
        description="Print an HS256 JWT for USER signed with the server's secret (the "
        "same --secret / GEOPRESENCE_SECRET / DATA_DIR/secret the server uses).",
    )
    t.add_argument("user", metavar="USER")
    t.add_argument(
        "--ttl",
        type=_seconds,
        default=DEFAULT_TOKEN_TTL,
        metavar="S",
        help="validity in seconds (default: %(default)s)",
    )
    t.add_argument(
        "--data-dir",
        type=Path,
        default=d.data_dir,
        help="the server's data dir (default: %(default)s)",
    )
    t.add_argument("--secret", default=None, help="the server's --secret, if it has one")
    t.set_defaults(run=_cmd_token)

    h = commands.add_parser(
        "history",
        help="print a user's location history",
        description="Print USER's recorded locations, oldest first, from DATA_DIR/history "
        "(one line per accepted update: time, lat, lon).",
    )
    h.add_argument("user", metavar="USER")
    h.add_argument(
        "--since",
        type=_time,
        default=None,
        metavar="T",
        help="only updates at or after T (epoch seconds or ISO 8601)",
    )
    h.add_argument(
        "--data-dir",
        type=Path,
        default=d.data_dir,
        help="the server's data dir (default: %(default)s)",
    )
    h.add_argument("--json", action="store_true", help="JSON Lines output")
    h.set_defaults(run=_cmd_history)

    i = commands.add_parser(
        "inspect",
        help="show what a data dir holds",
        description="Report what DATA_DIR holds: snapshots, journal, history, the durable "
        "state they add up to (friendships, groups, settings, messages) and any damage "
        "found. Read-only: safe while a server runs on it.",
    )
    i.add_argument("data_dir", metavar="DATA_DIR", type=Path)
    i.add_argument("--json", action="store_true", help="one JSON object")
    i.set_defaults(run=_cmd_inspect)

    c = commands.add_parser(
        "snapshot",
        help="compact a data dir offline (journal -> new snapshot)",
        description="Replay DATA_DIR's journal onto its newest snapshot and write the result "
        "as a new snapshot, pruning what it makes unnecessary (a running server does this "
        "every --snapshot-interval; for a running server use POST /v1/snapshot). Refuses "
        "while a server runs on DATA_DIR.",
    )
    c.add_argument("data_dir", metavar="DATA_DIR", type=Path)
    c.add_argument("--json", action="store_true", help="one JSON object")
    c.set_defaults(run=_cmd_snapshot)

    r = commands.add_parser(
        "repair",
        help="repair a damaged data dir offline, keeping every intact record",
        description="Repair a data dir that the server refuses to start on: it "
        "copies every file it changes to DATA_DIR/corrupt/ first, rewrites damaged journal "
        "segments with every intact record, sets unreadable snapshots aside, and says what "
        "was kept and lost. Refuses while a server runs on DATA_DIR.",
    )
    r.add_argument(
        "--data-dir",
        type=Path,
        default=d.data_dir,
        help="the server's data dir (default: %(default)s)",
    )
    r.add_argument("--dry-run", action="store_true", help="report what it would do, change nothing")
    r.add_argument("--json", action="store_true", help="one JSON object")
    r.set_defaults(run=_cmd_repair)
    return parser


def _addresses(text: str | None) -> tuple[str, ...]:
    return tuple(a.strip() for a in (text or "").split(",") if a.strip())


def _config_from(args: argparse.Namespace) -> Config:
    return Config(
        host=args.host,
        port=args.port,
        http_port=args.http_port,
        data_dir=args.data_dir,
        insecure=args.insecure,
        admin_key=args.admin_key,
        secret=args.secret,
        heartbeat_interval=args.heartbeat_interval,
        offline_after=args.offline_after,
        location_ttl=args.location_ttl,
        radius=args.radius,
        max_radius=args.max_radius,
        history_max_bytes=args.history_max_bytes,
        strangers_query_burst=args.strangers_query_burst,
        strangers_query_interval=args.strangers_query_interval,
        in_memory=args.in_memory,
        snapshot_interval=args.snapshot_interval,
        fsync=args.fsync,
        presence_fanout_limit=args.presence_fanout_limit,
        max_friends=args.max_friends,
        max_message_bytes=args.max_message_bytes,
        hello_timeout=args.hello_timeout,
        queue_size=args.queue_size,
        queue_bytes=args.queue_bytes,
        state_queue_size=args.state_queue_size,
        node_id=args.node_id,
        redis=args.redis,
        redis_cluster=_addresses(args.redis_cluster),
        redis_prefix=args.redis_prefix,
        redis_sweep_interval=args.redis_sweep_interval,
        push_webhook=args.push_webhook,
        push_timeout=args.push_timeout,
        push_retries=args.push_retries,
        gc_freeze_interval=args.gc_freeze_interval,
        max_devices_per_user=args.max_devices_per_user,
        max_connections_per_user=args.max_connections_per_user,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
    )


def _announce(running: RunningServer, config: Config) -> None:
    """Tell the user how to use the server; the ``listening`` line comes last, so a script
    waiting for it knows start-up (and this text) is complete."""
    data_dir = config.data_dir
    hints = [f"geopresence {__version__}: WebSocket {running.ws_url}, HTTP API {running.http_url}"]
    if config.insecure:
        hints.append(
            '  insecure mode: hello with {"type":"hello","user":"alice","device":"phone"}; '
            "no admin key needed"
        )
    else:
        token_cmd = "geopresence token USER"
        if config.secret is None and data_dir != Config().data_dir:
            token_cmd += f" --data-dir {data_dir}"
        secret_file = config.secret is None and not os.environ.get("GEOPRESENCE_SECRET")
        if secret_file and config.in_memory and not (data_dir / "secret").exists():
            token_cmd = "POST /v1/tokens with the admin key (the secret is in memory only)"
        hints.append(f"  mint a token:  {token_cmd}")
        if config.admin_key is None and not os.environ.get("GEOPRESENCE_ADMIN_KEY"):
            if config.in_memory and not (data_dir / "admin_key").exists():
                hints.append(f"  HTTP API admin key (this process only): {running.admin_key}")
            else:
                hints.append(f"  HTTP API admin key: in {data_dir / 'admin_key'}")
    hints.append("  stop: Ctrl+C (or SIGTERM)")
    print("\n".join(hints), flush=True)
    print(
        f"listening ws={running.host}:{running.ws_port} http={running.host}:{running.http_port}",
        flush=True,
    )


async def _serve_until_signal(config: Config) -> None:
    """Serve until SIGINT/SIGTERM or a drain (POST /v1/drain) stops the server."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def server(task_status: trio.TaskStatus[RunningServer]) -> None:
                await serve(config, task_status=task_status)
                nursery.cancel_scope.cancel()  # stopped (a drain): stop listening for signals

            running: RunningServer = await nursery.start(server)
            _announce(running, config)
            async for signum in signals:
                logging.getLogger("geopresence").info("%s: stopping", signal.Signals(signum).name)
                running.stop()
                break


def _cmd_serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    try:
        config = _config_from(args)
    except ValueError as exc:
        print(f"geopresence: {exc}", file=sys.stderr)
        return 2
    try:
        with collapse_exception_groups():
            trio.run(_serve_until_signal, config)
    except (DataDirLocked, DataDirCorrupt, ClusterError) as exc:
        print(f"geopresence: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(
                f"geopresence: a port is already in use ({exc.strerror}); pick another "
                "with --port/--http-port, or 0 for any free port",
                file=sys.stderr,
            )
        else:
            print(f"geopresence: {exc}", file=sys.stderr)
        return 1
    return 0


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _stamp(ts: float) -> str:
    when = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def _counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{value:,} {name.replace('_', ' ')}" for name, value in counts.items())


def _cmd_inspect(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    if not data_dir.is_dir():
        print(f"geopresence inspect: {data_dir} is not a directory", file=sys.stderr)
        return 1
    report = inspect_data_dir(data_dir)
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return 1 if report["needs_repair"] else 0
    in_use = "in use by a running server" if report["in_use"] else "not in use"
    print(f"data dir {data_dir} ({in_use})")
    for name in ("snapshots", "journal", "history"):
        files = report[name]
        print(f"  {name + ':':<11} {files['files']} file(s), {_size(files['bytes'])}")
    last = report["last_snapshot"]
    if last is None:
        print("  last snapshot: none (the journal holds everything)")
    else:
        age = max(0.0, time.time() - last["created_at"])
        print(
            f"  last snapshot: {last['file']}, {_stamp(last['created_at'])} "
            f"({age / 60:,.0f} min ago), {_size(last['bytes'])}, "
            f"journal seq {last['journal_seq']:,}"
        )
        print(f"    holds {_counts_line(last['counts'])}")
    after = dict(report["journal_after_snapshot"])
    records = after.pop("records")
    kinds = ", ".join(f"{n:,} {kind}" for kind, n in sorted(after.items()))
    print(f"  journal after it: {records:,} record(s)" + (f" ({kinds})" if kinds else ""))
    print(f"  durable state: {_counts_line(report['state'])}")
    for problem in report["problems"]:
        print(f"  found: {problem}")
    if report["needs_repair"]:
        print(f"  start-up refuses: {report['needs_repair']}")
    return 1 if report["needs_repair"] else 0


def _cmd_snapshot(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    if not data_dir.is_dir():
        print(f"geopresence snapshot: {data_dir} is not a directory", file=sys.stderr)
        return 1
    try:
        info = compact(data_dir)
    except DataDirLocked as exc:
        print(
            f"geopresence snapshot: {exc}; ask the running server instead: "
            "POST /v1/snapshot on its HTTP API",
            file=sys.stderr,
        )
        return 1
    except DataDirCorrupt as exc:
        print(f"geopresence snapshot: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode())
        return 0
    for problem in info["problems"]:
        print(f"repaired: {problem}")
    print(
        f"wrote {info['path']} ({_size(info['bytes'])}, journal seq {info['journal_seq']:,}, "
        f"{info['replayed_records']:,} journal record(s) folded in, {info['seconds']:.2f} s)"
    )
    print(f"  holds {_counts_line(info['counts'])}")
    return 0


def _cmd_repair(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    if not data_dir.is_dir():
        print(f"geopresence repair: {data_dir} is not a directory", file=sys.stderr)
        return 1

    def say(line: str) -> None:
        if not args.json:
            print(f"  {line}", flush=True)

    if not args.json:
        dry = " (dry run: nothing is changed)" if args.dry_run else ""
        print(f"geopresence repair: {data_dir}{dry}", flush=True)
    try:
        report = repair_data_dir(data_dir, dry_run=args.dry_run, progress=say)
    except DataDirLocked as exc:
        print(f"geopresence repair: {exc}; stop it first", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return 1 if report["still_damaged"] else 0
    if not report["found"]:
        print("nothing to repair")
        return 0
    for line in report["lost"]:
        say(f"lost: {line}")
    say(f"durable state: {_counts_line(report['state'])}")
    for line in report["still_damaged"]:
        print(f"geopresence repair: still damaged: {line}", file=sys.stderr)
    if report["still_damaged"]:
        return 1
    if args.dry_run:
        print(f"dry run: run geopresence repair --data-dir {shlex.quote(str(data_dir))} to do it")
        return 0
    kept = f" (the originals are in {report['corrupt_dir']})" if report["files"] else ""
    lost = "see above" if report["lost"] else "nothing"
    print(f"repaired{kept}; lost: {lost}; the server starts on {data_dir} now")
    return 0


def _time(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"not a finite time: {text!r}")
        return value
    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (epoch seconds or ISO 8601, e.g. 2026-11-21T10:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def _cmd_history(args: argparse.Namespace) -> int:
    problem = id_problem(args.user, "user")
    if problem is not None:
        print(f"geopresence history: {problem}", file=sys.stderr)
        return 2
    directory = history_dir(args.data_dir)
    if not directory.is_dir():
        print(f"geopresence history: no location history in {args.data_dir}", file=sys.stderr)
        return 1
    count = 0
    for entry in read_history(directory, args.user, args.since):
        count += 1
        if args.json:
            print(orjson.dumps(attrs.asdict(entry)).decode())
        else:
            try:
                when = datetime.datetime.fromtimestamp(entry.ts, datetime.UTC)
                stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            except (OverflowError, OSError, ValueError):
                stamp = f"ts={entry.ts!r}"  # outside what a calendar date can show
            print(f"{stamp}  {entry.lat:11.6f}  {entry.lon:12.6f}")
    if not args.json:
        print(f"{count} location(s) for {args.user}", file=sys.stderr)
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    secret_file = args.data_dir / SECRET_FILE
    if (
        args.secret is None
        and not os.environ.get("GEOPRESENCE_SECRET")
        and not secret_file.exists()
    ):
        # A new secret here would sign tokens no running server accepts.
        print(
            f"geopresence token: no secret in {args.data_dir} (start the server once, or pass "
            "the server's --data-dir or --secret)",
            file=sys.stderr,
        )
        return 2
    try:
        secret = resolve_secret(args.secret, args.data_dir)
        print(mint_token(secret, args.user, args.ttl, time.time()))
    except (ValueError, OSError) as exc:
        print(f"geopresence token: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
