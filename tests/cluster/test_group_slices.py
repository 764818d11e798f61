"""``GroupSlices`` (cluster): a node holds the groups of the users it serves (and of the
requests about a group), read as they are needed, after listening to the users' inboxes and
the groups' channels; a notice makes it read a held group (or a held user's groups) again
and apply the difference, with events; a held user joining a group the node lacks brings the
whole group in; a read of a key touched while it ran is never applied (it is read again). A
real hub, a fake Redis read and a fake listener (no server needed)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from geopresence.cluster.group_slices import GroupSlices
from geopresence.core.hub import Hub
from geopresence.core.replication import FeedOp
from geopresence.core.settings import HubSettings
from geopresence.core.store import MemoryStore
from geopresence.model.records import (
    GroupDeleted,
    MemberAdded,
    MemberRemoved,
    UserForgotten,
)
from tests.helpers import Listening, RecordingSink, running


class Redis:
    """Each group's members with their marks: a read sees them as they are when it is sent
    and answers when ``answer`` is set (``fail``: with an error)."""

    def __init__(self, groups: Mapping[str, Mapping[str, int]]) -> None:
        self.groups = {group: dict(marks) for group, marks in groups.items()}
        self.answer = trio.Event()
        self.answer.set()
        self.fail = False
        self.reads: list[list[str]] = []
        self.user_reads: list[list[str]] = []
        self.log: list[str] | None = None
        self.users_wait = True
        """False: only the reads of groups wait for ``answer``."""

    async def read_groups_of(self, users: list[str]) -> dict[str, list[str]]:
        self.user_reads.append(sorted(users))
        if self.log is not None:
            self.log.append(f"read groups of {','.join(sorted(users))}")
        seen = {u: sorted(g for g, marks in self.groups.items() if u in marks) for u in users}
        if self.users_wait:
            await self._answered()
        return seen

    async def read_groups(self, groups: list[str]) -> dict[str, dict[str, int]]:
        self.reads.append(sorted(groups))
        if self.log is not None:
            self.log.append(f"read {','.join(sorted(groups))}")
        seen = {group: dict(self.groups[group]) for group in groups if group in self.groups}
        await self._answered()
        return seen

    async def _answered(self) -> None:
        await self.answer.wait()
        if self.fail:
            raise ConnectionError("redis is down")


class Node:
    def __init__(self, redis: Redis) -> None:
        self.hub = Hub(HubSettings(), MemoryStore(), RecordingSink())
        self.listening = Listening()
        redis.log = self.listening.log
        self.applied: list[FeedOp] = []
        self.slices = GroupSlices(
            self.hub,
            redis.read_groups_of,
            redis.read_groups,
            self._written,
            self.listening,
            self.apply,
        )
        self.loaded: list[str] = []
        self.slices.on_loaded = self.loaded.append

    async def _written(self) -> None:
        return None

    def apply(self, op: FeedOp) -> None:
        """What ``Arrivals.change`` does."""
        self.applied.append(op)
        self.hub.apply_feed(op, 0.0)
        self.slices.applied(op)

    def forget(self, user: str) -> None:
        """A forget heard on the feed."""
        self.slices.forgetting(user)
        self.apply(UserForgotten(user))

    def members(self, group: str) -> dict[str, int] | None:
        found = self.hub.store.group_members(group)
        if found is None:
            return None
        joined = self.hub.chat.store.joined_after
        return {user: joined(group, user) or 0 for user in found}


async def until(check: object) -> None:
    with trio.fail_after(5):
        while not check():  # type: ignore[operator]
            await trio.sleep(0.001)


HIKERS = {"alice": 1, "bob": 2, "carol": 3}


async def test_a_node_holds_the_groups_of_its_held_users_only() -> None:
    redis = Redis({"hikers": HIKERS, "climbers": {"bob": 5}, "chess": {"zed": 7}})
    node = Node(redis)
    await node.slices.hold_users(["alice"])
    # It listens before each read: a change written after it is announced here.
    assert node.listening.log == [
        "hold inbox:alice",
        "subscribed",
        "read groups of alice",
        "hold group:hikers",
        "subscribed",
        "read hikers",
    ]
    assert node.members("hikers") == HIKERS  # every member, with its mark
    assert node.members("climbers") is None and node.members("chess") is None
    await node.slices.hold_users(["bob"])
    assert node.members("climbers") == {"bob": 5}
    node.slices.release_users(["alice"])
    assert node.members("hikers") == HIKERS  # bob still needs it
    node.slices.release_users(["bob"])
    assert node.members("hikers") is None and node.members("climbers") is None
    assert len(node.slices) == 0 and node.listening.held == {}
    # A request about a group holds it (as absent if it does not exist).
    await node.slices.hold_groups(["chess", "nothing"])
    assert node.members("chess") == {"zed": 7} and node.slices.holds("nothing")
    node.slices.release_groups(["chess", "nothing"])
    assert node.members("chess") is None and len(node.slices) == 0
    assert node.listening.held == {} and node.applied == []


async def test_a_notice_reads_a_held_group_again_and_applies_the_difference() -> None:
    redis = Redis({"hikers": HIKERS, "chess": {"zed": 7}})
    node = Node(redis)
    async with running(node.slices.run):
        await node.slices.hold_users(["alice"])
        reads = len(redis.reads)
        node.slices.stale(["zed", "yan"], ["chess"])  # nothing of them is held here
        await trio.testing.wait_all_tasks_blocked()
        assert len(redis.reads) == reads and redis.user_reads == [["alice"]]
        del redis.groups["hikers"]["bob"]
        redis.groups["hikers"]["dan"] = 9
        node.slices.stale([], ["hikers"])
        await until(lambda: node.applied)
        assert node.applied == [MemberAdded("hikers", "dan", 9), MemberRemoved("hikers", "bob")]
        assert node.members("hikers") == {"alice": 1, "carol": 3, "dan": 9}
        del redis.groups["hikers"]
        node.slices.stale([], ["hikers"])
        await until(lambda: len(node.applied) == 3)
    assert node.applied[-1] == GroupDeleted("hikers")
    assert node.members("hikers") is None and not node.slices.holds("hikers")
    assert node.listening.held == {"inbox:alice": 1}


async def test_a_held_user_joining_a_group_not_held_brings_it_in_whole() -> None:
    redis = Redis({"chess": {"zed": 7, "yan": 8}})
    node = Node(redis)
    async with running(node.slices.run):
        await node.slices.hold_users(["alice"])
        redis.groups["chess"]["alice"] = 9
        node.slices.stale(["alice"], ["chess"])  # the notices on her inbox and chess'
        await until(lambda: node.members("chess") == {"alice": 9, "zed": 7, "yan": 8})
        # Silently but for her: her sessions here are told she joined.
        assert node.applied == [MemberAdded("chess", "alice", 9)]
        assert node.loaded == ["chess"] and "group:chess" in node.listening.held
        # She leaves it: nobody here needs it any more.
        del redis.groups["chess"]["alice"]
        node.slices.stale(["alice"], ["chess"])
        await until(lambda: not node.slices.holds("chess"))
    assert node.applied[-1] == MemberRemoved("chess", "alice")
    assert node.members("chess") is None and "group:chess" not in node.listening.held


async def test_a_request_waits_for_a_group_a_join_is_bringing_in() -> None:
    redis = Redis({"chess": {"zed": 7, "yan": 8}})
    node = Node(redis)
    await node.slices.hold_users(["alice"])
    async with running(node.slices.run):
        redis.answer, redis.users_wait = trio.Event(), False  # groups slow from now on
        redis.groups["chess"]["alice"] = 10
        node.slices.stale(["alice"], [])
        await until(lambda: ["chess"] in redis.reads)  # run is reading chess
        got: list[dict[str, int] | None] = []

        async def request() -> None:  # GET /v1/groups/chess
            await node.slices.hold_groups(["chess"])
            got.append(node.members("chess"))
            node.slices.release_groups(["chess"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(request)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # it waits for Redis
            redis.answer.set()
    assert got == [{"alice": 10, "zed": 7, "yan": 8}]
    assert redis.reads.count(["chess"]) == 1


async def test_a_group_read_by_run_is_let_go_if_its_user_left_meanwhile() -> None:
    redis = Redis({"chess": {"zed": 7}})
    node = Node(redis)
    await node.slices.hold_users(["alice"])
    async with running(node.slices.run):
        redis.answer, redis.users_wait = trio.Event(), False
        redis.groups["chess"]["alice"] = 9
        node.slices.stale(["alice"], [])
        await until(lambda: redis.reads)
        node.slices.release_users(["alice"])  # her session ends during the read
        redis.answer.set()
        await until(lambda: not len(node.slices))
    assert node.listening.held == {}


async def test_a_forgotten_user_s_groups_are_let_go() -> None:
    node = Node(Redis({"hikers": HIKERS, "chess": {"alice": 4, "zed": 7}}))
    await node.slices.hold_users(["alice", "zed"])  # her session, or the forget request
    node.forget("alice")
    assert node.members("hikers") is None  # nobody held here is in it any more
    node.slices.release_users(["alice"])
    assert node.members("chess") == {"zed": 7}  # zed's
    node.slices.release_users(["zed"])
    assert len(node.slices) == 0 and node.listening.held == {}


@asynccontextmanager
async def hikers_being_read(redis: Redis, node: Node) -> AsyncIterator[None]:
    """For the block, a hold of the group hikers whose read is sent and not answered yet;
    it is answered as the block ends, which waits for the hold."""
    redis.answer = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.slices.hold_groups, ["hikers"])
        await until(lambda: redis.reads)
        yield
        redis.answer.set()


async def test_a_notice_during_a_first_read_reads_the_group_again() -> None:
    redis = Redis({"hikers": HIKERS})
    node = Node(redis)
    async with hikers_being_read(redis, node):
        del redis.groups["hikers"]["bob"]  # after the read saw it
        redis.groups["hikers"]["erin"] = 10
        node.slices.stale([], ["hikers"])
    assert node.members("hikers") == {"alice": 1, "carol": 3, "erin": 10}
    assert redis.reads == [["hikers"], ["hikers"]] and node.applied == []


async def test_a_forget_or_a_deletion_during_a_group_read_is_not_undone_by_it() -> None:
    redis = Redis({"hikers": HIKERS})
    node = Node(redis)
    async with hikers_being_read(redis, node):
        del redis.groups["hikers"]["bob"]
        node.forget("bob")  # the read (sent before) still lists bob
    assert node.members("hikers") == {"alice": 1, "carol": 3}
    node.slices.release_groups(["hikers"])
    async with hikers_being_read(redis, node):
        del redis.groups["hikers"]
        node.slices.stale([], ["hikers"])
    assert node.members("hikers") is None and node.slices.holds("hikers")


async def test_a_group_joined_during_the_user_s_read_is_held_too() -> None:
    """alice is added to chess after her groups were read (the read did not list it), and
    before she is held: the notice makes her groups be read again."""
    redis = Redis({"hikers": HIKERS, "chess": {"zed": 7}})
    node = Node(redis)
    redis.answer = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.slices.hold_users, ["alice"])
        await until(lambda: redis.user_reads)
        redis.groups["chess"]["alice"] = 9
        node.slices.stale(["alice"], ["chess"])
        redis.answer.set()
    assert node.members("chess") == {"zed": 7, "alice": 9}
    assert node.members("hikers") == HIKERS
    assert redis.user_reads == [["alice"], ["alice"]]


async def test_a_rejoin_between_reads_takes_the_new_mark() -> None:
    redis = Redis({"hikers": HIKERS})
    node = Node(redis)
    async with running(node.slices.run):
        await node.slices.hold_users(["alice"])
        redis.groups["hikers"]["bob"] = 20  # left and joined again
        node.slices.stale([], ["hikers"])
        await until(lambda: node.members("hikers") == {**HIKERS, "bob": 20})
    assert node.applied == []


async def test_a_failed_read_holds_nothing() -> None:
    redis = Redis({"hikers": HIKERS})
    node = Node(redis)
    redis.fail = True
    with pytest.raises(ConnectionError):
        await node.slices.hold_users(["alice"])
    with pytest.raises(ConnectionError):
        await node.slices.hold_groups(["hikers"])
    assert node.members("hikers") is None and len(node.slices) == 0
    assert node.listening.held == {}
    redis.fail = False
    await node.slices.hold_users(["alice"])
    assert node.members("hikers") == HIKERS


async def test_a_sliced_put_is_not_undone_by_a_notice_heard_part_way() -> None:
    """From a review: a PUT with more than GROUP_SLICE changes applies them in slices and
    journals the GroupSet only at the end. A notice heard part way is read once the
    replacement ends (``replacing``), not in the middle (it would undo the slices)."""
    redis = Redis({"hikers": HIKERS})
    node = Node(redis)
    async with running(node.slices.run):
        await node.slices.hold_groups(["hikers"])  # the PUT's holding()
        wanted = [*HIKERS, "dan", "erin"]
        with node.slices.replacing("hikers"):
            steps = node.hub.membership.set_group_in_slices("hikers", wanted, slice_size=1)
            next(steps)  # one slice applied, then put_group's ``await trio.sleep(0)``
            redis.groups["hikers"]["zoe"] = 11
            node.slices.stale([], ["hikers"])  # another node added zoe meanwhile
            await trio.testing.wait_all_tasks_blocked()
            list(steps)  # the other slices
            assert set(node.members("hikers") or ()) == set(wanted), node.applied
            assert node.applied == []
            for user in ("dan", "erin"):  # the PUT's GroupSet, written
                redis.groups["hikers"][user] = 10
        await until(lambda: node.applied)  # read once the replacement is journaled
        assert node.applied == [MemberAdded("hikers", "zoe", 11)]
        node.slices.release_groups(["hikers"])
    assert node.members("hikers") is None  # nobody held here: let go


async def test_a_request_about_a_group_does_not_hold_its_changes_back() -> None:
    """From a review: only a replacement in slices makes a read again wait; requests that
    merely hold the group (GET, overlapping without end) do not."""
    redis = Redis({"hikers": HIKERS})
    node = Node(redis)
    async with running(node.slices.run):
        await node.slices.hold_users(["alice"])
        await node.slices.hold_groups(["hikers"])  # a GET, still running
        del redis.groups["hikers"]["bob"]
        node.slices.stale([], ["hikers"])
        await until(lambda: node.applied)
        node.slices.release_groups(["hikers"])
    assert node.applied == [MemberRemoved("hikers", "bob")]


async def test_a_failed_read_again_of_a_group_is_tried_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    """From a review: a failed read again of a stale group is tried again, as a user's."""
    redis = Redis({"hikers": HIKERS})
    node = Node(redis)
    async with running(node.slices.run):
        await node.slices.hold_users(["alice"])
        redis.fail = True
        del redis.groups["hikers"]["bob"]
        node.slices.stale([], ["hikers"])
        await trio.testing.wait_all_tasks_blocked()
        redis.fail = False
        await trio.sleep(1.5)  # RETRY_S
    assert node.applied == [MemberRemoved("hikers", "bob")]


async def test_a_forget_heard_after_a_newer_read_is_read_over_again() -> None:
    """From a review: alice is forgotten on another node, then joins hikers again there;
    this node hears the notice before the forget. The groups the forget touched here are
    read again after it (``forgetting`` returns them), so her rejoin stays."""
    redis = Redis({"hikers": HIKERS})
    node = Node(redis)
    async with running(node.slices.run):
        await node.slices.hold_users(["bob"])  # bob's session is here
        redis.groups["hikers"]["alice"] = 50  # forgotten, then joined again (mark 50)
        node.slices.stale([], ["hikers"])  # the notice of the rejoin
        await until(lambda: node.members("hikers") == {**HIKERS, "alice": 50})
        again = node.slices.forgetting("alice")  # the forget, heard late on the feed
        node.apply(UserForgotten("alice"))
        node.slices.stale([], again)
        await until(lambda: node.members("hikers") == {**HIKERS, "alice": 50})
    assert again == {"hikers"}


async def test_a_first_read_completes_while_a_group_keeps_changing() -> None:
    """From a review: a big group changing more often than a read takes is read in all
    the same after ``MAX_TOUCHED_READS`` touched reads, then read once more."""
    redis = Redis({"hikers": HIKERS})
    node = Node(redis)
    read_groups = redis.read_groups

    async def busy_read(groups: list[str]) -> dict[str, dict[str, int]]:
        found = await read_groups(groups)
        redis.groups["hikers"][f"u{len(redis.reads)}"] = len(redis.reads)
        node.slices.stale([], ["hikers"])  # its notice, heard before the answer
        return found

    node.slices._read_groups = busy_read
    with trio.fail_after(1):
        await node.slices.hold_groups(["hikers"])
    assert node.slices.holds("hikers") and len(redis.reads) == 3
