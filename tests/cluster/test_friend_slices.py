"""``FriendSlices`` (cluster): a node holds the friendships of the users it serves, read as
they are needed, after listening to their inbox channels; a notice that a held user's
friendships changed makes the node read them again and apply the difference, with events; a
read of a user touched while it ran is never applied (it is read again). A real hub, a fake
Redis read and a fake listener (no server needed)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from geopresence.cluster.friend_slices import FriendSlices
from geopresence.core.hub import Hub
from geopresence.core.replication import FeedOp
from geopresence.core.settings import HubSettings
from geopresence.core.store import MemoryStore
from geopresence.model.records import Befriended, Unfriended, UserForgotten
from tests.helpers import Listening, RecordingSink, running


class Redis:
    """Each user's friends: a read sees them as they are when it is sent, and answers when
    ``answer`` is set (``fail``: with an error)."""

    def __init__(self, graph: Mapping[str, list[str]]) -> None:
        self.graph = {user: set(friends) for user, friends in graph.items()}
        self.answer = trio.Event()
        self.answer.set()
        self.fail = False
        self.reads: list[list[str]] = []
        self.log: list[str] | None = None

    def befriend(self, a: str, b: str) -> None:
        self.graph.setdefault(a, set()).add(b)
        self.graph.setdefault(b, set()).add(a)

    def unfriend(self, a: str, b: str) -> None:
        self.graph.get(a, set()).discard(b)
        self.graph.get(b, set()).discard(a)

    async def read(self, users: list[str]) -> dict[str, list[str]]:
        self.reads.append(sorted(users))
        if self.log is not None:
            self.log.append(f"read {','.join(sorted(users))}")
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
        self.listening = Listening()
        redis.log = self.listening.log
        self.slices = FriendSlices(self.hub, redis.read, self._written, self.listening, self._apply)

    async def _written(self) -> None:
        self.written += 1

    def _apply(self, op: FeedOp) -> None:
        self.applied.append(op)
        self.hub.apply_feed(op, 0.0)

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
    # It listens to alice's inbox before it reads her: a change after the read is heard.
    assert node.listening.log == ["hold inbox:alice", "subscribed", "read alice"]
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
    assert node.listening.held == {"inbox:bob": 1}
    node.slices.release(["bob"])
    assert list(node.hub.store.friendships()) == []
    assert node.hub.store.friendship_count() == 0 and len(node.slices) == 0
    assert node.listening.held == {}


async def test_a_notice_reads_a_held_user_again_and_applies_the_difference() -> None:
    redis = Redis({"alice": ["bob", "carol"]})
    node = Node(redis)
    async with running(node.slices.run):
        await node.slices.hold(["alice"])
        redis.unfriend("alice", "bob")
        redis.befriend("alice", "dave")
        node.slices.stale(["alice", "zoe"])  # zoe is not held here: not read
        await trio.testing.wait_all_tasks_blocked()
    assert node.applied == [Befriended("alice", "dave"), Unfriended("alice", "bob")]
    assert node.friends("alice") == {"carol", "dave"}
    assert redis.reads == [["alice"], ["alice"]] and node.slices.rereads == 1


async def test_a_notice_during_a_first_read_reads_the_user_again() -> None:
    """The read may have been answered before Redis changed: it is not applied, and a
    second read (after the change) is."""
    redis = Redis({"alice": ["bob"], "bob": ["alice"]})
    node = Node(redis)
    async with alice_being_read(redis, node):
        redis.unfriend("alice", "bob")
        redis.befriend("alice", "carol")
        node.slices.stale(["alice"])
    assert redis.reads == [["alice"], ["alice"]]
    assert node.friends("alice") == {"carol"} and node.applied == []


async def test_a_change_made_here_or_a_forget_during_a_read_is_not_undone_by_it() -> None:
    """A friendship made here, or a user forgotten (here or on another node), while a
    friend's read is in flight: the read, older than the change, is read again."""
    for touch in ("made here", "forgotten"):
        redis = Redis({"alice": ["bob"], "bob": ["alice"]})
        node = Node(redis)
        async with alice_being_read(redis, node):
            if touch == "made here":
                node.hub.apply_feed(Unfriended("alice", "bob"), 0.0)
                node.slices.touched(["alice", "bob"])
                redis.unfriend("alice", "bob")
            else:
                node.slices.forgotten()
                redis.unfriend("alice", "bob")
        assert node.friends("alice") == set(), touch
        assert len(redis.reads) == 2, touch


async def test_a_read_again_touched_while_it_runs_is_read_once_more() -> None:
    redis = Redis({"alice": ["bob"]})
    node = Node(redis)
    async with running(node.slices.run):
        await node.slices.hold(["alice"])
        redis.answer = trio.Event()
        redis.befriend("alice", "carol")
        node.slices.stale(["alice"])
        await trio.testing.wait_all_tasks_blocked()  # read again, not answered yet
        redis.befriend("alice", "dave")
        node.slices.stale(["alice"])
        redis.answer.set()
        await trio.testing.wait_all_tasks_blocked()
    assert redis.reads == [["alice"], ["alice"], ["alice"]]
    assert node.applied == [Befriended("alice", "carol"), Befriended("alice", "dave")]


async def test_a_failed_read_again_is_tried_again(autojump_clock: trio.abc.Clock) -> None:
    redis = Redis({"alice": []})
    node = Node(redis)
    async with running(node.slices.run):
        await node.slices.hold(["alice"])
        redis.fail = True
        redis.befriend("alice", "bob")
        node.slices.stale(["alice"])
        await trio.testing.wait_all_tasks_blocked()
        redis.fail = False
        await trio.sleep(1.5)
    assert node.applied == [Befriended("alice", "bob")]


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
        redis.answer.set()
    assert not node.slices.holds("alice")
    assert node.listening.held == {"inbox:carol": 1}
    redis.fail = False
    await node.slices.hold(["alice"])  # tried again: read anew
    assert node.friends("alice") == {"bob"}


async def test_a_hold_given_up_during_its_read_holds_nothing() -> None:
    redis = Redis({"alice": ["bob"]})
    node = Node(redis)
    redis.answer = trio.Event()
    with trio.move_on_after(1):
        await node.slices.hold(["alice"])
    assert not node.slices.holds("alice") and len(node.slices) == 0
    assert node.friends("alice") == set() and node.listening.held == {}
    redis.answer.set()
    await node.slices.hold(["alice"])
    assert node.friends("alice") == {"bob"}


def test_a_forget_is_a_friendship_change_of_its_user() -> None:
    from geopresence.cluster.friend_slices import users_of

    assert users_of(UserForgotten("bob")) == ("bob",)
    assert users_of(Befriended("a", "b")) == ("a", "b")


async def test_a_friend_made_elsewhere_reaches_a_held_friend_s_session_when_read_first() -> None:
    """From a review: bob has a session here; alice and bob become friends on another node;
    before its notice comes, a request about alice holds her here and her first read lists
    bob. bob's session is told of alice then (not silently loaded): the notice that follows
    finds nothing more to do."""
    redis = Redis({"alice": [], "bob": []})
    node = Node(redis)
    sink = node.hub.replies.sink
    assert isinstance(sink, RecordingSink)
    async with running(node.slices.run):
        await node.slices.hold(["bob"])
        node.hub.open_session(1, "bob", "phone", 0.0)
        sink.take(1)
        redis.befriend("alice", "bob")  # on another node
        await node.slices.hold(["alice"])  # GET /v1/users/alice/friends here
        node.slices.stale(["alice", "bob"])  # the notice arrives
        await trio.testing.wait_all_tasks_blocked()
    assert node.friends("bob") == {"alice"}
    frames = sink.take(1, "friends_presence")
    assert [f["user"] for frame in frames for f in frame["friends"]] == ["alice"]
    assert node.applied == [Befriended("alice", "bob")]


async def test_a_forget_heard_after_a_newer_read_is_read_over_again() -> None:
    """From a review: alice is forgotten on another node, then befriends bob again there;
    this node hears the notice before the forget (pub/sub and the feed are separate
    connections). Applying the forget removes the edge; reading its held friends again
    after it (``Holdings.forgetting``) brings back what Redis has."""
    redis = Redis({"alice": ["bob"], "bob": ["alice"]})
    node = Node(redis)
    async with running(node.slices.run):
        await node.slices.hold(["bob"])
        redis.unfriend("alice", "bob")  # the forget, in Redis
        redis.befriend("alice", "bob")  # then the new friendship
        node.slices.stale(["alice", "bob"])  # its notice
        await trio.testing.wait_all_tasks_blocked()
        again = ["alice", *node.slices.held_friends("alice")]
        node.slices.forgotten()
        node.hub.apply_feed(UserForgotten("alice"), 0.0)  # the forget, heard late
        node.slices.stale(again)
        await trio.testing.wait_all_tasks_blocked()
    assert again == ["alice", "bob"] and node.friends("bob") == {"alice"}  # as Redis has it


async def test_a_user_that_keeps_changing_is_read_in_all_the_same() -> None:
    """From a review: a read touched while it ran is read again, but not for ever: after
    ``MAX_TOUCHED_READS`` in a row the result is applied and the user read once more."""
    from geopresence.cluster.in_flight import MAX_TOUCHED_READS

    redis = Redis({"alice": ["bob"]})
    node = Node(redis)
    read = redis.read

    async def busy_read(users: list[str]) -> dict[str, list[str]]:
        found = await read(users)
        if len(redis.reads) <= MAX_TOUCHED_READS + 1:
            redis.befriend("alice", f"f{len(redis.reads)}")
            node.slices.stale(["alice"])  # its notice, before the answer
        return found

    node.slices._read = busy_read
    async with running(node.slices.run):
        with trio.fail_after(1):
            await node.slices.hold(["alice"])
        await trio.testing.wait_all_tasks_blocked()
    assert node.slices.holds("alice")
    assert node.friends("alice") == set(redis.graph["alice"])  # read again after


async def test_a_friend_s_older_read_again_does_not_undo_a_first_read_s_friendship() -> None:
    """From a review: bob's read again is sent before alice and bob become friends on
    another node and answered after alice's first read (which told bob's session of her).
    That first read touched bob: his older read is dropped and read again, so his session
    is told Befriended once, never Unfriended."""
    redis = Redis({"alice": [], "bob": []})
    node = Node(redis)
    read = redis.read
    gates: dict[str, trio.Event] = {}

    async def gated(users: list[str]) -> dict[str, list[str]]:
        seen = {user: sorted(redis.graph.get(user, ())) for user in users}
        key = ",".join(sorted(users))
        if key in gates:
            await gates.pop(key).wait()
        await read(users)  # (counted)
        return seen

    node.slices._read = gated
    async with running(node.slices.run):
        await node.slices.hold(["bob"])
        node.hub.open_session(1, "bob", "phone", 0.0)
        gates["bob"] = bob_answers = trio.Event()
        node.slices.stale(["bob"])  # an earlier change of bob's: his read again is sent
        await trio.testing.wait_all_tasks_blocked()
        redis.befriend("alice", "bob")  # on another node
        await node.slices.hold(["alice"])  # her first read answers first
        bob_answers.set()  # bob's, sent before the change
        await trio.testing.wait_all_tasks_blocked()
        node.slices.stale(["alice", "bob"])  # the friendship's notice
        await trio.testing.wait_all_tasks_blocked()
    assert node.friends("bob") == {"alice"}
    assert node.applied == [Befriended("alice", "bob")]
