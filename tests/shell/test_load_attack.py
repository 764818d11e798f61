"""Load and leak attacks: what a client that stops reading, or many that come and go,
leaves behind."""

from __future__ import annotations

import trio
from trio.testing import MockClock
from wsproto.events import Ping, Pong, TextMessage

from geopresence.testing import open_server
from tests.shell.test_peer_misbehaviour import RawPeer


async def test_pongs_to_a_client_that_stopped_reading_stay_bounded(
    autojump_clock: MockClock,
) -> None:
    async with open_server(rate_limit=30, rate_burst=60) as server:
        stream = server.open_memory_connection(lockstep=True)
        peer = RawPeer(stream)
        with trio.fail_after(5):
            await peer.handshake()
            await peer.send(TextMessage('{"type":"hello","user":"mallory","device":"d"}'))
            await peer.until(TextMessage)  # welcome
        (c,) = server.running.server.connections.by_id.values()
        # Never read: a heartbeat a second (no reply) and pings within the rate limit,
        # each asking for a 125-byte pong, for ten minutes (was: 1.5 MB parked, growing).
        for second in range(600):
            await peer.send(TextMessage('{"type":"heartbeat"}'))
            for i in range(20):
                await peer.send(Ping(b"%03d-%02d" % (second, i) + b"x" * 118))
            await trio.sleep(1)
            assert sum(len(b) for b in c.ws._parked) <= 64 * 1024
        # Reading again, the client gets the answer to its latest ping.
        with trio.fail_after(5):
            while True:
                pong = await peer.until(Pong)
                assert isinstance(pong, Pong)
                if pong.payload.startswith(b"599-19"):
                    break
        await trio.aclose_forcefully(stream)
