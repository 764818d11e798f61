"""The ``geopresence`` command: ``serve``, ``demo``, ``token``, ``history``, ``forget`` and the
data-dir tools.

The flags of ``serve`` are generated from ``Config`` (``geopresence.shell.flags``). A usage
error is one line naming the flag and the problem, exit status 2; a start-up failure (a port
in use, a locked or damaged data dir, Redis) is one line too, exit status 1.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from geopresence import __version__
from geopresence.announce import announce_demo, announce_serve
from geopresence.cluster.joining import ClusterError
from geopresence.config import Config
from geopresence.demo import (
    DEMO_DEFAULTS,
    VISITOR,
    add_demo_flags,
    demo_options,
    run_demo,
)
from geopresence.shell import tools
from geopresence.shell.aio import collapse_exception_groups
from geopresence.shell.auth import (
    DEFAULT_TOKEN_TTL,
    MAX_TOKEN_TTL,
)
from geopresence.shell.flags import (
    ENV_RULE,
    Given,
    Parser,
    UsageError,
    add_serve_flags,
    build_config,
    resolve,
    setting,
)
from geopresence.shell.logs import configure as configure_logging
from geopresence.shell.server import CannotListen, RunningServer, serve
from geopresence.storage.datadir import DataDirLocked
from geopresence.storage.recovery import DataDirCorrupt
from geopresence.units import parse_duration, parse_number


def _seconds(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError("must be a positive duration")
    return value


def _token_ttl(text: str) -> float:
    value = _seconds(text)
    if value > MAX_TOKEN_TTL:  # as POST /v1/tokens
        raise ValueError(f"must be at most {MAX_TOKEN_TTL:.0f} s (one year)")
    return value


def _time(text: str) -> float:
    """Epoch seconds, or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        return parse_number(text)
    except ValueError:
        pass
    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            "not a time (epoch seconds or ISO 8601, e.g. 2026-11-21T10:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def _value(flag: str, text: str | None, parse: Callable[[str], float]) -> float | None:
    """``parse(text)``; ``UsageError`` naming the flag and the value."""
    if text is None:
        return None
    try:
        return parse(text)
    except ValueError as exc:
        raise UsageError(f"{flag} {text}: {exc}") from None


def _add_data_dir(parser: argparse.ArgumentParser, *, positional: bool = False) -> None:
    data_dir = setting("data_dir")
    if positional:
        parser.add_argument(
            "data_dir_arg", nargs="?", metavar="DATA_DIR", help="the same as --data-dir"
        )
    parser.add_argument(
        "--data-dir",
        dest="data_dir",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help=f"the server's data dir (default: {data_dir.default}; env {data_dir.env})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="geopresence",
        description="Real-time presence and nearby-friends server (WebSocket + HTTP API).",
    )
    parser.add_argument("--version", action="version", version=f"geopresence {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the server. Without flags: the state is journaled and snapshotted "
        "to the data dir ./geopresence-data (and served from memory), WebSocket on "
        "127.0.0.1:8765, HTTP API on 127.0.0.1:8766.",
        usage="%(prog)s [FLAGS]",
        epilog=ENV_RULE,
    )
    add_serve_flags(s)
    s.set_defaults(parser=s, run=_cmd_serve)

    d = commands.add_parser(
        "demo",
        help="a server with simulated users, to try the console",
        description="Start a server with simulated users who walk around a city, go online "
        "and offline and chat a little, and print the console's URL: open it and sign in as "
        f"'{VISITOR}'. Takes every flag of serve; --insecure and --in-memory are on unless "
        "turned off (--no-insecure: sign in with the token printed), the data dir is a "
        "temporary one unless given.",
        usage="%(prog)s [--users N] [--at LAT,LON] [--seed N] [SERVE FLAGS]",
        epilog=ENV_RULE,
    )
    add_demo_flags(d)
    add_serve_flags(d, DEMO_DEFAULTS)
    d.set_defaults(parser=d, run=_cmd_demo)

    t = commands.add_parser(
        "token",
        help="print a token for a user",
        description="Print an HS256 JWT for USER signed with the server's secret (the "
        "same --secret / GEOPRESENCE_SECRET / DATA_DIR/secret the server uses).",
    )
    t.add_argument("user", metavar="USER")
    t.add_argument(
        "--ttl",
        default=None,
        metavar="SECONDS",
        help=f"validity (default: {DEFAULT_TOKEN_TTL / 3600:g} h, at most one year)",
    )
    _add_data_dir(t)
    t.add_argument(
        "--secret",
        default=None,
        help="the server's --secret, if it has one (env GEOPRESENCE_SECRET)",
    )
    t.set_defaults(parser=t, run=_cmd_token)

    h = commands.add_parser(
        "history",
        help="print a user's location history",
        description="Print USER's recorded locations, oldest first, from DATA_DIR/history "
        "(one line per accepted update: time, lat, lon).",
    )
    h.add_argument("user", metavar="USER")
    h.add_argument(
        "--since",
        default=None,
        metavar="T",
        help="only updates at or after T (epoch seconds or ISO 8601)",
    )
    _add_data_dir(h)
    h.add_argument("--json", action="store_true", help="JSON Lines output")
    h.set_defaults(parser=h, run=_cmd_history)

    f = commands.add_parser(
        "forget",
        help="delete everything a stopped server's data dir holds about a user",
        description="Delete everything the data dir holds about USER: friendships, group "
        "memberships, settings, chat messages (sent and received 1:1, and its group "
        "messages), location history; then write a snapshot without it and delete the older "
        "snapshots and journal segments. Refuses while a server runs on the data dir (ask it: "
        "DELETE /v1/users/USER).",
    )
    f.add_argument("user", metavar="USER")
    _add_data_dir(f)
    f.add_argument("--json", action="store_true", help="one JSON object")
    f.set_defaults(parser=f, run=_cmd_forget)

    i = commands.add_parser(
        "inspect",
        help="show what a data dir holds",
        description="Report what the data dir holds: snapshots, journal, history, the "
        "durable state they add up to (friendships, groups, settings, messages) and any "
        "damage found. Read-only: safe while a server runs on it.",
    )
    _add_data_dir(i, positional=True)
    i.add_argument("--json", action="store_true", help="one JSON object")
    i.set_defaults(parser=i, run=_cmd_inspect)

    c = commands.add_parser(
        "snapshot",
        help="compact a data dir offline (journal -> new snapshot)",
        description="Replay the data dir's journal onto its newest snapshot and write the "
        "result as a new snapshot, pruning what it makes unnecessary (a running server does "
        "this every --snapshot-interval; for a running server use POST /v1/snapshot). "
        "Refuses while a server runs on the data dir.",
    )
    _add_data_dir(c, positional=True)
    c.add_argument("--json", action="store_true", help="one JSON object")
    c.set_defaults(parser=c, run=_cmd_snapshot)

    r = commands.add_parser(
        "repair",
        help="repair a damaged data dir offline, keeping every intact record",
        description="Repair a data dir that the server refuses to start on: it "
        "copies every file it changes to DATA_DIR/corrupt/ first, rewrites damaged journal "
        "segments with every intact record, sets unreadable snapshots aside, and says what "
        "was kept and lost. Refuses while a server runs on DATA_DIR.",
    )
    _add_data_dir(r)
    r.add_argument("--dry-run", action="store_true", help="report what it would do, change nothing")
    r.add_argument("--json", action="store_true", help="one JSON object")
    r.set_defaults(parser=r, run=_cmd_repair)
    return parser


def _data_dir(args: argparse.Namespace) -> Path:
    """``--data-dir``, else ``GEOPRESENCE_DATA_DIR``, else the default; or the positional
    DATA_DIR of ``inspect`` and ``snapshot`` (which must not contradict ``--data-dir``)."""
    positional = getattr(args, "data_dir_arg", None)
    flag = getattr(args, "data_dir", None)
    if positional is not None:
        if flag is not None and Path(flag) != Path(positional):
            raise UsageError(f"DATA_DIR {positional} and --data-dir {flag}: give one of them")
        return Path(positional)
    values, _ = resolve(args, os.environ, ("data_dir",))
    return Path(values.get("data_dir", Config().data_dir))


def _data_dir_problem(config: Config) -> str | None:
    """Why the server cannot keep its files in ``config.data_dir`` (None: it can, or it
    will create it)."""
    path = config.data_dir
    if path.exists():
        return None if path.is_dir() else "is a file, not a directory"
    if config.in_memory:
        return None  # nothing but the location history is written: no reason to refuse
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else f"cannot be created: {parent} is a file"
    return None


async def _until_signal(
    start: Callable[..., Awaitable[None]], announce: Callable[[RunningServer], None]
) -> bool:
    """Run ``start`` (``serve`` or ``run_demo``) until SIGINT/SIGTERM or a drain (POST
    /v1/drain) stops the server. Signals during the shutdown are taken here too (left
    pending, one would be raised once it is over: a traceback and no exit status 0): a
    second SIGINT cuts it short, as in Redis, and makes this return True; SIGTERM is only
    logged."""
    log = logging.getLogger("geopresence")
    cut_short = False
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def server(task_status: trio.TaskStatus[RunningServer]) -> None:
                await start(task_status=task_status)
                nursery.cancel_scope.cancel()  # stopped (a drain): stop listening for signals

            running: RunningServer = await nursery.start(server)
            announce(running)
            stopping = False
            async for signum in signals:
                name = signal.Signals(signum).name
                if not stopping:
                    log.info("%s: stopping", name)
                    running.stop()
                    stopping = True
                elif signum == signal.SIGINT:
                    # Nothing acknowledged is lost: it is in the journal (or Redis) already.
                    log.warning(
                        "%s again: exiting now, without the final snapshot (nothing "
                        "acknowledged is lost)",
                        name,
                    )
                    cut_short = True
                    nursery.cancel_scope.cancel()
                else:
                    log.info("%s: already stopping (a second SIGINT stops at once)", name)
    return cut_short


def _server_config(args: argparse.Namespace, **defaults: Any) -> tuple[Config, Given]:
    """The ``Config`` of the command line and environment (``defaults`` where neither
    says), with logging configured; ``UsageError`` for a bad flag."""
    values, given = resolve(args, os.environ)
    log_level = values.pop("log_level", "info")
    log_format = values.pop("log_format", "text")
    for name, value in defaults.items():
        values.setdefault(name, value)
    config = build_config(values, given)
    problem = _data_dir_problem(config)
    if problem is not None:
        raise UsageError(f"{given.where('data_dir')}: {problem}")
    configure_logging(log_level, log_format)
    return config, given


def _run_server(
    given: Given,
    start: Callable[..., Awaitable[None]],
    announce: Callable[[RunningServer], None],
) -> int:
    """Run until stopped; a start-up failure is one line on stderr, exit status 1 (and 1
    after a shutdown cut short by a second SIGINT)."""
    try:
        with collapse_exception_groups():
            cut_short = trio.run(_until_signal, start, announce)
    except CannotListen as exc:
        print(f"geopresence: {given.where(exc.field)}: {exc.problem}", file=sys.stderr)
        return 1
    except DataDirLocked as exc:
        print(f"geopresence: {given.where('data_dir')}: {exc}", file=sys.stderr)
        return 1
    except (DataDirCorrupt, ClusterError, OSError) as exc:
        print(f"geopresence: {exc}", file=sys.stderr)
        return 1
    return 1 if cut_short else 0  # as Redis: a shutdown cut short is not a clean one


def _cmd_serve(args: argparse.Namespace) -> int:
    config, given = _server_config(args)
    return _run_server(
        given, functools.partial(serve, config), functools.partial(announce_serve, config=config)
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        options = demo_options(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    with tempfile.TemporaryDirectory(prefix="geopresence-demo-") as tmp:
        config, given = _server_config(args, **DEMO_DEFAULTS, data_dir=Path(tmp))
        start = functools.partial(
            run_demo, config, users=options.users, centre=options.centre, seed=options.seed
        )
        return _run_server(given, start, functools.partial(announce_demo, centre=options.centre))


def _cmd_inspect(args: argparse.Namespace) -> int:
    return tools.inspect(_data_dir(args), as_json=args.json)


def _cmd_snapshot(args: argparse.Namespace) -> int:
    return tools.snapshot(_data_dir(args), as_json=args.json)


def _cmd_repair(args: argparse.Namespace) -> int:
    return tools.repair(_data_dir(args), dry_run=args.dry_run, as_json=args.json)


def _cmd_history(args: argparse.Namespace) -> int:
    since = _value("--since", args.since, _time)
    return tools.history(_data_dir(args), args.user, since, as_json=args.json)


def _cmd_forget(args: argparse.Namespace) -> int:
    return tools.forget(_data_dir(args), args.user, as_json=args.json)


def _cmd_token(args: argparse.Namespace) -> int:
    ttl = _value("--ttl", args.ttl, _token_ttl) or DEFAULT_TOKEN_TTL
    return tools.token(_data_dir(args), args.user, ttl, args.secret)


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if extra:  # said by the command's parser: "geopresence serve: unrecognized ..."
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except UsageError as exc:
        print(f"geopresence {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
