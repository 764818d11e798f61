"""``load ceiling``: deliveries/s and CPU per frame at saturation, side by side in one run
with the same number of connections:

1. geopresence (default durable configuration) with every user sending a location every
   second (30x the load model): deliveries/s, server CPU per delivery;
2. the bare non-blocking write floor (``benchmarks.floor``): one ``os.write`` per ready
   frame from synchronous code: frames/s, CPU per frame;
3. the ``websockets`` library's asyncio server (``benchmarks.ws_ceiling``) pushing the same
   frames;
4. trio-websocket's ``send_message`` per frame (``benchmarks.ceiling``, the old ceiling).

Every server is pinned to CPU 0 and read by this process's lean client loop on CPU 1; CPU
per frame is the server's CPU time over the frames the clients read.
"""

from __future__ import annotations

import time

import attrs

from benchmarks import procs
from benchmarks.report import GENERATOR_BOUND, fmt
from benchmarks.runner import RunOptions, one_run, say
from benchmarks.wsclient import Conn, Loop, encode_client_frame

HELLO = encode_client_frame(b'{"type":"hello","user":"c","device":"d"}')


class Drain(Loop):
    """Clients that say hello and count what they read."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = 0

    def on_open(self, conn: Conn) -> None:
        self.opened += 1
        self.send(conn, HELLO)


@attrs.frozen
class Row:
    label: str
    frames_per_s: float
    server_cpu: float
    generator_cpu: float
    connected: int

    @property
    def us_per_frame(self) -> float:
        return self.server_cpu / self.frames_per_s * 1e6 if self.frames_per_s else float("nan")

    def line(self) -> str:
        bound = "  GENERATOR-BOUND" if self.generator_cpu > GENERATOR_BOUND else ""
        return (
            f"  {self.label:<46} {self.frames_per_s:>9,.0f} frames/s  server CPU "
            f"{self.server_cpu * 100:3.0f} %  {fmt(self.us_per_frame, '6.1f')} µs/frame  "
            f"({self.connected:,} connected, generator CPU {self.generator_cpu * 100:.0f} %)"
            f"{bound}"
        )


def drain(label: str, args: list[str], users: int, duration: float, quiet: bool) -> Row:
    """Start a pushing server, connect ``users`` clients, measure what they read."""
    started = procs.start_process(args, cpu=0)
    try:
        loop = Drain()
        t0 = time.monotonic()
        for i in range(users):
            loop.open(i, started.ws_host, started.ws_port)
            if i % 200 == 199:
                loop.run_until(time.monotonic() + 0.05)
        loop.run_until(t0 + 60, lambda _now: loop.opened + sum(loop.closed.values()) >= users)
        say(f"  {label}: {loop.opened:,} connected in {time.monotonic() - t0:.1f} s", quiet)
        loop.run_until(time.monotonic() + min(2.0, duration))  # settle, as long as measured
        frames, cpu = loop.frames_in, procs.self_cpu()
        server = procs.proc_stats(started.pid).cpu_seconds
        start = time.monotonic()
        loop.run_until(start + duration)
        elapsed = time.monotonic() - start
        row = Row(
            label,
            (loop.frames_in - frames) / elapsed,
            (procs.proc_stats(started.pid).cpu_seconds - server) / elapsed,
            (procs.self_cpu() - cpu) / elapsed,
            loop.opened,
        )
        loop.close_all()
        return row
    finally:
        procs.stop(started)


def ceiling(options: RunOptions) -> None:
    """The ``ceiling`` command."""
    procs.raise_fd_limit()
    procs.pin(0, 1)
    users, duration = options.model.users, options.duration
    model = attrs.evolve(options.model, location_interval=1.0)
    where = "in memory" if options.spec.in_memory else "durable"
    print(f"geopresence saturated ({where}): {users:,} users, a location every second each",
          flush=True)  # fmt: skip
    geo = one_run(
        attrs.evolve(options, model=model, warmup=min(options.warmup, 5.0), hold_moves=True)
    )
    print(geo.table(), flush=True)
    frame = ["--frame-bytes", "120"]
    count = ["--connections", str(users)]
    rows = [
        Row("geopresence deliveries (friend_location)", geo.deliveries_per_s,
            geo.server_cpu or 0.0, geo.generator_cpu, geo.connected),
        drain("bare write floor (os.write per frame, sync)",
              ["-m", "benchmarks.floor", *frame, *count], users, duration, options.quiet),
        drain("websockets asyncio server (send per frame)",
              ["-m", "benchmarks.ws_ceiling", *frame, *count], users, duration, options.quiet),
        drain("trio-websocket (send_message per frame)",
              ["-m", "benchmarks.ceiling", *frame], users, duration, options.quiet),
    ]  # fmt: skip
    print(f"at saturation, {users:,} connections, 120-byte frames, one run:")
    for row in rows:
        print(row.line())
    ours, floor, ws = rows[0], rows[1], rows[2]
    print(
        f"ratio: geopresence deliveries/s / websockets frames/s = "
        f"{fmt(ours.frames_per_s / ws.frames_per_s if ws.frames_per_s else None, '.2f')}x; "
        f"geopresence CPU per delivery / floor CPU per frame = "
        f"{fmt(ours.us_per_frame / floor.us_per_frame if floor.frames_per_s else None, '.1f')}x"
    )
