"""``FriendSlices`` (cluster): a node holds the friendships of the users it serves, read as
they are needed; a friendship change that reaches it while one of its users is read is
applied after the read, in feed order. A real hub, a fake Redis read (no server needed)."""

from __future__ import annotations

from collections.abc import Mapping

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
        self.slices = FriendSlices(self.hub, redis.read, self._written, self._apply)

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


async def test_a_change_during_a_read_is_applied_after_it_in_feed_order() -> None:
    """The read was sent before Redis changed: the changes that arrive meanwhile are
    applied once it is in, so a stale read cannot bring back an ended friendship."""
    redis = Redis({"alice": ["bob"], "bob": ["alice"]})
    node = Node(redis)
    redis.answer = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.slices.hold, ["alice"])
        await trio.testing.wait_all_tasks_blocked()
        assert redis.reads == [["alice"]]
        redis.unfriend("alice", "bob")
        redis.befriend("alice", "carol")
        node.feed(Unfriended("alice", "bob"))
        node.feed(Befriended("alice", "carol"))
        node.feed(Befriended("xavier", "yann"))  # after held-back ones: waits its turn
        location = LocationSet("bob", 1.0, 2.0, 3.0, 4.0)
        node.feed(location)  # not a friendship change: at once
        assert node.applied == [location]
        redis.answer.set()
    assert node.applied == [location, Unfriended("alice", "bob"), Befriended("alice", "carol")]
    assert node.friends("alice") == {"carol"}


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


async def test_a_failed_read_holds_nothing_and_lets_held_back_changes_through() -> None:
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
        node.feed(Befriended("alice", "carol"))  # waits for alice's read
        assert node.applied == []
        redis.answer.set()
    assert not node.slices.holds("alice")
    assert node.applied == [Befriended("alice", "carol")]  # carol is held
    assert node.friends("alice") == {"carol"}
    redis.fail = False
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
