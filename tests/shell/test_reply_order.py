"""Replies on one connection come in order (docs/protocol.md), end to end over WebSocket.

With a disk journal, ``sent`` and ``settings`` wait until the change is durable; a reply
made meanwhile to a later request of the same connection (a heartbeat ack, an error, the
``sent`` of a resend answered from the store) must wait behind them, not overtake them
(``geopresence.core.replies``). Without a journal nothing waits: replies go out at once and
no connection keeps a line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from geopresence.client import Client
from geopresence.testing import TestServer, open_server
from tests.helpers import places_taken, quiet

FSYNC = pytest.mark.parametrize("fsync", ["everysec", "always"])


@asynccontextmanager
async def on_disk(tmp_path: Path, fsync: str) -> AsyncIterator[TestServer]:
    """A server with a journal on disk (``fsync`` policy); alice and bob are friends."""
    async with open_server(
        in_memory=False, data_dir=tmp_path / "d", time_origin=None, fsync=fsync
    ) as server:
        await server.admin.befriend("alice", "bob")
        yield server


async def replies(client: Client, count: int) -> list[dict[str, Any]]:
    """The next ``count`` frames that answer a request (they carry ``re``)."""
    got: list[dict[str, Any]] = []
    while len(got) < count:
        message = await client.recv()
        if message.get("re") is not None:
            got.append(message)
    return got


@FSYNC
async def test_replies_come_in_order_with_a_disk_journal(tmp_path: Path, fsync: str) -> None:
    """docs/protocol.md:98 "Replies on one connection come in order." A send then a heartbeat
    with an id, written back to back: the sent (re 1) must come before the heartbeat (re 2)."""
    with trio.fail_after(30):
        async with on_disk(tmp_path, fsync) as server:
            async with server.connect("alice") as alice:
                await quiet(alice)
                await alice.send({"type": "send", "id": 1, "to": "bob", "text": "hi"})
                await alice.send({"type": "heartbeat", "id": 2})
                await alice.send({"type": "send", "id": 3, "to": "carol", "text": "x"})
                assert [m["re"] for m in await replies(alice, 3)] == [1, 2, 3]


@FSYNC
async def test_a_settings_reply_comes_before_a_later_heartbeat_and_send(
    tmp_path: Path, fsync: str
) -> None:
    """``settings`` waits for the journal as ``sent`` does (``Acks``); the heartbeat after it
    must not overtake it, nor may the ``sent`` of a send after it (the hub releases chat's
    acks before the settings replies when the journal advances)."""
    with trio.fail_after(30):
        async with on_disk(tmp_path, fsync) as server:
            async with server.connect("alice") as alice:
                await quiet(alice)
                await alice.send({"type": "settings", "id": 1, "radius_m": 1500})
                await alice.send({"type": "heartbeat", "id": 2})
                await alice.send({"type": "send", "id": 3, "to": "bob", "text": "hi"})
                await alice.send({"type": "settings", "id": 4, "share_location": False})
                got = await replies(alice, 4)
                assert [(m["re"], m["type"]) for m in got] == [
                    (1, "settings"),
                    (2, "heartbeat"),
                    (3, "sent"),
                    (4, "settings"),
                ]
                assert got[0]["radius_m"] == 1500 and got[3]["share_location"] is False


@FSYNC
async def test_a_resend_waits_behind_a_newer_send_on_its_way_to_disk(
    tmp_path: Path, fsync: str
) -> None:
    """A resend of a stored message is answered from the store at once (a duplicate
    ``sent``), and a resend of a message on its way to disk with it: both after the ``sent``
    of a newer send that is still on its way to disk, in the order asked."""
    with trio.fail_after(30):
        async with on_disk(tmp_path, fsync) as server:
            async with server.connect("alice") as alice:
                await quiet(alice)
                first = await alice.send_message("one", to="bob", client_msg_id="a")
                send: dict[str, Any] = {"type": "send", "to": "bob"}
                await alice.send({**send, "id": 2, "text": "two", "client_msg_id": "b"})
                await alice.send({**send, "id": 3, "text": "one", "client_msg_id": "a"})
                await alice.send({**send, "id": 4, "text": "two", "client_msg_id": "b"})
                await alice.send({"type": "heartbeat", "id": 5})
                got = await replies(alice, 4)
                assert [(m["re"], m.get("duplicate")) for m in got] == [
                    (2, None),
                    (3, True),
                    (4, True),
                    (5, None),
                ]
                assert got[1]["message_id"] == first["message_id"]
                assert got[2]["message_id"] == got[0]["message_id"] > first["message_id"]


@FSYNC
async def test_a_connection_closed_with_a_reply_waiting_leaves_no_line(
    tmp_path: Path, fsync: str
) -> None:
    """A connection that goes while its ``sent`` waits for the journal: its line is
    forgotten with its session (no leak), and the message is still stored and delivered."""
    with trio.fail_after(30):
        async with on_disk(tmp_path, fsync) as server:
            hub = server.running.hub
            async with server.connect("bob") as bob:
                async with server.connect("alice") as alice:
                    await quiet(alice)
                    await alice.send({"type": "send", "id": 1, "to": "bob", "text": "bye"})
                    await alice.send({"type": "heartbeat", "id": 2})
                while hub.connections_of("alice"):
                    await trio.sleep(0.01)
                assert (await bob.recv_type("message"))["text"] == "bye"
                assert len(hub.replies) == 0


async def test_nothing_waits_without_a_journal(
    server: TestServer, autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-memory default: every reply goes out as its request is handled, and no
    connection ever has a line of replies (``Replies`` costs one dict lookup per frame)."""
    hub = server.running.hub
    places = places_taken(hub, monkeypatch)
    await server.admin.befriend("alice", "bob")
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        await quiet(alice)
        await alice.send({"type": "send", "id": 1, "to": "bob", "text": "hi"})
        await alice.send({"type": "settings", "id": 2, "radius_m": 1500})
        await alice.send({"type": "heartbeat", "id": 3})
        await alice.send({"type": "send", "id": 4, "to": "bob", "text": "hi", "client_msg_id": "c"})
        await alice.send({"type": "send", "id": 5, "to": "bob", "text": "hi", "client_msg_id": "c"})
        got = await replies(alice, 5)
        assert [m["re"] for m in got] == [1, 2, 3, 4, 5]
        assert got[4]["duplicate"] is True
        assert places == [] and len(hub.replies) == 0
        assert [m["text"] for m in [await bob.recv_type("message") for _ in range(2)]] == [
            "hi",
            "hi",
        ]
