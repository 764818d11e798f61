"""A lean WebSocket client loop for load generation: many connections, one thread, one epoll.

A load generator in Python must spend far less per frame than the server it measures, or it
measures itself. So there is no task or coroutine per connection: ``Loop`` keeps raw
non-blocking sockets in one ``select.epoll``, a heap of timers for the periodic sends, and
calls its subclass's hooks from plain synchronous code. It does the least RFC 6455 asks of a
client:

- the opening handshake (no extensions, no subprotocols; the accept key is not verified:
  this only ever talks to a server under test on loopback);
- client frames are text frames masked with the all-zero key (RFC 6455 requires a mask and
  says it should be unpredictable; the zero key is valid and makes masking a no-op);
- server frames are walked in the receive buffer without copying: ``on_text`` gets the
  buffer and the payload's bounds, so a subclass can count frames by a prefix check
  (``data.startswith(b'{"type":"friend_location"', start)``) and parse only the few it
  samples; close ends the connection, ping gets a pong; fragmented messages are not
  supported (no server under test sends them).

Why epoll and not asyncio Protocols: ``python -m benchmarks.genbench`` measures both on the
same paced stream (RESULTS.md has the figures).
"""

from __future__ import annotations

import base64
import errno
import heapq
import os
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable

_ZERO_MASK = b"\x00\x00\x00\x00"
CONNECTING, HANDSHAKE, OPEN = 0, 1, 2
"""A ``Conn``'s states."""
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT


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


class Conn:
    """One client connection (``index``: the caller's number for it)."""

    __slots__ = ("fd", "index", "rbuf", "sock", "state", "wbuf")

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.index = index
        self.state = CONNECTING
        self.rbuf = b""
        self.wbuf = b""


class Loop:
    """Connections and timers in one thread. Subclasses override ``on_open`` (the handshake
    is done), ``on_text`` (a text frame arrived), ``on_timer`` and ``on_close``."""

    def __init__(self, path: str = "/ws") -> None:
        self.epoll = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.timers: list[tuple[float, int, int]] = []
        self.closed: Counter[int | None] = Counter()
        """Connections that ended, by close code (None: no close frame, or never opened)."""
        self.path = path
        self.frames_in = 0
        self.frames_out = 0

    # -------------------------------------------------------------- hooks

    def on_open(self, conn: Conn) -> None:
        """The opening handshake succeeded."""

    def on_text(self, conn: Conn, data: bytes, start: int, end: int) -> None:
        """A text frame: its payload is ``data[start:end]`` (not copied)."""

    def on_timer(self, index: int, kind: int, now: float) -> None:
        """A timer set with ``schedule`` is due (``now``: time.monotonic())."""

    def on_close(self, conn: Conn, code: int | None) -> None:
        """The connection ended (``code``: the server's close code, None without one)."""

    # -------------------------------------------------------------- actions

    def open(self, index: int, host: str, port: int) -> Conn:
        """Start connecting (non-blocking); ``on_open`` follows the handshake."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Conn(sock, index)
        err = sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.closed[None] += 1
            self.on_close(conn, None)
            return conn
        key = base64.b64encode(os.urandom(16)).decode()
        conn.wbuf = (
            f"GET {self.path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.conns[conn.fd] = conn
        self.epoll.register(conn.fd, _OUT)
        return conn

    def send(self, conn: Conn, frames: bytes) -> None:
        """Write ready client frames now; what the kernel does not take waits for EPOLLOUT."""
        if conn.wbuf:
            conn.wbuf += frames
            return
        try:
            sent = conn.sock.send(frames)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close(conn, None)
            return
        if sent < len(frames):
            conn.wbuf = frames[sent:]
            self.epoll.modify(conn.fd, _IN | _OUT)

    def schedule(self, due: float, index: int, kind: int) -> None:
        """Call ``on_timer(index, kind, now)`` at ``due`` (time.monotonic())."""
        heapq.heappush(self.timers, (due, index, kind))

    def close(self, conn: Conn, code: int | None) -> None:
        """Forget the connection (closing its socket) and count it."""
        if self.conns.pop(conn.fd, None) is None:
            return
        self.epoll.unregister(conn.fd)
        conn.sock.close()
        self.closed[code] += 1
        self.on_close(conn, code)

    def close_all(self) -> None:
        """Drop every connection (no close handshake: the server sees the end of stream)."""
        for conn in list(self.conns.values()):
            self.epoll.unregister(conn.fd)
            conn.sock.close()
        self.conns.clear()
        self.timers.clear()

    # -------------------------------------------------------------- the loop

    def run_until(
        self, deadline: float, tick: Callable[[float], bool] | None = None, every: float = 0.05
    ) -> None:
        """Serve sockets and timers until ``deadline`` (time.monotonic()), or until ``tick``
        (called every ``every`` seconds with the time) returns True."""
        poll, conns, timers = self.epoll.poll, self.conns, self.timers
        next_tick = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= deadline:
                return
            if tick is not None and now >= next_tick:
                if tick(now):
                    return
                next_tick = now + every
            while timers and timers[0][0] <= now:
                _, index, kind = heapq.heappop(timers)
                self.on_timer(index, kind, now)
            wake = min(deadline, next_tick if tick is not None else deadline)
            if timers:
                wake = min(wake, timers[0][0])
            for fd, events in poll(max(0.0, wake - time.monotonic()), 4096):
                conn = conns.get(fd)
                if conn is None:
                    continue
                if events & _OUT:  # connected, or room to flush what waited
                    self._writable(conn)
                    if fd not in conns:
                        continue
                if events & ~_OUT:  # data, end of stream or an error
                    self._read(conn)

    def _writable(self, conn: Conn) -> None:
        if conn.state == CONNECTING:
            if conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.close(conn, None)
                return
            conn.state = HANDSHAKE
            self.epoll.modify(conn.fd, _IN)
            request, conn.wbuf = conn.wbuf, b""
            self.send(conn, request)
            return
        try:
            sent = conn.sock.send(conn.wbuf)
        except BlockingIOError:
            return
        except OSError:
            self.close(conn, None)
            return
        conn.wbuf = conn.wbuf[sent:]
        if not conn.wbuf:
            self.epoll.modify(conn.fd, _IN)

    def _read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            self.close(conn, None)
            return
        if not data:
            self.close(conn, None)
            return
        if conn.rbuf:
            data = conn.rbuf + data
            conn.rbuf = b""
        if conn.state == HANDSHAKE:
            head, found, rest = data.partition(b"\r\n\r\n")
            if not found:
                conn.rbuf = data
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self.close(conn, None)
                return
            conn.state = OPEN
            self.on_open(conn)
            data = rest
        self._frames(conn, data)

    def _frames(self, conn: Conn, data: bytes) -> None:
        """Dispatch every complete frame of ``data``; keep the incomplete tail."""
        offset, size = 0, len(data)
        while size - offset >= 2:
            second = data[offset + 1]
            length = second & 0x7F
            header = 2
            if length == 126:
                if size - offset < 4:
                    break
                length = (data[offset + 2] << 8) | data[offset + 3]
                header = 4
            elif length == 127:
                if size - offset < 10:
                    break
                length = int.from_bytes(data[offset + 2 : offset + 10], "big")
                header = 10
            if second & 0x80:
                header += 4  # a server must not mask; be lenient
            end = offset + header + length
            if end > size:
                break
            opcode = data[offset] & 0x0F
            start = offset + header
            offset = end
            if opcode == 0x1:
                self.frames_in += 1
                self.on_text(conn, data, start, end)
            elif opcode == 0x8:
                code = int.from_bytes(data[start : start + 2], "big") if end - start >= 2 else None
                self.close(conn, code)
                return
            elif opcode == 0x9:
                self.send(conn, encode_client_frame(data[start:end], opcode=0xA))
            if conn.fd not in self.conns:
                return
        if offset < size:
            conn.rbuf = data[offset:]
