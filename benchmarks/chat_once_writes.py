"""Chat messages with a ``client_msg_id`` written to Redis by one node, per second.

Each such message is decided once across nodes by a script (``geopresence/cluster/
chat_writes.py``), then published on both parties' inbox channels. This appends
``--messages`` of them to a node's ``RedisJournal`` at once and times until Redis has them
all (one standalone redis-server, started here)::

    python -m benchmarks.chat_once_writes --messages 2000
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import coredis
import trio

from benchmarks.redisprocs import redis
from geopresence.cluster.redis_broker import RedisBroker
from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.redis_state import RedisJournal
from geopresence.cluster.redis_subscriber import RedisAddress
from geopresence.core.chat_message_wire import ChatEvent, channels_of
from geopresence.model.chat_message import ChatMessage


async def _run(port: int, count: int) -> float:
    async with coredis.Redis(host="127.0.0.1", port=port) as client:
        keys = Keys(f"bench{random.getrandbits(20)}")
        journal = RedisJournal(client, keys, 1)
        address = RedisAddress("127.0.0.1", port)
        broker = RedisBroker(lambda conn, event: None, client, node_id=1, address=address)
        journal.chat.publications = lambda message: broker.publications(
            channels_of(message), ChatEvent(message)
        )
        messages = [
            ChatMessage(1000 + i, f"u{i % 200}", "hi", 1.0, to=f"v{i % 200}", client_msg_id=f"c{i}")
            for i in range(count)
        ]
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            start = time.perf_counter()
            for message in messages:
                journal.append(message)
            await journal.flush()
            elapsed = time.perf_counter() - start
            nursery.cancel_scope.cancel()
    return elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chat_once_writes")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir, redis("standalone", Path(workdir)) as server:
        for _ in range(args.runs):
            elapsed = trio.run(_run, server.ports[0], args.messages)
            print(
                f"{args.messages:,} messages with a client_msg_id durable in {elapsed:.2f} s: "
                f"{args.messages / elapsed:,.0f}/s"
            )


if __name__ == "__main__":
    main()
