"""``Control`` (cluster): a device ended elsewhere closes here. A logout's notice goes to
the node that held the device; a notice that arrives after the device came back here closes
nothing; and after a gap on this node's channel, Redis' holders and logout tombstones say
which devices were logged out or taken over meanwhile, and nothing else closes (not after
Redis lost its data, nor a device held by this node's previous incarnation). A real hub
and Redis, a fake broker."""

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

MINE = "1/now"
KEYS = Keys("gp")


class Broker:
    def __init__(self) -> None:
        self.published: list[tuple[list[str], Any]] = []
        self.held: list[str] = []

    def hold(self, channel: str) -> None:
        self.held.append(channel)

    def publish_remote(self, channels: list[str], event: Any) -> None:
        self.published.append((list(channels), event))


def hub_with(*sessions: tuple[int, str, str]) -> tuple[Hub, RecordingSink]:
    sink = RecordingSink()
    hub = Hub(HubSettings(), MemoryStore(), sink)
    for conn, user, device in sessions:
        hub.open_session(conn, user, device, 100.0)
    return hub, sink


async def presence(client: Any, user: str, **fields: str) -> None:
    await client.hset(
        KEYS.of("presence", user), {k.replace("_", ":", 1): v for k, v in fields.items()}
    )


async def test_a_gap_ends_only_what_redis_says_was_logged_out_or_taken_over() -> None:
    hub, sink = hub_with(
        (1, "alice", "phone"),  # logged out from this node: no holder, its tombstone
        (2, "bob", "laptop"),  # taken over by node 7
        (3, "carol", "tab"),  # held here
        (4, "dan", "phone"),  # nothing in Redis (it lost its data)
        (5, "erin", "phone"),  # held by this node's previous incarnation (a lost lease)
        (6, "fay", "phone"),  # a tombstone of node 7's device: not this one
    )
    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            await presence(client, "alice", lo_phone="1/before 1000")
            await presence(client, "bob", d_laptop="7/other")
            await presence(client, "carol", d_tab=MINE)
            await presence(client, "erin", d_phone="1/before")
            await presence(client, "fay", lo_phone="7/other 1000")
            async with trio.open_nursery() as nursery:
                control = Control(client, KEYS, Broker(), hub, lambda: MINE, nursery)  # type: ignore[arg-type]
                control.listen(1)
                control.recheck()
    assert sink.closed == {1: CLOSE_LOGGED_OUT, 2: CLOSE_REPLACED}


async def test_a_logout_notice_closes_unless_the_device_came_back_here() -> None:
    hub, sink = hub_with((1, "alice", "phone"), (2, "bob", "phone"))
    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            await presence(client, "bob", d_phone=MINE)  # a session here after the logout
            async with trio.open_nursery() as nursery:
                control = Control(client, KEYS, Broker(), hub, lambda: MINE, nursery)  # type: ignore[arg-type]
                control.on_logout(LogoutRequested("alice", "phone"))
                control.on_logout(LogoutRequested("bob", "phone"))
                control.on_logout(LogoutRequested("carol", "phone"))  # not here: nothing
    assert sink.closed == {1: CLOSE_LOGGED_OUT}


async def test_a_logout_is_sent_to_the_holders_node_only() -> None:
    hub, sink = hub_with((1, "alice", "phone"))
    broker = Broker()
    async with trio.open_nursery() as nursery:
        control = Control(None, KEYS, broker, hub, lambda: MINE, nursery)  # type: ignore[arg-type]
        control.listen(1)
        control.logged_out("alice", "laptop", "5/other")
        control.logged_out("alice", "phone", "1/before")  # this node's, before a lost lease
    assert broker.held == [node_channel(1)]
    assert broker.published == [([node_channel(5)], LogoutRequested("alice", "laptop"))]
    assert sink.closed == {1: CLOSE_LOGGED_OUT}
