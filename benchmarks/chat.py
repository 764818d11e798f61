"""``load chat``: acknowledged 1:1 messages per second with ``--fsync always``.

``--senders`` (200) users ``s<i>``, each a friend of a receiver ``r<i>``; each sender keeps
``--in-flight`` (8) ``send`` messages outstanding, sending the next one as each ``sent`` ack
comes back (acks on one connection come in order, so the ack latency is the time since the
oldest outstanding send). The receivers count the ``message`` frames they read. The server
runs in its default durable configuration with ``--fsync always`` (an ack waits for the
journal's fsync; one fsync covers what arrived meanwhile) and ``--rate-limit 0`` (the default
30 messages/s per connection would cap 200 senders at 6,000/s); it is pinned to CPU 0, this
generator (another process) to CPU 1.
"""

from __future__ import annotations

import sys
import time
from collections import deque

import httpx
import orjson

from benchmarks import procs
from benchmarks.report import GENERATOR_BOUND, fmt, percentile
from benchmarks.runner import say
from benchmarks.wsclient import Conn, Loop, encode_client_frame

SENT = b'{"type":"sent"'
MESSAGE = b'{"type":"message"'
WELCOME = b'{"type":"welcome"'
ERROR = b'{"type":"error"'


class ChatGen(Loop):
    """Senders (indexes 0..n-1) and receivers (n..2n-1) on one loop."""

    def __init__(self, senders: int, in_flight: int) -> None:
        super().__init__()
        self.senders = senders
        self.in_flight = in_flight
        self.frames = [
            encode_client_frame(orjson.dumps({"type": "send", "to": f"r{i}",
                                              "text": f"lunch at noon? ({i})"}))
            for i in range(senders)
        ]  # fmt: skip
        self.outstanding: list[deque[float]] = [deque() for _ in range(senders)]
        self.welcomed = 0
        self.acks = 0
        self.received = 0
        self.errors = 0
        self.measuring = False
        self.latencies: list[float] = []

    def on_open(self, conn: Conn) -> None:
        i, n = conn.index, self.senders
        user = f"s{i}" if i < n else f"r{i - n}"
        self.send(conn, encode_client_frame(orjson.dumps({"type": "hello", "user": user,
                                                          "device": "d"})))  # fmt: skip

    def _send(self, conn: Conn, count: int) -> None:
        now = time.monotonic()
        self.outstanding[conn.index].extend([now] * count)
        self.send(conn, self.frames[conn.index] * count)

    def on_text(self, conn: Conn, data: bytes, start: int, end: int) -> None:
        if data.startswith(SENT, start):
            self.acks += 1
            sent_at = self.outstanding[conn.index].popleft()
            if self.measuring:
                self.latencies.append(time.monotonic() - sent_at)
            self._send(conn, 1)
        elif data.startswith(MESSAGE, start):
            self.received += 1
        elif data.startswith(WELCOME, start):
            self.welcomed += 1
        elif data.startswith(ERROR, start):
            self.errors += 1

    def start_sending(self, conns: list[Conn]) -> None:
        for conn in conns[: self.senders]:
            self._send(conn, self.in_flight)


def chat(senders: int, in_flight: int, duration: float, quiet: bool) -> None:
    """The ``chat`` command."""
    procs.raise_fd_limit()
    procs.pin(0, 1)
    spec = procs.ServerSpec(fsync="always", extra=("--rate-limit", "0"))
    print(f"chat: {senders} senders x {in_flight} in flight, 1:1 to {senders} receivers; "
          f"server --fsync always --rate-limit 0 (durable) on CPU 0", flush=True)  # fmt: skip
    with procs.server(spec, cpu=0) as server:
        assert server.http_url is not None
        pairs = [[f"s{i}", f"r{i}"] for i in range(senders)]
        httpx.post(f"{server.http_url}/v1/friendships", content=orjson.dumps({"pairs": pairs}),
                   timeout=60).raise_for_status()  # fmt: skip
        gen = ChatGen(senders, in_flight)
        conns = [gen.open(i, server.ws_host, server.ws_port) for i in range(2 * senders)]
        gen.run_until(time.monotonic() + 30, lambda _now: gen.welcomed >= 2 * senders)
        say(f"  {gen.welcomed} connected; warming up 3 s", quiet)
        gen.start_sending(conns)
        gen.run_until(time.monotonic() + 3)
        acks, received, errors = gen.acks, gen.received, gen.errors
        cpu, server_cpu = procs.self_cpu(), procs.proc_stats(server.pid).cpu_seconds
        gen.measuring = True
        start = time.monotonic()
        gen.run_until(start + duration)
        elapsed = time.monotonic() - start
        gen.measuring = False
        server_share = (procs.proc_stats(server.pid).cpu_seconds - server_cpu) / elapsed
        generator = (procs.self_cpu() - cpu) / elapsed
        gen.close_all()
    rate = (gen.acks - acks) / elapsed
    rows = [
        ("acked messages/s", f"{rate:,.0f}"),
        ("messages read by receivers/s", f"{(gen.received - received) / elapsed:,.0f}"),
        ("ack latency p50 / p99 (ms)",
         f"{fmt(percentile(gen.latencies, 50) * 1000, '.1f')} / "
         f"{fmt(percentile(gen.latencies, 99) * 1000, '.1f')}  ({len(gen.latencies):,} acks)"),
        ("server CPU", f"{server_share * 100:.0f} %"),
        ("server CPU per acked message", fmt(server_share / rate * 1e6 if rate else None, ",.1f")
         + " µs"),
        ("error replies", f"{gen.errors - errors:,}"),
        ("load generator CPU", f"{generator * 100:.0f} %"
         + ("  GENERATOR-BOUND: not a server figure" if generator > GENERATOR_BOUND else "")),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"  {name:<{width}}  {value}" for name, value in rows))
    sys.stdout.flush()
