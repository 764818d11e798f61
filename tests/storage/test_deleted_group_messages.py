"""A group message on its way to disk when its group is deleted is acked and never stored,
live, after a snapshot and after a crash alike, even if a group of the same name is created
again before the message is durable (found by an adversarial review)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import trio

from geopresence.client import Client
from geopresence.testing import TestServer, open_server
from tests.helpers import until

DURABLE: Final = {"in_memory": False, "time_origin": None}


def slow_disk(server: TestServer) -> trio.Event:
    """The server's journal writes wait until the returned event is set."""
    journal = server.running.server.journal
    assert journal is not None
    gate = trio.Event()
    real_flush = journal.flush

    async def slow_flush() -> None:
        await gate.wait()
        await real_flush()

    journal.flush = slow_flush  # type: ignore[method-assign]
    return gate


async def sent_then_group_deleted(
    server: TestServer, alice: Client, nursery: trio.Nursery, message: dict[str, Any]
) -> None:
    """alice sends ``message`` to group g (its journal write held back by ``slow_disk``),
    then g is deleted (in ``nursery``: the response waits for the disk too)."""
    hub = server.running.hub
    await alice.send(message)
    await until(lambda: hub.chat.pending_count > 0)
    nursery.start_soon(server.admin.delete_group, "g")
    await until(lambda: hub.store.group_members("g") is None)


async def test_a_snapshot_does_not_bring_back_a_deleted_groups_message(tmp_path: Path) -> None:
    """durability.md: ``group_deleted``: "its messages go with it". A snapshot forked while
    such a message is still on its way to disk does not capture it (it came back after a
    restart, in the sender's export, its client_msg_id in use)."""
    durable: dict[str, Any] = {**DURABLE, "data_dir": tmp_path}
    async with open_server(**durable, fsync="always") as server:
        await server.admin.set_group("g", ["alice", "bob"])
        node = server.running.server
        gate = slow_disk(server)
        async with server.connect("alice") as alice, trio.open_nursery() as nursery:
            message = {"type": "send", "group": "g", "text": "hi", "client_msg_id": "k"}
            await sent_then_group_deleted(server, alice, nursery, message)
            await node.take_snapshot(force=True)  # the interval's snapshot, in the window
            gate.set()
            assert (await alice.recv_type("sent"))["type"] == "sent"  # acked, not stored
        before = (await server.admin.export("alice"))["messages"]
        assert before == []
    async with open_server(**durable) as server:
        assert (await server.admin.export("alice"))["messages"] == before


async def test_a_message_to_a_deleted_then_recreated_group_is_the_same_after_a_restart(
    tmp_path: Path,
) -> None:
    """A message on its way to disk when its group is deleted is acked, not stored, and a
    replay of the journal ends the same way, even if a group of the same name is created
    before the message is durable (the live server once stored it in the new group, and a
    kill -9 then lost it)."""
    durable: dict[str, Any] = {**DURABLE, "data_dir": tmp_path}
    async with open_server(**durable, fsync="always") as server:
        await server.admin.set_group("g", ["alice", "bob"])
        node = server.running.server
        gate = slow_disk(server)
        async with server.connect("alice") as alice:
            async with trio.open_nursery() as nursery:
                message = {"type": "send", "group": "g", "text": "old group only"}
                await sent_then_group_deleted(server, alice, nursery, message)
                nursery.start_soon(server.admin.set_group, "g", ["alice", "carol"])
                await until(lambda: node.hub.store.group_members("g") is not None)
                gate.set()
                await alice.recv_type("sent")
            live = (await server.admin.export("alice"))["messages"]
        assert live == []  # it went with its group: never in the new g

        async def crash(*, force: bool = False) -> dict[str, object]:  # a kill -9: no snapshot
            return {}

        node.take_snapshot = crash  # type: ignore[method-assign]
    async with open_server(**durable) as server:
        assert (await server.admin.export("alice"))["messages"] == live
