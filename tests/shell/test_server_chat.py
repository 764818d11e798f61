"""Chat end to end over WebSocket: 1:1, groups, devices, errors, resends, sync, slow devices."""

from __future__ import annotations

import contextlib
from typing import Any

import trio
from trio.testing import MockClock
from trio_websocket import ConnectionClosed

from geopresence.client import connect_stream
from geopresence.testing import TestServer, open_server
from tests.helpers import quiet


async def test_one_to_one_reaches_every_device_of_both_users(
    server: TestServer, autojump_clock: MockClock
) -> None:
    await server.admin.befriend("alice", "bob")
    async with (
        server.connect("alice", "phone") as alice_phone,
        server.connect("alice", "laptop") as alice_laptop,
        server.connect("bob", "phone") as bob_phone,
        server.connect("bob", "tablet") as bob_tablet,
    ):
        for client in (alice_phone, alice_laptop, bob_phone, bob_tablet):
            await quiet(client)
        await trio.sleep(7)
        now = server.now()
        sent = await alice_phone.send_message("hi bob", to="bob", client_msg_id="m-1")
        assert sent["type"] == "sent" and sent["created_at"] == now
        message_id = sent["message_id"]
        expected = {
            "type": "message",
            "message_id": message_id,
            "from": "alice",
            "to": "bob",
            "text": "hi bob",
            "created_at": now,
        }
        assert await bob_phone.recv() == expected
        assert await bob_tablet.recv() == expected
        assert await alice_laptop.recv() == {**expected, "client_msg_id": "m-1"}
        # the sending device got only its ack
        assert (await alice_phone.request("heartbeat"))["type"] == "heartbeat"
        reply = await bob_phone.send_message("hi alice", to="alice")
        assert int(reply["message_id"]) > int(message_id)
        assert (await alice_phone.recv())["text"] == "hi alice"


async def test_group_messages_reach_members_only(
    server: TestServer, autojump_clock: MockClock
) -> None:
    await server.admin.set_group("hikers", ["alice", "bob", "carol"])
    async with (
        server.connect("alice") as alice,
        server.connect("bob") as bob,
        server.connect("mallory") as mallory,
    ):
        sent = await alice.send_message("summit at 9", group="hikers")
        assert sent["type"] == "sent"
        message = await bob.recv_type("message")
        assert message["group"] == "hikers" and "to" not in message
        assert message["from"] == "alice" and message["message_id"] == sent["message_id"]
        refused = await mallory.send_message("let me in", group="hikers")
        assert refused["code"] == "forbidden"
        assert (await mallory.sync())["messages"] == []
        missing = await mallory.send_message("hello?", group="no-such-group")
        assert missing["code"] == "forbidden"  # existence is not revealed


async def test_bad_sends_get_clear_errors_and_the_session_stays(
    server: TestServer, autojump_clock: MockClock
) -> None:
    await server.admin.befriend("alice", "bob")
    async with server.connect("alice") as alice:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"to": "carol", "text": "hi"}, "forbidden"),  # not a friend
            ({"to": "alice", "text": "hi"}, "forbidden"),  # oneself
            ({"to": "bob", "text": "x" * 4097}, "too_large"),
            ({"to": "bob", "text": "가" * 1366}, "too_large"),  # 4098 UTF-8 bytes
            ({"to": "bob"}, "bad_request"),  # no text
            ({"text": "hi"}, "bad_request"),  # no recipient
            ({"to": "bob", "group": "g", "text": "hi"}, "bad_request"),
            ({"to": "bob", "text": 5}, "bad_request"),
            ({"to": "b o b", "text": "hi"}, "bad_request"),
            ({"to": "bob", "text": "hi", "client_msg_id": ""}, "bad_request"),
            ({"to": "bob", "text": "hi", "client_msg_id": "x" * 129}, "bad_request"),
        ]
        for fields, code in cases:
            reply = await alice.request("send", **fields)
            assert (reply["type"], reply["code"]) == ("error", code), fields
        for fields in ({"after": "-1"}, {"after": "1e3"}, {"after": 1.5}, {"limit": 0}):
            reply = await alice.request("sync", **fields)
            assert (reply["type"], reply["code"]) == ("error", "bad_request"), fields
        ok = await alice.send_message("가" * 1365, to="bob")  # 4095 bytes
        assert ok["type"] == "sent"
        assert [m["text"] for m in await alice.sync_all()] == ["가" * 1365]


async def test_resend_with_client_msg_id_returns_the_original(
    server: TestServer, autojump_clock: MockClock
) -> None:
    await server.admin.befriend("alice", "bob")
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        await quiet(bob)
        first = await alice.send_message("once", to="bob", client_msg_id="k1")
        await trio.sleep(3)
        again = await alice.send_message("once", to="bob", client_msg_id="k1")
        assert again["message_id"] == first["message_id"]
        assert again["created_at"] == first["created_at"] and again["duplicate"] is True
        assert (await bob.recv())["text"] == "once"
        assert [m["message_id"] for m in await bob.sync_all()] == [first["message_id"]]
        assert 'geopresence_chat_messages_total{result="duplicate"} 1' in (
            await server.admin.metrics()
        )


async def test_a_device_that_was_offline_catches_up_with_sync(
    server: TestServer, autojump_clock: MockClock
) -> None:
    """The documented client algorithm: connect, sync from cur_max_message_id until more is
    false, then take live messages, de-duplicating by id."""
    await server.admin.befriend("alice", "bob")
    await server.admin.set_group("g", ["alice", "bob"])
    async with server.connect("bob", "phone") as phone:
        async with server.connect("alice") as alice:
            first = await alice.send_message("before", to="bob")
            cur_max = (await phone.recv_type("message"))["message_id"]
            assert cur_max == first["message_id"]
            # bob's laptop is offline while 250 messages arrive, 1:1 and in the group
            for i in range(250):
                kwargs: dict[str, Any] = {"to": "bob"} if i % 2 else {"group": "g"}
                await alice.send_message(f"m{i}", **kwargs)
            async with server.connect("bob", "laptop") as laptop:
                caught_up = await laptop.sync_all(after=cur_max)
                assert [m["text"] for m in caught_up] == [f"m{i}" for i in range(250)]
                ids = [int(m["message_id"]) for m in caught_up]
                assert ids == sorted(set(ids)) and ids[0] > int(cur_max)
                live = await alice.send_message("live", to="bob")
                assert (await laptop.recv_type("message"))["message_id"] == live["message_id"]
                everything = await laptop.sync_all()
                assert len(everything) == 252 and everything[-1]["text"] == "live"


async def test_slow_device_is_cut_with_4008_and_recovers_everything_by_sync(
    autojump_clock: MockClock,
) -> None:
    async with open_server(queue_size=8) as server:
        await server.admin.befriend("alice", "bob")
        stream = server.open_memory_connection(lockstep=True)
        async with connect_stream(stream, user="bob", device="phone") as stuck:
            async with server.connect("alice") as alice:
                await quiet(alice)
                sent = [await alice.send_message(f"n{i}", to="bob") for i in range(40)]
                assert all(s["type"] == "sent" for s in sent)  # the sender never waits
                with trio.fail_after(60):
                    while server.running.hub.connections_of("bob"):
                        await trio.sleep(0.5)
            del stuck
        metrics = await server.admin.metrics()
        assert 'geopresence_closes_total{code="4008"} 1' in metrics
        assert not server.running.server.connections  # nothing of bob's queue is left
        async with server.connect("bob", "phone") as bob:
            recovered = await bob.sync_all(limit=7)
            assert [m["message_id"] for m in recovered] == [s["message_id"] for s in sent]


async def test_sync_replies_piling_up_unread_are_bounded_in_bytes(
    autojump_clock: MockClock,
) -> None:
    """A client asking for many large pages and reading none is a slow consumer: its queue is
    bounded in bytes, not only in frames, so it cannot make the server hold hundreds of MB."""
    async with open_server(queue_bytes=300_000) as server:
        await server.admin.befriend("alice", "bob")
        async with server.connect("alice") as alice:
            for i in range(60):
                await alice.send_message(f"{i}" + "x" * 2000, to="bob")
        stream = server.open_memory_connection(lockstep=True)
        async with connect_stream(stream, user="bob", device="phone") as bob:
            with contextlib.suppress(ConnectionClosed):  # cut off before all 30: possible
                for i in range(30):  # each reply is ~120 KB
                    await bob.send({"type": "sync", "id": i, "after": "0", "limit": 60})
            with trio.fail_after(60):
                while server.running.hub.connections_of("bob"):
                    await trio.sleep(0.5)
            del bob
        assert 'geopresence_closes_total{code="4008"} 1' in await server.admin.metrics()
