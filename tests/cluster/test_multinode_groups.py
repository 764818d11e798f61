"""Groups across real nodes: a node holds only the groups of the users it serves (sessions,
requests) and of the requests about a group, read from Redis as they are needed; a node
starts with none; every answer is still the whole truth."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from geopresence.client import ApiError
from tests.cluster.test_multinode import Node, _gauge, cluster_of, expect, session


async def groups_held(node: Node) -> float:
    async with node.admin() as admin:
        return _gauge(await admin.metrics(), "groups_held")


async def eventually_held(node: Node, count: int) -> None:
    with trio.fail_after(10):
        while await groups_held(node) != count:
            await trio.sleep(0.05)


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
async def test_a_node_holds_only_the_groups_of_the_users_it_serves(
    kind: str, tmp_path: Path
) -> None:
    with cluster_of(kind, 2, tmp_path) as ((a, b), _):
        async with a.admin() as admin_a, b.admin() as admin_b:
            await admin_a.set_group("hikers", ["alice", "bob"])
            await admin_a.set_group("chess", ["zed", "yan"])
            assert await groups_held(a) == 0 and await groups_held(b) == 0
            # A request about a group reads it on any node, then lets it go.
            chess = await admin_b.group("chess")
            assert (chess["members"], chess["total"]) == (["yan", "zed"], 2)
            assert await groups_held(b) == 0
            async with session(b, "alice") as alice, session(a, "zed") as zed:
                assert await groups_held(b) == 1  # hikers
                # A change of a group nobody on b is in stays off b...
                await admin_a.add_member("chess", "xavier")
                # ... alice joining one brings it to b whole: she hears it, and counts
                # every member.
                await admin_a.add_member("chess", "alice")
                await eventually_held(b, 2)
                await trio.sleep(0.1)  # past her join mark (CLOCK_SKEW_S)
                await zed.send_message("your move", group="chess")
                await expect(alice, "message", text="your move")
                reply = await alice.request("group_presence", group="chess")
                assert (reply["online"], reply["total"]) == (["alice", "zed"], 4)
                # She leaves it: b lets it go.
                await admin_a.remove_member("chess", "alice")
                await eventually_held(b, 1)
                reply = await alice.request("group_presence", group="chess")
                assert reply["type"] == "error" and reply["code"] == "forbidden"
            await eventually_held(b, 0)  # the session's end
            # A replacement through b is counted against what a wrote.
            replaced = await admin_b.set_group("hikers", ["alice", "carol"])
            assert (replaced["added"], replaced["removed"]) == (1, 1)
            assert (await admin_a.group("hikers"))["members"] == ["alice", "carol"]
            # An empty group exists on every node; a deleted one on none.
            await admin_a.set_group("empty", [])
            assert (await admin_b.group("empty"))["total"] == 0
            await admin_b.delete_group("chess")
            for admin in (admin_a, admin_b):
                with pytest.raises(ApiError) as refused:
                    await admin.group("chess")
                assert refused.value.status == 404
            assert await groups_held(a) == 0 and await groups_held(b) == 0


async def test_an_export_on_a_node_that_serves_nobody_lists_the_group_messages(
    tmp_path: Path,
) -> None:
    with cluster_of("standalone", 2, tmp_path) as ((a, b), _):
        async with a.admin() as admin_a, b.admin() as admin_b:
            await admin_a.set_group("hikers", ["alice", "bob"])
            await trio.sleep(0.1)  # past alice's join mark (CLOCK_SKEW_S)
            async with session(a, "bob") as bob:
                await bob.send_message("for the hikers", group="hikers")
            for admin in (admin_a, admin_b):
                exported = await admin.export("alice")
                assert [m["text"] for m in exported["messages"]] == ["for the hikers"]


async def test_a_forgotten_user_s_groups_are_let_go(tmp_path: Path) -> None:
    """Forgotten through a node that serves nobody, and through another node while a
    session of the user is open: neither node keeps the user's groups afterwards."""
    with cluster_of("standalone", 2, tmp_path) as ((a, b), _):
        async with a.admin() as admin_a, b.admin() as admin_b:
            await admin_a.set_group("hikers", ["alice", "bob"])
            await admin_a.set_group("chess", ["carol", "zed"])
            assert (await admin_b.forget("alice"))["groups"] == 1
            assert await groups_held(b) == 0
            async with session(b, "carol") as carol:
                assert await groups_held(b) == 1
                await admin_a.forget("carol")
                assert (await carol.closed())[0] == 4001
            await eventually_held(b, 0)


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
@pytest.mark.parametrize("ending", ["logout", "drop"])
async def test_co_members_on_another_node_hear_a_member_go_offline(
    kind: str, ending: str, tmp_path: Path
) -> None:
    """From a review: small groups carry presence to co-members. alice (node b) and bob
    (node c) share only the group; the offline transition is decided after alice's last
    session on b ended (b no longer holds her groups): it is read from Redis, and bob
    hears her go offline."""
    with cluster_of(kind, 2, tmp_path) as ((b, c), _):
        async with b.admin() as admin:
            await admin.set_group("club", ["alice", "bob"])
            async with session(c, "bob") as bob:
                async with session(b, "alice") as alice:
                    await expect(bob, "presence", user="alice", status="online")
                    if ending == "logout":
                        await alice.logout()
                await expect(bob, "presence", user="alice", status="offline", within=8)
                assert (await admin.group("club"))["online"] == ["bob"]
