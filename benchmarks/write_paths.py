"""What the server's write-out path adds to the write system call, at the load model's pace.

    python -m benchmarks.write_paths [--connections 10000] [--rate 25000] [--duration 8]

This process (CPU 0) writes ``--rate`` 120-byte frames a second in all, in bursts of 40 (one
move's fan-out), each to another of ``--connections`` loopback TCP connections; a reader
process (CPU 1) drains them with one epoll, sleeping in it as the load generator does. Two
ways, one after the other, on the same connections:

- ``os.write``: one non-blocking write of a ready frame (the floor, as
  ``benchmarks.paced_writes``);
- ``Connections``: the server's own path for a delivery, from the hub's ``Sink.send`` of a
  latest-wins ``Outgoing`` (a friend's move) inside a write batch, to the batch's end that
  writes each connection out (``geopresence.shell.connections``, ``.transport``).

Printed: the writer's CPU per frame for each, and their difference: the Python a delivery
costs between the fan-out and the socket. Only same-run figures compare.
"""

from __future__ import annotations

import gc
import os
import socket

import trio
from websockets.protocol import State

from benchmarks import procs
from benchmarks.paced_writes import BURST, paced, reader_sockets
from geopresence.config import Config
from geopresence.shell.connections import Connections
from geopresence.shell.metrics import Metrics
from geopresence.shell.timers import GC_THRESHOLDS
from geopresence.shell.transport import QUIET, Connection, GatedProtocol, text_frame
from geopresence.wire.outgoing import Outgoing

TEXT = (
    '{"type":"friend_location","user":"u123456","lat":37.51234,"lon":127.01234,'
    '"ts":1.7e9,"distance_m":1234.5}'
)


async def _measure(accepted: list[socket.socket], rate: float, duration: float) -> list[float]:
    n = len(accepted)
    frame = text_frame(TEXT.encode())
    fds = [sock.fileno() for sock in accepted]

    def bare(written: int) -> None:
        for j in range(BURST):
            os.write(fds[(written + j * 97) % n], frame)

    connections = Connections(Config(), Metrics())
    conns = []
    async with trio.open_nursery() as nursery:
        for sock in accepted:
            protocol = GatedProtocol(logger=QUIET)
            protocol.state = State.OPEN  # the handshake is not what is measured
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
            conns.append(connections.open(Connection(stream, protocol, nursery)).conn)

        # The collector as a serving process sets it (``shell.timers.gc_loop``): with
        # CPython's defaults, collections of the objects a delivery allocates would be
        # most of what is measured.
        gc.set_threshold(*GC_THRESHOLDS)
        gc.freeze()

        def shell(written: int) -> None:
            with connections.batch():
                for j in range(BURST):
                    # As the fan-out makes it: one text per recipient, a latest-wins slot.
                    key = ("nearby", f"u{written + j}")
                    connections.send(conns[(written + j * 97) % n], Outgoing(TEXT, key))

        figures = []
        for burst in (bare, shell):
            user, system, written = paced(rate, duration, burst)
            figures.append((user + system) / written * 1e6)
        nursery.cancel_scope.cancel()
    return figures


def measure(connections: int, rate: float, duration: float) -> list[float]:
    """The writer's CPU per frame written (µs): by ``os.write`` alone, then through
    ``Connections``."""
    with reader_sockets(connections, False, 2 * duration + 10) as accepted:
        return trio.run(_measure, accepted, rate, duration)


def main() -> None:
    args = procs.paced_options(__doc__, 25_000, "frames")
    floor, shell = measure(args.connections, args.rate, args.duration)
    print(f"{'os.write (floor)':<20} {floor:6.2f} µs of writer CPU per frame")
    print(f"{'Connections':<20} {shell:6.2f} µs of writer CPU per frame")
    print(
        f"{'the shell adds':<20} {shell - floor:6.2f} µs per frame "
        f"({args.connections:,} connections, {args.rate:,.0f} frames/s)",
        flush=True,
    )


if __name__ == "__main__":
    main()
