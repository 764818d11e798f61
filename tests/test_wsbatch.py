"""The writer's batched send: same frames, same order, same errors as send_message."""

from __future__ import annotations

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

from geopresence.shell import transport as wsbatch


@pytest.mark.parametrize("fast", [True, False])
async def test_batched_frames_arrive_whole_and_in_order(
    fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not fast:
        monkeypatch.setattr(wsbatch, "_INTERNALS", ("_no_such_attribute",))
    monkeypatch.setattr(wsbatch, "CHUNK_BYTES", 1000)  # several chunks
    texts = [f'{{"type":"n","i":{i},"pad":"{"x" * (i % 300)}"}}' for i in range(200)]
    server_side: list[WebSocketConnection] = []
    done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        server_side.append(ws)
        await done.wait()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/") as client:
            while not server_side:
                await trio.sleep(0.01)
            await wsbatch.send_texts(server_side[0], texts)
            received = [await client.get_message() for _ in texts]
            assert received == texts
            await client.aclose()
            with trio.fail_after(5):
                while server_side[0].closed is None:
                    await trio.sleep(0.01)
            with pytest.raises(ConnectionClosed):
                await wsbatch.send_texts(server_side[0], ["late"])
        done.set()
        nursery.cancel_scope.cancel()
