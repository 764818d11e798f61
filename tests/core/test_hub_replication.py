"""Two hubs ("nodes") linked in memory the way Redis links them, without an event loop:
the feed (journal records and replicated ops), channel publishes, and a model of the Lua
presence decision. What each node's connections see must match the single-node rules."""

from __future__ import annotations

from collections.abc import Iterable, Set
from typing import Any

from geopresence.core.broker import ConnId, Deliver, MemoryBroker
from geopresence.core.hub import Hub, HubSettings
from geopresence.core.replication import FeedOp, LogoutRequested, PresenceSet
from geopresence.core.store import MemoryStore, UserSettings
from geopresence.model.records import Record
from geopresence.wire.client_messages import LocationUpdate, Logout, NearbyFriendsQuery, Send, Sync
from tests.helpers import RecordingSink


class Cluster:
    """Shared parts: every node's hub, and the presence "Redis" (alive devices per user)."""

    def __init__(self) -> None:
        self.hubs: list[Hub] = []
        self.devices: dict[str, dict[str, float]] = {}
        self.versions: dict[str, int] = {}
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

    def device_alive(self, user: str, device: str, deadline: float, last_active_at: float) -> None:
        devices = self.cluster.devices.setdefault(user, {})
        was_online = bool(devices)
        devices[device] = max(deadline, devices.get(device, 0))
        if not was_online:
            self._decide(user, "online", last_active_at)

    def device_ended(self, user: str, device: str, expired_at: float | None) -> None:
        devices = self.cluster.devices.get(user, {})
        if device in devices and (expired_at is None or devices[device] <= expired_at):
            del devices[device]
            if not devices:
                self._decide(user, "offline", self.cluster.now)

    def logout(self, user: str, device: str | None) -> None:
        self._feed(LogoutRequested(user, device))
        devices = self.cluster.devices.get(user, {})
        for name in list(devices) if device is None else [device]:
            self.device_ended(user, name, None)

    def _decide(self, user: str, status: Any, last: float) -> None:
        version = self.cluster.versions[user] = self.cluster.versions.get(user, 0) + 1
        transition = PresenceSet(user, status, last, version)
        self._feed(transition)
        self.hub.announce_presence(transition)

    def _feed(self, op: FeedOp) -> None:
        for other in self.cluster.others(self.hub):
            other.apply_feed(op, self.cluster.now)

    def take(self, conn: ConnId) -> list[dict[str, Any]]:
        return self.sink.take(conn)


def two_nodes() -> tuple[Cluster, Node, Node]:
    cluster = Cluster()
    return cluster, Node(cluster, 1), Node(cluster, 2)


def kinds(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == kind]


def test_presence_across_nodes_is_one_event_per_transition() -> None:
    cluster, a, b = two_nodes()
    a.hub.add_friendship("alice", "bob", cluster.now)
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
    a.hub.set_group("pair", ["alice", "bob"])
    assert b.hub.group_online("pair") == (["alice", "bob"], 2)  # from b's replica
    for conn in (10, 11):
        a.hub.handle(conn, Logout(), cluster.now)
    assert kinds(b.take(20), "presence") == []  # the tablet is still alive
    b.hub.handle(21, Logout(), cluster.now)
    assert [p["status"] for p in kinds(b.take(20), "presence")] == ["offline"]
    assert a.hub.user_presence("alice").status == "offline"


def test_http_logout_on_one_node_ends_devices_on_every_node() -> None:
    cluster, a, b = two_nodes()
    a.hub.add_friendship("alice", "bob", cluster.now)
    a.hub.open_session(10, "bob", "phone", cluster.now)
    b.hub.open_session(20, "alice", "phone", cluster.now)
    a.take(10)
    a.hub.logout("alice")
    assert b.sink.closed == {20: 4001}
    assert cluster.devices["alice"] == {}
    assert [p["status"] for p in kinds(a.take(10), "presence")] == ["offline"]


def test_friendship_changes_reach_live_connections_on_other_nodes() -> None:
    cluster, a, b = two_nodes()
    b.hub.open_session(20, "bob", "phone", cluster.now)
    b.take(20)
    a.hub.add_friendship("alice", "bob", cluster.now)
    [listing] = kinds(b.take(20), "friends_presence")
    assert [f["user"] for f in listing["friends"]] == ["alice"]
    assert "user:alice" in b.hub.broker.channels_of(20)
    a.hub.remove_friendship("alice", "bob")
    assert kinds(b.take(20), "friend_removed") == [{"type": "friend_removed", "user": "alice"}]
    assert "user:alice" not in b.hub.broker.channels_of(20)


def test_locations_fan_out_once_and_expire_once_per_watcher() -> None:
    cluster, a, b = two_nodes()
    a.hub.add_friendship("alice", "bob", cluster.now)
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
    a.hub.set_group("hikers", ["alice", "bob"])
    b.hub.open_session(20, "bob", "phone", cluster.now)
    a.hub.open_session(10, "alice", "phone", cluster.now)
    a.hub.handle(10, Send(id=1, group="hikers", text="first"), cluster.now)
    assert [m["text"] for m in kinds(b.take(20), "message")] == ["first"]
    a.hub.add_member("hikers", "carol")  # joins after "first": never reads it
    b.hub.open_session(30, "carol", "phone", cluster.now)
    b.hub.handle(30, Sync(id=2, after=0), cluster.now)
    [page] = kinds(b.take(30), "messages")
    assert page["messages"] == []
    a.hub.handle(10, Send(id=3, group="hikers", text="second"), cluster.now)
    assert [m["text"] for m in kinds(b.take(30), "message")] == ["second"]


def test_chat_sync_and_resends_on_any_node() -> None:
    cluster, a, b = two_nodes()
    a.hub.add_friendship("alice", "bob", cluster.now)
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
    assert b.hub.user_presence("alice").status == "online"


def test_no_push_for_a_recipient_online_on_another_node() -> None:
    cluster, a, b = two_nodes()
    pushes: list[object] = []
    a.hub.chat.push = pushes.append
    a.hub.add_friendship("alice", "bob", cluster.now)
    a.hub.open_session(10, "alice", "phone", cluster.now)
    b.hub.open_session(20, "bob", "phone", cluster.now)
    a.hub.handle(10, Send(id=1, to="bob", text="hi"), cluster.now)
    assert pushes == []
    b.hub.handle(20, Logout(), cluster.now)
    a.hub.handle(10, Send(id=2, to="bob", text="hi again"), cluster.now)
    assert len(pushes) == 1
