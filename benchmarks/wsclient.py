"""A minimal WebSocket client for load generation: raw trio sockets, hand-rolled framing.

A load generator in Python must spend far less per frame than the server it measures, or it
measures itself. Full clients (trio-websocket + wsproto) cost tens of µs per frame; this one
does the least RFC 6455 asks of a client:

- the opening handshake (no extensions, no subprotocols; the accept key is not verified:
  this only ever talks to a server under test on loopback);
- client frames are text frames masked with the all-zero key (RFC 6455 requires a mask
  and says it should be unpredictable; the zero key is valid and makes masking a no-op);
- server frames are parsed from a buffer (text, close, ping -> pong); fragmented messages
  are not supported (neither server under test sends them).
"""

from __future__ import annotations

import base64
import contextlib
import os
import struct
from collections.abc import Callable

import trio

_ZERO_MASK = b"\x00\x00\x00\x00"


def encode_client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked (zero key) client frame with FIN set."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return header + _ZERO_MASK + payload


class Closed(Exception):
    """The server closed the connection: ``code`` from its close frame (None: no frame)."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"closed ({code})")
        self.code = code


class RawWebSocket:
    """One client connection. ``send_text`` writes a frame; ``read_frames`` waits for data
    and hands each complete text frame's payload to ``on_text`` (bytes, unparsed)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    @classmethod
    async def connect(cls, host: str, port: int, path: str = "/ws") -> RawWebSocket:
        stream = await trio.open_tcp_stream(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await stream.send_all(request.encode())
        ws = cls(stream)
        while b"\r\n\r\n" not in ws._buffer:
            data = await stream.receive_some(65536)
            if not data:
                raise Closed(None)
            ws._buffer += data
        head, _, rest = bytes(ws._buffer).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"handshake refused: {head.splitlines()[0]!r}")
        ws._buffer = bytearray(rest)
        return ws

    async def send_text(self, payload: bytes) -> None:
        await self.stream.send_all(encode_client_frame(payload))

    async def read_frames(self, on_text: Callable[[bytes], None]) -> None:
        """Receive once (waiting if needed) and dispatch every complete frame; raises
        ``Closed`` at a close frame or end of stream."""
        data = await self.stream.receive_some(262144)
        if not data:
            raise Closed(None)
        buffer = self._buffer
        buffer += data
        offset = 0
        size = len(buffer)
        while size - offset >= 2:
            first, second = buffer[offset], buffer[offset + 1]
            length = second & 0x7F
            header = 2
            if length == 126:
                if size - offset < 4:
                    break
                length = int.from_bytes(buffer[offset + 2 : offset + 4], "big")
                header = 4
            elif length == 127:
                if size - offset < 10:
                    break
                length = int.from_bytes(buffer[offset + 2 : offset + 10], "big")
                header = 10
            if second & 0x80:
                header += 4  # a server must not mask, but be lenient
            end = offset + header + length
            if end > size:
                break
            opcode = first & 0x0F
            payload = bytes(buffer[offset + header : end])
            offset = end
            if opcode == 0x1:
                on_text(payload)
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                del buffer[:offset]
                raise Closed(code)
            elif opcode == 0x9:
                await self.stream.send_all(encode_client_frame(payload, opcode=0xA))
        del buffer[:offset]

    async def aclose(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(encode_client_frame(struct.pack("!H", 1000), 0x8))
        await self.stream.aclose()
