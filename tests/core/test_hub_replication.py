"""Two hubs ("nodes") linked in memory the way Redis links them, without an event loop:
the feed (journal records and replicated ops), channel publishes, and a model of the Lua
presence decision. What each node's connections see must match the single-node rules."""

from __future__ import annotations

from collections.abc import Iterable, Set
from typing import Any

from geopresence.core.broker import ConnId, Deliver, MemoryBroker
from geopresence.core.chat_message_wire import ChatEvent
from geopresence.core.hub import Hub, HubSettings
from geopresence.core.replication import FeedOp, LogoutRequested, PresenceSet
from geopresence.core.store import MemoryStore, UserSettings
from geopresence.model.records import Record
from geopresence.wire.client_messages import (
    Heartbeat,
    LocationUpdate,
    Logout,
    NearbyFriendsQuery,
    Send,
    Sync,
)
from tests.helpers import RecordingSink


class Cluster:
    """Shared parts: every node's hub, and the presence "Redis" (the node holding each alive
    device, per user)."""

    def __init__(self) -> None:
        self.hubs: list[Hub] = []
        self.devices: dict[str, dict[str, int]] = {}
        self.last_active: dict[str, float] = {}
        self.versions: dict[str, int] = {}
        self.reports: list[tuple[Any, ...]] = []
        """Every Replicator call about devices, in order (what Redis would be told)."""
        self.now = 1000.0

    def others(self, hub: Hub) -> list[Hub]:
        return [h for h in self.hubs if h is not hub]


class LinkedBroker(MemoryBroker):
    """A MemoryBroker whose publishes also reach the other nodes' local subscribers."""

    def __init__(self, deliver: Deliver, node: Node) -> None:
        super().__init__(deliver)
        self.node = node

    def publish(
        self, channels: Iterable[str], message: Any, exclude: Set[ConnId] = frozenset()
    ) -> int:
        channel_list = list(channels)
        delivered = super().publish(channel_list, message, exclude)
        if isinstance(message, ChatEvent):
            return delivered  # as RedisBroker.travels: chat reaches the others on the feed
        for other in self.node.cluster.others(self.node.hub):
            other.broker.publish_local(channel_list, message)
        return delivered

    def publish_local(
        self, channels: Iterable[str], message: Any, exclude: Set[ConnId] = frozenset()
    ) -> int:
        return super().publish(channels, message, exclude)


class Node:
    """One node: a hub whose journal and replicator feed the others at once."""

    def __init__(self, cluster: Cluster, node_id: int) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.sink = RecordingSink()
        self.seq = 0
        self.hub = Hub(
            HubSettings(node_id=node_id, location_ttl=10.0),  # expires before offline_after
            MemoryStore(),
            self.sink,
            broker_factory=lambda deliver: LinkedBroker(deliver, self),
            journal=self,
            replicator=self,
        )
        cluster.hubs.append(self.hub)

    # The Journal seam: durable at once, then fed to the others.
    def append(self, record: Record) -> int:
        self.seq += 1
        self._feed(record)
        return self.seq

    @property
    def durable_seq(self) -> int:
        return self.seq

    # The Replicator seam.
    def replicate(self, op: FeedOp) -> None:
        self._feed(op)

    def device_alive(self, user: str, device: str, at: float) -> None:
        self.cluster.reports.append(("alive", self.node_id, user, device))
        devices = self.cluster.devices.setdefault(user, {})
        was_online = bool(devices)
        devices[device] = self.node_id
        self._touch(user, at)
        if not was_online:
            self._decide(user, "online")

    def device_ended(
        self, user: str, device: str, last_active_at: float | None, *, logout: bool
    ) -> None:
        self.cluster.reports.append(("ended", self.node_id, user, device, logout))
        devices = self.cluster.devices.get(user, {})
        if device in devices and (logout or devices[device] == self.node_id):
            del devices[device]
            self._touch(user, last_active_at)
            if not devices:
                self._decide(user, "offline")

    def logout(self, user: str, device: str | None, last_active_at: float | None) -> None:
        self._feed(LogoutRequested(user, device))
        devices = self.cluster.devices.get(user, {})
        for name in list(devices) if device is None else [device]:
            self.device_ended(user, name, last_active_at, logout=True)

    def _touch(self, user: str, at: float | None) -> None:
        if at is not None and at > self.cluster.last_active.get(user, at - 1):
            self.cluster.last_active[user] = at

    def _decide(self, user: str, status: Any) -> None:
        version = self.cluster.versions[user] = self.cluster.versions.get(user, 0) + 1
        transition = PresenceSet(user, status, self.cluster.last_active.get(user), version)
        self._feed(transition)
        self.hub.announce_presence(transition)

    def _feed(self, op: FeedOp) -> None:
        for other in self.cluster.others(self.hub):
            other.apply_feed(op, self.cluster.now)
            # A new friend's status this node did not keep: the cluster reads it, then tells
            # (here every status is on every node: there is nothing to read).
            unshown, other.membership.unshown_friends = other.membership.unshown_friends, []
            for viewer, friend in unshown:
                other.membership.tell_new_friends(viewer, [friend], self.cluster.now)

    def take(self, conn: ConnId) -> list[dict[str, Any]]:
        return self.sink.take(conn)


def two_nodes() -> tuple[Cluster, Node, Node]:
    cluster = Cluster()
    return cluster, Node(cluster, 1), Node(cluster, 2)


def kinds(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == kind]


def test_presence_across_nodes_is_one_event_per_transition() -> None:
    cluster, a, b = two_nodes()
    a.hub.membership.add_friendship("alice", "bob", cluster.now)
    assert b.hub.store.are_friends("alice", "bob")  # replicated
    b.hub.open_session(20, "bob", "phone", cluster.now)
    [listing] = kinds(b.take(20), "friends_presence")
    assert listing["friends"][0]["status"] == "offline"
    a.hub.open_session(10, "alice", "phone", cluster.now)
    a.hub.open_session(11, "alice", "laptop", cluster.now)  # a second device: no event
    b.hub.open_session(21, "alice", "tablet", cluster.now)  # a device on the other node
    assert [(p["user"], p["status"]) for p in kinds(b.take(20), "presence")] == [
        ("alice", "online")
    ]
    assert kinds(a.take(10), "friends_presence")[0]["friends"][0]["status"] == "online"
    a.hub.membership.set_group("pair", ["alice", "bob"])
    assert b.hub.statuses.group_online("pair") == (["alice", "bob"], 2)  # from b's replica
    for conn in (10, 11):
        a.hub.handle(conn, Logout(), cluster.now)
    assert kinds(b.take(20), "presence") == []  # the tablet is still alive
    b.hub.handle(21, Logout(), cluster.now)
    assert [p["status"] for p in kinds(b.take(20), "presence")] == ["offline"]
    assert a.hub.statuses.user_presence("alice", cluster.now).status == "offline"


def test_http_logout_on_one_node_ends_devices_on_every_node() -> None:
    cluster, a, b = two_nodes()
    a.hub.membership.add_friendship("alice", "bob", cluster.now)
    a.hub.open_session(10, "bob", "phone", cluster.now)
    b.hub.open_session(20, "alice", "phone", cluster.now)
    a.take(10)
    a.hub.lifecycle.logout("alice")
    assert b.sink.closed == {20: 4001}
    assert cluster.devices["alice"] == {}
    assert [p["status"] for p in kinds(a.take(10), "presence")] == ["offline"]


def test_friendship_changes_reach_live_connections_on_other_nodes() -> None:
    cluster, a, b = two_nodes()
    b.hub.open_session(20, "bob", "phone", cluster.now)
    b.take(20)
    a.hub.membership.add_friendship("alice", "bob", cluster.now)
    [listing] = kinds(b.take(20), "friends_presence")
    assert [f["user"] for f in listing["friends"]] == ["alice"]
    assert "user:alice" in b.hub.broker.channels_of(20)
    a.hub.membership.remove_friendship("alice", "bob")
    assert kinds(b.take(20), "friend_removed") == [{"type": "friend_removed", "user": "alice"}]
    assert "user:alice" not in b.hub.broker.channels_of(20)


def test_locations_fan_out_once_and_expire_once_per_watcher() -> None:
    cluster, a, b = two_nodes()
    a.hub.membership.add_friendship("alice", "bob", cluster.now)
    a.hub.open_session(10, "alice", "phone", cluster.now)
    b.hub.open_session(20, "bob", "phone", cluster.now)
    b.hub.handle(20, LocationUpdate(lat=37.5700, lon=126.98, ts=None), cluster.now)
    a.hub.handle(10, LocationUpdate(lat=37.5665, lon=126.978, ts=None), cluster.now)
    assert [f["user"] for f in kinds(b.take(20), "friend_location")] == ["alice"]
    # b's replica answers bob's initial list with alice's location from node a.
    b.hub.handle(20, NearbyFriendsQuery(id=1), cluster.now)
    [reply] = kinds(b.take(20), "nearby_friends")
    assert [f["user"] for f in reply["friends"]] == ["alice"]
    # Both nodes hold the same deadline; each tells its own watchers, once.
    ttl = a.hub.settings.location_ttl
    for hub in (a.hub, b.hub):
        hub.expire(cluster.now + ttl + 1)
    gone = kinds(b.take(20), "friend_gone")
    assert [(g["user"], g["reason"]) for g in gone] == [("alice", "expired")]


def test_settings_and_groups_replicate_with_their_join_marks() -> None:
    cluster, a, b = two_nodes()
    a.hub.nearby.change_settings("alice", UserSettings(radius_m=1000.0), cluster.now)
    assert b.hub.store.get_settings("alice").radius_m == 1000.0
    a.hub.membership.set_group("hikers", ["alice", "bob"])
    b.hub.open_session(20, "bob", "phone", cluster.now)
    a.hub.open_session(10, "alice", "phone", cluster.now)
    a.hub.handle(10, Send(id=1, group="hikers", text="first"), cluster.now)
    assert [m["text"] for m in kinds(b.take(20), "message")] == ["first"]
    a.hub.membership.add_member("hikers", "carol")  # joins after "first": never reads it
    b.hub.open_session(30, "carol", "phone", cluster.now)
    b.hub.handle(30, Sync(id=2, after=0), cluster.now)
    [page] = kinds(b.take(30), "messages")
    assert page["messages"] == []
    a.hub.handle(10, Send(id=3, group="hikers", text="second"), cluster.now)
    assert [m["text"] for m in kinds(b.take(30), "message")] == ["second"]


def test_chat_sync_and_resends_on_any_node() -> None:
    cluster, a, b = two_nodes()
    a.hub.membership.add_friendship("alice", "bob", cluster.now)
    a.hub.open_session(10, "alice", "phone", cluster.now)
    b.hub.open_session(11, "alice", "laptop", cluster.now)
    b.hub.open_session(20, "bob", "phone", cluster.now)
    a.hub.handle(10, Send(id=1, to="bob", text="one", client_msg_id="k1"), cluster.now)
    b.hub.handle(20, Send(id=2, to="alice", text="two"), cluster.now + 1)
    assert [m["text"] for m in kinds(b.take(11), "message")] == ["one", "two"]
    assert [m["text"] for m in kinds(a.take(10), "message")] == ["two"]
    # The resend arrives at the other node (the phone moved): same message, not a new one.
    b.hub.handle(11, Send(id=3, to="bob", text="one", client_msg_id="k1"), cluster.now + 2)
    [ack] = kinds(b.take(11), "sent")
    assert ack["duplicate"] is True
    for node, conn in ((a, 10), (b, 20)):
        node.hub.handle(conn, Sync(id=4, after=0), cluster.now + 3)
        [page] = kinds(node.take(conn), "messages")
        assert [m["text"] for m in page["messages"]] == ["one", "two"]
    # Ids stay time-ordered across nodes: b issued "two" after seeing "one".
    ids = [int(m["message_id"]) for m in page["messages"]]
    assert ids == sorted(ids)


def test_a_late_older_transition_does_not_overwrite_a_newer_one() -> None:
    cluster, _, b = two_nodes()
    b.hub.apply_feed(PresenceSet("alice", "online", 5.0, 3), cluster.now)
    b.hub.apply_feed(PresenceSet("alice", "offline", 4.0, 2), cluster.now)  # arrived late
    assert b.hub.statuses.user_presence("alice", cluster.now).status == "online"


def test_no_push_for_a_recipient_online_on_another_node() -> None:
    cluster, a, b = two_nodes()
    pushes: list[object] = []
    a.hub.chat.push = pushes.append
    a.hub.membership.add_friendship("alice", "bob", cluster.now)
    a.hub.open_session(10, "alice", "phone", cluster.now)
    b.hub.open_session(20, "bob", "phone", cluster.now)
    a.hub.handle(10, Send(id=1, to="bob", text="hi"), cluster.now)
    assert pushes == []
    b.hub.handle(20, Logout(), cluster.now)
    a.hub.handle(10, Send(id=2, to="bob", text="hi again"), cluster.now)
    assert len(pushes) == 1


def test_heartbeats_stay_on_the_node() -> None:
    """Only a device's transitions on a node reach the Replicator: its session opening, its
    end. Heartbeats and other activity move this node's deadline and nothing else."""
    cluster, a, _ = two_nodes()
    a.hub.open_session(10, "alice", "phone", cluster.now)
    assert cluster.reports == [("alive", 1, "alice", "phone")]
    offline_after = a.hub.settings.offline_after
    for beat in range(1, 100):
        a.hub.handle(10, Heartbeat(), cluster.now + beat)
        a.hub.expire(cluster.now + beat)
    assert cluster.reports == [("alive", 1, "alice", "phone")]
    a.hub.expire(cluster.now + 99 + offline_after)
    assert cluster.reports[1:] == [("ended", 1, "alice", "phone", False)]
    assert cluster.devices["alice"] == {}
    assert a.sink.closed == {10: 4000}


def test_a_device_that_moved_survives_its_old_nodes_deadline() -> None:
    """alice's phone drops off node a and reconnects to node b within its grace window; a's
    deadline for it passes later: b holds it, nothing changes (no flap). bob watches from a
    third node."""
    cluster, a, b = two_nodes()
    c = Node(cluster, 3)
    a.hub.membership.add_friendship("alice", "bob", cluster.now)
    c.hub.open_session(30, "bob", "phone", cluster.now)
    a.hub.open_session(10, "alice", "phone", cluster.now)
    assert [p["status"] for p in kinds(c.take(30), "presence")] == ["online"]
    a.hub.close_session(10)  # dropped, no logout
    offline_after = a.hub.settings.offline_after
    b.hub.open_session(20, "alice", "phone", cluster.now + 1)
    assert cluster.devices["alice"] == {"phone": 2}
    a.hub.expire(cluster.now + offline_after)
    assert cluster.reports[-1] == ("ended", 1, "alice", "phone", False)
    assert cluster.devices["alice"] == {"phone": 2}
    assert kinds(c.take(30), "presence") == []
    b.hub.handle(20, Heartbeat(), cluster.now + 5)
    b.hub.expire(cluster.now + 5 + offline_after)  # gone from b too: offline, once
    [gone] = kinds(c.take(30), "presence")
    assert (gone["status"], gone["last_active_at"]) == ("offline", cluster.now + 5)


def test_a_device_back_on_a_node_that_still_counts_it_alive_is_held_there() -> None:
    """a → b → a within the grace window: a still counts the phone alive when it comes back,
    and holds it again (every session is reported, not only a device's first on a node), so
    b's deadline passing changes nothing."""
    cluster, a, b = two_nodes()
    c = Node(cluster, 3)
    a.hub.membership.add_friendship("alice", "bob", cluster.now)
    c.hub.open_session(30, "bob", "phone", cluster.now)
    a.hub.open_session(10, "alice", "phone", cluster.now)
    a.hub.close_session(10)
    b.hub.open_session(20, "alice", "phone", cluster.now + 1)
    b.hub.close_session(20)
    a.hub.open_session(11, "alice", "phone", cluster.now + 2)
    assert cluster.devices["alice"] == {"phone": 1}
    offline_after = a.hub.settings.offline_after
    b.hub.expire(cluster.now + 1 + offline_after)
    assert cluster.devices["alice"] == {"phone": 1}
    assert [p["status"] for p in kinds(c.take(30), "presence")] == ["online"]
    a.hub.handle(11, Logout(), cluster.now + 3)
    [gone] = kinds(c.take(30), "presence")
    assert (gone["status"], gone["last_active_at"]) == ("offline", cluster.now + 2)


def test_a_logout_made_elsewhere_ends_a_device_only_where_it_is_held() -> None:
    """A logout through node a of alice's phone on node b: ended at once everywhere. Node b
    applies it off the feed and reports its own end only as "if still held here"."""
    cluster, a, b = two_nodes()
    b.hub.open_session(20, "alice", "phone", cluster.now)
    cluster.reports.clear()
    assert a.hub.lifecycle.logout("alice", "phone") == 0  # not on node a
    assert b.sink.closed == {20: 4001}
    assert sorted(cluster.reports) == [  # in either order: two queues, two nodes
        ("ended", 1, "alice", "phone", True),
        ("ended", 2, "alice", "phone", False),
    ]
    assert cluster.devices["alice"] == {}


def test_an_online_users_last_active_at_is_now_on_every_node() -> None:
    """Activity stays on its node, so every node answers an online user's last_active_at
    with the time of the answer; the offline transition carries the latest activity."""
    cluster, a, b = two_nodes()
    a.hub.membership.add_friendship("alice", "bob", cluster.now)
    a.hub.open_session(10, "alice", "phone", cluster.now)
    a.hub.handle(10, Heartbeat(), cluster.now + 7)
    for hub in (a.hub, b.hub):
        assert (
            hub.statuses.user_presence("alice", cluster.now + 9).last_active_at == cluster.now + 9
        )
    b.hub.open_session(20, "bob", "phone", cluster.now + 9)
    [listing] = kinds(b.take(20), "friends_presence")
    assert listing["friends"] == [
        {"user": "alice", "status": "online", "last_active_at": cluster.now + 9}
    ]
    a.hub.expire(cluster.now + 7 + a.hub.settings.offline_after)
    [gone] = kinds(b.take(20), "presence")
    assert (gone["status"], gone["last_active_at"]) == ("offline", cluster.now + 7)
    assert b.hub.statuses.user_presence("alice", cluster.now + 99).last_active_at == cluster.now + 7


def test_a_device_taken_over_by_another_node_closes_there_without_a_change() -> None:
    """The cluster tells the node that held a device when another node's session takes it
    over: its connection closes 4002, and its report of the end changes nothing (the other
    node holds the device)."""
    cluster = Cluster()
    a, b = Node(cluster, 1), Node(cluster, 2)
    a.hub.open_session(1, "alice", "phone", now=0)
    assert a.hub.connection_of("alice", "phone") == 1
    b.hub.open_session(7, "alice", "phone", now=1)
    assert a.hub.replaced_elsewhere("alice", "phone", 1)
    assert a.sink.closed == {1: 4002}
    assert a.hub.connection_of("alice", "phone") is None
    assert cluster.reports[-1] == ("ended", 1, "alice", "phone", False)  # only if held
    assert cluster.devices["alice"] == {"phone": 2}
    # A late notice, after the device came back to a: its new connection stays.
    a.hub.open_session(3, "alice", "phone", now=2)
    assert not a.hub.replaced_elsewhere("alice", "phone", 1)
    assert 3 not in a.sink.closed
