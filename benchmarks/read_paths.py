"""The cost of reading at the load model's pace: what the server's CPU pays per message read,
by the way its trio code waits for sockets to become readable.

    python -m benchmarks.read_paths [--connections 10000] [--rate 4400] [--duration 8]

A writer process (CPU 1) sends ``--rate`` 24-byte messages a second in all, each to a
random one of ``--connections`` loopback TCP connections (19,000 users at the design's load
send ~4,400 a second: a heartbeat every 5 s, a location every 30 s). This process (CPU 0)
reads them under trio, three ways, one after the other:

- ``receive_some``: a task per connection awaiting ``trio.SocketStream.receive_some``;
- ``wait_readable``: a task per connection, ``trio.lowlevel.wait_readable`` then one
  ``os.read``;
- ``one epoll``: one task waits for a private level-triggered epoll set of every socket and
  reads each readable one (``geopresence.shell.read_poller``).

Printed: the reader's CPU per message (user and system) for each.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import resource
import select
import socket
import time
from collections.abc import Awaitable, Callable

import trio

from benchmarks import procs

MESSAGE = b"\x81\x96" + b"x" * 22
WAYS = ("receive_some", "wait_readable", "one epoll")


def _writer(port: int, connections: int, rate: float, seconds: float, ready: object) -> None:
    os.sched_setaffinity(0, {1})
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    ready.set()  # type: ignore[attr-defined]
    start, sent = time.monotonic(), 0
    while (elapsed := time.monotonic() - start) < seconds:
        while sent < elapsed * rate:
            random.choice(sockets).send(MESSAGE)
            sent += 1
        time.sleep(0.001)


async def _per_task(sockets: list[trio.socket.SocketType], count: list[int], raw: bool) -> None:
    async def read_stream(stream: trio.SocketStream) -> None:
        while await stream.receive_some(65536):
            count[0] += 1

    async def read_raw(sock: trio.socket.SocketType) -> None:
        fd = sock.fileno()
        while True:
            await trio.lowlevel.wait_readable(sock)
            if not os.read(fd, 65536):
                return
            count[0] += 1

    async with trio.open_nursery() as nursery:
        for sock in sockets:
            if raw:
                nursery.start_soon(read_raw, sock)
            else:
                nursery.start_soon(read_stream, trio.SocketStream(sock))


async def _one_epoll(sockets: list[trio.socket.SocketType], count: list[int]) -> None:
    epoll = select.epoll()
    for sock in sockets:
        epoll.register(sock.fileno(), select.EPOLLIN)
    while True:
        await trio.lowlevel.wait_readable(epoll.fileno())
        for fd, _ in epoll.poll(0, 256):
            if os.read(fd, 65536):
                count[0] += 1


async def measure(way: str, connections: int, rate: float, duration: float) -> tuple[float, float]:
    """The reader's (user, system) CPU per message read, in µs."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    ready = multiprocessing.Event()
    writer = multiprocessing.Process(
        target=_writer,
        args=(listener.getsockname()[1], connections, rate, duration + 3, ready),
    )
    writer.start()
    sockets: list[trio.socket.SocketType] = []
    try:
        while len(sockets) < connections:
            sockets.append((await listener.accept())[0])
        while not ready.is_set():
            await trio.sleep(0.01)
        count = [0]
        reading: Callable[[], Awaitable[None]]
        if way == "one epoll":
            reading = lambda: _one_epoll(sockets, count)  # noqa: E731
        else:
            reading = lambda: _per_task(sockets, count, raw=way == "wait_readable")  # noqa: E731
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reading)
            await trio.sleep(1.0)
            before, read = resource.getrusage(resource.RUSAGE_SELF), count[0]
            await trio.sleep(duration)
            after, read = resource.getrusage(resource.RUSAGE_SELF), count[0] - read
            nursery.cancel_scope.cancel()
    finally:
        writer.kill()
        writer.join()
        for sock in sockets:
            sock.close()
        listener.close()
    user = (after.ru_utime - before.ru_utime) / max(read, 1) * 1e6
    system = (after.ru_stime - before.ru_stime) / max(read, 1) * 1e6
    return user, system


def main() -> None:
    args = procs.paced_options(__doc__, 4_400, "messages")
    for way in WAYS:
        user, system = trio.run(measure, way, args.connections, args.rate, args.duration)
        print(
            f"{way:<14} {user + system:6.2f} µs of reader CPU per message "
            f"({user:.2f} user, {system:.2f} system; {args.connections:,} connections, "
            f"{args.rate:,.0f} messages/s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
