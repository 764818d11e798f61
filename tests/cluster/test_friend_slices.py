"""``FriendSlices`` (cluster): a node holds the friendships of the users it serves, read as
they are needed; a friendship change that reaches it while one of its users is read is
applied to the graph again after the read, in order, so a stale read changes nothing. A
real hub, a fake Redis read and a fake clock (no server needed)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import pytest
import trio

from geopresence.cluster.friend_slices import FriendSlices
from geopresence.core.hub import Hub
from geopresence.core.replication import FeedOp, LocationSet
from geopresence.core.settings import HubSettings
from geopresence.core.store import MemoryStore
from geopresence.model.records import Befriended, Unfriended, UserForgotten
from tests.helpers import RecordingSink


class Redis:
    """Each user's friends: a read sees them as they are when it is sent, and answers when
    ``answer`` is set (``fail``: with an error)."""

    def __init__(self, graph: Mapping[str, list[str]]) -> None:
        self.graph = {user: set(friends) for user, friends in graph.items()}
        self.answer = trio.Event()
        self.answer.set()
        self.fail = False
        self.reads: list[list[str]] = []

    def befriend(self, a: str, b: str) -> None:
        self.graph.setdefault(a, set()).add(b)
        self.graph.setdefault(b, set()).add(a)

    def unfriend(self, a: str, b: str) -> None:
        self.graph.get(a, set()).discard(b)
        self.graph.get(b, set()).discard(a)

    async def read(self, users: list[str]) -> dict[str, list[str]]:
        self.reads.append(sorted(users))
        seen = {user: sorted(self.graph.get(user, ())) for user in users}
        await self.answer.wait()
        if self.fail:
            raise ConnectionError("redis is down")
        return seen


class Node:
    def __init__(self, redis: Redis) -> None:
        self.hub = Hub(HubSettings(), MemoryStore(), RecordingSink())
        self.applied: list[FeedOp] = []
        self.written = 0
        self.clock = 0.0
        self.slices = FriendSlices(self.hub, redis.read, self._written, lambda: self.clock)

    async def _written(self) -> None:
        self.written += 1

    def _apply(self, op: FeedOp) -> None:
        self.applied.append(op)
        self.hub.apply_feed(op, 0.0)

    def feed(self, op: FeedOp) -> None:
        """What the link does with a feed op."""
        if self.slices.admit(op):
            self._apply(op)

    def friends(self, user: str) -> set[str]:
        return set(self.hub.store.friends_of(user))


@asynccontextmanager
async def alice_being_read(redis: Redis, node: Node) -> AsyncIterator[None]:
    """For the block, a hold of alice whose read is sent and not answered yet; it is
    answered as the block ends, which waits for the hold."""
    redis.answer = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.slices.hold, ["alice"])
        await trio.testing.wait_all_tasks_blocked()
        yield
        redis.answer.set()


async def test_a_node_holds_the_friendships_of_its_held_users_only() -> None:
    redis = Redis({"alice": ["bob", "carol"], "bob": ["alice", "dave"], "dave": ["bob"]})
    node = Node(redis)
    await node.slices.hold(["alice"])
    assert node.friends("alice") == {"bob", "carol"}
    assert node.friends("bob") == {"alice"}  # only its edge to a held user
    assert node.hub.store.friendship_count() == 2
    assert node.written == 1  # the read waited for this node's own writes
    await node.slices.hold(["bob"])
    assert node.friends("bob") == {"alice", "dave"}
    assert node.hub.store.friendship_count() == 3
    node.slices.release(["alice"])
    assert node.friends("alice") == {"bob"}  # bob is still held
    assert not node.slices.holds("alice") and node.slices.holds("bob")
    node.slices.release(["bob"])
    assert list(node.hub.store.friendships()) == []
    assert node.hub.store.friendship_count() == 0 and len(node.slices) == 0


async def test_changes_of_users_nobody_here_holds_are_left_out() -> None:
    node = Node(Redis({"alice": []}))
    await node.slices.hold(["alice"])
    node.feed(Befriended("bob", "carol"))
    node.feed(Befriended("alice", "dave"))
    node.feed(Unfriended("erin", "frank"))
    node.feed(UserForgotten("zoe"))  # a forget reaches every node: its other state goes too
    assert node.applied == [Befriended("alice", "dave"), UserForgotten("zoe")]
    assert list(node.hub.store.friendships()) in ([("alice", "dave")], [("dave", "alice")])


async def test_a_change_during_a_read_is_applied_again_after_it_in_order() -> None:
    """The read was sent before Redis changed: the changes heard meanwhile are applied to
    the graph again once it is in, so a stale read cannot bring back an ended friendship."""
    redis = Redis({"alice": ["bob"], "bob": ["alice"]})
    node = Node(redis)
    async with alice_being_read(redis, node):
        assert redis.reads == [["alice"]]
        redis.unfriend("alice", "bob")
        redis.befriend("alice", "carol")
        redis.befriend("alice", "dave")
        redis.unfriend("alice", "dave")
        for op in (
            Unfriended("alice", "bob"),
            Befriended("alice", "carol"),
            Befriended("alice", "dave"),
            Unfriended("alice", "dave"),
            Befriended("xavier", "yann"),
        ):
            node.clock += 1.0  # the read may last longer than RECENT_S
            node.feed(op)
        location = LocationSet("bob", 1.0, 2.0, 3.0, 4.0)
        node.feed(location)  # not a friendship change
    assert node.applied == [location]  # none concerned a held user when it came
    assert node.friends("alice") == {"carol"}
    assert list(node.hub.store.friendships()) in ([("alice", "carol")], [("carol", "alice")])


async def test_a_read_from_a_shard_behind_the_feed_changes_nothing() -> None:
    """On a Cluster a feed entry can be read before its keys (another shard) are written:
    a change left out because nobody here held its users still corrects a read sent soon
    after."""
    redis = Redis({"alice": ["bob"], "bob": ["alice"]})
    node = Node(redis)
    node.feed(Unfriended("alice", "bob"))  # Redis' alice set not written yet
    node.clock += 4.0
    await node.slices.hold(["alice"])
    assert node.friends("alice") == set()
    node.slices.release(["alice"])
    node.feed(Befriended("alice", "carol"))  # long ago by the next read: not applied again
    node.clock += 100.0
    await node.slices.hold(["alice"])
    assert node.friends("alice") == {"bob"}  # what Redis says


async def test_a_forget_during_a_friend_s_read_is_not_undone_by_it() -> None:
    """A user forgotten (here or on another node) while a friend's read is in flight: the
    read, older than the forget, must not bring the friendship back."""
    for here in (True, False):
        redis = Redis({"alice": ["bob"], "bob": ["alice"]})
        node = Node(redis)
        async with alice_being_read(redis, node):
            if here:
                node.slices.made_here(UserForgotten("bob"))  # the journal's record
            else:
                node.feed(UserForgotten("bob"))
        assert node.friends("alice") == set(), here


async def test_a_second_holder_waits_for_the_read_in_progress() -> None:
    redis = Redis({"alice": ["bob"]})
    node = Node(redis)
    redis.answer = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.slices.hold, ["alice"])
        nursery.start_soon(node.slices.hold, ["alice"])
        await trio.testing.wait_all_tasks_blocked()
        redis.answer.set()
    assert redis.reads == [["alice"]]
    node.slices.release(["alice"])
    assert node.friends("alice") == {"bob"}  # one holder left
    node.slices.release(["alice"])
    assert node.friends("alice") == set()


async def test_a_failed_read_holds_nothing() -> None:
    redis = Redis({"alice": ["bob"], "carol": []})
    node = Node(redis)
    await node.slices.hold(["carol"])
    redis.answer, redis.fail = trio.Event(), True

    async def hold_alice() -> None:
        with pytest.raises(ConnectionError):
            await node.slices.hold(["alice"])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold_alice)
        await trio.testing.wait_all_tasks_blocked()
        node.feed(Befriended("alice", "carol"))  # carol is held: at once
        assert node.applied == [Befriended("alice", "carol")]
        redis.answer.set()
    assert not node.slices.holds("alice")
    assert node.friends("alice") == {"carol"}
    redis.fail = False
    redis.befriend("alice", "carol")
    await node.slices.hold(["alice"])  # tried again: read anew
    assert node.friends("alice") == {"bob", "carol"}


async def test_a_hold_given_up_during_its_read_holds_nothing() -> None:
    redis = Redis({"alice": ["bob"]})
    node = Node(redis)
    redis.answer = trio.Event()
    with trio.move_on_after(1):
        await node.slices.hold(["alice"])
    assert not node.slices.holds("alice") and len(node.slices) == 0
    assert node.friends("alice") == set()
    redis.answer.set()
    await node.slices.hold(["alice"])
    assert node.friends("alice") == {"bob"}
