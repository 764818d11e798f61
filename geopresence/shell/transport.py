"""The transport seam (shell): every trio-websocket and wsproto specific of the server.

The rest of the server sees four names: ``accept`` (the opening handshake's ``Request``),
``Connection`` (``receive``, ``send``, ``send_batch``, ``close``, ``close_code``, the ping
gate ``admit_ping``, ``abort``), the ``Closed`` exception and ``is_disconnect``. Replacing
the WebSocket library means rewriting this module only; tests/test_architecture.py checks
that no other server module imports trio_websocket or wsproto.

**Untrusted peers.** ``accept`` wraps a stream in ``_ServerWebSocket``, a
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
(tests/shell/test_transport.py runs both paths).
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
CLOSE_NORMAL: Final = 1000


class Closed(Exception):
    """The connection is closed or closing: nothing more can be received or sent.

    ``code`` is the close code (the peer's, or ours if we closed first), None if unknown."""

    def __init__(self, code: int | None) -> None:
        super().__init__(code)
        self.code = code


def is_disconnect(exc: BaseException) -> bool:
    """True if ``exc`` (or every exception in a group) is just a peer going away."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_disconnect(e) for e in exc.exceptions)
    return isinstance(
        exc, Closed | ConnectionClosed | trio.BrokenResourceError | trio.ClosedResourceError
    )


def _always() -> bool:
    return True


class _ServerWebSocket(WebSocketConnection):
    """A server-side ``WebSocketConnection`` hardened against what a peer can provoke."""

    admit_ping: Callable[[], bool] = staticmethod(_always)
    """Called for each ping received; the ping is answered only if it returns True."""

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


def _closed(exc: ConnectionClosed) -> Closed:
    reason = exc.reason
    return Closed(None if reason is None else int(reason.code))


class Connection:
    """One server-side WebSocket connection after its opening handshake.

    Every method that talks to the peer raises ``Closed`` once the connection is closed or
    closing. Calls are not bounded in time: the caller sets its deadlines."""

    def __init__(self, ws: _ServerWebSocket, stream: trio.abc.Stream) -> None:
        self._ws = ws
        self._stream = stream

    @property
    def admit_ping(self) -> Callable[[], bool]:
        """The ping gate: called for each ping received, which is answered only if it
        returns True (the server sets it to the connection's rate limit). Pings are never
        answered once our close frame is out."""
        return self._ws.admit_ping

    @admit_ping.setter
    def admit_ping(self, gate: Callable[[], bool]) -> None:
        self._ws.admit_ping = gate

    @property
    def pings(self) -> int:
        """Pings received on this connection so far."""
        return self._ws.pings

    @property
    def close_code(self) -> int | None:
        """The close code once the connection is closed or closing (1009: a frame over the
        size limit), else None."""
        reason = self._ws.closed
        return None if reason is None else int(reason.code)

    async def receive(self) -> str | bytes:
        """The next message (text as ``str``, binary as ``bytes``), at most
        ``max_message_size`` characters or bytes (a longer one closes with 1009)."""
        try:
            return await self._ws.get_message()
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def send(self, text: str) -> None:
        """Send one text frame."""
        try:
            await self._ws.send_message(text)
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def send_batch(self, texts: Sequence[str]) -> None:
        """Send ``texts`` as text frames, in order, in as few writes as possible."""
        try:
            await send_texts(self._ws, texts)
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def close(self, code: int = CLOSE_NORMAL, reason: str | None = None) -> None:
        """The closing handshake: send a close frame (``reason`` at most 123 UTF-8 bytes)
        and wait for the peer's. Returns at once if already closed."""
        try:
            await self._ws.aclose(code, reason)
        except ConnectionClosed:
            return

    async def abort(self) -> None:
        """Cut the transport without a close frame (when a frame boundary was lost)."""
        await trio.aclose_forcefully(self._stream)


class Request:
    """A client's opening handshake, not answered yet."""

    def __init__(self, request: WebSocketRequest, stream: trio.abc.Stream) -> None:
        self._request = request
        self._stream = stream

    @property
    def path(self) -> str:
        """The request target, query string included."""
        return self._request.path

    async def reject(self, status: int, body: bytes) -> None:
        """Answer with an HTTP ``status`` and ``body`` instead of a WebSocket."""
        await self._request.reject(status, body=body)

    async def accept(self) -> Connection:
        """Complete the handshake."""
        ws = await self._request.accept()
        assert isinstance(ws, _ServerWebSocket)
        return Connection(ws, self._stream)


async def accept(
    nursery: trio.Nursery, stream: trio.abc.Stream, *, max_message_size: int
) -> Request:
    """Wait for the opening handshake's request on ``stream`` (the caller bounds the wait).

    The connection's reader runs in ``nursery`` until the connection ends; messages larger
    than ``max_message_size`` close it with 1009."""
    connection = _ServerWebSocket(
        stream, WSConnection(ConnectionType.SERVER), max_message_size=max_message_size
    )
    nursery.start_soon(connection._reader_task)
    return Request(await connection._get_request(), stream)


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
