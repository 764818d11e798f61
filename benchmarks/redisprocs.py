"""Throwaway Redis for the benchmarks: Debian's ``redis-server``, standalone or a Redis
Cluster of 3 masters (``redis-cli --cluster create``), on free loopback ports below 55535 (so
a cluster bus port, +10000, fits), without persistence, stopped afterwards. The approach of
``tests/redis_server.py`` (which uses this), without pytest; plus ``INFO``, to count the
commands Redis processed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import coredis


class RedisMissing(RuntimeError):
    """redis-server (or, for a cluster, redis-cli) is not installed."""


@attrs.frozen
class Redis:
    """A running standalone Redis or Redis Cluster."""

    kind: str
    """``standalone`` or ``cluster``."""
    ports: list[int]
    """Every master's port (one for standalone)."""
    pids: list[int]

    def serve_args(self) -> list[str]:
        """The ``geopresence serve`` arguments that make a node use it."""
        if self.kind == "standalone":
            return ["--redis", f"redis://127.0.0.1:{self.ports[0]}/0"]
        return ["--redis-cluster", ",".join(f"127.0.0.1:{p}" for p in self.ports)]

    @property
    def label(self) -> str:
        if self.kind == "standalone":
            return "standalone Redis"
        return f"Redis Cluster ({len(self.ports)} masters)"


def free_port() -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port < 55535:
            return port
    raise RuntimeError("no free port below 55535")


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def redis(kind: str, workdir: Path, masters: int = 3) -> Iterator[Redis]:
    """A standalone Redis (``kind="standalone"``) or a Redis Cluster of ``masters`` masters
    without replicas (``kind="cluster"``), its files in ``workdir``."""
    binary = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if binary is None or (kind == "cluster" and cli is None):
        raise RedisMissing("redis-server/redis-cli are not installed (Debian: redis-server)")
    count = 1 if kind == "standalone" else masters
    ports = [free_port() for _ in range(count)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", str(workdir)]  # fmt: skip
            if kind == "cluster":
                args += ["--cluster-enabled", "yes",
                         "--cluster-config-file", f"{workdir}/nodes-{port}.conf"]  # fmt: skip
            # Its log in the workdir: a server that does not start says why (below).
            log = open(workdir / f"redis-{port}.log", "wb")  # noqa: SIM115 (the child's)
            procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        for port, proc in zip(ports, procs, strict=True):
            try:
                _wait_for_port(port)
            except OSError:
                said = (workdir / f"redis-{port}.log").read_text(errors="replace").strip()
                last = said.splitlines()[-3:] if said else ["(no output)"]
                state = "exited" if proc.poll() is not None else "did not listen within 10 s"
                raise RuntimeError(
                    f"redis-server on port {port} {state}; it said:\n  " + "\n  ".join(last)
                ) from None
        if kind == "cluster":
            assert cli is not None
            subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            deadline = time.monotonic() + 20
            while True:
                info = subprocess.run(
                    [cli, "-p", str(ports[0]), "cluster", "info"], capture_output=True, text=True
                ).stdout
                if "cluster_state:ok" in info:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Redis Cluster did not become ok: {info}")
                time.sleep(0.1)
        yield Redis(kind, ports, [proc.pid for proc in procs])
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


async def info(port: int, section: str) -> dict[str, Any]:
    """``INFO section`` of the Redis on ``port`` (loopback), as coredis parses it."""
    client = coredis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    async with client:
        values: dict[str, Any] = dict(await client.info(section))
    return values


async def command_calls(port: int) -> dict[str, int]:
    """Calls of each command so far (``INFO commandstats``), by command name."""
    return {
        name.removeprefix("cmdstat_"): int(fields["calls"])
        for name, fields in (await info(port, "commandstats")).items()
    }
