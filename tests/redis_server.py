"""Throwaway Redis servers for tests: Debian's redis-server on a free loopback port (below
55535, so a cluster bus port +10000 fits), stopped afterwards. Tests skip when it is absent
(``.ci/run`` installs it)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def free_port() -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port < 55535:
            return port
    raise RuntimeError("no free port below 55535")


@contextmanager
def redis_server() -> Iterator[int]:
    """A standalone redis-server; yields its port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="geopresence-redis-") as workdir:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            proc.wait(10)


@contextmanager
def redis_cluster(masters: int = 3) -> Iterator[list[int]]:
    """A Redis Cluster of ``masters`` masters (no replicas) made with
    ``redis-cli --cluster create``; yields their ports."""
    binary = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if binary is None or cli is None:
        pytest.skip("redis-server/redis-cli are not installed (.ci/run installs them)")
    ports = [free_port() for _ in range(masters)]
    with tempfile.TemporaryDirectory(prefix="geopresence-cluster-") as workdir:
        procs = []
        try:
            for port in ports:
                procs.append(
                    subprocess.Popen(
                        [
                            binary,
                            "--port",
                            str(port),
                            "--bind",
                            "127.0.0.1",
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            f"{workdir}/nodes-{port}.conf",
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--dir",
                            workdir,
                        ],
                        stdout=subprocess.DEVNULL,
                    )
                )
            for port in ports:
                _wait_for_port(port)
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
                    raise RuntimeError(f"cluster did not become ok: {info}")
                time.sleep(0.1)
            yield ports
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)


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
