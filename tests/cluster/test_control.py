"""``Control`` (cluster): a logout made on one node is sent to every other live node's
control channel; when a node's channel may have lost notices (a pub/sub gap), Redis says
which of its devices were logged out or taken over meanwhile, and they end here as the
lost notices would have ended them. A real hub and Redis, a fake broker."""

from __future__ import annotations

from typing import Any

import coredis
import trio

from geopresence.cluster.control import Control, node_channel
from geopresence.cluster.redis_keys import Keys
from geopresence.core.hub import Hub
from geopresence.core.replication import LogoutRequested
from geopresence.core.settings import HubSettings
from geopresence.core.store import MemoryStore
from geopresence.wire.errors import CLOSE_LOGGED_OUT, CLOSE_REPLACED
from tests.helpers import RecordingSink
from tests.redis_server import redis_server

MINE = "1/tok"


class Broker:
    def __init__(self) -> None:
        self.published: list[tuple[list[str], Any]] = []
        self.held: list[str] = []

    def hold(self, channel: str) -> None:
        self.held.append(channel)

    def publish_remote(self, channels: list[str], event: Any) -> None:
        self.published.append((sorted(channels), event))


async def _reported() -> None:
    return None


async def test_a_gap_ends_the_devices_logged_out_or_taken_over_meanwhile() -> None:
    sink = RecordingSink()
    hub = Hub(HubSettings(), MemoryStore(), sink)
    for conn, user, device in ((1, "alice", "phone"), (2, "bob", "laptop"), (3, "carol", "tab")):
        hub.open_session(conn, user, device, 100.0)
    keys = Keys("gp")
    broker: Any = Broker()
    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            # alice's phone was logged out (no holder), bob's laptop opened on node 7.
            await client.hset(keys.of("presence", "bob"), {"d:laptop": "7/other"})
            await client.hset(keys.of("presence", "carol"), {"d:tab": MINE})
            async with trio.open_nursery() as nursery:
                control = Control(
                    client, keys, broker, hub, lambda: MINE, nursery, _reported, lambda: 0.0
                )
                control.listen(1)
                control.recheck()
    assert sink.closed == {1: CLOSE_LOGGED_OUT, 2: CLOSE_REPLACED}  # carol's tab stays
    assert hub.connection_of("carol", "tab") == 3


async def test_a_logout_is_sent_to_every_other_live_node() -> None:
    hub = Hub(HubSettings(), MemoryStore(), RecordingSink())
    keys = Keys("gp")
    broker: Any = Broker()
    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            await client.hset(keys.nodes, {f"n:{n}": f"tok{n} 0 99999999999999" for n in (1, 2, 5)})
            async with trio.open_nursery() as nursery:
                control = Control(
                    client, keys, broker, hub, lambda: MINE, nursery, _reported, lambda: 0.0
                )
                control.listen(1)
                control.logout("alice", None)
    assert broker.held == [node_channel(1)]
    assert broker.published == [
        ([node_channel(2), node_channel(5)], LogoutRequested("alice", None))
    ]
