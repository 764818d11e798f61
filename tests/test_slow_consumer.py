"""Never wait on a slow client: bounded queues, latest-wins presence, 4008 on overflow."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from geopresence.client import connect_stream
from geopresence.testing import open_server


async def test_burst_beyond_queue_closes_4008_and_counts_as_a_drop(
    autojump_clock: MockClock,
) -> None:
    async with open_server(queue_size=4) as server:
        async with server.connect("alice") as alice:
            # 10 new friends at once: 10 reliable snapshots for a queue of 4
            await server.admin.befriend_many([("alice", f"f{i}") for i in range(10)])
            code, reason = await alice.closed()
            assert (code, reason) == (4008, "slow consumer")
        # like a network drop: still online until the heartbeat window passes
        assert (await server.admin.user("alice"))["status"] == "online"
        await trio.sleep(29.9)
        assert (await server.admin.user("alice"))["status"] == "online"
        await trio.sleep(0.2)
        assert (await server.admin.user("alice"))["status"] == "offline"
        assert 'geopresence_closes_total{code="4008"} 1' in await server.admin.metrics()


async def test_client_that_stops_reading_is_cut_off_in_bounded_time(
    autojump_clock: MockClock,
) -> None:
    async with open_server(queue_size=8, close_timeout=5) as server:
        stream = server.running.server.open_memory_connection(lockstep=True)
        async with connect_stream(stream, user="mallory", device="d") as mallory:
            start = trio.current_time()
            # ask for replies and never read them
            for i in range(30):
                await mallory.send({"type": "heartbeat", "id": i})
            with trio.fail_after(60):
                while server.running.server.hub.session_count:
                    await trio.sleep(0.5)
            assert trio.current_time() - start <= 5.5
        # the server's memory for it is gone and other users are unaffected
        assert not server.running.server._conns
        async with server.connect("bob") as bob:
            assert (await bob.request("heartbeat"))["type"] == "heartbeat"


async def test_presence_coalesces_for_a_slow_reader(autojump_clock: MockClock) -> None:
    async with open_server(queue_size=4) as server:
        for i in range(3):
            await server.admin.befriend("watcher", f"u{i}")
        stream = server.running.server.open_memory_connection(lockstep=True)
        async with connect_stream(stream, user="watcher", device="d") as watcher:
            # each friend flaps 20 times while the watcher reads nothing
            for _ in range(20):
                for i in range(3):
                    async with server.connect(f"u{i}") as friend:
                        await friend.logout()
            # one frame may be stuck in the transport; the queue holds one per friend
            seen: dict[str, str] = {}
            with trio.move_on_after(1):
                while True:
                    event = await watcher.recv_type("presence")
                    seen[event["user"]] = event["status"]
            assert seen == {"u0": "offline", "u1": "offline", "u2": "offline"}
        assert 'geopresence_closes_total{code="4008"}' not in await server.admin.metrics()
