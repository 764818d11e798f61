"""CPU per pub/sub message received, side by side: coredis' PubSub, geopresence's
``Subscriber``, and a bare trio socket (the floor).

A node of several receives about one channel message per delivery it makes, so this is
the cost that sets a node's CPU once friends are spread over nodes (benchmarks/RESULTS.md).
One standalone redis-server; each receiver in its own process pinned to CPU 0 subscribes
to ``--channels`` channels; this process, pinned to CPU 1, publishes geopresence envelopes
round-robin over them at each ``--rates`` (messages a second). The receivers decode every
envelope (the bare socket only counts them)::

    python -m benchmarks.pubsub_receive --rates 100,1000,8000 --duration 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

RECEIVERS = ("coredis", "geopresence", "socket")


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


# ---------------------------------------------------------------------- the receivers


async def _receive(
    kind: str, port: int, channels: list[str], warmup: float, duration: float
) -> None:
    import coredis

    from geopresence.cluster.channel_events import decode_envelope
    from geopresence.cluster.pubsub_connection import pack
    from geopresence.cluster.redis_subscriber import RedisAddress, Subscriber

    count = 0

    async def coredis_loop() -> None:
        nonlocal count
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            pubsub = client.pubsub()
            async with pubsub:
                await pubsub.subscribe(*channels)
                print("ready", flush=True)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                    if message is not None and message["type"] == "message":
                        decode_envelope(bytes(message["data"]))  # type: ignore[arg-type]
                        count += 1

    async def subscriber_loop() -> None:
        def on_messages(payloads: list[bytes]) -> None:
            nonlocal count
            for data in payloads:
                decode_envelope(data)
            count += len(payloads)

        subscriber = Subscriber(on_messages, address=RedisAddress("127.0.0.1", port))
        async with trio.open_nursery() as nursery:
            await nursery.start(subscriber.run)
            await subscriber.subscribe(channels)
            await subscriber.sync()
            print("ready", flush=True)

    async def socket_loop() -> None:
        nonlocal count
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(pack("SUBSCRIBE", *channels))
        print("ready", flush=True)
        while True:
            data = await stream.receive_some(65536)
            count += data.count(b"$7\r\nmessage\r\n")

    loops = {"coredis": coredis_loop, "geopresence": subscriber_loop, "socket": socket_loop}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(loops[kind])
        await trio.sleep(warmup)
        c0, t0 = count, time.process_time()
        await trio.sleep(duration)
        c1, t1 = count, time.process_time()
        print(json.dumps({"messages": c1 - c0, "cpu_s": t1 - t0}), flush=True)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------- the publisher


async def _publish(port: int, channels: list[str], rate: float, seconds: float) -> float:
    """Publish at ``rate`` for ``seconds``; returns this process' CPU share."""
    import coredis

    from geopresence.cluster.channel_events import Envelope, encode_envelope
    from geopresence.core.locations import Location
    from geopresence.core.nearby import LocationEvent

    payloads = [
        encode_envelope(
            Envelope(2, i, (f"user:u{i}",), LocationEvent(f"u{i}", Location(1.0, 2.0, 3.0), 4.0))
        )
        for i in range(len(channels))
    ]
    t0 = time.process_time()
    async with coredis.Redis(host="127.0.0.1", port=port) as client:
        start, sent, tick = trio.current_time(), 0, 0.01
        while (now := trio.current_time()) - start < seconds:
            due = int((now - start) * rate) + 1
            if due > sent:
                async with client.pipeline(transaction=False) as pipe:
                    for i in range(sent, due):
                        pipe.publish(channels[i % len(channels)], payloads[i % len(payloads)])
                sent = due
            await trio.sleep(tick)
    return (time.process_time() - t0) / seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pubsub_receive")
    parser.add_argument("--rates", default="100,1000,8000", help="messages a second")
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--receivers", default=",".join(RECEIVERS))
    parser.add_argument("--out", type=Path, help="also write the points as JSON here")
    parser.add_argument("--receive", nargs=2, help=argparse.SUPPRESS)  # KIND PORT (internal)
    args = parser.parse_args(argv)
    channels = [f"gp:user:{{u{i}}}" for i in range(args.channels)]
    if args.receive:
        _pin(0)
        kind, port = args.receive
        trio.run(_receive, kind, int(port), channels, args.warmup, args.duration)
        return

    from benchmarks.redisprocs import redis

    _pin(1)
    rates = [float(r) for r in args.rates.split(",")]
    receivers = args.receivers.split(",")
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; receiver on CPU 0, "
        f"publisher on CPU 1; {args.channels} channels; {args.duration:g} s per point"
    )
    head = ("rate/s", "receiver", "messages", "CPU/message", "CPU", "publisher CPU")
    print("{:>8} {:<12} {:>9} {:>12} {:>6} {:>14}".format(*head))
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as workdir, redis("standalone", Path(workdir)) as server:
        port = server.ports[0]
        for rate in rates:
            for kind in receivers:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.pubsub_receive", "--receive", kind,
                     str(port), "--channels", str(args.channels), "--duration",
                     str(args.duration), "--warmup", str(args.warmup)],
                    stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                assert proc.stdout is not None
                assert proc.stdout.readline().strip() == "ready"
                publisher = trio.run(
                    _publish, port, channels, rate, args.warmup + args.duration + 1
                )
                line = proc.stdout.readline()
                proc.wait(timeout=30)
                got = json.loads(line)
                per = got["cpu_s"] / max(1, got["messages"]) * 1e6
                share = got["cpu_s"] / args.duration
                results.append({"rate": rate, "receiver": kind, **got, "us_per_message": per})
                print(f"{rate:>8,.0f} {kind:<12} {got['messages']:>9,} {per:>9.1f} µs "
                      f"{share:>5.1%} {publisher:>13.1%}", flush=True)  # fmt: skip

    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
