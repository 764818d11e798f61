"""Presence over real WebSocket sessions (in-memory transport, virtual time).

Every timing rule is asserted at exact virtual times: heartbeats every 5 s keep a user
online; 30 s without activity makes it offline; a dropped connection keeps it online for the
rest of the window.
"""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock
from trio_websocket import ConnectionClosed

from geopresence.client import Client
from geopresence.testing import TestServer


async def no_message(client: Client, wait: float = 0.5) -> None:
    """Assert that nothing arrives within ``wait`` virtual seconds."""
    with trio.move_on_after(wait):
        message = await client.recv()
        pytest.fail(f"unexpected message {message}")


async def test_welcome_and_friends_presence(server: TestServer, autojump_clock: MockClock) -> None:
    await server.admin.befriend("alice", "bob")
    await server.admin.befriend("alice", "carol")
    await trio.sleep(7)
    async with server.connect("bob", "phone"), server.connect("alice", "phone") as alice:
        assert alice.welcome == {
            "type": "welcome",
            "user": "alice",
            "device": "phone",
            "heartbeat_interval": 5,
            "offline_after": 30,
            "server_time": 7,
        }
        assert alice.friends == [
            {"user": "bob", "status": "online", "last_active_at": 7},
            {"user": "carol", "status": "offline", "last_active_at": None},
        ]


async def test_login_and_timeout_at_exact_times(
    server: TestServer, autojump_clock: MockClock
) -> None:
    await server.admin.befriend("alice", "bob")
    async with server.connect("alice", heartbeat=True) as alice:
        await trio.sleep(10)
        async with server.connect("bob") as bob:
            event = await alice.recv_type("presence")
            assert event == {
                "type": "presence",
                "user": "bob",
                "status": "online",
                "last_active_at": 10,
            }
            await trio.sleep(3)
            await bob.heartbeat()  # activity at t=13
            # bob is silent from now on
            assert await bob.closed() == (4000, "heartbeat timeout")
            assert trio.current_time() == 43
        event = await alice.recv_type("presence")
        assert event == {
            "type": "presence",
            "user": "bob",
            "status": "offline",
            "last_active_at": 13,
        }
        assert trio.current_time() == 43


async def test_heartbeats_keep_user_online(server: TestServer, autojump_clock: MockClock) -> None:
    await server.admin.befriend("alice", "bob")
    async with (
        server.connect("alice", heartbeat=True) as alice,
        server.connect("bob", heartbeat=True),
    ):
        await alice.recv_type("presence")  # bob online
        await no_message(alice, 300)  # five minutes of heartbeats: no event at all
        assert (await server.admin.user("bob"))["status"] == "online"


async def test_any_message_counts_as_activity(
    server: TestServer, autojump_clock: MockClock
) -> None:
    async with server.connect("bob") as bob:
        await trio.sleep(20)
        await bob.send_raw("this is not json")  # even a bad frame shows the device is alive
        assert (await bob.recv())["code"] == "bad_request"
        code, _ = await bob.closed()
        assert code == 4000
        assert trio.current_time() == 50


async def test_drop_and_reconnect_inside_window_emits_nothing(
    server: TestServer, autojump_clock: MockClock
) -> None:
    await server.admin.befriend("alice", "bob")
    async with server.connect("alice", heartbeat=True) as alice:
        async with server.connect("bob", "phone"):
            await alice.recv_type("presence")  # online at t=0
            await trio.sleep(4)
        # the tunnel: connection gone at t=4, back at t=20
        await trio.sleep(16)
        async with server.connect("bob", "phone", heartbeat=True):
            await no_message(alice, 100)
        user = await server.admin.user("bob")
        assert user["status"] == "online"  # still inside the new window
        event = await alice.recv_type("presence")
        assert event["status"] == "offline"


async def test_dropped_connection_offline_after_window(
    server: TestServer, autojump_clock: MockClock
) -> None:
    await server.admin.befriend("alice", "bob")
    async with server.connect("alice", heartbeat=True) as alice:
        async with server.connect("bob"):
            await alice.recv_type("presence")
            await trio.sleep(2)
        assert (await server.admin.user("bob"))["status"] == "online"
        event = await alice.recv_type("presence")
        assert trio.current_time() == 30  # last activity was the hello at t=0
        assert event == {
            "type": "presence",
            "user": "bob",
            "status": "offline",
            "last_active_at": 0,
        }


async def test_replacement_same_device_closes_4002_without_presence(
    server: TestServer, autojump_clock: MockClock
) -> None:
    await server.admin.befriend("alice", "bob")
    async with server.connect("alice", heartbeat=True) as alice:
        async with server.connect("bob", "phone") as old:
            await alice.recv_type("presence")
            await trio.sleep(1)
            async with server.connect("bob", "phone", heartbeat=True):
                code, reason = await old.closed()
                assert code == 4002
                assert reason
                await no_message(alice, 60)
                assert (await server.admin.user("bob"))["devices"] == 1


async def test_two_devices_one_user_one_event(
    server: TestServer, autojump_clock: MockClock
) -> None:
    await server.admin.befriend("alice", "bob")
    async with server.connect("alice", heartbeat=True) as alice:
        async with server.connect("bob", "phone", heartbeat=True) as phone:
            assert (await alice.recv_type("presence"))["status"] == "online"
            async with server.connect("bob", "laptop", heartbeat=True) as laptop:
                await no_message(alice, 10)
                assert (await server.admin.user("bob"))["devices"] == 2
                await laptop.logout()
                assert (await laptop.closed())[0] == 4001
            await no_message(alice, 10)
            await phone.logout()
            event = await alice.recv_type("presence")
            assert event["status"] == "offline"
        await no_message(alice, 60)  # nothing more when the sockets' windows pass


async def test_logout_on_socket_is_immediate_and_keeps_last_active(
    server: TestServer, autojump_clock: MockClock
) -> None:
    await server.admin.befriend("alice", "bob")
    async with server.connect("alice", heartbeat=True) as alice:
        async with server.connect("bob") as bob:
            await alice.recv_type("presence")
            await trio.sleep(4)
            await bob.heartbeat()  # last activity t=4
            await trio.sleep(2)
            await bob.logout()  # at t=6: not activity
            assert (await bob.closed())[0] == 4001
        event = await alice.recv_type("presence")
        assert trio.current_time() == 6
        assert event == {
            "type": "presence",
            "user": "bob",
            "status": "offline",
            "last_active_at": 4,
        }
        user = await server.admin.user("bob")
        assert user == {"user": "bob", "status": "offline", "last_active_at": 4, "devices": 0}


async def test_http_logout_one_device_or_all(server: TestServer, autojump_clock: MockClock) -> None:
    await server.admin.befriend("alice", "bob")
    async with server.connect("alice", heartbeat=True) as alice:
        async with (
            server.connect("bob", "phone", heartbeat=True) as phone,
            server.connect("bob", "laptop", heartbeat=True) as laptop,
        ):
            await alice.recv_type("presence")
            await trio.sleep(3)
            result = await server.admin.logout("bob", device="laptop")
            assert result["devices_logged_out"] == 1
            assert result["status"] == "online"
            assert (await laptop.closed())[0] == 4001
            await no_message(alice, 1)
            result = await server.admin.logout("bob")
            assert result == {"user": "bob", "devices_logged_out": 1, "status": "offline"}
            assert (await phone.closed())[0] == 4001
            event = await alice.recv_type("presence")
            assert event["status"] == "offline"
            assert event["last_active_at"] <= trio.current_time()


async def test_relogin_after_offline_is_a_new_transition(
    server: TestServer, autojump_clock: MockClock
) -> None:
    await server.admin.befriend("alice", "bob")
    async with server.connect("alice", heartbeat=True) as alice:
        async with server.connect("bob") as bob:
            await bob.logout()
            await bob.closed()
        statuses = [(await alice.recv_type("presence"))["status"] for _ in range(2)]
        assert statuses == ["online", "offline"]
        async with server.connect("bob", heartbeat=True):
            assert (await alice.recv_type("presence"))["status"] == "online"


async def test_friendship_changes_apply_to_live_connections(
    server: TestServer, autojump_clock: MockClock
) -> None:
    async with (
        server.connect("alice", heartbeat=True) as alice,
        server.connect("bob", heartbeat=True) as bob,
    ):
        await no_message(alice, 1)
        await server.admin.befriend("alice", "bob")
        snapshot = await alice.recv()
        assert snapshot == {
            "type": "friends_presence",
            "friends": [{"user": "bob", "status": "online", "last_active_at": 0}],
        }
        assert (await bob.recv())["friends"][0]["user"] == "alice"
        async with server.connect("carol") as carol:
            await server.admin.befriend("carol", "bob")
            await carol.logout()
        assert (await bob.recv_type("presence"))["user"] == "carol"
        await server.admin.unfriend("bob", "alice")
        assert await alice.recv() == {"type": "friend_removed", "user": "bob"}
        assert await bob.recv_type("friend_removed") == {"type": "friend_removed", "user": "alice"}
        # alice no longer hears bob
        await bob.logout()
        await no_message(alice, 60)


async def test_group_presence_fanout_and_query(autojump_clock: MockClock) -> None:
    from geopresence.testing import open_server

    async with open_server(presence_fanout_limit=3) as server:
        await server.admin.set_group("small", ["ann", "ben", "cat"])
        await server.admin.set_group("big", ["ann", "ben", "cat", "dan"])
        async with (
            server.connect("ann", heartbeat=True) as ann,
            server.connect("dan", heartbeat=True) as dan,
            server.connect("ben", heartbeat=True),
        ):
            # ann hears ben through "small" (3 members); dan shares only "big" (4 > 3)
            event = await ann.recv_type("presence")
            assert (event["user"], event["status"]) == ("ben", "online")
            await no_message(dan, 5)
            reply = await dan.request("group_presence", group="big")
            assert reply == {
                "type": "group_presence",
                "re": reply["re"],
                "group": "big",
                "online": ["ann", "ben", "dan"],
                "total": 4,
            }
            outsider = await ann.request("group_presence", group="nope")
            assert outsider["code"] == "forbidden"


async def test_group_and_friend_together_still_one_event(
    server: TestServer, autojump_clock: MockClock
) -> None:
    await server.admin.befriend("ann", "ben")
    await server.admin.set_group("g1", ["ann", "ben"])
    await server.admin.set_group("g2", ["ann", "ben"])
    async with server.connect("ann", heartbeat=True) as ann:
        async with server.connect("ben") as ben:
            await ben.logout()
        events = [await ann.recv_type("presence") for _ in range(2)]
        assert [e["status"] for e in events] == ["online", "offline"]
        await no_message(ann, 40)


async def test_group_membership_changes_apply_live(
    server: TestServer, autojump_clock: MockClock
) -> None:
    async with server.connect("ann", heartbeat=True) as ann:
        await server.admin.set_group("g", ["ann"])
        async with server.connect("ben") as ben:
            await no_message(ann, 1)
            await server.admin.add_member("g", "ben")
            await ben.logout()
        assert (await ann.recv_type("presence"))["status"] == "offline"
        await server.admin.remove_member("g", "ben")
        async with server.connect("ben") as ben:
            await ben.logout()
        await no_message(ann, 40)


async def test_heartbeat_with_id_is_acknowledged(
    server: TestServer, autojump_clock: MockClock
) -> None:
    async with server.connect("ann") as ann:
        await trio.sleep(2)
        reply = await ann.request("heartbeat")
        assert reply == {"type": "heartbeat", "re": reply["re"], "server_time": 2}


async def test_closed_session_raises_connection_closed(
    server: TestServer, autojump_clock: MockClock
) -> None:
    async with server.connect("ann") as ann:
        await ann.logout()
        with pytest.raises(ConnectionClosed):
            while True:
                await ann.recv()
