"""A node keeps only the statuses its sessions need; presence transitions travel on the
users' (and small groups') channels, not the feed. Real ``geopresence serve`` nodes."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.cluster.test_multinode import _gauge, cluster_of, expect, session


async def test_a_node_keeps_the_statuses_its_sessions_need_and_no_other(tmp_path: Path) -> None:
    # On a standalone Redis: transitions cross a Cluster's shards in test_multinode_presence.
    # Groups of more than 2 members get no co-member presence events.
    with cluster_of("standalone", 2, tmp_path, "--presence-fanout-limit", "2") as ((a, b), _):
        async with a.admin() as admin_a, b.admin() as admin_b:
            await admin_a.befriend("alice", "bob")
            await admin_a.set_group("big", ["alice", "carol", "dave"])
            async with session(a, "alice"), session(a, "carol"):
                await trio.sleep(0.3)
                # Nobody on node b needs alice's or carol's status: it keeps none...
                assert _gauge(await admin_b.metrics(), "statuses_kept") == 0
                # ...yet answers about them from Redis.
                assert (await admin_b.user("alice"))["status"] == "online"
                group = await admin_b.group("big")
                assert group["online"] == ["alice", "carol"]
                async with session(b, "dave") as dave:
                    # A big group's presence, asked on the node of none of its online members.
                    reply = await dave.request("group_presence", group="big")
                    assert reply["online"] == ["alice", "carol", "dave"]
                    # dave's own status only (its node decides it, and listens to it).
                    assert _gauge(await admin_b.metrics(), "statuses_kept") == 1
                    async with session(b, "bob") as bob:
                        # bob's friend is online on node a: right in his first frames.
                        friends = [(f["user"], f["status"]) for f in bob.friends]
                        assert friends == [("alice", "online")]
                        # alice, bob and dave
                        assert _gauge(await admin_b.metrics(), "statuses_kept") == 3
                        # Node b hears alice's transitions on her channel (not on the feed).
                        await admin_a.logout("alice")
                        await expect(bob, "presence", user="alice", status="offline")
                        # A friend made on another node, online there: one friends_presence
                        # once node b has read carol's status, never "offline" first.
                        await admin_a.befriend("bob", "carol")
                        frame = await bob.recv_type("friends_presence", "presence")
                        assert frame["type"] == "friends_presence", frame
                        assert [(f["user"], f["status"]) for f in frame["friends"]] == [
                            ("carol", "online")
                        ]
                    await trio.sleep(0.3)
                    # bob gone: node b drops the statuses only he needed.
                    assert _gauge(await admin_b.metrics(), "statuses_kept") == 1
