"""The `websockets` library's asyncio server pushing frames: a ceiling row of
``python -m benchmarks.load ceiling``.

    python -m benchmarks.ws_ceiling [--port 0] [--frame-bytes 120] [--connections N]

``websockets.asyncio.server.serve`` (the library's new asyncio implementation, default event
loop, no compression) with a handler per connection that sends the same ~120-byte text frame
(the size of a ``friend_location``) with ``await ws.send(frame)`` in a loop, as a user of the
library would write it. Pushing starts once ``--connections`` are open (0: at once), so that
busy handlers do not slow the accepts. Prints ``listening ws=HOST:PORT`` once ready. Needs
the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from benchmarks.ceiling import frame_of


async def main(host: str, port: int, frame_bytes: int, connections: int) -> None:
    frame = frame_of(frame_bytes)
    opened = [0]
    go = asyncio.Event()
    if connections <= 0:
        go.set()

    async def handler(ws: ServerConnection) -> None:
        opened[0] += 1
        if opened[0] >= connections:
            go.set()
        await go.wait()
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.send(frame)

    async with serve(handler, host, port, compression=None, backlog=4096) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        print(f"listening ws={host}:{bound}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--frame-bytes", type=int, default=120)
    parser.add_argument("--connections", type=int, default=0, help="push once this many")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.host, args.port, args.frame_bytes, args.connections))
