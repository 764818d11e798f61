"""A second gap of the same channel while its catch-up is under way (its bound already
fixed) queues another round: what the second gap lost is read back too."""

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
from geopresence.model.snowflake import min_id_at
from tests.cluster.test_chat_gaps import Subscribed
from tests.helpers import RecordingSink
from tests.redis_server import AnyRedis


async def test_a_second_gap_during_a_catch_up_is_read_back(any_redis: AnyRedis) -> None:
    keys = Keys("gap2")
    sink = RecordingSink()
    hub = Hub(HubSettings(node_id=1), MemoryStore(), sink)
    hub.chat.keeps_messages = False
    horizon = hub.chat.horizon = Horizon(time.time, silence=30.0)
    t = time.time()
    horizon.heard(2, min_id_at(t - 2))
    hub.add_friendship("ann", "bob", t)
    hub.open_session(1, "bob", "phone", t)
    sink.take(1)
    first = ChatMessage(min_id_at(t - 1), "ann", "first gap", t, to="bob")
    # Issued (and lost) after the first catch-up fixed its bound, in the second outage.
    second = ChatMessage(min_id_at(t + 0.3), "ann", "second gap", t, to="bob")
    await ChatWrites(any_redis, keys, 2)([first, second])
    now = [t]
    gaps: ChatGaps

    def hurry() -> None:  # called while the first catch-up waits for its bound
        if now[0] == t:
            now[0] = t + 0.5  # the reconnect after the second outage, later
            gaps.gap(["inbox:bob"])
            horizon.heard(2, min_id_at(time.time() + 5))

    gaps = ChatGaps(any_redis, keys, hub, Subscribed(hub), lambda: now[0], hurry)  # type: ignore[arg-type]
    gaps.gap(["inbox:bob"])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gaps.run)
        with trio.fail_after(10):
            while gaps.catching_up:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert [m["text"] for m in sink.take(1, "message")] == ["first gap", "second gap"]
