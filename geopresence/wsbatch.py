"""Send many frames with one write (shell): the writer's fast path on trio-websocket.

``WebSocketConnection.send_message`` costs one ``send_all`` (a syscall and several
checkpoints) per frame; under fan-out that is most of the server's time (see
benchmarks/RESULTS.md). ``send_texts`` encodes a batch of queued frames with the
connection's wsproto state machine and writes them with one ``send_all``, under the same
lock and with the same error handling as trio-websocket's own ``_send``.

It uses trio-websocket internals (``_wsproto``, ``_stream``, ``_stream_lock``,
``_close_reason``, ``_abort_web_socket``), checked once at import: with a version that lacks
them, it falls back to ``send_message`` per frame, which is slower but equivalent
(tests/test_wsbatch.py runs both paths).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto.events import TextMessage

CHUNK_BYTES: Final = 256 * 1024
"""Frames are written in chunks of about this size (one ``send_all`` each)."""

_INTERNALS: Final = ("_wsproto", "_stream", "_stream_lock", "_close_reason", "_abort_web_socket")


def _has_internals(ws: WebSocketConnection) -> bool:
    return all(hasattr(ws, name) for name in _INTERNALS)


async def send_texts(ws: WebSocketConnection, texts: Sequence[str]) -> None:
    """Send ``texts`` as text frames, in order, in as few writes as possible.

    Raises ``ConnectionClosed`` like ``send_message`` when the connection is (being) closed.
    """
    if not _has_internals(ws):
        for text in texts:
            await ws.send_message(text)
        return
    connection = ws._wsproto
    start = 0
    while start < len(texts):
        if ws._close_reason:
            raise ConnectionClosed(ws._close_reason)
        parts: list[bytes] = []
        size = 0
        end = start
        while end < len(texts) and (size < CHUNK_BYTES or not parts):
            data = connection.send(TextMessage(data=texts[end]))
            parts.append(data)
            size += len(data)
            end += 1
        async with ws._stream_lock:
            try:
                await ws._stream.send_all(b"".join(parts))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await ws._abort_web_socket()
                assert ws._close_reason is not None
                raise ConnectionClosed(ws._close_reason) from None
        start = end
