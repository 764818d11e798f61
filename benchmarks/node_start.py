"""How long a node of several takes to load the shared state as it starts (issue 17).

A starting node used to read parts of the whole population from Redis (``load_state``):
statuses, settings, groups, chat messages; now it reads none (a node reads what its
sessions and requests need, as they need it). This seeds a Redis (standalone or a 3-master
Cluster) with ``--users`` users, each with a presence hash, one group per 100 users and
``--messages`` 1:1 messages, then times ``load_state`` into a fresh hub.

    python -m benchmarks.node_start --users 100000 --messages 100000 --redis standalone,cluster
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import coredis
import orjson
import trio
from coredis.connection import TCPLocation

from benchmarks.redisprocs import redis
from geopresence.cluster.redis_feed import RedisFeed
from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.redis_load import load_state
from geopresence.cluster.state_writes import write_batch
from geopresence.core.hub import Hub, HubSettings
from geopresence.core.replication import FeedOp
from geopresence.core.store import MemoryStore
from geopresence.model.chat_message import ChatMessage
from geopresence.wire.outgoing import Outgoing

PIPELINE = 2000
"""Commands per pipeline while seeding."""


class _NoSink:
    """The hub's ``Sink``: a node that is loading serves no connection yet."""

    def send(self, conn: int, message: Outgoing) -> None:
        """Nothing to send to: no connection is open."""

    def close(self, conn: int, code: int, reason: str) -> None:
        """Nothing to close: no connection is open."""


async def _seed(client: Any, keys: Keys, users: int, messages: int) -> None:
    names = [f"u{i}" for i in range(users)]
    for start in range(0, users, PIPELINE):
        async with client.pipeline(transaction=False) as pipe:
            for i, user in enumerate(names[start : start + PIPELINE], start):
                pipe.hset(
                    keys.of("presence", user),
                    {"status": "online" if i % 2 else "offline", "last_active_at": "1.0", "v": "3"},
                )
                pipe.sadd(keys.presence_users, [user])
    ops: list[FeedOp] = []
    for g in range(users // 100):
        members = {names[(g * 100 + k) % users]: 0 for k in range(100)}
        async with client.pipeline(transaction=False) as pipe:
            pipe.hset(keys.of("group", f"g{g}"), members)
            pipe.sadd(keys.groups, [f"g{g}"])
    ops += [
        ChatMessage(1000 + m, names[m % users], "hi", 1.0, to=names[(m + 1) % users])
        for m in range(messages)
    ]
    feed = RedisFeed(client, keys, node_id=1)  # nothing goes on it
    for start in range(0, len(ops), PIPELINE):
        batch: list[tuple[int, FeedOp, bool, int | None]] = [
            (0, op, False, None) for op in ops[start : start + PIPELINE]
        ]
        await write_batch(client, keys, batch, feed)


async def _measure(kind: str, users: int, messages: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, redis(kind, Path(tmp)) as server:
        if kind == "standalone":
            client: Any = coredis.Redis(host="127.0.0.1", port=server.ports[0])
        else:
            client = coredis.RedisCluster(
                startup_nodes=[TCPLocation("127.0.0.1", p) for p in server.ports]
            )
        coredis.Config.optimized = True
        async with client:
            keys = Keys("gp")
            started = time.perf_counter()
            await _seed(client, keys, users, messages)
            print(f"  {kind}: seeded in {time.perf_counter() - started:.1f} s", flush=True)
            hub = Hub(HubSettings(node_id=2), MemoryStore(), _NoSink())
            started = time.perf_counter()
            counts = await load_state(client, keys, hub)
            took = time.perf_counter() - started
        print(
            f"  {kind}: load_state {took:.2f} s for {users:,} users, {messages:,} messages "
            f"({orjson.dumps(counts).decode()})",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--redis", default="standalone,cluster")
    args = parser.parse_args(argv)
    for kind in args.redis.split(","):
        trio.run(_measure, kind, args.users, args.messages)


if __name__ == "__main__":
    main()
