"""The offline data-dir commands' output: ``inspect``, ``snapshot``, ``repair``, ``history``,
``forget``, ``token``.

Each function prints its report (text, or JSON with ``as_json``) and returns the exit status;
``geopresence.cli`` parses the command line and calls them.
"""

from __future__ import annotations

import datetime
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import attrs
import orjson

from geopresence.model.ids import id_problem
from geopresence.options import secret_problem
from geopresence.shell.auth import SECRET_FILE, mint_token, resolve_secret
from geopresence.storage.datadir import DataDirLocked
from geopresence.storage.history import history_dir, read_history
from geopresence.storage.offline import compact, forget_offline, inspect_data_dir
from geopresence.storage.recovery import DataDirCorrupt
from geopresence.storage.repair import repair_data_dir

T = TypeVar("T")

DATA_DIR_MARKS = ("state", "history", "secret", "admin_key", "lock")
"""What a data dir holds once a server (or ``geopresence repair``) used it."""


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


def is_data_dir(command: str, data_dir: Path) -> bool:
    """True if ``data_dir`` is a data dir; else say why not (on stderr)."""
    if not data_dir.is_dir():
        problem = "is a file" if data_dir.exists() else "does not exist"
        print(f"geopresence {command}: {data_dir} {problem}, not a data dir", file=sys.stderr)
        return False
    if not any((data_dir / mark).exists() for mark in DATA_DIR_MARKS):
        print(
            f"geopresence {command}: {data_dir} is not a geopresence data dir (no state/, "
            "history/, secret or admin_key in it); give the server's --data-dir",
            file=sys.stderr,
        )
        return False
    return True


def cannot_use(command: str, exc: OSError) -> None:
    """Say, in one line, that reading or writing the data dir failed (a full disk,
    permissions, a file a running server deleted meanwhile): nothing acknowledged is lost
    (a snapshot or a forget cut short is the next run's, or start's, to finish)."""
    print(
        f"geopresence {command}: {exc}; nothing acknowledged is lost: run it again once "
        "that is fixed",
        file=sys.stderr,
    )


def inspect(data_dir: Path, *, as_json: bool) -> int:
    """``geopresence inspect``: what the data dir holds (1 if start-up would refuse)."""
    if not is_data_dir("inspect", data_dir):
        return 1
    try:
        report = inspect_data_dir(data_dir)
    except OSError as exc:
        cannot_use("inspect", exc)
        return 1
    if as_json:
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


def _on_stopped_server(command: str, online: str, work: Callable[[], T]) -> T | None:
    """``work()`` on a stopped server's data dir, or None once why it could not run is
    printed: a running server holds the lock (then ``online``, the HTTP call that does it
    there, is suggested), the data dir is damaged, or reading or writing it failed."""
    try:
        return work()
    except DataDirLocked as exc:
        print(
            f"geopresence {command}: {exc}; ask the running server instead: "
            f"{online} on its HTTP API",
            file=sys.stderr,
        )
    except DataDirCorrupt as exc:
        print(f"geopresence {command}: {exc}", file=sys.stderr)
    except OSError as exc:
        cannot_use(command, exc)
    return None


def snapshot(data_dir: Path, *, as_json: bool) -> int:
    """``geopresence snapshot``: compact the data dir of a stopped server."""
    if not is_data_dir("snapshot", data_dir):
        return 1
    info = _on_stopped_server("snapshot", "POST /v1/snapshot", lambda: compact(data_dir))
    if info is None:
        return 1
    if as_json:
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


def repair(data_dir: Path, *, dry_run: bool, as_json: bool) -> int:
    """``geopresence repair``: repair a damaged data dir, keeping every intact record."""
    if not is_data_dir("repair", data_dir):  # else a mistyped path is "nothing to repair"
        return 1

    def say(line: str) -> None:
        if not as_json:
            print(f"  {line}", flush=True)

    if not as_json:
        dry = " (dry run: nothing is changed)" if dry_run else ""
        print(f"geopresence repair: {data_dir}{dry}", flush=True)
    try:
        report = repair_data_dir(data_dir, dry_run=dry_run, progress=say)
    except DataDirLocked as exc:
        print(f"geopresence repair: {exc}; stop it first", file=sys.stderr)
        return 1
    except DataDirCorrupt as exc:  # written by a newer version: nothing to repair here
        print(f"geopresence repair: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        cannot_use("repair", exc)
        return 1
    if as_json:
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
    if dry_run:
        print(f"dry run: run geopresence repair --data-dir {shlex.quote(str(data_dir))} to do it")
        return 0
    kept = f" (the originals are in {report['corrupt_dir']})" if report["files"] else ""
    lost = "see above" if report["lost"] else "nothing"
    print(f"repaired{kept}; lost: {lost}; the server starts on {data_dir} now")
    return 0


def history(data_dir: Path, user: str, since: float | None, *, as_json: bool) -> int:
    """``geopresence history``: a user's recorded locations, oldest first."""
    problem = id_problem(user, "user")
    if problem is not None:
        print(f"geopresence history: {problem}", file=sys.stderr)
        return 2
    directory = history_dir(data_dir)
    if not directory.is_dir():
        print(f"geopresence history: no location history in {data_dir}", file=sys.stderr)
        return 1
    count = 0
    try:
        for entry in read_history(directory, user, since):
            count += 1
            if as_json:
                print(orjson.dumps(attrs.asdict(entry)).decode())
            else:
                try:
                    when = datetime.datetime.fromtimestamp(entry.ts, datetime.UTC)
                    stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
                except (OverflowError, OSError, ValueError):
                    stamp = f"ts={entry.ts!r}"  # outside what a calendar date can show
                print(f"{stamp}  {entry.lat:11.6f}  {entry.lon:12.6f}")
    except OSError as exc:
        print(f"geopresence history: {exc}", file=sys.stderr)
        return 1
    if not as_json:
        print(f"{count} location(s) for {user}", file=sys.stderr)
    return 0


def forget(data_dir: Path, user: str, *, as_json: bool) -> int:
    """``geopresence forget``: delete everything a stopped server's data dir holds about
    ``user`` (``storage.offline.forget_offline``)."""
    problem = id_problem(user, "user")
    if problem is not None:
        print(f"geopresence forget: {problem}", file=sys.stderr)
        return 2
    if not is_data_dir("forget", data_dir):
        return 1

    def say(name: str, lines: int) -> None:
        if not as_json:
            print(f"  history {name}: {lines:,} line(s) removed", flush=True)

    report = _on_stopped_server(
        "forget", f"DELETE /v1/users/{user}", lambda: forget_offline(data_dir, user, progress=say)
    )
    if report is None:
        return 1
    if as_json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return 0
    for line in report["problems"]:
        print(f"repaired: {line}")
    history = report["history"]
    held = ""
    if report["snapshot"] is not None:
        settings = ", settings" if report["settings"] else ""
        held = (
            f"{report['friends']:,} friendship(s), {report['groups']:,} group membership(s), "
            f"{report['messages']:,} message(s){settings}; "
        )
    print(
        f"forgot {user}: {held}{history['lines']:,} history line(s) "
        f"({history['rewritten']} file(s) rewritten, {history['deleted']} deleted)"
    )
    if report["snapshot"] is not None:
        print(f"  wrote {report['snapshot']}; the older snapshots and journal segments are deleted")
    if report["corrupt_dir"] is not None:
        print(
            f"  note: {report['corrupt_dir']} (copies set aside by repair) is not scrubbed: "
            "delete it yourself once it is not needed"
        )
    return 0


def token(data_dir: Path, user: str, ttl: float, secret: str | None) -> int:
    """``geopresence token``: print a token for ``user`` valid ``ttl`` seconds, signed with
    the server's secret: ``secret``, else env ``GEOPRESENCE_SECRET``, else ``data_dir``'s.
    Exit 2, minting nothing, if that secret is unfit or there is none (a secret made up
    here would sign tokens no server accepts)."""
    env = os.environ.get("GEOPRESENCE_SECRET")
    for name, given in (("--secret", secret), ("GEOPRESENCE_SECRET", env)):
        if given is None or (not given and name != "--secret"):
            continue  # an empty --secret is a mistake, not "the data dir's" (as for serve)
        problem = secret_problem(given) if given else "must not be empty"
        if problem is not None:
            print(f"geopresence token: {name}: {problem}", file=sys.stderr)
            return 2
    if secret is None and not env and not (data_dir / SECRET_FILE).exists():
        print(
            f"geopresence token: no secret in {data_dir} (start the server once, or pass "
            "the server's --data-dir or --secret)",
            file=sys.stderr,
        )
        return 2
    try:
        print(mint_token(resolve_secret(secret, data_dir), user, ttl, time.time()))
    except (ValueError, OSError) as exc:
        print(f"geopresence token: {exc}", file=sys.stderr)
        return 2
    return 0
