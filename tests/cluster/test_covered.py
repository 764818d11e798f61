"""Which statuses a node keeps (``Covered``), against a real Redis: a channel that may have
missed a transition has its statuses read again, and a newer one reaches the connections."""

from __future__ import annotations

from typing import Any

import coredis
import trio

from geopresence.cluster.covered import Covered
from geopresence.cluster.redis_keys import Keys
from geopresence.core.broker import MemoryBroker
from geopresence.core.hub import Hub, HubSettings
from geopresence.core.replication import PresenceSet
from geopresence.core.store import MemoryStore
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

    def subscribers(self, channel: str) -> Any:
        return self.broker.subscribers(channel)

    async def subscribed(self) -> None:
        pass

    def hold(self, channel: str) -> None:
        self.broker.subscribe(channel, -1)

    def release(self, channel: str) -> None:
        self.broker.unsubscribe(channel, -1)


def hub_with_bob() -> tuple[Hub, RecordingSink, MemoryBroker]:
    sink = RecordingSink()
    holder: list[MemoryBroker] = []

    def broker(deliver: Any) -> MemoryBroker:
        def to_connections(conn: int, event: Any) -> None:
            if conn >= 0:  # -1: the node's own holds
                deliver(conn, event)

        holder.append(MemoryBroker(to_connections))
        return holder[0]

    store = MemoryStore()
    hub = Hub(HubSettings(), store, sink, replicator=QuietReplicator(), broker_factory=broker)
    hub.membership.add_friendships([("alice", "bob")], NOW)
    hub.open_session(1, "bob", "phone", now=NOW)
    sink.take(1)
    return hub, sink, holder[0]


async def test_a_gap_reads_the_statuses_again_and_tells_what_was_missed() -> None:
    hub, sink, broker = hub_with_bob()
    hub.announce_presence(PresenceSet("alice", "offline", NOW - 60, 1))
    sink.take(1)
    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            keys = Keys("gp")
            covered = Covered(client, keys, Listening(broker), hub)  # type: ignore[arg-type]
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
    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            covered = Covered(client, Keys("gp"), Listening(broker), hub)  # type: ignore[arg-type]
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
