"""A node keeps only the settings its sessions need (their users' and their friends'); a
change travels on the user's channel, not the feed, and a friend's settings not known yet
never mean sharing. Real ``geopresence serve`` nodes."""

from __future__ import annotations

from pathlib import Path

import trio

from geopresence.cluster.link import WRITE_DELAY_ENV
from tests.cluster.test_multinode import _gauge, cluster_of, expect, session, start_node
from tests.redis_server import redis_server


async def test_settings_reach_the_nodes_that_keep_them_and_no_other(tmp_path: Path) -> None:
    # On a standalone Redis: channels across a Cluster's shards are test_multinode's.
    with cluster_of("standalone", 2, tmp_path) as ((a, b), _):
        async with a.admin() as admin_a, b.admin() as admin_b:
            await admin_a.befriend("alice", "bob")
            async with session(a, "alice") as alice:
                reply = await alice.request("settings", share_location=False)
                assert reply["share_location"] is False
                await alice.send({"type": "location", "lat": 37.5665, "lon": 126.9780})
                await trio.sleep(0.3)
                assert _gauge(await admin_b.metrics(), "settings_kept") == 0
                async with session(b, "bob") as bob:
                    # Node b read bob's and alice's settings as bob's session opened.
                    assert _gauge(await admin_b.metrics(), "settings_kept") == 2
                    near = await bob.request("nearby_friends", lat=37.5667, lon=126.9782)
                    assert near["friends"] == []  # she does not share: node b knows it
                    # She shares: her node shows her, and node b hears her settings.
                    await alice.request("settings", share_location=True)
                    await expect(bob, "friend_location", user="alice")
                    await trio.sleep(0.3)
                    near = await bob.request("nearby_friends")
                    assert [f["user"] for f in near["friends"]] == ["alice"]
                    # She stops: gone at once, and her next move stays hers.
                    await alice.request("settings", share_location=False)
                    await expect(bob, "friend_gone", user="alice", reason="hidden")
                    await alice.send({"type": "location", "lat": 37.5666, "lon": 126.9781})
                    await trio.sleep(0.3)
                    assert (await bob.request("nearby_friends"))["friends"] == []
                    # Her own session on node b decides with the settings changed on node a.
                    async with session(b, "alice", "tablet") as tablet:
                        await alice.request("settings", radius_m=1500.0)
                        await trio.sleep(0.3)
                        mine = await tablet.request("settings")
                        assert (mine["share_location"], mine["radius_m"]) == (False, 1500.0)
                await trio.sleep(0.3)
                # Nobody on node b needs them any more: dropped.
                assert _gauge(await admin_b.metrics(), "settings_kept") == 0
                # An export on node b reads them from Redis, and so does a forget's report.
                exported = (await admin_b.export("alice"))["settings"]
                assert (exported["share_location"], exported["radius_m"]) == (False, 1500.0)
            assert (await admin_b.forget("alice"))["settings"] is True


async def test_sharing_turned_on_stays_on_when_another_device_moves_meanwhile(
    tmp_path: Path,
) -> None:
    """From a review. ursula does not share; her phone is on node a, her tablet on node b,
    whose writes wait 1 s. She turns sharing on from the tablet while her phone moves: node
    a, not told yet, publishes the move as kept from view. That is no hide: her settings
    stay as she set them on both nodes, and a radius set afterwards keeps sharing on."""
    with redis_server() as port:
        args = ["--redis", f"redis://127.0.0.1:{port}/0"]
        nodes = [
            start_node(args, 1, tmp_path),
            start_node(args, 2, tmp_path, env={WRITE_DELAY_ENV: "1.0"}),
        ]
        a, b = nodes
        try:
            async with session(a, "ursula") as phone:
                await phone.request("settings", share_location=False)
                await phone.send({"type": "location", "lat": 37.5665, "lon": 126.9780})
                await trio.sleep(0.5)
                async with session(b, "ursula", "tablet") as tablet:
                    await tablet.send({"type": "settings", "share_location": True})
                    await trio.sleep(0.2)
                    await phone.send({"type": "location", "lat": 37.5666, "lon": 126.9781})
                    reply = await expect(tablet, "settings", within=5)
                    assert reply["share_location"] is True
                    await trio.sleep(1.0)  # node a heard it
                    on_a = (await phone.request("settings"))["share_location"]
                    on_b = (await tablet.request("settings"))["share_location"]
                    radius = await tablet.request("settings", radius_m=1000.0)
                    assert (on_a, on_b, radius["share_location"]) == (True, True, True)
        finally:
            for node in nodes:
                node.proc.terminate()
            for node in nodes:
                node.proc.wait(15)


async def test_a_friend_who_stops_sharing_is_never_listed_again_meanwhile(
    tmp_path: Path,
) -> None:
    """From a review. alice's node writes to Redis 0.5 s late; she sets a radius and at
    once stops sharing, then moves. bob, on node b, gets friend_gone at once, and no
    nearby_friends of his lists her while her changes reach him, in either order."""
    with redis_server() as port:
        args = ["--redis", f"redis://127.0.0.1:{port}/0"]
        nodes = [
            start_node(args, 1, tmp_path, env={WRITE_DELAY_ENV: "0.5"}),
            start_node(args, 2, tmp_path),
        ]
        a, b = nodes
        try:
            async with a.admin() as admin:
                await admin.befriend("alice", "bob")
            async with session(a, "alice") as alice, session(b, "bob") as bob:
                await bob.send({"type": "location", "lat": 37.5667, "lon": 126.9782})
                await trio.sleep(0.3)
                await alice.send({"type": "location", "lat": 37.5665, "lon": 126.9780})
                await expect(bob, "friend_location", user="alice")
                await alice.send({"type": "settings", "radius_m": 900.0})
                await alice.send({"type": "settings", "share_location": False})
                await expect(bob, "friend_gone", user="alice", reason="hidden")
                await alice.send({"type": "location", "lat": 37.5666, "lon": 126.9781})
                listed = []
                for _ in range(15):
                    listed += (await bob.request("nearby_friends"))["friends"]
                    await trio.sleep(0.1)
                assert listed == []
        finally:
            for node in nodes:
                node.proc.terminate()
            for node in nodes:
                node.proc.wait(15)
