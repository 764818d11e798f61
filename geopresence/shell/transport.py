"""The WebSocket transport (shell): websockets' sans-I/O protocol on a trio stream.

The rest of the server sees ``accept`` (the opening handshake's ``Request``, in
``transport_handshake``), ``Connection``
(``receive``, ``write_frames``, ``send``, ``start_close``/``close``, ``flushed``,
``parked``, ``on_drained``, the ping gate ``admit_ping``, and ``detach``, due before the
stream is closed), and re-exports ``text_frame``,
the ``Closed`` exception and ``is_disconnect`` (``geopresence.shell.framing``). It is the
only server module, with ``transport_handshake``, that imports a WebSocket library
(tests/test_architecture.py checks it).

**Shape.** A session's socket is read by the server's ``ReadPoller`` (one task for all:
``read_now``, one non-blocking read, every message it completes); the handshake, the hello
and in-memory streams read in the connection's task (``receive``: one ``receive_some``).
Writes are synchronous: ``write_frames``
hands bytes to the socket with one non-blocking ``send`` from whatever code produced them
(the hub's fan-out, with no await and no task switch per delivery). Only when the kernel's
buffer is full are the remaining bytes *parked* and a drain task started that waits for
writability; ``on_drained`` then lets the owner refill (its bounded outbox). In-memory
streams (tests) have no socket: their bytes always go through the drain task.

**Library.** websockets' sans-I/O ``ServerProtocol`` parses frames and the opening
handshake: measured here at 2.7 µs per client frame and 0.8 µs to frame a message, against
8.6 µs and 2.3 µs for wsproto (benchmarks/RESULTS.md). No frame is parsed by hand.

**Untrusted peers.** Each ping is shown to ``admit_ping`` (the connection's rate limit)
before it is answered, and while the peer is not reading only its latest ping is (pongs must
not pile up); nothing is sent once our close frame is out; a message is at most
``max_message_size`` UTF-8 bytes (more: closed with 1009), text must be UTF-8 (else 1007);
fragmented messages are reassembled within the same limit.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import Final

import trio
from websockets.exceptions import InvalidState
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import SEND_EOF, State
from websockets.server import ServerProtocol

from geopresence.shell.framing import Closed, is_disconnect, text_frame

TRANSPORT_FAILURES: Final = frozenset(
    {CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_DATA, CloseCode.MESSAGE_TOO_BIG}
)
"""The close codes the transport sends by itself (``Connection.failed_with``)."""

RECEIVE_BYTES: Final = 65536
"""Bytes asked of the stream per read."""

PONG_HOLD_BYTES: Final = 16384
"""Past this many bytes parked (the peer is not reading), a ping's pong is held back, only
the latest one (RFC 6455 5.5.3 allows answering only the most recent ping), and written once
the parked bytes are out: pongs to a peer that keeps pinging but never reads must not grow
the memory without bound."""


QUIET = logging.getLogger("geopresence.transport")
"""websockets logs every connection opened and closed at INFO: kept below our log level."""
QUIET.setLevel(logging.WARNING)
QUIET.propagate = True


def _always() -> bool:
    return True


def _never() -> bool:
    return False


class GatedProtocol(ServerProtocol):
    """websockets' server protocol with the ping gate: a ping is answered only if
    ``admit_ping`` says so (and never after our close frame)."""

    admit_ping: Callable[[], bool] = staticmethod(_always)
    backed_up: Callable[[], bool] = staticmethod(_never)
    """True while the peer is not taking what is written: a pong is then held."""
    pings = 0
    held_pong: bytes | None = None
    """The latest ping's payload, not answered yet because the peer is ``backed_up``."""

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is not Opcode.PING:
            super().recv_frame(frame)
            return
        self.pings += 1
        if self.state is State.OPEN and self.admit_ping():
            if self.backed_up():
                self.held_pong = bytes(frame.data)
            else:
                self.send_frame(Frame(Opcode.PONG, frame.data))
        self.events.append(frame)

    def send_held_pong(self) -> bool:
        """Answer the held ping now, if there is one (never after our close frame)."""
        data, self.held_pong = self.held_pong, None
        if data is None or self.state is not State.OPEN:
            return False
        self.send_frame(Frame(Opcode.PONG, data))
        return True


class Connection:
    """One server-side WebSocket connection (its handshake done or in progress).

    ``receive`` is called by one task only. Writes (``write_frames``, ``send``, pongs and
    close frames) are synchronous and keep their order. Calls are not bounded in time: the
    caller sets its deadlines."""

    # Slots: among thousands of connections this object's memory is cold, and a slot is
    # read from the object itself, where an attribute (or a method, looked up in the
    # instance first) would touch its dictionary as well.
    __slots__ = ("_binary", "_broken", "_draining", "_early", "_eof_parked", "_fd", "_flushed",
                 "_fragments", "_nursery", "_parked", "_parked_bytes", "_protocol", "_sending",
                 "_socket", "_stream", "_we_closed", "on_drained")  # fmt: skip

    def __init__(self, stream: trio.abc.Stream, protocol: GatedProtocol, nursery: trio.Nursery):
        self._stream = stream
        self._protocol = protocol
        self._nursery = nursery
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._fd = -1 if self._socket is None else self._socket.fileno()
        """The socket's file descriptor, -1 once ``detach``ed (or without a socket): kept
        here because looking it up costs a delivery two cold objects, so the stream's owner
        must ``detach`` before closing it (the number may then be reused by another
        connection's socket)."""
        self._sending = protocol.state is State.OPEN
        """The protocol may send data frames (refreshed by ``write_protocol``, which follows
        every call that can change the protocol's state)."""
        self._parked: list[bytes] = []
        self._parked_bytes = 0
        protocol.backed_up = lambda: self._parked_bytes > PONG_HOLD_BYTES
        self._eof_parked = False
        self._draining = False
        self._broken = False
        self._early = b""
        """Bytes that came right behind the opening handshake, parsed at the first
        ``receive``."""
        self._fragments: list[bytes] | None = None
        self._binary = False
        self._we_closed = False
        self._flushed: trio.Event | None = None
        self.on_drained: Callable[[], None] | None = None
        """Called when parked bytes are all written: the owner may write more."""

    # ------------------------------------------------------------------ state

    @property
    def admit_ping(self) -> Callable[[], bool]:
        """The ping gate: called for each ping received, which is answered only if it
        returns True (the server sets it to the connection's rate limit)."""
        return self._protocol.admit_ping

    @admit_ping.setter
    def admit_ping(self, gate: Callable[[], bool]) -> None:
        self._protocol.admit_ping = gate

    @property
    def pings(self) -> int:
        """Pings received on this connection so far."""
        return self._protocol.pings

    @property
    def close_code(self) -> int | None:
        """The close code once the connection is closing or closed (ours if we closed
        first; 1009: a message over the size limit), else None."""
        p = self._protocol
        close = p.close_sent or p.close_rcvd
        if close is not None:
            return int(close.code)
        return int(CloseCode.ABNORMAL_CLOSURE) if p.state is State.CLOSED else None

    @property
    def failed_with(self) -> int | None:
        """The close code if this transport failed the connection itself, the peer having
        broken a rule of RFC 6455 (1002), sent invalid UTF-8 (1007) or a message over the
        size limit (1009), else None."""
        p = self._protocol
        if p.close_sent is None or p.close_rcvd_then_sent:
            return None
        code = int(p.close_sent.code)
        return code if code in TRANSPORT_FAILURES else None

    @property
    def open(self) -> bool:
        """Frames may still be sent (the handshake is done, no close frame sent, the
        transport not broken)."""
        return self._sending and not self._broken

    @property
    def parked(self) -> bool:
        """Bytes wait behind a write in progress (the socket was full): the owner keeps
        newer frames to itself until ``on_drained`` (at most one batch waits here)."""
        return self._parked_bytes != 0  # the count, not the list: one object less to touch

    # ------------------------------------------------------------------ receiving

    async def receive(self) -> list[str | bytes]:
        """The messages completed by the next read (at least one), oldest first: text as
        ``str`` (valid UTF-8), binary as ``bytes``. Once our close frame is out, messages
        are no longer returned.

        Raises ``Closed`` once the peer's close frame arrived, the stream ended, or the
        connection failed (too big: 1009, bad UTF-8: 1007, protocol error: 1002)."""
        while True:
            messages = self.buffered()
            if messages:
                return messages
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            self._feed(data)

    @property
    def fileno(self) -> int | None:
        """The socket's file descriptor (None for an in-memory stream): a ``ReadPoller``
        may watch it, the reads then being ``read_now``'s instead of ``receive``'s."""
        return None if self._socket is None else self._socket.fileno()

    def read_now(self) -> list[str | bytes]:
        """``receive`` without waiting, for a socket reported readable: the messages one
        non-blocking read completed (maybe none). Raises ``Closed`` as ``receive`` does."""
        assert self._socket is not None, "an in-memory stream has no socket to read"
        try:
            data = os.read(self._fd, RECEIVE_BYTES)  # detached: -1, read as the end
        except BlockingIOError:
            return self.buffered()
        except OSError:
            data = b""  # reset by the peer: the end of the stream, as ``receive`` sees it
        self._feed(data)
        return self.buffered()

    def buffered(self) -> list[str | bytes]:
        """The messages already read but not returned yet (those that came with the
        handshake, or behind a batch just handled), or [] if none. Raises ``Closed`` once
        nothing more will come (see ``receive``)."""
        protocol = self._protocol
        if self._early:
            early, self._early = self._early, b""
            protocol.receive_data(early)
        events = protocol.events_received()
        messages = self._messages(events) if events and not self._we_closed else []
        self.write_protocol()
        if messages:
            return messages
        # A server is done once it has sent its EOF: after the closing handshake, or at
        # once when it fails the connection (websockets' protocol decides).
        if protocol.eof_sent or protocol.state is State.CLOSED:
            raise Closed(self.close_code)
        return []

    def _feed(self, data: bytes | bytearray) -> None:
        if data:
            self._protocol.receive_data(data)
        else:
            self._protocol.receive_eof()

    def _messages(self, events: Sequence[object]) -> list[str | bytes]:
        messages: list[str | bytes] = []
        for frame in events:
            if not isinstance(frame, Frame):
                continue
            opcode = frame.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                if not frame.fin:
                    self._fragments, self._binary = [bytes(frame.data)], opcode is Opcode.BINARY
                    continue
                data, binary = bytes(frame.data), opcode is Opcode.BINARY
            elif opcode is Opcode.CONT and self._fragments is not None:
                self._fragments.append(bytes(frame.data))
                if not frame.fin:
                    continue
                data, self._fragments = b"".join(self._fragments), None
                binary = self._binary
            elif opcode is Opcode.CLOSE:
                break
            else:
                continue
            if binary:
                messages.append(data)
                continue
            try:
                messages.append(data.decode())
            except UnicodeDecodeError as exc:
                self._protocol.fail(CloseCode.INVALID_DATA, f"invalid UTF-8 at byte {exc.start}")
                break
        return messages

    # ------------------------------------------------------------------ sending

    def write_frames(self, data: bytes) -> None:
        """Write ready frames (``text_frame``) now, without blocking: what the socket does
        not take is parked and written by a drain task as the socket allows. Dropped once
        the connection is not ``open``."""
        if self._sending:
            self._write(data)

    def send(self, text: str) -> None:
        """Write one text frame (see ``write_frames``)."""
        self.write_frames(text_frame(text.encode()))

    def defer_early(self, data: bytes) -> None:
        """Frames that came right behind the opening request: parsed by the first
        ``receive`` (once the caller has set the ping gate), not before."""
        self._early = data

    def write_protocol(self) -> None:
        """Write what the protocol has to send (a handshake answer, a pong, a close)."""
        protocol = self._protocol
        self._sending = protocol.state is State.OPEN
        for data in protocol.data_to_send():
            if data == SEND_EOF:
                self._eof_parked = True
                if not self._parked:
                    self._half_close()
            else:
                self._write(data)

    def _write(self, data: bytes) -> None:
        if self._broken or not data:  # nothing empty is parked: see ``parked``
            return
        if self._parked_bytes or self._draining or self._fd < 0:
            self._park(data)
            return
        try:
            sent = os.write(self._fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._broken = True  # the reader sees the end of the stream
            return
        if sent < len(data):
            self._park(data[sent:])

    def _park(self, data: bytes) -> None:
        self._parked.append(data)
        self._parked_bytes += len(data)
        if not self._draining:
            self._draining = True
            self._nursery.start_soon(self._drain)

    async def _drain(self) -> None:
        try:
            while True:
                while self._parked:
                    data = b"".join(self._parked)
                    self._parked.clear()
                    self._parked_bytes = 0
                    await self._send_some(data)
                if self._protocol.send_held_pong():
                    self.write_protocol()  # parks it: written by this loop
                    continue
                if self._eof_parked:
                    self._half_close()
                    return
                if self.on_drained is not None:
                    self.on_drained()
                if not self._parked:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._broken = True
            self._parked.clear()
            self._parked_bytes = 0
        finally:
            self._draining = False
            if self._flushed is not None:
                self._flushed.set()

    async def _send_some(self, data: bytes) -> None:
        sock = self._socket
        if sock is None:
            await self._stream.send_all(data)
            return
        while data:
            await trio.lowlevel.wait_writable(sock)
            try:
                sent = os.write(sock.fileno(), data)
            except BlockingIOError:
                continue
            data = data[sent:]

    def _half_close(self) -> None:
        self._eof_parked = False
        if self._socket is not None and not self._broken:
            try:
                self._socket.shutdown(socket.SHUT_WR)
            except OSError:
                self._broken = True

    # ------------------------------------------------------------------ closing

    def detach(self) -> None:
        """The stream is about to be closed: nothing is written or read from now on (its
        file descriptor may soon be another socket's). Call it before closing the stream."""
        self._broken = True
        self._sending = False
        self._fd = -1

    def start_close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Send a close frame after what is already written (``reason`` at most 123 UTF-8
        bytes); the peer's answer ends ``receive``. Nothing if already closing."""
        if self._protocol.state is State.OPEN:
            self._we_closed = True  # what the peer sends from now on is not read
            try:
                self._protocol.send_close(code, reason)
            except InvalidState:
                return
            self.write_protocol()

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """The closing handshake: ``start_close``, then read until the peer's close frame
        (or the end of the stream). Only the task that calls ``receive`` may call it."""
        self.start_close(code, reason)
        try:
            while True:
                await self.receive()  # whatever arrives meanwhile is not read
        except Closed:
            return

    async def flushed(self) -> None:
        """Wait until nothing is parked (before closing the stream: a refusal's error and
        close frame must get out). Unbounded: a peer that stops reading never lets it."""
        if self._draining:
            self._flushed = trio.Event()
            await self._flushed.wait()


__all__ = [
    "RECEIVE_BYTES",
    "Closed",
    "Connection",
    "GatedProtocol",
    "is_disconnect",
    "text_frame",
]
