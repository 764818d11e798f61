"""The transport ceiling: a bare trio-websocket server that pushes frames as fast as it can.

    python -m benchmarks.ceiling [--port 0] [--frame-bytes 120] [--batch 1]

Every accepted connection gets the same text frame (the size of a ``friend_location``)
sent back to back by its own task, the way geopresence's per-connection writer sends; what
clients read per second is the most any server on trio-websocket can push on this machine.
``--batch N`` writes N frames per ``send_all`` (geopresence's writer does that with whatever
is queued, ``geopresence.shell.transport``); 1 is trio-websocket's own ``send_message``.
geopresence's deliveries/s at saturation are reported as a ratio to it (``benchmarks.load``).
Prints ``listening ws=HOST:PORT`` once ready.
"""

from __future__ import annotations

import argparse

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, WebSocketServer, serve_websocket

from geopresence.shell.transport import send_texts


def frame_of(size: int) -> str:
    """A JSON text frame of about ``size`` characters shaped like a ``friend_location``."""
    base = (
        '{"type":"friend_location","user":"u1","lat":37.5665,"lon":126.978,"ts":0,"distance_m":12.5'
    )
    pad = max(0, size - len(base) - len(',"pad":""}'))
    return base + ',"pad":"' + "x" * pad + '"}'


async def main(host: str, port: int, frame_bytes: int, batch: int) -> None:
    frame = frame_of(frame_bytes)
    frames = [frame] * batch

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                if batch == 1:
                    await ws.send_message(frame)
                else:
                    await send_texts(ws, frames)
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
    parser.add_argument("--batch", type=int, default=1, help="frames per write")
    args = parser.parse_args()
    trio.run(main, args.host, args.port, args.frame_bytes, args.batch)
