"""A join or forget mark is not taken as issued: the node's ids keep to its clock, within
what ``CLOCK_SKEW_S`` bounds, which a catch-up's and a first sync's bounds rely on."""

from __future__ import annotations

import time

import trio

from geopresence.cluster.chat_gaps import ChatGaps
from geopresence.cluster.chat_writes import ChatWrites
from geopresence.cluster.redis_keys import Keys
from geopresence.core.chat_horizon import Horizon
from geopresence.core.hub import Hub, HubSettings
from geopresence.core.store import MemoryStore
from geopresence.model.chat_message import ChatMessage
from geopresence.model.snowflake import CLOCK_SKEW_S, SnowflakeGenerator, min_id_at
from tests.cluster.test_chat_gaps import Subscribed
from tests.helpers import RecordingSink
from tests.redis_server import AnyRedis


def test_an_id_issued_after_a_mark_stays_below_the_skew_bound() -> None:
    t = 1_800_000_000.0
    ids = SnowflakeGenerator(3)
    ids.cluster_clock = lambda: t
    ids.next_id(t)
    ids.mark()  # a member added to a group, or a forget
    issued = ids.next_id(t)  # a message sent in the same millisecond
    # CLOCK_SKEW_S: "an id issued anywhere before a moment is below
    # min_id_at(moment + CLOCK_SKEW_S)"; here it is issued at ``t`` itself.
    assert issued < min_id_at(t + CLOCK_SKEW_S)


async def test_a_gap_read_misses_a_message_issued_after_a_mark(
    any_redis: AnyRedis,
) -> None:
    """Node 2 (clock 40 ms ahead: within CLOCK_SKEW_S) adds a member to a group, then sends
    ann's message to bob while node 1's pub/sub link is down; node 1 catches up 10 ms
    later: its read stops below min_id_at(now + CLOCK_SKEW_S), under the message's id."""
    keys = Keys("markjump")
    sink = RecordingSink()
    t = time.time()
    hub = Hub(HubSettings(node_id=1), MemoryStore(), sink)
    hub.chat.keeps_messages = False
    horizon = hub.chat.horizon = Horizon(time.time, silence=30.0)
    horizon.heard(2, min_id_at(t - 2))
    hub.add_friendship("ann", "bob", t)
    hub.open_session(1, "bob", "phone", t)
    sink.take(1)
    node2 = SnowflakeGenerator(2)
    node2.cluster_clock = lambda: t + 0.04
    node2.mark()
    sent = ChatMessage(node2.next_id(t + 0.04), "ann", "sent before the read", t, to="bob")
    await ChatWrites(any_redis, keys, 2)([sent])  # published while node 1's link was down
    gaps = ChatGaps(any_redis, keys, hub, Subscribed(hub), lambda: t + 0.01, lambda: None)  # type: ignore[arg-type]
    gaps.gap(["inbox:bob"])
    horizon.heard(2, min_id_at(time.time() + 1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gaps.run)
        with trio.fail_after(10):
            while gaps.catching_up:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert [m["text"] for m in sink.take(1, "message")] == ["sent before the read"]
