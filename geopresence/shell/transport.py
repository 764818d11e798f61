"""The server's side of trio-websocket (shell): accepting a stream, pings, batched writes.

Everything here that depends on trio-websocket's internals is in this module.

**Untrusted peers.** ``accept_stream`` wraps a stream in ``ServerWebSocket``, a
``WebSocketConnection`` that (a) shows every ping to the connection's ``admit_ping`` before
answering it, so control frames count against the same rate limit as messages, and (b) sends
nothing that wsproto's state no longer allows: a ping that crosses our close frame is not
answered (trio-websocket would raise ``LocalProtocolError`` in its reader task, a traceback
per connection that any peer can trigger).

**Batched writes.**

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

from collections.abc import Callable, Sequence
from typing import Final

import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
)
from wsproto import WSConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import CloseConnection, Event, Ping, Pong, TextMessage
from wsproto.utilities import LocalProtocolError

CHUNK_BYTES: Final = 256 * 1024
"""Frames are written in chunks of about this size (one ``send_all`` each)."""

_INTERNALS: Final = ("_wsproto", "_stream", "_stream_lock", "_close_reason", "_abort_web_socket")


CLOSE_ABNORMAL: Final = 1006


def _always() -> bool:
    return True


class ServerWebSocket(WebSocketConnection):
    """A server-side ``WebSocketConnection`` hardened against what a peer can provoke."""

    admit_ping: Callable[[], bool] = staticmethod(_always)
    """Called for each ping received; the ping is answered only if it returns True. The
    server replaces it per connection with the connection's rate limit."""

    pings = 0
    """Pings received on this connection."""

    async def _handle_ping_event(self, event: Ping) -> None:
        self.pings += 1
        if self._wsproto.state is ConnectionState.OPEN and self.admit_ping():
            await self._send(event.response())

    async def _send(self, event: Event) -> None:
        try:
            await super()._send(event)
        except LocalProtocolError:
            # Our close frame is already out (or the handshake never finished): a control
            # frame has nothing left to say, and a message cannot be delivered.
            if isinstance(event, Ping | Pong | CloseConnection):
                return
            reason = self._close_reason or CloseReason(CLOSE_ABNORMAL, None)
            raise ConnectionClosed(reason) from None


async def accept_stream(
    nursery: trio.Nursery, stream: trio.abc.Stream, *, max_message_size: int
) -> WebSocketRequest:
    """``trio_websocket.wrap_server_stream`` with a ``ServerWebSocket``: wait for the
    opening handshake's request (the caller bounds the wait) and return it."""
    connection = ServerWebSocket(
        stream, WSConnection(ConnectionType.SERVER), max_message_size=max_message_size
    )
    nursery.start_soon(connection._reader_task)
    return await connection._get_request()


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
        if connection.state is not ConnectionState.OPEN:  # our close frame is out
            raise ConnectionClosed(CloseReason(CLOSE_ABNORMAL, None))
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
