"""Chat between two nodes, and what it costs a third node that takes no part.

Three nodes share a standalone Redis started here. ``--pairs`` senders on node 1 each send
1:1 messages to a friend on node 2, ``--rate`` messages a second in all, for
``--duration`` seconds; node 3 holds as many sessions of its own, which take no part.
Reported per node: CPU seconds over the run and RSS at its end; for the messages: how many
arrived and their latency (send to delivery, the generator's clock); and the generator's
own CPU (above 85 %, the figures are its limits, not the nodes'). With ``--before PATH``
(another checkout, e.g. a worktree of an older commit) the same run goes against that
code first, in the same command::

    python -m benchmarks.chat_bystander --pairs 100 --rate 200 --duration 20 --before /work/old
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import trio

from benchmarks import procs, redisprocs
from benchmarks.cluster import start_node
from benchmarks.report import percentile
from geopresence.client import AdminClient, Client, connect


async def _chat(nodes: list[procs.Started], pairs: int, rate: float, duration: float) -> str:
    urls = [f"ws://{n.ws_host}:{n.ws_port}/ws" for n in nodes]
    assert nodes[0].http_url is not None
    async with AdminClient(nodes[0].http_url) as admin:
        await admin.befriend_many([(f"s{i}", f"r{i}") for i in range(pairs)])
    await trio.sleep(1.0)
    latencies: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        senders = [
            await stack.enter_async_context(connect(urls[0], user=f"s{i}", heartbeat=True))
            for i in range(pairs)
        ]
        receivers = [
            await stack.enter_async_context(connect(urls[1], user=f"r{i}", heartbeat=True))
            for i in range(pairs)
        ]
        for i in range(pairs):
            await stack.enter_async_context(connect(urls[2], user=f"b{i}", heartbeat=True))
        await trio.sleep(2.0)
        before = [procs.proc_stats(n.pid).cpu_seconds for n in nodes]
        generator, started = procs.self_cpu(), time.perf_counter()
        async with trio.open_nursery() as nursery:
            for receiver in receivers:
                nursery.start_soon(_receive, receiver, latencies)
            async with trio.open_nursery() as sending:
                for i, sender in enumerate(senders):
                    sending.start_soon(_send, sender, f"r{i}", rate / pairs, duration)
            await trio.sleep(3.0)  # the last ones arrive
            nursery.cancel_scope.cancel()
        after = [procs.proc_stats(n.pid) for n in nodes]
        load = (procs.self_cpu() - generator) / (time.perf_counter() - started)
    sent = int(rate * duration)
    cpu = ", ".join(
        f"node {k + 1} {a.cpu_seconds - b:.1f} s CPU, {a.rss_bytes / 2**20:.0f} MiB"
        for k, (a, b) in enumerate(zip(after, before, strict=True))
    )
    p50, p99 = (percentile(latencies, p) * 1000 for p in (50, 99))
    return (
        f"{len(latencies):,} of ~{sent:,} delivered; latency p50 {p50:.0f} ms, p99 {p99:.0f} ms;"
        f" {cpu}; the generator's CPU {load:.0%}"
    )


async def _send(client: Client, to: str, rate: float, duration: float) -> None:
    end = time.time() + duration
    while (now := time.time()) < end:
        await client.send({"type": "send", "to": to, "text": repr(now)})
        await trio.sleep(1 / rate)


async def _receive(client: Client, latencies: list[float]) -> None:
    while True:
        frame = await client.recv()
        if frame.get("type") == "message":
            latencies.append(time.time() - float(frame["text"]))


@contextlib.contextmanager
def _nodes(src: Path | None, workdir: Path) -> Iterator[list[procs.Started]]:
    with redisprocs.redis("standalone", workdir) as redis:
        spec = procs.ServerSpec(in_memory=True, src=src)
        nodes = [start_node(spec, redis, k, workdir) for k in range(3)]
        try:
            yield nodes
        finally:
            for node in nodes:
                procs.stop(node)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chat_bystander")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0, help="messages/s in all")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--before", type=Path, help="another checkout, measured first")
    args = parser.parse_args(argv)
    runs = ([("before", args.before)] if args.before else []) + [("this", None)]
    for label, src in runs:
        with tempfile.TemporaryDirectory() as tmp, _nodes(src, Path(tmp)) as nodes:
            line = trio.run(_chat, nodes, args.pairs, args.rate, args.duration)
        print(f"{label}: {line}", flush=True)


if __name__ == "__main__":
    main()
