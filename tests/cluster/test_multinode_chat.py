"""A node keeps no chat message: messages reach the nodes of their readers on channels, and
sync pages and exports are read from Redis, whichever node committed them. Real
``geopresence serve`` nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.test_multinode import _gauge, cluster_of, expect, nothing_of, session


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
async def test_messages_are_served_from_redis_by_any_node(kind: str, tmp_path: Path) -> None:
    with cluster_of(kind, 2, tmp_path) as ((a, b), _):
        async with a.admin() as admin_a, b.admin() as admin_b:
            await admin_a.befriend("alice", "bob")
            await admin_a.set_group("hikers", ["alice", "bob", "carol"])
            async with session(a, "alice") as alice, session(b, "bob") as bob:
                await alice.send_message("for bob", to="bob")
                await alice.send_message("for the hikers", group="hikers")
                await expect(bob, "message", text="for bob")
                await expect(bob, "message", text="for the hikers")
                await nothing_of(bob, "message", 0.3)
                for admin in (admin_a, admin_b):
                    assert _gauge(await admin.metrics(), "chat_messages_stored") == 0
                # Read from Redis: through the node that committed them or another.
                async with session(b, "carol") as carol:
                    texts = [m["text"] for m in await carol.sync_all()]
                    assert texts == ["for the hikers"]
                async with session(a, "bob", "tablet") as tablet:
                    texts = [m["text"] for m in await tablet.sync_all()]
                    assert texts == ["for bob", "for the hikers"]
                    page = await tablet.request("sync", after="0", limit=1)
                    assert [m["text"] for m in page["messages"]] == ["for bob"]
                    assert page["more"] is True
                # bob's phone gets bob's tablet's message, alice gets it (another node).
                async with session(a, "bob", "tablet") as tablet:
                    await tablet.send_message("back to you", to="alice")
                    await expect(bob, "message", text="back to you")
                    await expect(alice, "message", text="back to you")
            exported = await admin_b.export("alice")
            texts = [m["text"] for m in exported["messages"]]
            assert texts == ["for bob", "for the hikers", "back to you"]


async def test_a_member_added_on_another_node_reads_only_what_follows(tmp_path: Path) -> None:
    """The join mark bounds the ids every node issued by then (node b never saw the
    message node a committed): nothing from before the join shows."""
    with cluster_of("standalone", 2, tmp_path) as ((a, b), _):
        async with a.admin() as admin_a, b.admin() as admin_b:
            await admin_a.set_group("hikers", ["alice", "carol"])
            async with session(a, "alice") as alice:
                await alice.send_message("before bob", group="hikers")
                await admin_b.add_member("hikers", "bob")
                async with session(b, "bob") as bob:
                    assert await bob.sync_all() == []
                    await alice.send_message("after bob", group="hikers")
                    await expect(bob, "message", text="after bob")
                async with session(a, "bob", "tablet") as tablet:
                    assert [m["text"] for m in await tablet.sync_all()] == ["after bob"]
