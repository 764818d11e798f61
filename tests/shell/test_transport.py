"""The transport's batched send: same frames, same order, same errors as send_message."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
    wrap_client_stream,
)

from geopresence.shell import transport


@pytest.mark.parametrize("fast", [True, False])
async def test_batched_frames_arrive_whole_and_in_order(
    fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not fast:
        monkeypatch.setattr(transport, "_INTERNALS", ("_no_such_attribute",))
    monkeypatch.setattr(transport, "CHUNK_BYTES", 1000)  # several chunks
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
            await transport.send_texts(server_side[0], texts)
            received = [await client.get_message() for _ in texts]
            assert received == texts
            await client.aclose()
            with trio.fail_after(5):
                while server_side[0].closed is None:
                    await trio.sleep(0.01)
            with pytest.raises(ConnectionClosed):
                await transport.send_texts(server_side[0], ["late"])
        done.set()
        nursery.cancel_scope.cancel()


async def test_the_seam_receives_sends_and_reports_the_close() -> None:
    """The server's side of the seam over an in-memory stream: the request's path, frames
    both ways, then the peer's close as ``Closed`` with its code."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client: list[WebSocketConnection] = []
    async with trio.open_nursery() as nursery:

        async def open_client() -> None:
            client.append(await wrap_client_stream(nursery, client_stream, "localhost", "/ws?a=1"))  # type: ignore[arg-type]

        nursery.start_soon(open_client)
        request = await transport.accept(nursery, server_stream, max_message_size=100)
        assert request.path == "/ws?a=1"
        conn = await request.accept()
        while not client:
            await trio.sleep(0)
        await client[0].send_message("hello")
        assert await conn.receive() == "hello"
        await conn.send_batch(["a", "b"])
        assert [await client[0].get_message() for _ in range(2)] == ["a", "b"]
        assert conn.close_code is None
        await client[0].aclose(4000, "bye")
        with pytest.raises(transport.Closed) as closed:
            await conn.receive()
        assert closed.value.code == conn.close_code == 4000
        with pytest.raises(transport.Closed):
            await conn.send_batch(["late"])
        nursery.cancel_scope.cancel()
