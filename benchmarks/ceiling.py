"""An old ceiling row: a bare trio-websocket server that pushes frames as fast as it can.

    python -m benchmarks.ceiling [--port 0] [--frame-bytes 120]

Every accepted connection gets the same text frame (the size of a ``friend_location``)
sent back to back by its own task with trio-websocket's ``send_message``, the shape of the
server before issue 16 (a writer task per connection). ``python -m benchmarks.load ceiling``
keeps it as an extra row beside the write floor and the ``websockets`` server
(``benchmarks.saturation``). Prints ``listening ws=HOST:PORT`` once ready.
"""

from __future__ import annotations

import argparse

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, WebSocketServer, serve_websocket


def frame_of(size: int) -> str:
    """A JSON text frame of about ``size`` characters shaped like a ``friend_location``."""
    base = (
        '{"type":"friend_location","user":"u1","lat":37.5665,"lon":126.978,"ts":0,"distance_m":12.5'
    )
    pad = max(0, size - len(base) - len(',"pad":""}'))
    return base + ',"pad":"' + "x" * pad + '"}'


async def main(host: str, port: int, frame_bytes: int) -> None:
    frame = frame_of(frame_bytes)

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.send_message(frame)
        except ConnectionClosed:
            return

    async with trio.open_nursery() as nursery:
        server: WebSocketServer = await nursery.start(serve_websocket, handler, host, port, None)
        print(f"listening ws={host}:{server.port}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--frame-bytes", type=int, default=120)
    args = parser.parse_args()
    trio.run(main, args.host, args.port, args.frame_bytes)
