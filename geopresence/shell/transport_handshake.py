"""The opening handshake of a WebSocket connection (shell): ``accept`` reads the client's
request on a trio stream and gives a ``Request`` to answer (``accept``: the ``Connection``, or
``reject`` with an HTTP status). Part of the transport seam (``transport``): websockets'
sans-I/O protocol parses it.
"""

from __future__ import annotations

from typing import Final

import trio
from websockets.http11 import Request as HandshakeRequest

from geopresence.shell.transport import QUIET, RECEIVE_BYTES, Connection, GatedProtocol

__all__ = ["MAX_REQUEST_BYTES", "Request", "accept"]

MAX_REQUEST_BYTES: Final = 16384
"""Past this without the end of its headers, a request goes to websockets as it comes
(which answers 431 or 414 for what is too long)."""


class Request:
    """A client's opening handshake, not answered yet."""

    def __init__(
        self,
        connection: Connection,
        protocol: GatedProtocol,
        request: HandshakeRequest,
        early: bytes,
    ) -> None:
        self._connection = connection
        self._protocol = protocol
        self._request = request
        self._early = early

    @property
    def path(self) -> str:
        """The request target, query string included."""
        return self._request.path

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order; read them before
        ``accept``, which drops the headers."""
        return list(self._request.headers.get_all(name))

    def reject(self, status: int, body: bytes) -> None:
        """Answer with an HTTP ``status`` and ``body`` (UTF-8 text) instead of a WebSocket."""
        self._protocol.send_response(self._protocol.reject(status, body.decode()))
        self._connection.write_protocol()

    def detach(self) -> None:
        """The stream is about to be closed (see ``Connection.detach``)."""
        self._connection.detach()

    async def flushed(self) -> None:
        """Wait until the answer is written (see ``Connection.flushed``)."""
        await self._connection.flushed()

    def accept(self) -> Connection | None:
        """Complete the handshake: the connection, or None if the request was not a valid
        WebSocket upgrade (it was answered with an HTTP error, e.g. 400 or 426)."""
        protocol = self._protocol
        response = protocol.accept(self._request)
        # websockets' parser keeps the request for the connection's life: its headers
        # (~1 KB) are not needed once answered.
        self._request.headers.clear()
        protocol.send_response(response)
        self._connection.write_protocol()
        if response.status_code != 101:
            return None
        # Parsed by the first ``receive``, once the caller has set the ping gate: pings
        # sent with the request are limited like any other.
        self._connection.defer_early(self._early)
        self._early = b""
        return self._connection


async def accept(
    nursery: trio.Nursery, stream: trio.abc.Stream, *, max_message_size: int
) -> Request | None:
    """Read the opening handshake's request on ``stream`` (the caller bounds the wait);
    None if the stream ended first or the request was malformed (answered with HTTP 4xx).

    The connection's drain task, when it needs one, runs in ``nursery``; messages larger
    than ``max_message_size`` UTF-8 bytes close it with 1009."""
    protocol = GatedProtocol(max_size=max_message_size, logger=QUIET)
    connection = Connection(stream, protocol, nursery)
    buffer = b""
    while True:
        try:
            data = await stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        if not data:
            return None
        # Frames sent right behind the request are parsed only once the connection is
        # open (websockets would parse them in the CONNECTING state): hold them back.
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0 and len(buffer) < MAX_REQUEST_BYTES:
            continue
        head, early = (buffer[: end + 4], buffer[end + 4 :]) if end >= 0 else (buffer, b"")
        buffer = b""
        protocol.receive_data(head)
        for event in protocol.events_received():
            if isinstance(event, HandshakeRequest):
                return Request(connection, protocol, event, early)
        if protocol.handshake_exc is not None:
            connection.write_protocol()  # websockets' 4xx answer
            return None
