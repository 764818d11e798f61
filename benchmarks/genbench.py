"""Which client shape costs the load generator least per frame: raw sockets on one epoll
(``benchmarks.wsclient.Loop``, what the generator uses) or asyncio Protocols.

    python -m benchmarks.genbench [--connections 2000] [--rate 20000] [--duration 10]

Both read the same paced stream: ``benchmarks.floor --rate R`` (pinned to CPU 0) writes R
frames a second in all, one frame per write, spread over the connections, so that most
reads find one frame, as under the load model. Each client (pinned to CPU 1) counts frames
with the same prefix check; the figure is the client's CPU time per frame read.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from benchmarks import procs
from benchmarks.saturation import Drain

PREFIX = b'{"type":"friend_location"'
REQUEST = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class Counting(asyncio.Protocol):
    """One connection as an asyncio Protocol: handshake, then count text frames."""

    def __init__(self, counts: list[int]) -> None:
        self.counts = counts
        self.buffer = b""
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        if self.buffer:
            data, self.buffer = self.buffer + data, b""
        if not self.open:
            head, found, data = data.partition(b"\r\n\r\n")
            if not found:
                self.buffer = head
                return
            self.open = True
            self.counts[1] += 1
        offset, size = 0, len(data)
        while size - offset >= 2:
            length = data[offset + 1] & 0x7F
            header = 2
            if length == 126:
                if size - offset < 4:
                    break
                length = (data[offset + 2] << 8) | data[offset + 3]
                header = 4
            end = offset + header + length
            if end > size:
                break
            if data.startswith(PREFIX, offset + header):
                self.counts[0] += 1
            offset = end
        self.buffer = data[offset:]


async def asyncio_client(host: str, port: int, connections: int, duration: float) -> float:
    loop = asyncio.get_running_loop()
    counts = [0, 0]
    for _ in range(connections):
        await loop.create_connection(lambda: Counting(counts), host, port)
    while counts[1] < connections:
        await asyncio.sleep(0.05)
    await asyncio.sleep(2)
    frames, cpu = counts[0], procs.self_cpu()
    await asyncio.sleep(duration)
    return (procs.self_cpu() - cpu) / max(1, counts[0] - frames) * 1e6


def epoll_client(host: str, port: int, connections: int, duration: float) -> float:
    loop = Drain()
    for i in range(connections):
        loop.open(i, host, port)
    loop.run_until(time.monotonic() + 60, lambda _now: loop.opened >= connections)
    loop.run_until(time.monotonic() + 2)
    frames, cpu = loop.frames_in, procs.self_cpu()
    loop.run_until(time.monotonic() + duration)
    per_frame = (procs.self_cpu() - cpu) / max(1, loop.frames_in - frames) * 1e6
    loop.close_all()
    return per_frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=20_000, help="frames/s in all")
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    procs.raise_fd_limit()
    procs.pin(0, 1)
    for name in ("epoll (wsclient.Loop)", "asyncio Protocol"):
        started = procs.start_process(
            ["-m", "benchmarks.floor", "--connections", str(args.connections),
             "--rate", str(args.rate)], cpu=0,
        )  # fmt: skip
        try:
            if name.startswith("epoll"):
                us = epoll_client(started.ws_host, started.ws_port, args.connections,
                                  args.duration)  # fmt: skip
            else:
                us = asyncio.run(asyncio_client(started.ws_host, started.ws_port,
                                                args.connections, args.duration))  # fmt: skip
        finally:
            procs.stop(started)
        print(f"{name:<24} {us:6.2f} µs of client CPU per frame ({args.connections:,} "
              f"connections, {args.rate:,.0f} frames/s paced)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
