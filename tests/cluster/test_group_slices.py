"""``GroupSlices`` (cluster): a node holds the groups of the users it serves (and of the
requests about a group), read as they are needed; a group change that reaches it while a
group is read is applied again after the read, in order, so a stale read changes nothing;
a held user joining a group the node lacks brings the whole group in. A real hub, a fake
Redis read and a fake clock (no server needed)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import pytest
import trio

from geopresence.cluster.group_slices import GroupSlices
from geopresence.core.hub import Hub
from geopresence.core.replication import FeedOp
from geopresence.core.settings import HubSettings
from geopresence.core.store import MemoryStore
from geopresence.model.records import (
    GroupDeleted,
    GroupSet,
    MemberAdded,
    MemberRemoved,
    UserForgotten,
)
from tests.helpers import RecordingSink


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

    async def read_groups_of(self, users: list[str]) -> dict[str, list[str]]:
        self.user_reads.append(sorted(users))
        seen = {u: sorted(g for g, marks in self.groups.items() if u in marks) for u in users}
        await self._answered()
        return seen

    async def read_groups(self, groups: list[str]) -> dict[str, dict[str, int]]:
        self.reads.append(sorted(groups))
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
        self.clock = 0.0
        self.slices = GroupSlices(
            self.hub, redis.read_groups_of, redis.read_groups, self._written, lambda: self.clock
        )
        self.loaded: list[str] = []
        self.slices.on_loaded = self.loaded.append

    async def _written(self) -> None:
        return None

    def feed(self, op: FeedOp) -> None:
        """What the link does with a feed op."""
        if self.slices.admit(op):
            self.hub.apply_feed(op, 0.0)
            self.slices.applied(op)

    def members(self, group: str) -> dict[str, int] | None:
        found = self.hub.store.group_members(group)
        if found is None:
            return None
        joined = self.hub.chat.store.joined_after
        return {user: joined(group, user) or 0 for user in found}


HIKERS = {"alice": 1, "bob": 2, "carol": 3}


async def test_a_node_holds_the_groups_of_its_held_users_only() -> None:
    redis = Redis({"hikers": HIKERS, "climbers": {"bob": 5}, "chess": {"zed": 7}})
    node = Node(redis)
    await node.slices.hold_users(["alice"])
    assert node.members("hikers") == HIKERS  # every member, with its mark
    assert node.members("climbers") is None and node.members("chess") is None
    await node.slices.hold_users(["bob"])
    assert node.members("climbers") == {"bob": 5}
    node.slices.release_users(["alice"])
    assert node.members("hikers") == HIKERS  # bob still needs it
    node.slices.release_users(["bob"])
    assert node.members("hikers") is None and node.members("climbers") is None
    assert len(node.slices) == 0
    # A request about a group holds it (as absent if it does not exist).
    await node.slices.hold_groups(["chess", "nothing"])
    assert node.members("chess") == {"zed": 7} and node.slices.holds("nothing")
    node.slices.release_groups(["chess", "nothing"])
    assert node.members("chess") is None and len(node.slices) == 0


async def test_changes_of_groups_not_held_are_left_out() -> None:
    node = Node(Redis({"hikers": HIKERS}))
    await node.slices.hold_users(["alice"])
    node.feed(MemberAdded("chess", "zed", 9))
    node.feed(GroupSet("chess", ["zed", "yan"], 9))
    assert node.members("chess") is None
    node.feed(MemberAdded("hikers", "dan", 9))
    node.feed(MemberRemoved("hikers", "bob"))
    assert node.members("hikers") == {"alice": 1, "carol": 3, "dan": 9}
    node.feed(GroupDeleted("hikers"))
    assert node.members("hikers") is None


async def test_a_held_user_joining_a_group_not_held_brings_it_in_whole() -> None:
    redis = Redis({"chess": {"zed": 7, "yan": 8}})
    node = Node(redis)
    await node.slices.hold_users(["alice"])
    redis.groups["chess"]["alice"] = 9
    node.feed(MemberAdded("chess", "alice", 9))
    assert node.members("chess") == {"alice": 9}  # at once, for alice's sessions
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.slices.run)
        with trio.fail_after(5):
            while node.members("chess") != {"alice": 9, "zed": 7, "yan": 8}:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert node.loaded == ["chess"]
    # alice leaves it: nobody here needs it any more.
    node.feed(MemberRemoved("chess", "alice"))
    assert node.members("chess") is None and not node.slices.holds("chess")


async def test_a_request_waits_for_a_group_a_join_brought_in_part_way() -> None:
    """chess came in with alice's join (only her, so far) while ``run`` is busy reading
    another group: a request about chess reads it in full before it answers."""
    redis = Redis({"hikers": HIKERS, "chess": {"zed": 7, "yan": 8}, "climbers": {"x": 1}})
    node = Node(redis)
    await node.slices.hold_users(["alice"])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.slices.run)
        redis.answer = trio.Event()  # Redis slow from now on
        redis.groups["climbers"]["alice"] = 9
        node.feed(MemberAdded("climbers", "alice", 9))
        with trio.fail_after(5):
            while ["climbers"] not in redis.reads:  # run is reading climbers
                await trio.sleep(0.001)
        redis.groups["chess"]["alice"] = 10
        node.feed(MemberAdded("chess", "alice", 10))
        got: list[dict[str, int] | None] = []

        async def request() -> None:  # GET /v1/groups/chess
            await node.slices.hold_groups(["chess"])
            got.append(node.members("chess"))
            node.slices.release_groups(["chess"])

        nursery.start_soon(request)
        await trio.sleep(0.01)
        assert got == []  # it waits for Redis
        redis.answer.set()
        with trio.fail_after(5):
            while not got:
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    assert got == [{"alice": 10, "zed": 7, "yan": 8}]


async def test_a_group_read_by_run_is_let_go_if_its_user_left_meanwhile() -> None:
    redis = Redis({"chess": {"zed": 7}})
    node = Node(redis)
    await node.slices.hold_users(["alice"])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.slices.run)
        redis.answer = trio.Event()
        redis.groups["chess"]["alice"] = 9
        node.feed(MemberAdded("chess", "alice", 9))
        with trio.fail_after(5):
            while not redis.reads:
                await trio.sleep(0.001)
        node.slices.release_users(["alice"])  # her session ends during the read
        redis.answer.set()
        with trio.fail_after(5):
            while len(node.slices):
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()


async def test_a_forgotten_user_s_groups_are_let_go() -> None:
    node = Node(Redis({"hikers": HIKERS, "chess": {"alice": 4, "zed": 7}}))
    await node.slices.hold_users(["alice", "zed"])  # her session, or the forget request
    node.feed(UserForgotten("alice"))
    assert node.members("hikers") is None  # nobody held here is in it any more
    node.slices.release_users(["alice"])
    assert node.members("chess") == {"zed": 7}  # zed's
    node.slices.release_users(["zed"])
    assert len(node.slices) == 0


@asynccontextmanager
async def hikers_being_read(redis: Redis, node: Node) -> AsyncIterator[None]:
    """For the block, a hold of the group hikers whose read is sent and not answered yet;
    it is answered as the block ends, which waits for the hold."""
    redis.answer = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.slices.hold_groups, ["hikers"])
        with trio.fail_after(5):
            while not redis.reads:
                await trio.sleep(0.001)
        yield
        redis.answer.set()


async def test_a_change_during_a_read_is_applied_again_after_it_in_order() -> None:
    redis = Redis({"hikers": HIKERS})
    node = Node(redis)
    async with hikers_being_read(redis, node):
        # Heard before the read answered, from a Redis the read had already seen.
        node.feed(MemberRemoved("hikers", "bob"))
        node.feed(MemberAdded("hikers", "dan", 9))
        node.feed(MemberRemoved("hikers", "dan"))
        node.feed(MemberAdded("hikers", "erin", 10))
    assert node.members("hikers") == {"alice": 1, "carol": 3, "erin": 10}


async def test_a_read_from_a_shard_behind_the_feed_changes_nothing() -> None:
    """On a Cluster a read can miss a change whose feed entry was already applied; the
    change is kept a few seconds and applied again over it."""
    redis = Redis({"hikers": HIKERS})
    node = Node(redis)
    await node.slices.hold_groups(["hikers"])
    node.slices.release_groups(["hikers"])
    node.clock = 10.0
    node.feed(MemberAdded("hikers", "dan", 9))  # not held: left out, but kept
    node.clock = 12.0
    await node.slices.hold_groups(["hikers"])  # Redis does not have dan yet
    assert node.members("hikers") == {**HIKERS, "dan": 9}


async def test_a_group_joined_during_the_user_s_read_is_held_too() -> None:
    """alice is added to chess after her groups were read (the read did not list it), and
    before she is held: chess is read in full for her all the same."""
    redis = Redis({"hikers": HIKERS, "chess": {"zed": 7}})
    node = Node(redis)
    redis.answer = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.slices.hold_users, ["alice"])
        with trio.fail_after(5):
            while not redis.user_reads:
                await trio.sleep(0.001)
        redis.groups["chess"]["alice"] = 9
        node.feed(MemberAdded("chess", "alice", 9))
        redis.answer.set()
    assert node.members("chess") == {"zed": 7, "alice": 9}
    assert node.members("hikers") == HIKERS


async def test_a_forget_heard_during_a_group_read_is_not_undone_by_it() -> None:
    redis = Redis({"hikers": HIKERS})
    node = Node(redis)
    async with hikers_being_read(redis, node):
        node.feed(UserForgotten("bob"))  # the read (sent before) still lists bob
    assert node.members("hikers") == {"alice": 1, "carol": 3}


async def test_a_group_deleted_during_its_read_stays_deleted() -> None:
    redis = Redis({"hikers": HIKERS})
    node = Node(redis)
    async with hikers_being_read(redis, node):
        node.feed(GroupDeleted("hikers"))
    assert node.members("hikers") is None


async def test_a_failed_read_holds_nothing() -> None:
    redis = Redis({"hikers": HIKERS})
    node = Node(redis)
    redis.fail = True
    with pytest.raises(ConnectionError):
        await node.slices.hold_users(["alice"])
    with pytest.raises(ConnectionError):
        await node.slices.hold_groups(["hikers"])
    assert node.members("hikers") is None and len(node.slices) == 0
    redis.fail = False
    await node.slices.hold_users(["alice"])
    assert node.members("hikers") == HIKERS
