"""Throwaway Redis servers for tests: Debian's redis-server on free loopback ports (below
55535, so a cluster bus port +10000 fits), stopped afterwards (``benchmarks.redisprocs``
starts them). Tests skip when it is absent (``.ci/run`` installs it)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
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


@contextmanager
def redis_cluster(masters: int = 3) -> Iterator[list[int]]:
    """A Redis Cluster of ``masters`` masters (no replicas) made with
    ``redis-cli --cluster create``; yields their ports."""
    with _redis("cluster", masters) as running:
        yield running.ports


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
