"""This node's part in the chat horizon (geopresence/cluster/watermarks.py): a watermark
heard on the feed counts only once the pub/sub connections answered a round trip, so every
message published before it has arrived."""

from __future__ import annotations

import trio

from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.redis_state import RedisJournal
from geopresence.cluster.watermarks import LEFT, Watermarks
from geopresence.core.hub import Hub, HubSettings
from geopresence.core.store import MemoryStore
from geopresence.model.snowflake import min_id_at
from tests.helpers import RecordingSink, SettableClock

NOW = 1_800_000_000.0


async def test_a_watermark_counts_after_a_pub_sub_round_trip(autojump_clock: object) -> None:
    clock = SettableClock(NOW)
    hub = Hub(HubSettings(node_id=1), MemoryStore(), RecordingSink())
    answered = trio.Event()
    barriers = 0

    async def barrier() -> None:
        nonlocal barriers
        barriers += 1
        await answered.wait()

    journal = RedisJournal(None, Keys("w"), node_id=1)
    watermarks = Watermarks(journal, hub, clock, lease=5.0, barrier=barrier)
    horizon = watermarks.horizon
    alone = horizon.stable_below(None)
    assert alone == min_id_at(NOW)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watermarks.apply)
        watermarks.heard(2, min_id_at(NOW - 2), chatting=True)
        watermarks.heard(2, min_id_at(NOW - 1))  # the later of two counts
        watermarks.heard(3, min_id_at(NOW - 3))
        await trio.sleep(1)
        assert horizon.stable_below(None) == alone  # not before the round trip
        assert watermarks.others_chat_at > float("-inf")  # node 2 chats: write often
        answered.set()
        await trio.sleep(1)
        assert horizon.stable_below(None) == min_id_at(NOW - 3)
        watermarks.heard(3, LEFT)  # node 3 stopped cleanly
        await trio.sleep(1)
        assert horizon.stable_below(None) == min_id_at(NOW - 1)
        assert barriers == 2
        nursery.cancel_scope.cancel()


async def test_a_quiet_node_applies_watermarks_only_once_something_waits(
    autojump_clock: object,
) -> None:
    """No chat anywhere: the watermarks heard wait, with no round trip to Redis, until a
    delivery (or an ack, a ``sync``) waits for the horizon; then they count at once."""
    _, hub, watermarks, _, barriers = quiet_node()
    horizon = watermarks.horizon
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watermarks.apply)
        watermarks.heard(2, min_id_at(NOW - 3))  # a node new here counts at once
        await trio.sleep(1)
        assert len(barriers) == 1 and horizon.stable_below(None) == min_id_at(NOW - 3)
        watermarks.heard(2, min_id_at(NOW - 2))
        await trio.sleep(1)
        watermarks.heard(2, min_id_at(NOW - 1))
        await trio.sleep(1)
        assert len(barriers) == 1 and horizon.stable_below(None) == min_id_at(NOW - 3)
        shown: list[int] = []
        waiting = min_id_at(NOW - 1.5)
        hub.chat.when_stable(waiting, lambda: shown.append(waiting))  # held: node 2's mark
        await trio.sleep(0.01)
        assert len(barriers) == 2 and shown == [waiting]  # the latest mark heard counts
        assert horizon.stable_below(None) == min_id_at(NOW - 1)
        watermarks.heard(2, LEFT)  # stopped cleanly: counts at once (not dead once silent)
        await trio.sleep(0.01)
        assert len(barriers) == 3 and not horizon.knows(2)
        # Chat goes on: each mark heard counts as it comes.
        watermarks.heard(2, min_id_at(NOW - 0.7))
        await trio.sleep(0.01)
        watermarks.hurry()
        watermarks.heard(2, min_id_at(NOW - 0.5))
        await trio.sleep(0.01)
        assert len(barriers) == 5 and horizon.stable_below(None) == min_id_at(NOW - 0.5)
        nursery.cancel_scope.cancel()


def quiet_node() -> tuple[SettableClock, Hub, Watermarks, list[int], list[float]]:
    """Node 1 with no chat going on, its barriers answered at once; the nodes it finds
    gone are listed, and when each barrier ran."""
    clock = SettableClock(NOW)
    hub = Hub(HubSettings(node_id=1), MemoryStore(), RecordingSink())
    barriers: list[float] = []

    async def barrier() -> None:
        barriers.append(trio.current_time())

    journal = RedisJournal(None, Keys("w"), node_id=1)
    watermarks = Watermarks(journal, hub, clock, lease=5.0, barrier=barrier)
    gone: list[int] = []
    watermarks.on_gone = lambda node, mark: gone.append(node)
    return clock, hub, watermarks, gone, barriers


async def node_2_known_then_deferred(watermarks: Watermarks) -> None:
    """Node 2's first watermark counts at once (new here); its next one waits."""
    watermarks.heard(2, min_id_at(NOW - 1))
    await trio.sleep(1)
    watermarks.heard(2, min_id_at(NOW))
    await trio.sleep(1)


async def test_a_quiet_node_counts_a_leaving_or_new_node_at_once(autojump_clock: object) -> None:
    """Deferred marks wait for nothing that bounds the horizon: a node that stops
    cleanly is not found dead once silent, and a node new here bounds it at once."""
    clock, _, watermarks, gone, _ = quiet_node()
    horizon = watermarks.horizon
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watermarks.apply)
        await node_2_known_then_deferred(watermarks)
        watermarks.heard(2, LEFT)
        await trio.sleep(1)
        assert not horizon.knows(2)
        clock.now += 6
        horizon.committed_below(None)  # what ``run`` does every tick
        assert gone == []
        watermarks.heard(3, min_id_at(clock()))  # node 3 starts: its first entry
        await trio.sleep(1)
        assert horizon.knows(3) and horizon.stable_below(None) == min_id_at(clock())
        nursery.cancel_scope.cancel()


async def test_a_dead_node_s_deferred_mark_does_not_bring_it_back(autojump_clock: object) -> None:
    """Node 2 dies while its last mark waits; once something waits for the horizon, that
    mark must not make node 2 live again (chat held for another ``silence``, a second
    catch-up)."""
    clock, hub, watermarks, gone, _ = quiet_node()
    horizon = watermarks.horizon
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watermarks.apply)
        await node_2_known_then_deferred(watermarks)
        clock.now += 3600
        horizon.committed_below(None)
        assert gone == [2]
        watermarks.hurry()  # ChatGaps' catch-up after the death
        await trio.sleep(0.01)
        shown: list[int] = []
        message = min_id_at(clock() - 1)
        hub.chat.when_stable(message, lambda: shown.append(message))
        await trio.sleep(0.01)
        assert not horizon.knows(2) and shown == [message] and gone == [2]
        nursery.cancel_scope.cancel()
