"""The write floor at the load model's rate: what one non-blocking ``os.write`` of a ready
120-byte frame costs the writer when frames are paced, as the design's load paces them.

    python -m benchmarks.paced_writes [--connections 10000] [--rate 25000] [--duration 8]

The writer (this process, pinned to CPU 0) writes ``--rate`` frames a second in all, in
bursts of 40 (one move's fan-out), each to another of ``--connections`` loopback TCP
connections; a reader process (CPU 1) drains them with one epoll, sleeping in it between
frames as the load generator does. Printed: the writer's CPU per frame (user and system),
for a reader that sleeps in epoll and for one that polls. Compare with ``benchmarks.floor``
flat out, where the reader cannot keep up: its full buffers make each write far cheaper
than one the reader is woken for, so that figure is no floor at the design's load.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import resource
import select
import socket
import time
from collections.abc import Callable, Iterator

from benchmarks import procs

FRAME = b"\x81\x7e\x00\x78" + b"x" * 120
BURST = 40


def _reader(port: int, connections: int, poll: bool, seconds: float, ready: object) -> None:
    os.sched_setaffinity(0, {1})
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    epoll = select.epoll()
    for sock in sockets:
        sock.setblocking(False)
        epoll.register(sock.fileno(), select.EPOLLIN)
    ready.set()  # type: ignore[attr-defined]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        events = epoll.poll(0 if poll else 0.1)
        for fd, _ in events:
            with contextlib.suppress(BlockingIOError):
                os.read(fd, 65536)
        if poll and not events:
            time.sleep(0.001)


@contextlib.contextmanager
def reader_sockets(connections: int, poll: bool, seconds: float) -> Iterator[list[socket.socket]]:
    """``connections`` accepted loopback sockets (non-blocking) whose peers a reader process
    on CPU 1 drains for ``seconds`` (see ``_reader``); the reader is killed on exit."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    ready = multiprocessing.Event()
    reader = multiprocessing.Process(
        target=_reader, args=(listener.getsockname()[1], connections, poll, seconds, ready)
    )
    reader.start()
    try:
        accepted = [listener.accept()[0] for _ in range(connections)]
        for sock in accepted:
            sock.setblocking(False)
        ready.wait()
        time.sleep(0.5)
        yield accepted
    finally:
        reader.kill()
        reader.join()


def paced(rate: float, duration: float, burst: Callable[[int], None]) -> tuple[float, float, int]:
    """Call ``burst(written)`` for ``BURST`` frames at a time, ``rate`` frames a second in
    all, for ``duration`` seconds: this process' user and system CPU seconds, and the frames."""
    before, start, written = resource.getrusage(resource.RUSAGE_SELF), time.monotonic(), 0
    while time.monotonic() - start < duration:
        burst(written)
        written += BURST
        # One wake-up a burst, as the server's reader is woken once per move.
        time.sleep(max(0.0, start + written / rate - time.monotonic()))
    after = resource.getrusage(resource.RUSAGE_SELF)
    return after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, written


def measure(connections: int, rate: float, duration: float, poll: bool) -> tuple[float, float]:
    """The writer's (user, system) CPU per frame written, in µs."""
    with reader_sockets(connections, poll, duration + 5) as accepted:
        fds = [sock.fileno() for sock in accepted]

        def burst(written: int) -> None:
            for j in range(BURST):
                os.write(fds[(written + j * 97) % connections], FRAME)

        user, system, written = paced(rate, duration, burst)
    return user / written * 1e6, system / written * 1e6


def main() -> None:
    args = procs.paced_options(__doc__, 25_000, "frames")
    for poll in (False, True):
        user, system = measure(args.connections, args.rate, args.duration, poll)
        reader = "polls every ms" if poll else "sleeps in epoll"
        print(
            f"reader {reader:<16} {user + system:6.2f} µs of writer CPU per frame "
            f"({user:.2f} user, {system:.2f} system; {args.connections:,} connections, "
            f"{args.rate:,.0f} frames/s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
