"""The bare non-blocking write floor: a tiny synchronous server that writes a ready WebSocket
text frame to its connections with one non-blocking ``os.write`` per frame.

    python -m benchmarks.floor [--port 0] [--frame-bytes 120] [--connections N] [--rate R]

No framework, no task, no queue: one epoll, one thread. It accepts connections, answers the
opening handshake, and, once ``--connections`` are open (0: at once), loops over them
writing one frame per connection per round; a socket whose buffer is full waits for
EPOLLOUT (a partial frame finishes first). What a client reads per second, and the CPU this
process spends per frame, is the least any Python server can spend to push a frame
(``python -m benchmarks.load ceiling`` runs it beside geopresence). ``--rate R`` paces the
push to R frames a second in all (one frame per write, spread over the connections): the
stream ``benchmarks.genbench`` reads. Prints ``listening ws=HOST:PORT`` once ready.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import select
import socket
import time

from benchmarks.ceiling import frame_of

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def server_frame(payload: bytes) -> bytes:
    """An unmasked text frame with FIN set."""
    length = len(payload)
    if length < 126:
        return bytes([0x81, length]) + payload
    if length < 1 << 16:
        return bytes([0x81, 126]) + length.to_bytes(2, "big") + payload
    return bytes([0x81, 127]) + length.to_bytes(8, "big") + payload


def handshake_reply(request: bytes) -> bytes | None:
    """The 101 reply to an opening handshake (None: no Sec-WebSocket-Key)."""
    for line in request.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            accept = base64.b64encode(hashlib.sha1(value.strip() + GUID).digest())
            return (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
    return None


def serve(host: str, port: int, frame: bytes, connections: int, rate: float) -> None:
    listener = socket.create_server((host, port), backlog=4096)
    listener.setblocking(False)
    epoll = select.epoll()
    epoll.register(listener.fileno(), select.EPOLLIN)
    print(f"listening ws={host}:{listener.getsockname()[1]}", flush=True)
    socks: dict[int, socket.socket] = {}
    handshaking: dict[int, bytes] = {}
    ready: list[int] = []
    blocked: dict[int, bytes] = {}
    write = os.write
    go = connections == 0
    budget, last = 0.0, time.monotonic()
    while True:
        for fd, events in epoll.poll(0 if go and ready else 0.001 if go else 0.05):
            if fd == listener.fileno():
                while True:
                    try:
                        sock, _ = listener.accept()
                    except BlockingIOError:
                        break
                    sock.setblocking(False)
                    socks[sock.fileno()] = sock
                    handshaking[sock.fileno()] = b""
                    epoll.register(sock.fileno(), select.EPOLLIN)
            elif events & select.EPOLLOUT and fd in blocked:
                rest = blocked.pop(fd)
                try:
                    sent = write(fd, rest)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    _drop(fd, socks, epoll)
                    continue
                if sent < len(rest):
                    blocked[fd] = rest[sent:]
                else:
                    epoll.modify(fd, select.EPOLLIN)
                    ready.append(fd)
            else:
                try:
                    data = socks[fd].recv(65536)
                except (BlockingIOError, KeyError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    handshaking.pop(fd, None)
                    blocked.pop(fd, None)
                    _drop(fd, socks, epoll)
                elif fd in handshaking:
                    request = handshaking[fd] + data
                    handshaking[fd] = request
                    if b"\r\n\r\n" in request:
                        del handshaking[fd]
                        reply = handshake_reply(request)
                        if reply is None:
                            _drop(fd, socks, epoll)
                        else:
                            socks[fd].send(reply)
                            ready.append(fd)
        if not go:
            go = len(ready) >= connections
            continue
        now = time.monotonic()
        if rate > 0:
            budget = min(budget + (now - last) * rate, rate * 0.05)
            last = now
        wrote: list[int] = []
        waiting: list[int] = []  # paced: no budget left this round (first in the next one)
        for fd in ready:
            if fd not in socks:
                continue
            if rate > 0:
                if budget < 1:
                    waiting.append(fd)
                    continue
                budget -= 1
            try:
                sent = write(fd, frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                _drop(fd, socks, epoll)
                continue
            if sent < len(frame):
                blocked[fd] = frame[sent:]
                epoll.modify(fd, select.EPOLLIN | select.EPOLLOUT)
            else:
                wrote.append(fd)
        ready = waiting + wrote if waiting else wrote


def _drop(fd: int, socks: dict[int, socket.socket], epoll: select.epoll) -> None:
    sock = socks.pop(fd, None)
    if sock is not None:
        epoll.unregister(fd)
        sock.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--frame-bytes", type=int, default=120)
    parser.add_argument("--connections", type=int, default=0, help="start once this many")
    parser.add_argument("--rate", type=float, default=0, help="frames/s in all (0: flat out)")
    args = parser.parse_args()
    payload = frame_of(args.frame_bytes).encode()
    serve(args.host, args.port, server_frame(payload), args.connections, args.rate)
