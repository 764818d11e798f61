"""Friendships across real nodes: a node holds only those of the users it serves (sessions,
requests), read from Redis as they are needed, and every answer is still the whole truth."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from geopresence.client import ApiError, SessionRefused, connect
from tests.cluster.test_multinode import (
    Node,
    _gauge,
    cluster_of,
    expect,
    session,
    start_node,
)
from tests.redis_server import redis_server


async def held(node: Node) -> tuple[float, float]:
    """(users held, friendships held) by ``node``, from its metrics."""
    async with node.admin() as admin:
        metrics = await admin.metrics()
    return _gauge(metrics, "users_held"), _gauge(metrics, "friendships")


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
async def test_a_node_holds_only_the_friendships_of_the_users_it_serves(
    kind: str, tmp_path: Path
) -> None:
    with cluster_of(kind, 2, tmp_path) as (nodes, _):
        a, b = nodes
        async with a.admin() as admin_a, b.admin() as admin_b:
            pairs = [("alice", "bob"), ("alice", "carol"), ("bob", "dave")]
            assert await admin_a.befriend_many(pairs) == 3
            assert await held(a) == (0, 0)  # the import's users are let go once it is done
            assert await held(b) == (0, 0)
            async with session(b, "alice") as alice:
                assert sorted(f["user"] for f in alice.friends) == ["bob", "carol"]
                assert await held(b) == (1, 2)
                # A change between two users nobody on b serves stays off b's graph...
                await admin_a.befriend("dave", "erin")
                # ... one of alice's reaches her session and b's graph.
                await admin_a.befriend("alice", "dave")
                frame = await expect(alice, "friends_presence")
                assert [f["user"] for f in frame["friends"]] == ["dave"]
                assert await held(b) == (1, 3)
                # A request about a user nobody serves here reads the whole list, then
                # lets it go.
                friends = await admin_b.friends("bob")
                assert sorted(f["user"] for f in friends) == ["alice", "dave"]
                assert await held(b) == (1, 3)
                await admin_a.unfriend("alice", "carol")
                await expect(alice, "friend_removed", user="carol")
                assert await held(b) == (1, 2)
            await trio.sleep(0.2)  # the session's end
            assert await held(b) == (0, 0)
            # The next session reads them again, with every change made meanwhile.
            await admin_a.befriend("alice", "frank")
            async with session(b, "alice") as alice:
                assert sorted(f["user"] for f in alice.friends) == ["bob", "dave", "frank"]


async def test_the_friend_limit_counts_friends_made_on_other_nodes(tmp_path: Path) -> None:
    with redis_server() as port:
        args = ["--redis", f"redis://127.0.0.1:{port}/0"]
        nodes = [start_node(args, n, tmp_path, "--max-friends", "2") for n in (1, 2)]
        try:
            a, b = nodes
            async with a.admin() as admin_a, b.admin() as admin_b:
                await admin_a.befriend_many([("alice", "bob"), ("alice", "carol")])
                with pytest.raises(ApiError) as refused:
                    await admin_b.befriend("alice", "dave")
                assert refused.value.status == 409, refused.value
                assert "alice already has max_friends (2)" in refused.value.message
        finally:
            for node in nodes:
                node.proc.terminate()
                node.proc.wait(15)


async def test_a_forget_on_a_node_that_serves_nobody_counts_every_friend(
    tmp_path: Path,
) -> None:
    with cluster_of("standalone", 2, tmp_path) as (nodes, _):
        a, b = nodes
        async with a.admin() as admin_a, b.admin() as admin_b:
            await admin_a.befriend_many([("alice", "bob"), ("alice", "carol")])
            async with session(a, "bob") as bob:
                report = await admin_b.forget("alice")
                assert report["friends"] == 2
                await expect(bob, "friend_removed", user="alice")


async def test_a_session_is_refused_when_its_friends_cannot_be_read(tmp_path: Path) -> None:
    """Redis gone: a new session cannot know its friends, so it is closed with 1013 (try
    again later), never served with an empty list; a request about a user gets 503."""
    with redis_server() as port:
        node = start_node(
            ["--redis", f"redis://127.0.0.1:{port}/0"], 1, tmp_path, "--hello-timeout", "2",
            "--drain-timeout", "1",
        )  # fmt: skip
    try:
        with trio.fail_after(20), pytest.raises(SessionRefused) as refused:
            async with connect(node.ws_url, user="alice", device="phone"):
                pytest.fail("welcomed without its friends")
        # No error frame: a client reconnects as after any drop (1013: try again later).
        assert refused.value.close_code == 1013, refused.value
        assert refused.value.error is None
        async with node.admin() as admin:
            with pytest.raises(ApiError) as failed:
                await admin.friends("alice")
            assert failed.value.status == 503, failed.value
    finally:
        node.proc.terminate()
        node.proc.wait(15)
    # Stopped without Redis: it says what it gives up on, and that no ack is among it.
    assert "changes not written to Redis after 1 s are dropped (none was acknowledged)" in (
        node.log.read_text()
    )


@contextmanager
def with_a_mute_writer(tmp_path: Path) -> Iterator[tuple[Node, Node, Node, int]]:
    """Nodes a and c, and w, whose Redis user may do everything but publish: it writes a
    change, then cannot announce it (it retries, unacknowledged, until it is killed); and
    the Redis port."""
    with cluster_of("standalone", 2, tmp_path) as ((a, c), args):
        port = int(args[1].rsplit(":", 1)[1].split("/")[0])
        subprocess.run(
            ["redis-cli", "-p", str(port), "ACL", "SETUSER", "mute", "on", ">pw", "~*", "&*",
             "+@all", "-publish", "-spublish"],
            check=True, capture_output=True,
        )  # fmt: skip
        w = start_node(["--redis", f"redis://mute:pw@127.0.0.1:{port}/0"], 3, tmp_path)
        try:
            yield a, c, w, port
        finally:
            if w.proc.poll() is None:
                w.proc.terminate()
                w.proc.wait(15)


async def test_a_retried_befriend_after_its_node_died_reaches_the_sessions(
    tmp_path: Path,
) -> None:
    """From a review: a friendship stored by a node killed before it announced it; the
    client retries through another node, which finds it made and announces it again."""
    with with_a_mute_writer(tmp_path) as (a, c, w, _):
        async with (
            a.admin() as admin_a,
            w.admin() as admin_w,
            session(c, "alice") as alice,
            session(c, "bob"),
        ):
            with trio.move_on_after(2):  # written, never acknowledged
                await admin_w.befriend("alice", "bob")
                raise AssertionError("acknowledged without its notice")
            w.kill()
            # The client retries through node a (it holds neither user).
            retried = await admin_a.befriend("alice", "bob")
            assert retried["created"] is False  # Redis has it
            assert [f["user"] for f in await admin_a.friends("alice")] == ["bob"]
            # alice and bob (node c) must be told, as for any new friendship
            fp = await expect(alice, "friends_presence", within=5)
            assert [f["user"] for f in fp["friends"]] == ["bob"]


async def test_a_retried_member_add_after_its_node_died_reaches_the_session(
    tmp_path: Path,
) -> None:
    with with_a_mute_writer(tmp_path) as (a, c, w, _):
        async with a.admin() as admin_a, w.admin() as admin_w:
            await admin_a.set_group("club", ["zed"])
            async with session(c, "alice") as alice, session(c, "zed") as zed:
                with trio.move_on_after(2):  # written, never acknowledged
                    await admin_w.add_member("club", "alice")
                    raise AssertionError("acknowledged without its notice")
                w.kill()
                retried = await admin_a.add_member("club", "alice")
                assert retried["added"] is False  # Redis has it
                assert (await admin_a.group("club"))["members"] == ["alice", "zed"]
                await trio.sleep(1.0)
                sent = await alice.send_message("hi", group="club")
                assert sent["type"] == "sent", sent
                await expect(zed, "message", text="hi")
