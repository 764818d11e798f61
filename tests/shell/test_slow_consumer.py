"""Never wait on a slow client: bounded queues, latest-wins presence, 4008 on overflow."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from geopresence.client import connect_stream
from geopresence.testing import open_server


async def test_bulk_import_sends_one_snapshot(autojump_clock: MockClock) -> None:
    async with open_server(queue_size=4) as server, server.connect("alice") as alice:
        await server.admin.befriend_many([("alice", f"f{i}") for i in range(10)])
        snapshot = await alice.recv()
        assert snapshot["type"] == "friends_presence"
        assert [f["user"] for f in snapshot["friends"]] == [f"f{i}" for i in range(10)]
        assert (await alice.request("heartbeat"))["type"] == "heartbeat"


async def test_state_burst_beyond_bound_closes_4008_and_counts_as_a_drop(
    autojump_clock: MockClock,
) -> None:
    async with open_server(state_queue_size=4) as server:
        await server.admin.befriend_many([("alice", f"f{i}") for i in range(10)])
        stream = server.open_memory_connection(lockstep=True)
        async with connect_stream(stream, user="alice", device="d") as alice:
            # ten different friends come online while alice reads nothing
            for i in range(10):
                async with server.connect(f"f{i}", heartbeat=True):
                    pass
            with trio.fail_after(60):
                while server.running.server.hub.connections_of("alice"):
                    await trio.sleep(0.5)
            del alice
        metrics = await server.admin.metrics()
        assert 'geopresence_closes_total{code="4008"} 1' in metrics
        # like a network drop: still online until the heartbeat window passes
        assert (await server.admin.user("alice"))["status"] == "online"
        await trio.sleep(30)
        assert (await server.admin.user("alice"))["status"] == "offline"


async def test_client_that_stops_reading_is_cut_off_in_bounded_time(
    autojump_clock: MockClock,
) -> None:
    async with open_server(queue_size=8, close_timeout=5) as server:
        stream = server.open_memory_connection(lockstep=True)
        async with connect_stream(stream, user="mallory", device="d") as mallory:
            start = trio.current_time()
            # ask for replies and never read them
            for i in range(30):
                await mallory.send({"type": "heartbeat", "id": i})
            with trio.fail_after(60):
                while server.running.server.hub.sessions.count:
                    await trio.sleep(0.5)
            assert trio.current_time() - start <= 5.5
        # the server's memory for it is gone and other users are unaffected
        assert not server.running.server.connections
        async with server.connect("bob") as bob:
            assert (await bob.request("heartbeat"))["type"] == "heartbeat"


async def test_presence_coalesces_for_a_slow_reader(autojump_clock: MockClock) -> None:
    async with open_server(queue_size=4) as server:
        for i in range(3):
            await server.admin.befriend("watcher", f"u{i}")
        stream = server.open_memory_connection(lockstep=True)
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


async def test_logout_of_a_stuck_client_ends_in_bounded_time(autojump_clock: MockClock) -> None:
    async with open_server(close_timeout=5) as server:
        stream = server.open_memory_connection(lockstep=True)
        async with connect_stream(stream, user="alice", device="d") as alice:
            await alice.send({"type": "heartbeat", "id": 1})  # its reply blocks the writer
            await trio.sleep(1)
            start = trio.current_time()
            await server.admin.logout("alice")
            with trio.fail_after(60):
                while server.running.server.connections:
                    await trio.sleep(0.1)
            assert trio.current_time() - start <= 5.2
        assert "geopresence_connections 0" in await server.admin.metrics()


async def test_shutdown_closes_connections_still_before_hello_with_1001(
    autojump_clock: MockClock,
) -> None:
    from trio_websocket import ConnectionClosed, wrap_client_stream

    async with open_server() as server:
        stream = server.open_memory_connection()
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, stream, "localhost", "/ws")  # type: ignore[arg-type]
            await trio.sleep(1)
            start = trio.current_time()
            server.stop()
            try:
                await ws.get_message()
            except ConnectionClosed as exc:
                assert exc.reason is not None and exc.reason.code == 1001
            assert trio.current_time() - start < 1
            nursery.cancel_scope.cancel()
