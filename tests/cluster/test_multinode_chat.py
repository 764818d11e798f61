"""A node keeps no chat message: messages reach the nodes of their readers on channels, and
sync pages and exports are read from Redis, whichever node committed them. Real
``geopresence serve`` nodes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from geopresence.cluster.link import WRITE_DELAY_ENV
from geopresence.cluster.redis_keys import Keys
from geopresence.model.snowflake import min_id_at
from tests.cluster.test_multinode import (
    _gauge,
    a_slow_commit_race,
    cluster_of,
    expect,
    nothing_of,
    redis_of,
    session,
    start_node,
)
from tests.redis_server import redis_server


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


async def test_a_restarted_node_issues_above_the_last_id_it_wrote(tmp_path: Path) -> None:
    """Its clock may have stepped back meanwhile: ids stay increasing per node across
    restarts (``gp:last_id:{N}``, read as it starts); its chat waits until its clock has
    caught up (the horizon: no id above the node's own clock is shown before)."""
    ahead = min_id_at(time.time() + 2) | (1 << 12)  # node 1's, two seconds ahead
    with redis_server() as port:
        args = ["--redis", f"redis://127.0.0.1:{port}/0"]
        async with redis_of(args) as client:
            await client.set(Keys().last_id(1), str(ahead))
        node = start_node(args, 1, tmp_path)
        try:
            async with node.admin() as admin:
                await admin.befriend("alice", "bob")
            async with session(node, "alice") as alice:
                sent = await alice.send_message("hi", to="bob")
                assert int(sent["message_id"]) > ahead
        finally:
            node.proc.terminate()
            node.proc.wait(15)


async def test_a_resend_after_the_friendship_ended_gets_its_original(tmp_path: Path) -> None:
    """A resend asks for the result of a send already accepted: answered with the stored
    message whatever changed since, through any node (docs/protocol.md, Chat)."""
    with cluster_of("standalone", 2, tmp_path) as ((a, b), _):
        async with a.admin() as admin:
            await admin.befriend("alice", "bob")
            await admin.set_group("hikers", ["alice", "bob"])
            async with session(a, "alice") as alice:
                first = await alice.send_message("hi", to="bob", client_msg_id="k1")
                hikers = await alice.send_message("hi all", group="hikers", client_msg_id="k2")
            await admin.unfriend("alice", "bob")
            await admin.remove_member("hikers", "alice")
        for node in (a, b):
            async with session(node, "alice", "tablet") as alice:
                again = await alice.send_message("hi", to="bob", client_msg_id="k1")
                assert again["message_id"] == first["message_id"] and again["duplicate"]
                again = await alice.send_message("hi all", group="hikers", client_msg_id="k2")
                assert again["message_id"] == hikers["message_id"] and again["duplicate"]
                refused = await alice.send_message("new", to="bob", client_msg_id="k3")
                assert refused["type"] == "error" and refused["code"] == "forbidden"


@pytest.mark.parametrize("same_node", [True, False])
async def test_a_client_msg_id_reused_in_another_conversation_is_refused(
    same_node: bool, tmp_path: Path
) -> None:
    """As on one node: a ``client_msg_id`` is the sender's, whichever node each send
    reaches; reused for another recipient, it is refused and nothing is stored."""
    with cluster_of("standalone", 2, tmp_path) as ((a, b), _):
        async with a.admin() as admin:
            await admin.befriend("alice", "bob")
            await admin.befriend("alice", "carol")
        async with (
            session(a, "alice") as phone,
            session(a if same_node else b, "alice", "tablet") as tablet,
        ):
            sent = await phone.request("send", to="bob", text="hi", client_msg_id="k1")
            assert sent["type"] == "sent"
            again = await tablet.request("send", to="carol", text="hi", client_msg_id="k1")
            assert again["type"] == "error" and again["code"] == "bad_request", again
            resent = await tablet.request("send", to="bob", text="hi", client_msg_id="k1")
            assert resent["message_id"] == sent["message_id"] and resent["duplicate"] is True
            assert [m["text"] for m in await tablet.sync_all()] == ["hi"]


async def test_a_client_msg_id_is_free_again_once_its_conversation_is_gone(
    tmp_path: Path,
) -> None:
    """As on one node: an id used in a group is refused elsewhere, to a non-friend too
    (``bad_request`` before ``forbidden``), until the group is deleted; one used with a
    friend is free again once that friend is forgotten."""
    with cluster_of("standalone", 2, tmp_path) as ((a, b), _):
        async with a.admin() as admin:
            await admin.befriend("alice", "bob")
            await admin.befriend("alice", "carol")
            await admin.set_group("hikers", ["alice", "bob"])
            async with session(a, "alice") as alice:
                sent = await alice.request("send", group="hikers", text="hi", client_msg_id="k1")
                assert sent["type"] == "sent"
                stranger = await alice.request("send", to="dave", text="hi", client_msg_id="k1")
                assert stranger["code"] == "bad_request", stranger
                await admin.delete_group("hikers")
                to_bob = await alice.request("send", to="bob", text="hi", client_msg_id="k1")
                assert to_bob["type"] == "sent", to_bob
                async with b.admin() as admin_b:
                    await admin_b.forget("bob")
                to_carol = await alice.request("send", to="carol", text="hi", client_msg_id="k1")
                assert to_carol["type"] == "sent", to_carol


async def test_a_genuine_resend_is_answered_while_a_reuse_waits_to_be_written(
    tmp_path: Path,
) -> None:
    """k1 was stored for bob; alice's tablet reuses it for carol on a node whose writes are
    slow, and her laptop resends the original meanwhile: Redis, not the pending reuse,
    decides (one node would answer the resend as a duplicate, the reuse as an error)."""
    with cluster_of("standalone", 1, tmp_path) as ((a,), args):
        b = start_node(args, 2, tmp_path, env={WRITE_DELAY_ENV: "1.0"})
        try:
            async with a.admin() as admin:
                await admin.befriend("alice", "bob")
                await admin.befriend("alice", "carol")
            async with session(a, "alice") as phone:
                sent = await phone.request("send", to="bob", text="hi", client_msg_id="k1")
            async with session(b, "alice", "tablet") as tablet, session(b, "alice", "pc") as pc:
                async with trio.open_nursery() as nursery:
                    reuse: list[dict[str, Any]] = []

                    async def send_reuse() -> None:
                        reuse.append(
                            await tablet.request("send", to="carol", text="hi", client_msg_id="k1")
                        )

                    nursery.start_soon(send_reuse)
                    await trio.sleep(0.2)
                    resend = await pc.request("send", to="bob", text="hi", client_msg_id="k1")
                assert resend["message_id"] == sent["message_id"], resend
                assert reuse[0]["code"] == "bad_request", reuse
        finally:
            b.proc.terminate()
            b.proc.wait(15)


async def test_a_node_whose_writes_stall_past_its_silence_still_holds_the_others_back(
    tmp_path: Path,
) -> None:
    """Node a keeps its lease but each of its Redis writes takes 4 s, longer than the
    silence after which a node counts as gone for the chat horizon (3 s): alice's message
    there gets its id first and is committed last. bob (node b) must still get carol's
    later message after it, live and in a sync page: the live node says, while its write
    hangs, which id it still commits (its lowest pending one)."""
    async with a_slow_commit_race(tmp_path, 4.0) as (b, bob, _):
        await trio.sleep(3.3)  # past node a's silence; its write still hangs
        async with session(b, "bob", "tablet") as tablet:
            synced = [m["text"] for m in await tablet.sync_all()]
            assert synced == ["first", "second"][: len(synced)], synced
        live = [(await expect(bob, "message", within=15))["text"] for _ in range(2)]
        assert live == ["first", "second"]
