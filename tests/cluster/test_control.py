"""``Control`` (cluster): a device ended elsewhere ends here. A logout's notice goes to
the node that held the device, published until Redis takes it; a notice that arrives after
the device reconnected here ends nothing; and after a gap on this node's channel, Redis'
holders and logout tombstones say which devices were logged out or taken over meanwhile,
and nothing else ends (not after Redis lost its data, nor a device held by this node's
previous incarnation, nor one that reconnected after a logout). A real hub and Redis, a
fake broker."""

from __future__ import annotations

from typing import Any

import coredis
import trio

from geopresence.cluster.channel_events import LoggedOut, Replaced, decode_envelope
from geopresence.cluster.control import Control, logged_out_at, node_channel
from geopresence.cluster.redis_broker import RedisBroker
from geopresence.cluster.redis_keys import Keys
from geopresence.core.hub import Hub
from geopresence.core.settings import HubSettings
from geopresence.core.store import MemoryStore
from geopresence.wire.errors import CLOSE_LOGGED_OUT, CLOSE_REPLACED
from tests.helpers import RecordingSink
from tests.redis_server import redis_server

MINE = "1/now"
KEYS = Keys("gp")


class Broker:
    def __init__(self) -> None:
        self.held: list[str] = []

    def hold(self, channel: str) -> None:
        self.held.append(channel)

    def publications(self, channels: list[str], event: Any) -> list[tuple[str, str, bytes]]:
        real = RedisBroker(lambda conn, event: None, None, node_id=1)  # its envelope
        return real.publications(channels, event)


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
        (1, "alice", "phone"),  # logged out after it connected (at 100): no holder, a tombstone
        (2, "bob", "laptop"),  # taken over by node 7
        (3, "carol", "tab"),  # held here
        (4, "dan", "phone"),  # nothing in Redis (it lost its data)
        (5, "erin", "phone"),  # held by this node's previous incarnation (a lost lease)
        (6, "fay", "phone"),  # logged out before it connected (Redis lost its report)
        (7, "gil", "phone"),  # every device of gil logged out after it connected
    )
    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            await presence(client, "alice", lo_phone="1/before 101000")
            await presence(client, "bob", d_laptop="7/other")
            await presence(client, "carol", d_tab=MINE)
            await presence(client, "erin", d_phone="1/before")
            await presence(client, "fay", lo_phone="1/before 99000")
            await presence(client, "gil", **{"lo_*": "- 100500"})
            async with trio.open_nursery() as nursery:
                control = Control(client, KEYS, Broker(), hub, lambda: MINE, nursery)  # type: ignore[arg-type]
                control.listen(1)
                control.recheck()
    assert sink.closed == {1: CLOSE_LOGGED_OUT, 2: CLOSE_REPLACED, 7: CLOSE_LOGGED_OUT}
    assert hub.lifecycle.presence.device_names("fay") == ["phone"]


async def test_a_logout_notice_ends_a_device_unless_it_reconnected_since() -> None:
    hub, sink = hub_with((1, "alice", "phone"), (2, "bob", "phone"), (3, "carol", "phone"))
    hub.lifecycle.presence.disconnect("carol", "phone", 3)  # in its grace window
    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            await presence(client, "bob", d_phone=MINE)  # reconnected here, clocks apart
            async with trio.open_nursery() as nursery:
                control = Control(client, KEYS, Broker(), hub, lambda: MINE, nursery)  # type: ignore[arg-type]
                control.on_logout(LoggedOut("alice", "phone", 99.0))  # before it connected
                control.on_logout(LoggedOut("bob", "phone", 101.0))
                control.on_logout(LoggedOut("carol", "phone", 101.0))
                control.on_logout(LoggedOut("dan", "phone", 101.0))  # not here: nothing
            assert sink.closed == {}
            assert hub.lifecycle.presence.device_names("carol") == []  # no longer counted
            async with trio.open_nursery() as nursery:
                control = Control(client, KEYS, Broker(), hub, lambda: MINE, nursery)  # type: ignore[arg-type]
                control.on_logout(LoggedOut("alice", "phone", 101.0))
    assert sink.closed == {1: CLOSE_LOGGED_OUT}


async def test_a_logout_is_published_to_the_holders_node_only() -> None:
    hub, sink = hub_with((1, "alice", "phone"))
    broker = Broker()
    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            pubsub = client.pubsub(channels=["gp:control:{5}"])
            async with pubsub:
                await trio.sleep(0.2)
                async with trio.open_nursery() as nursery:
                    control = Control(client, KEYS, broker, hub, lambda: MINE, nursery)  # type: ignore[arg-type]
                    control.listen(1)
                    control.logged_out("alice", "laptop", "5/other", 101.0)
                    control.logged_out("alice", "phone", "1/before", 101.0)  # this node's
                with trio.fail_after(5):
                    while (message := await pubsub.get_message()) is None or (
                        message["type"] != "message"
                    ):
                        await trio.sleep(0.01)
                assert message["channel"] in ("gp:control:{5}", b"gp:control:{5}")
                data = message["data"]
                assert isinstance(data, str | bytes)
                raw = data.encode() if isinstance(data, str) else data
                assert decode_envelope(raw).event == LoggedOut("alice", "laptop", 101.0)
    assert broker.held == [node_channel(1)]
    assert sink.closed == {1: CLOSE_LOGGED_OUT}


async def test_a_logout_heard_while_the_session_was_opening_ends_it() -> None:
    """The notice came before the session existed here (Redis had the device held here,
    then the logout dropped it): the session is judged as it opens, by when its connection
    opened; a session that opened after the logout stays."""
    hub, sink = hub_with()
    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            async with trio.open_nursery() as nursery:
                control = Control(client, KEYS, Broker(), hub, lambda: MINE, nursery)  # type: ignore[arg-type]
                control.on_logout(LoggedOut("alice", "phone", 101.0))
                control.on_logout(LoggedOut("bob", "phone", 101.0))
                hub.open_session(1, "alice", "phone", 102.0, since=100.0)
                control.opened("alice", "phone")
                hub.open_session(2, "bob", "phone", 102.0, since=101.5)
                control.opened("bob", "phone")
    assert sink.closed == {1: CLOSE_LOGGED_OUT}


async def test_a_takeover_notice_leaves_a_connection_that_opened_after() -> None:
    """hal's phone reconnected here at 105 (its report still on its way) after node 7 took
    it over at 103 from this node's older connection: node 7's notice closes nothing."""
    hub, sink = hub_with()
    hub.open_session(2, "hal", "phone", 105.0, since=105.0)
    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            await presence(client, "hal", d_phone="7/other 103000")
            for since, closed in ((103.0, {}), (106.0, {2: CLOSE_REPLACED})):  # then a newer
                async with trio.open_nursery() as nursery:
                    control = Control(client, KEYS, Broker(), hub, lambda: MINE, nursery)  # type: ignore[arg-type]
                    control.on_replaced(Replaced("hal", "phone", MINE, since))
                assert sink.closed == closed


def test_a_tombstone_not_written_so_reads_as_none() -> None:
    assert logged_out_at("1/x 101500") == 101.5
    assert logged_out_at("- 99000") == 99.0
    for junk in (None, "junk", "2/z", "- ", "1/x 17.5"):
        assert logged_out_at(junk) == -1.0
