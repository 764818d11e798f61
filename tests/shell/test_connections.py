"""The hub's Sink in the shell (shell/connections): a frame to an idle connection skips the
outbox (``OpenConnection.first``) yet every rule of the outbox holds around it: frames of
one batch go out in one write and in order, latest-wins replaces a state frame not written
yet, a parked connection keeps its frames until it drains, a full queue closes 4008. And a
connection's cached file descriptor is let go before its socket is closed (``detach``)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import trio
from websockets.protocol import Protocol, State

from geopresence.config import Config
from geopresence.shell.connections import Connections, OpenConnection
from geopresence.shell.metrics import Metrics
from geopresence.shell.transport import QUIET, Closed, Connection, GatedProtocol
from geopresence.testing import TestServer
from geopresence.wire.errors import CLOSE_SLOW_CONSUMER
from geopresence.wire.outgoing import Outgoing
from tests.shell.test_read_poller import until


def parse_frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(opcode, payload) of each server frame (unmasked, RFC 6455 5.2) in ``data``."""
    i = 0
    while i < len(data):
        opcode, n = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if n >= 126:
            width = 2 if n == 126 else 8
            n, i = int.from_bytes(data[i : i + width], "big"), i + width
        assert i + n <= len(data), "a frame cut short"
        yield opcode, data[i : i + n]
        i += n


def read_all(peer: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def texts(peer: socket.socket) -> list[str]:
    return [payload.decode() for opcode, payload in parse_frames(read_all(peer)) if opcode == 1]


class CountingConnection(Connection):
    """A connection that counts its writes of frames."""

    writes = 0

    def write_frames(self, data: bytes) -> None:
        self.writes += 1
        super().write_frames(data)


@asynccontextmanager
async def open_pair(config: Config | None = None) -> AsyncIterator[Pair]:
    """A ``Pair`` whose drain tasks run in a nursery cancelled once the test is done."""
    async with trio.open_nursery() as nursery:
        yield Pair(nursery, config)
        nursery.cancel_scope.cancel()


class Pair:
    """``Connections`` with one open session over a socketpair; ``peer`` is the client's
    end, non-blocking; ``writes`` counts the session's writes."""

    def __init__(self, nursery: trio.Nursery, config: Config | None = None) -> None:
        server_end, self.peer = socket.socketpair()
        self.peer.setblocking(False)
        self.connections = Connections(config or Config(), Metrics())
        protocol = GatedProtocol(logger=QUIET)
        protocol.state = State.OPEN  # as after the handshake, reading frames
        protocol.parser = Protocol.parse(protocol)
        next(protocol.parser)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(server_end))
        self.ws = CountingConnection(stream, protocol, nursery)
        self.c: OpenConnection = self.connections.open(self.ws)

    @property
    def writes(self) -> int:
        return self.ws.writes

    def send(self, text: str, key: str | None = None) -> None:
        self.connections.send(self.c.conn, Outgoing(text, None if key is None else ("k", key)))


async def test_a_frame_to_an_idle_connection_skips_the_outbox_and_is_written_once() -> None:
    async with open_pair() as pair:
        with pair.connections.batch():
            pair.send('{"n":1}', key="a")
            assert pair.c.first is not None and len(pair.c.outbox) == 0
        assert pair.writes == 1 and pair.c.first is None and not pair.c.dirty
        assert texts(pair.peer) == ['{"n":1}']


async def test_frames_of_one_batch_go_out_in_one_write_in_order() -> None:
    async with open_pair() as pair:
        with pair.connections.batch():
            pair.send('{"n":1}', key="a")
            pair.send('{"n":2}')
            pair.send('{"n":3}', key="b")
        assert pair.writes == 1
        assert texts(pair.peer) == ['{"n":1}', '{"n":2}', '{"n":3}']
        # And the next batch starts idle again: its one frame skips the outbox.
        with pair.connections.batch():
            pair.send('{"n":4}', key="a")
            assert pair.c.first is not None
        assert texts(pair.peer) == ['{"n":4}']


async def test_the_latest_state_replaces_the_first_frame_of_a_batch() -> None:
    async with open_pair() as pair:
        with pair.connections.batch():
            pair.send('{"at":1}', key="alice")
            pair.send('{"other":1}', key="bob")
            pair.send('{"at":2}', key="alice")
        # alice's newer state took the place of her first frame, ahead of bob's.
        assert texts(pair.peer) == ['{"at":2}', '{"other":1}']
        assert pair.connections._metrics.coalesced == 1


def fill(pair: Pair) -> None:
    """Write until the session's socket is full and bytes are parked."""
    filler = "x" * 60_000
    for _ in range(1000):
        with pair.connections.batch():
            pair.send(f'"{filler}"')
        if pair.ws.parked:
            return
    raise AssertionError("the socket never filled")


async def test_a_parked_connection_keeps_its_first_frame_and_the_latest_state_wins() -> None:
    async with open_pair() as pair:
        fill(pair)
        writes = pair.writes
        with pair.connections.batch():
            pair.send('{"at":1}', key="alice")
        # Parked: nothing written; the frame waits in the outbox, where it can be replaced.
        assert pair.writes == writes and pair.c.first is None and len(pair.c.outbox) == 1
        with pair.connections.batch():
            pair.send('{"at":2}', key="alice")
        assert len(pair.c.outbox) == 1
        received: list[bytes] = []
        while pair.ws.parked or pair.c.outbox:  # the client reads; the drain writes the rest
            received.append(read_all(pair.peer))
            await trio.sleep(0.01)
        received.append(read_all(pair.peer))
        frames = [payload.decode() for _, payload in parse_frames(b"".join(received))]
        assert frames[-1] == '{"at":2}' and '{"at":1}' not in frames


async def test_a_frame_sent_as_a_parked_connection_drains_follows_the_frames_that_waited() -> None:
    async with open_pair() as pair:
        fill(pair)
        with pair.connections.batch():
            pair.send('{"waited":1}')
        assert len(pair.c.outbox) == 1  # parked: it waits
        pair.send('{"then":2}')  # outside a batch: for the flusher, which is not running
        received: list[bytes] = []
        while pair.ws.parked or pair.c.outbox:  # the drain writes what waited, then the rest
            received.append(read_all(pair.peer))
            await trio.sleep(0.01)
        received.append(read_all(pair.peer))
        frames = [payload.decode() for _, payload in parse_frames(b"".join(received))]
        assert frames[-2:] == ['{"waited":1}', '{"then":2}']


async def test_a_full_queue_behind_a_parked_connection_closes_4008_and_drops_what_waits() -> None:
    async with open_pair(Config(queue_size=4)) as pair:
        fill(pair)
        with pair.connections.batch():
            pair.send('{"state":1}', key="alice")
            for n in range(5):
                pair.send(f'{{"n":{n}}}')
        assert pair.c.close_request is not None
        assert pair.c.close_request[0] == CLOSE_SLOW_CONSUMER
        assert pair.c.first is None and len(pair.c.outbox) == 0
        # Nothing more is queued for a connection being closed.
        pair.send('{"late":1}', key="bob")
        assert pair.c.first is None and len(pair.c.outbox) == 0


async def drain_all(pair: Pair) -> list[tuple[int, bytes]]:
    """Read as a client until nothing waits on the server's side; the frames read."""
    received: list[bytes] = []
    for _ in range(500):
        received.append(read_all(pair.peer))
        if not (pair.ws.parked or pair.c.outbox or pair.ws._draining):
            break
        await trio.sleep(0.01)
    received.append(read_all(pair.peer))
    return list(parse_frames(b"".join(received)))


def full_and_parked(pair: Pair) -> None:
    """The socket full (bytes parked) and the outbox of 4 frames full too."""
    fill(pair)
    with pair.connections.batch():
        for n in range(4):
            pair.send(f'{{"n":{n}}}')
    assert len(pair.c.outbox) == 4 and pair.c.close_request is None


async def test_a_frame_behind_a_first_frame_that_overflows_is_dropped_with_it() -> None:
    """A batch sends A then B to a full queue: A's push closes 4008, and B, which would
    fit the emptied queue, must not follow what was dropped."""
    async with open_pair(Config(queue_size=4)) as pair:
        full_and_parked(pair)
        with pair.connections.batch():
            pair.send('{"dropped":"A"}')
            pair.send('{"after":"B"}')
        assert pair.c.close_request is not None
        assert pair.c.close_request[0] == CLOSE_SLOW_CONSUMER
        sent = [payload for opcode, payload in await drain_all(pair) if opcode == 1]
        assert b'{"dropped":"A"}' not in sent and b'{"after":"B"}' not in sent


async def test_one_frame_onto_a_full_queue_closes_4008_and_sends_nothing_more() -> None:
    async with open_pair(Config(queue_size=4)) as pair:
        full_and_parked(pair)
        with pair.connections.batch():
            pair.send('{"one":1}')
        assert pair.c.close_request is not None and len(pair.c.outbox) == 0
        frames = await drain_all(pair)
        assert [opcode for opcode, _ in frames if opcode != 1][-1:] == [8]  # the close
        assert all(b'"n"' not in p and b'"one"' not in p for op, p in frames if op == 1)


@pytest.mark.parametrize("how", ["the peer closes", "we close", "a message too big"])
async def test_nothing_is_written_after_a_close(how: str) -> None:
    async with open_pair() as pair:
        if how == "we close":
            pair.ws.start_close(1000, "")
        else:
            if how == "the peer closes":
                pair.peer.send(b"\x88\x82\x00\x00\x00\x00\x03\xe8")
            else:
                pair.ws._protocol.max_message_size = 4
                pair.peer.send(b"\x81\x88\x00\x00\x00\x00" + b"x" * 8)
            await trio.sleep(0.05)
            with pytest.raises(Closed):
                pair.ws.read_now()
        with pair.connections.batch():
            pair.send('{"late":1}')
        pair.ws.send("late too")
        assert [opcode for opcode, _ in await drain_all(pair)] == [8]  # our close only


async def test_a_detached_connection_writes_and_reads_nothing() -> None:
    async with open_pair() as pair:
        pair.ws.detach()
        pair.ws.write_frames(b"\x81\x02{}")
        pair.ws.send("{}")
        assert read_all(pair.peer) == b""
        assert not pair.ws.open


@pytest.mark.parametrize("ending", ["client closes", "server refuses"])
async def test_a_session_ended_lets_go_of_its_descriptor_before_it_is_reused(
    server: TestServer, ending: str
) -> None:
    """After a session's socket is closed its number goes to the next socket opened: a
    frame for the old session must never reach the new one."""
    table = server.running.server.connections
    async with server.connect("alice", memory=False) as alice:
        assert (await alice.settings())["type"] == "settings"
        (old,) = table.by_id.values()
        ws, fd = old.ws, old.ws.fileno
        assert fd is not None
        if ending == "server refuses":
            table.close(old.conn, 4000, "bye")
            table.flush()
    await until(lambda: not table.by_id)
    await until(lambda: ws.fileno == -1)
    ws._sending = True  # as if a bug wrote after the end: the descriptor must be gone
    # Descriptors are handed out lowest first: open sockets until one has the old number.
    opened: list[socket.socket] = []
    try:
        while fd not in (sock.fileno() for sock in opened) and len(opened) < 200:
            opened.extend(socket.socketpair())
        assert fd in (sock.fileno() for sock in opened), "the descriptor was never reused"
        ws.write_frames(b"\x81\x02{}")
        ws.send("{}")
        for sock in opened:
            sock.setblocking(False)
            assert read_all(sock) == b""
    finally:
        for sock in opened:
            sock.close()
