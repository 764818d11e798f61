"""Throwaway Redis servers for tests: Debian's redis-server on free loopback ports (below
55535, so a cluster bus port +10000 fits), stopped afterwards (``benchmarks.redisprocs``
starts them). Tests skip when it is absent (``.ci/run`` installs it)."""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path

import coredis
import pytest

from benchmarks.redisprocs import Redis, free_port, redis

__all__ = ["AnyRedis", "free_port", "redis_client", "redis_cluster", "redis_server"]

AnyRedis = coredis.Redis[bytes] | coredis.RedisCluster[bytes]
"""A client of either kind: the code under test must not care which."""


@contextmanager
def _redis(kind: str, masters: int = 3) -> Iterator[Redis]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server/redis-cli are not installed (.ci/run installs them)")
    with (
        tempfile.TemporaryDirectory(prefix=f"geopresence-{kind}-") as workdir,
        redis(kind, Path(workdir), masters) as running,
    ):
        yield running


@contextmanager
def redis_server() -> Iterator[int]:
    """A standalone redis-server; yields its port."""
    with _redis("standalone") as running:
        yield running.ports[0]


_IDLE_CLUSTERS: list[tuple[ExitStack, Redis]] = []
"""3-master Clusters a test finished with, emptied, for the next (per test process): making
one takes seconds (``redis-cli --cluster create`` waits for the nodes to join)."""


@contextmanager
def redis_cluster(masters: int = 3) -> Iterator[list[int]]:
    """A Redis Cluster of ``masters`` masters (no replicas) made with
    ``redis-cli --cluster create``, or an earlier test's, emptied; yields their ports. One
    whose test failed, or that is not whole and empty afterwards, is not reused."""
    reusable = masters == 3
    while reusable and _IDLE_CLUSTERS:
        stack, running = _IDLE_CLUSTERS.pop()
        if _emptied(running):
            break
        stack.close()
    else:
        stack = ExitStack()
        running = stack.enter_context(_redis("cluster", masters))
    try:
        yield running.ports
    except BaseException:
        stack.close()
        raise
    if reusable and _emptied(running):
        _IDLE_CLUSTERS.append((stack, running))
    else:
        stack.close()


def _emptied(running: Redis) -> bool:
    """Empty every master of ``running``; False if one is gone, the Cluster is not ok, or
    something (a node of the test still dying) wrote to it again right after."""

    def ask(port: int, *command: str) -> str:
        args = [shutil.which("redis-cli") or "redis-cli", "-p", str(port), *command]
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        for port in running.ports:
            if ask(port, "FLUSHALL") != "OK" or "cluster_state:ok" not in ask(
                port, "CLUSTER", "INFO"
            ):
                return False
        time.sleep(0.1)
        return all(ask(port, "DBSIZE") == "0" for port in running.ports)
    except subprocess.TimeoutExpired:
        return False


@atexit.register
def _stop_idle_clusters() -> None:
    while _IDLE_CLUSTERS:
        _IDLE_CLUSTERS.pop()[0].close()


@asynccontextmanager
async def redis_client(kind: str) -> AsyncIterator[AnyRedis]:
    """A client of a throwaway ``standalone`` redis-server or 3-master ``cluster``."""
    if kind == "cluster":
        with redis_cluster() as ports:
            async with coredis.RedisCluster(host="127.0.0.1", port=ports[0]) as cluster:
                yield cluster
    else:
        with redis_server() as port:
            async with coredis.Redis(host="127.0.0.1", port=port) as client:
                yield client
