"""Processes of the benchmarks: start a server (this checkout's or another's), pin it to a
CPU, read its CPU time and RSS from /proc, stop it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import attrs
import httpx

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening ws=(?P<host>\S+):(?P<port>\d+)(?: http=\S+:(?P<http>\d+))?")


@attrs.define
class Started:
    """A process that printed ``listening ws=HOST:PORT [http=HOST:PORT]``."""

    proc: subprocess.Popen[str]
    ws_host: str
    ws_port: int
    http_url: str | None

    @property
    def pid(self) -> int:
        return self.proc.pid


@attrs.frozen
class ServerSpec:
    """How to start ``geopresence serve``: durable (a data dir, journal and snapshots: the
    default configuration) unless ``in_memory``; ``src``: another checkout whose
    ``geopresence`` package runs instead of this one's (first on PYTHONPATH)."""

    in_memory: bool = False
    fsync: str | None = None
    src: Path | None = None
    heartbeat_interval: float = 5.0
    extra: tuple[str, ...] = ()


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


def _drain(stream: IO[str]) -> None:
    for _line in stream:  # a full stdout pipe would block the server
        pass


def start_process(
    args: list[str],
    cpu: int | None = 0,
    stderr: IO[bytes] | None = None,
    src: Path | None = None,
) -> Started:
    """Start ``python ARGS`` (pinned to ``cpu`` unless None) and wait for its ``listening``
    line; its stderr goes to ``stderr`` (default: nowhere)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), str(ROOT)])
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if stderr is None else stderr,
        text=True,
        cwd=ROOT if src is None else src,
        env=env,
    )
    if cpu is not None:
        pin(proc.pid, cpu)
    assert proc.stdout is not None
    for line in proc.stdout:
        match = LISTENING.search(line)
        if match:
            threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
            http = f"http://{match['host']}:{match['http']}" if match["http"] else None
            return Started(proc, match["host"], int(match["port"]), http)
    proc.kill()
    raise RuntimeError(f"{args} did not print its listening line (exit {proc.wait()})")


def serve_args(spec: ServerSpec, data_dir: Path) -> list[str]:
    """The ``geopresence serve`` command line for ``spec``."""
    args = ["-m", "geopresence", "serve", "--insecure", "--port", "0", "--http-port", "0",
            "--data-dir", str(data_dir), "--log-level", "warning",
            "--heartbeat-interval", str(spec.heartbeat_interval),
            "--offline-after", str(spec.heartbeat_interval * 6)]  # fmt: skip
    if spec.in_memory:
        args.append("--in-memory")
    if spec.fsync:
        args += ["--fsync", spec.fsync]
    return args + list(spec.extra)


@contextlib.contextmanager
def server(spec: ServerSpec, cpu: int = 0) -> Iterator[Started]:
    """A fresh ``geopresence serve`` on free ports, its data dir and log in a temporary
    directory; the log's last lines are printed if it logged anything."""
    with tempfile.TemporaryDirectory(prefix="geopresence-bench-") as tmp:
        log_path = Path(tmp) / "server.log"
        with log_path.open("wb") as log:
            started = start_process(serve_args(spec, Path(tmp) / "data"), cpu, log, spec.src)
            try:
                yield started
            finally:
                stop(started)
        lines = log_path.read_text(errors="replace").splitlines()
        if lines:
            print(f"  server log ({len(lines)} lines), last ones:", file=sys.stderr)
            for line in lines[-5:]:
                print(f"    {line}", file=sys.stderr)


def stop(started: Started) -> None:
    if started.proc.poll() is None:
        started.proc.terminate()
        try:
            started.proc.wait(60)
        except subprocess.TimeoutExpired:
            started.proc.kill()
            started.proc.wait()


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
    """This process's CPU time so far (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def metrics(http: str | None, key: str | None = None) -> dict[str, float]:
    """The server's ``/metrics`` as {name with labels: value} (empty without an HTTP API)."""
    if http is None:
        return {}
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        text = httpx.get(f"{http}/metrics", headers=headers, timeout=30).text
    except httpx.HTTPError as exc:
        # A saturated server may not answer its HTTP API in time: the figures that come
        # from its metrics are then missing (n/a), the rest of the run stands.
        print(f"  (no metrics from {http}: {exc!r})", file=sys.stderr, flush=True)
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    return values


def paced_options(description: str | None, rate: float, unit: str) -> argparse.Namespace:
    """``--connections``, ``--rate`` (``unit`` a second in all) and ``--duration`` of a paced
    loopback benchmark (``paced_writes``, ``write_paths``, ``read_paths``), parsed; then this
    process may open as many files as allowed and runs on CPU 0 (the other process on 1)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=rate, help=f"{unit}/s in all")
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args()
    raise_fd_limit()
    os.sched_setaffinity(0, {0})
    return args


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard
