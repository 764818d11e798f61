"""A pub/sub gap while a join's catch-up is pending reads back from where the horizon
stood, not from the join mark (in the future): nothing the gap lost below it is missed."""

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
from geopresence.model.snowflake import CLOCK_SKEW_S, min_id_at
from tests.cluster.test_chat_gaps import Subscribed
from tests.helpers import RecordingSink
from tests.redis_server import AnyRedis


async def test_gap_during_a_join_catch_up_loses_messages(any_redis: AnyRedis) -> None:
    keys = Keys("gapjoin")
    sink = RecordingSink()
    hub = Hub(HubSettings(node_id=1), MemoryStore(), sink)
    hub.chat.keeps_messages = False
    horizon = hub.chat.horizon = Horizon(time.time, silence=30.0)
    now = time.time()
    horizon.heard(2, min_id_at(now - 2))  # node 2 may still commit after now - 2
    hub.add_friendship("ann", "bob", now)
    hub.open_session(1, "bob", "phone", now)
    sink.take(1)
    gaps = ChatGaps(any_redis, keys, hub, Subscribed(hub), time.time, lambda: None)  # type: ignore[arg-type]
    # bob is added to a group (here or elsewhere): its mark, as SnowflakeGenerator.mark
    # makes it with several nodes, is min_id_at(now + CLOCK_SKEW_S) - 1.
    join_mark = min_id_at(now + CLOCK_SKEW_S) - 1
    hub.set_group("g", ["cat"], join_mark)
    hub.add_member("g", "bob", join_mark)
    gaps.joined("g", ["bob"], join_mark)
    assert gaps.catching_up
    # Then bob's inbox channel has a pub/sub gap: ann's message was published meanwhile.
    lost = ChatMessage(min_id_at(now - 1), "ann", "lost", now, to="bob")
    await ChatWrites(any_redis, keys, 2)([lost])
    gaps.gap(["inbox:bob"])
    later = ChatMessage(min_id_at(now - 0.5), "ann", "later", now, to="bob")
    hub.chat.heard(later)  # arrives live after the reconnect
    horizon.heard(2, min_id_at(time.time() + 1))
    hub.chat.release()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gaps.run)
        with trio.fail_after(10):
            while gaps.catching_up:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    # Expected: the lost message is read back and shown before the later one.
    assert [m["text"] for m in sink.take(1, "message")] == ["lost", "later"]
