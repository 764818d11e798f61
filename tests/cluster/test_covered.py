"""Which statuses a node keeps (``Covered``), against a real Redis: a channel that may have
missed a transition has its statuses read again, and a newer one reaches the connections."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import coredis
import pytest
import trio

from geopresence.cluster.covered import Covered
from geopresence.cluster.kept_settings import KeptSettings
from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.views import Views
from geopresence.core.broker import MemoryBroker, group_channel, inbox_channel
from geopresence.core.hub import Hub, HubSettings
from geopresence.core.replication import PresenceSet
from geopresence.core.store import MemoryStore
from tests.cluster.test_views import GatedRedis
from tests.helpers import RecordingSink
from tests.redis_server import redis_server

NOW = 1_000.0


class QuietReplicator:
    """The Replicator seam, doing nothing: these tests announce transitions themselves."""

    def replicate(self, op: Any) -> None: ...
    def device_alive(self, user: str, device: str, at: float) -> None: ...
    def device_ended(self, *args: Any, **kwargs: Any) -> None: ...
    def logout(self, *args: Any) -> None: ...


class Listening:
    """``Covered``'s view of the broker: the hub's own, with every subscription in place."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.on_released: Any = None

    def subscribers(self, channel: str) -> Any:
        return self.broker.subscribers(channel)

    async def subscribed(self) -> None:
        """Every subscription is in place at once."""

    def hold(self, channel: str) -> None:
        self.broker.subscribe(channel, -1)

    def release(self, channel: str) -> None:
        self.broker.unsubscribe(channel, -1)
        if not self.broker.subscribers(channel) and self.on_released is not None:
            self.on_released(channel)


def covered_by(client: Any, keys: Keys, hub: Hub, broker: MemoryBroker) -> Covered:
    listening: Any = Listening(broker)
    settings = KeptSettings(client, keys, listening, hub, lambda: NOW)
    covered = Covered(client, keys, listening, hub, settings)
    listening.on_released = covered.released
    return covered


@asynccontextmanager
async def online_in_redis(**versions: int) -> AsyncIterator[tuple[Any, Keys]]:
    """A client of a fresh Redis where each user named is online at its version."""
    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            keys = Keys("gp")
            for user, version in versions.items():
                await client.hset(keys.of("presence", user), {"status": "online", "v": version})
            yield client, keys


def hub_with_bob(
    store: MemoryStore | None = None, **settings: Any
) -> tuple[Hub, RecordingSink, MemoryBroker]:
    sink = RecordingSink()
    holder: list[MemoryBroker] = []

    def broker(deliver: Any) -> MemoryBroker:
        def to_connections(conn: int, event: Any) -> None:
            if conn >= 0:  # -1: the node's own holds
                deliver(conn, event)

        holder.append(MemoryBroker(to_connections))
        return holder[0]

    hub = Hub(
        HubSettings(**settings),
        MemoryStore() if store is None else store,
        sink,
        replicator=QuietReplicator(),
        broker_factory=broker,
    )
    hub.membership.add_friendships([("alice", "bob")], NOW)
    hub.open_session(1, "bob", "phone", now=NOW)
    sink.take(1)
    return hub, sink, holder[0]


async def test_a_gap_reads_the_statuses_again_and_tells_what_was_missed() -> None:
    hub, sink, broker = hub_with_bob()
    hub.announce_presence(PresenceSet("alice", "offline", NOW - 60, 1))
    sink.take(1)
    async with online_in_redis() as (client, keys):
        covered = covered_by(client, keys, hub, broker)
        # alice came online while this node's channel to her was down.
        await client.hset(keys.of("presence", "alice"), {"status": "online", "v": "2"})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(covered.run)
            covered.resync(["user:alice", "user:nobody"])
            with trio.fail_after(5):
                while not hub.statuses.is_online("alice"):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert [(f["user"], f["status"]) for f in sink.take(1, "presence")] == [("alice", "online")]
    assert not hub.statuses.holds("nobody")  # nothing here listens to it


async def test_a_status_no_channel_carries_is_dropped() -> None:
    hub, _, broker = hub_with_bob()
    async with online_in_redis() as (client, keys):
        covered = covered_by(client, keys, hub, broker)
        transition = PresenceSet("alice", "online", NOW, 1)
        hub.announce_presence(transition)
        covered.announced(transition)
        assert hub.statuses.holds("alice")  # bob's connection listens to her channel
        hub.close_session(1)
        covered.released("user:alice")
        assert not hub.statuses.holds("alice")
        # A transition decided here for a user nobody here listens to is not kept.
        other = PresenceSet("zoe", "online", NOW, 1)
        hub.announce_presence(other)
        covered.announced(other)
        assert not hub.statuses.holds("zoe")


async def test_a_friendship_made_while_a_session_is_covered_is_covered_too() -> None:
    """The statuses are read once the subscriptions are in place; a friend made during that
    read adds a pass, so the session opens knowing every friend's status."""
    hub, _, broker = hub_with_bob()
    async with online_in_redis(carol=3, dave=3) as (client, keys):
        hub.membership.add_friendships([("erin", "carol")], NOW)
        redis = GatedRedis(client)
        covered = covered_by(redis, keys, hub, broker)
        async with trio.open_nursery() as nursery:

            async def open_erin() -> None:
                async with covered.covering("erin"):
                    # What open_session reads: every friend's status, dave's included.
                    assert hub.statuses.is_online("carol")
                    assert hub.statuses.is_online("dave")

            nursery.start_soon(open_erin)
            await redis.waiting.wait()  # carol's status is being read...
            hub.membership.add_friendships([("erin", "dave")], NOW)  # ...as dave is made
            redis.gate.set()
    assert not hub.statuses.holds("dave")  # nobody here listens to dave once erin's gone


class Confirming(Listening):
    """``Listening``, noting which channels were held when ``subscribed`` returned."""

    def __init__(self, broker: MemoryBroker) -> None:
        super().__init__(broker)
        self.held: set[str] = set()
        self.confirmed: set[str] = set()

    async def subscribed(self) -> None:
        self.confirmed |= self.held

    def hold(self, channel: str) -> None:
        self.held.add(channel)
        super().hold(channel)


async def test_a_session_s_chat_channels_are_in_redis_before_it_opens() -> None:
    """A message sent once the client has its ``welcome`` reaches it live: its inbox and
    every group's channel (a big one's too, which carries no transitions) are subscribed in
    Redis before the session opens, even when every friend's status is kept already."""
    hub, _, broker = hub_with_bob(presence_fanout_limit=2)
    hub.membership.set_group("pair", ["alice", "bob"])
    hub.membership.set_group("crowd", ["alice", "bob", "carol"])
    async with online_in_redis(bob=2) as (client, keys):
        confirming = Confirming(broker)
        listening: Any = confirming
        settings = KeptSettings(client, keys, listening, hub, lambda: NOW)
        covered = Covered(client, keys, listening, hub, settings)
        async with covered.covering("alice"):
            assert hub.statuses.holds("bob")
            covered_first = set(confirming.confirmed)
            hub.open_session(2, "alice", "phone", now=NOW)
        chat = {inbox_channel("alice"), group_channel("pair"), group_channel("crowd")}
        assert chat <= covered_first
        # Kept already, listened to already: a second device waits for nothing.
        confirming.confirmed.clear()
        async with covered.covering("alice"):
            assert not confirming.confirmed


class Gated(Confirming):
    """``Confirming``, with Redis confirming the subscriptions only once ``gate`` is set."""

    def __init__(self, broker: MemoryBroker) -> None:
        super().__init__(broker)
        self.gate = trio.Event()

    async def subscribed(self) -> None:
        pending = set(self.held)
        await self.gate.wait()
        self.confirmed |= pending


async def test_a_second_device_waits_for_the_first_one_s_subscriptions() -> None:
    """The phone's ``covering`` asked Redis for the chat channels and waits: the laptop,
    opening meanwhile, finds them listened to here but not yet in Redis, and waits too."""
    hub, _, broker = hub_with_bob(presence_fanout_limit=2)
    hub.membership.set_group("crowd", ["zoe", "bob", "carol"])  # big: carries no statuses to read
    gated = Gated(broker)
    listening: Any = gated
    settings = KeptSettings(None, Keys("gp"), listening, hub, lambda: NOW)
    covered = Covered(None, Keys("gp"), listening, hub, settings)
    opened: dict[str, set[str]] = {}

    async def device(name: str) -> None:
        async with covered.covering("zoe"):
            opened[name] = set(gated.confirmed)  # its welcome goes out now

    async with trio.open_nursery() as nursery:
        nursery.start_soon(device, "phone")
        await trio.sleep(0.01)
        nursery.start_soon(device, "laptop")
        await trio.sleep(0.01)
        assert not opened
        gated.gate.set()
    chat = {inbox_channel("zoe"), group_channel("crowd")}
    assert chat <= opened["phone"] and chat <= opened["laptop"]


async def test_a_group_s_change_drops_or_reads_the_members_it_carries() -> None:
    hub, _, broker = hub_with_bob(presence_fanout_limit=3)
    hub.membership.set_group("g", ["bob", "carol", "dave"])
    async with online_in_redis(carol=2, dave=2, erin=2) as (client, keys):
        covered = covered_by(client, keys, hub, broker)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(covered.run)
            async with covered.covering("bob"):
                # Opened already: its connection (1) keeps group:g after the block.
                assert hub.sessions.has_connections("bob")
            assert hub.statuses.holds("carol") and hub.statuses.holds("dave")

            async def settled() -> None:
                covered.regroup("g")
                await trio.sleep(0.2)

            hub.membership.remove_member("g", "dave")  # dave's transitions no longer come here
            await settled()
            assert not hub.statuses.holds("dave") and hub.statuses.holds("carol")
            hub.membership.add_member("g", "erin")  # erin's do
            await settled()
            assert hub.statuses.is_online("erin")
            hub.membership.add_member("g", "frank")  # 4 > 3: no co-member presence any more
            await settled()
            assert not hub.statuses.holds("carol") and not hub.statuses.holds("erin")
            hub.membership.remove_member("g", "frank")  # small again
            await settled()
            assert hub.statuses.holds("carol") and hub.statuses.holds("erin")
            hub.membership.delete_group("g")
            await settled()
            assert not hub.statuses.holds("carol") and not hub.statuses.holds("erin")
            nursery.cancel_scope.cancel()


def test_a_new_friend_s_presence_waits_for_its_status_to_be_read() -> None:
    """With several nodes, a new friend whose status this node does not keep is not shown
    ``offline`` (a flap once it is read): its friends_presence goes out once read."""
    hub, sink, _ = hub_with_bob()
    hub.membership.add_friendships([("bob", "carol")], NOW)
    assert sink.take(1, "friends_presence") == []
    assert hub.membership.unshown_friends == [("bob", "carol")]
    hub.statuses.set_status("carol", "online", NOW - 5, 4)  # what the cluster read
    hub.membership.tell_new_friends("bob", ["carol"], NOW)
    [snapshot] = sink.take(1, "friends_presence")
    assert [(f["user"], f["status"]) for f in snapshot["friends"]] == [("carol", "online")]


def test_a_forgotten_user_back_online_is_answered_online() -> None:
    hub, _, _ = hub_with_bob()
    hub.statuses.forget("zed")
    with hub.statuses.overlay({"zed": ("offline", NOW, 3)}):  # the forget's own logout
        assert hub.statuses.status_of("zed", NOW)[0] == "offline"
    with hub.statuses.overlay({"zed": ("online", NOW, 4)}):  # back, on another node
        assert hub.statuses.status_of("zed", NOW)[0] == "online"
    assert not hub.statuses.holds("zed")


class FailingOnce(GatedRedis):
    """A client whose first pipeline fails (Redis unreachable for a moment)."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.gate.set()
        self.failed = False

    def pipeline(self, **kwargs: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise ConnectionError("redis went away")
        return super().pipeline(**kwargs)


async def test_a_session_opened_without_its_friends_statuses_is_told_them_once_read() -> None:
    hub, sink, broker = hub_with_bob()
    async with online_in_redis(carol=2) as (client, keys):
        hub.membership.add_friendships([("erin", "carol")], NOW)
        covered = covered_by(FailingOnce(client), keys, hub, broker)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(covered.run)
            with pytest.raises(ConnectionError):
                async with covered.covering("erin"):
                    raise AssertionError("covered without Redis")
            hub.open_session(2, "erin", "phone", now=NOW)  # as the shell does
            [hello] = sink.take(2, "friends_presence")
            assert [(f["user"], f["status"]) for f in hello["friends"]] == [("carol", "offline")]
            with trio.fail_after(5):
                while not hub.statuses.is_online("carol"):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert [(f["user"], f["status"]) for f in sink.take(2, "presence")] == [("carol", "online")]


# ---------------------------------------------------------------- from a second review


def covered_and_views(client: Any, keys: Keys, hub: Any, broker: Any) -> tuple[Covered, Views]:
    """A node's ``Covered`` and the ``Views`` that read new friends' statuses through it."""
    covered = covered_by(client, keys, hub, broker)
    listening: Any = Listening(broker)
    return covered, Views(client, keys, listening, hub, lambda: NOW, covered.read_missing)


async def test_a_presence_for_a_new_friend_arrives_before_its_friends_presence() -> None:
    hub, sink, broker = hub_with_bob()
    async with online_in_redis(carol=5) as (client, keys):
        redis = GatedRedis(client)
        covered, views = covered_and_views(redis, keys, hub, broker)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(views.run)
            hub.membership.add_friendships([("bob", "carol")], NOW)
            views.befriended("bob", "carol")  # as ClusterLink._on_record does
            await redis.waiting.wait()  # carol's status is being read...
            # ...as her next transition arrives on user:carol (bob's conn listens).
            t = PresenceSet("carol", "offline", NOW, 6)
            hub.announce_presence(t)
            covered.announced(t)
            redis.gate.set()
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
    kinds = [f["type"] for f in sink.take(1, "presence", "friends_presence")]
    assert kinds == ["friends_presence", "presence"], kinds


async def test_removed_and_made_again_lists_the_friend_once() -> None:
    hub, sink, broker = hub_with_bob()
    async with online_in_redis(carol=5) as (client, keys):
        _, views = covered_and_views(client, keys, hub, broker)
        hub.membership.add_friendships([("bob", "carol")], NOW)
        hub.membership.remove_friendship("bob", "carol")
        hub.membership.add_friendships([("bob", "carol")], NOW)
        views.befriended("bob", "carol")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(views.run)
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
    frames = sink.take(1, "friend_removed", "friends_presence")
    [fp] = [f for f in frames if f["type"] == "friends_presence"]
    assert [f["user"] for f in fp["friends"]] == ["carol"], fp


async def test_a_new_friend_s_status_that_could_not_be_read_is_read_again() -> None:
    hub, sink, broker = hub_with_bob()
    async with online_in_redis(carol=5) as (client, keys):
        redis = FailingOnce(client)
        covered, views = covered_and_views(redis, keys, hub, broker)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(covered.run)
            nursery.start_soon(views.run)
            hub.membership.add_friendships([("bob", "carol")], NOW)
            views.befriended("bob", "carol")
            await trio.sleep(2.5)
            nursery.cancel_scope.cancel()
    frames = sink.take(1, "presence", "friends_presence")
    last: dict[str, str] = {}
    for f in frames:
        for s in f.get("friends", [f]):
            last[s["user"]] = s["status"]
    assert last.get("carol") == "online", frames  # she is online in Redis, v5


def test_a_bulk_import_sends_one_friends_presence_per_connection() -> None:
    hub, sink, _ = hub_with_bob()
    hub.statuses.set_status("carol", "online", NOW, 2)  # known here (say, a group)
    hub.membership.add_friendships([("bob", "carol"), ("bob", "dave")], NOW)
    hub.membership.tell_new_friends(
        "bob", [f for _, f in hub.membership.unshown_friends], NOW
    )  # what Views.run does once dave's status is read
    frames = sink.take(1, "friends_presence")
    assert len(frames) == 1, frames  # PROTOCOL: "one per connection with all of them"


async def test_a_member_removed_while_another_session_opens_is_still_dropped() -> None:
    hub, _, broker = hub_with_bob(presence_fanout_limit=4)
    hub.membership.set_group("g", ["bob", "carol", "dave", "erin"])
    async with online_in_redis(carol=2, dave=2, erin=2) as (client, keys):
        covered = covered_by(client, keys, hub, broker)
        async with covered.covering("bob"):
            # Opened already: its connection (1) keeps group:g after the block.
            assert hub.sessions.has_connections("bob")
        assert hub.statuses.holds("dave")
        hub.membership.remove_member("g", "dave")
        covered.regroup("g")  # as ClusterLink._on_record does; run has not had its turn
        async with covered.covering("erin"):  # erin's session opens meanwhile
            hub.open_session(2, "erin", "phone", now=NOW)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(covered.run)
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
        # No channel here carries dave's transitions: his status is not kept current.
        assert not covered.covers("dave")
        assert not hub.statuses.holds("dave")
