"""Chat a node may have lost in a pub/sub gap (geopresence/cluster/chat_gaps.py): the
horizon is held, the gapped conversations are read back, and what was held goes out after
them, in id order."""

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
from tests.helpers import RecordingSink
from tests.redis_server import AnyRedis


class Subscribed:
    """The broker as ``ChatGaps`` uses it: who listens here, and the subscription barrier."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.barriers = 0

    def subscribers(self, channel: str) -> frozenset[int]:
        return frozenset(self.hub.broker.subscribers(channel))

    async def subscribed(self) -> None:
        self.barriers += 1
        await trio.lowlevel.checkpoint()


async def caught_up(gaps: ChatGaps) -> None:
    """Run ``gaps`` until its catch-up is done and its hold released."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gaps.run)
        with trio.fail_after(10):
            while gaps.catching_up:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


def node_with_bob(silence: float = 30.0) -> tuple[Hub, RecordingSink, Horizon]:
    """A node keeping no messages, with bob's phone connected (conn 1)."""
    sink = RecordingSink()
    hub = Hub(HubSettings(node_id=1), MemoryStore(), sink)
    hub.chat.keeps_messages = False
    horizon = hub.chat.horizon = Horizon(time.time, silence=silence)
    hub.open_session(1, "bob", "phone", time.time())
    sink.take(1)
    return hub, sink, horizon


async def test_a_gap_shows_what_it_lost_before_what_came_after(any_redis: AnyRedis) -> None:
    keys = Keys("gaps")
    hub, sink, horizon = node_with_bob()
    now = time.time()
    horizon.heard(2, min_id_at(now - 2))  # node 2 may still commit after now - 2
    hub.add_friendship("ann", "bob", now)
    lost = ChatMessage(min_id_at(now - 1), "ann", "lost", now, to="bob")
    later = ChatMessage(min_id_at(now - 0.5), "ann", "later", now, to="bob")
    await ChatWrites(any_redis, keys, 2)([lost, later])  # published while the link was down
    broker = Subscribed(hub)
    hurried: list[float] = []
    gaps = ChatGaps(any_redis, keys, hub, broker, time.time, lambda: hurried.append(0))  # type: ignore[arg-type]
    gaps.gap(["inbox:bob", "user:ann", "inbox:nobody"])
    assert gaps.catching_up
    hub.chat.heard(later)  # it arrives live once the link is back, the lost one never does
    horizon.heard(2, min_id_at(time.time() + 1))
    hub.chat.release()
    assert sink.take(1, "message") == []  # held: the lost one must go first
    await caught_up(gaps)
    assert [m["text"] for m in sink.take(1, "message")] == ["lost", "later"]  # each once
    assert broker.barriers == 1


async def test_a_gap_of_channels_no_connection_needs_holds_nothing(any_redis: AnyRedis) -> None:
    hub = Hub(HubSettings(node_id=1), MemoryStore(), RecordingSink())
    hub.chat.horizon = Horizon(time.time, silence=30.0)
    gaps = ChatGaps(any_redis, Keys("nogap"), hub, Subscribed(hub), time.time, lambda: None)  # type: ignore[arg-type]
    gaps.gap(["inbox:bob", "group:g", "user:bob"])
    assert not gaps.catching_up


async def test_a_dead_node_s_stored_but_unpublished_messages_are_read_back(
    any_redis: AnyRedis,
) -> None:
    """A node that died between storing a batch and publishing it: once the horizon stops
    waiting for it, what it stored reaches the connections here, before anything later."""
    keys = Keys("dead")
    hub, sink, horizon = node_with_bob(silence=0.3)
    now = time.time()
    horizon.heard(2, min_id_at(now - 1))  # node 2's last word
    hub.add_friendship("ann", "bob", now)
    hub.add_friendship("cat", "bob", now)
    stored = ChatMessage(min_id_at(now - 0.8), "ann", "stored", now, to="bob")
    await ChatWrites(any_redis, keys, 2)([stored])  # node 2 died before publishing it
    hub.chat.heard(ChatMessage(min_id_at(now - 0.5), "cat", "later", now, to="bob"))
    gaps = ChatGaps(any_redis, keys, hub, Subscribed(hub), time.time, lambda: None)  # type: ignore[arg-type]
    horizon.on_gone = gaps.node_gone
    await trio.sleep(0.4)  # node 2 is silent for longer than the silence
    hub.chat.release()
    assert gaps.catching_up and sink.take(1, "message") == []
    await caught_up(gaps)
    assert [m["text"] for m in sink.take(1, "message")] == ["stored", "later"]


async def test_a_member_added_while_connected_gets_what_its_node_missed(
    any_redis: AnyRedis,
) -> None:
    """The node subscribes to the group's channel only as the member is added: a message
    published just before reaches it read back from Redis, before anything later."""
    keys = Keys("joined")
    hub, sink, horizon = node_with_bob()
    now = time.time()
    mark = min_id_at(now - 2)
    hub.set_group("g", ["ann"], mark)
    hub.add_member("g", "bob", mark)
    missed = ChatMessage(min_id_at(now - 1), "ann", "missed", now, group="g")
    await ChatWrites(any_redis, keys, 2)([missed])  # published before the node subscribed
    gaps = ChatGaps(any_redis, keys, hub, Subscribed(hub), time.time, lambda: None)  # type: ignore[arg-type]
    gaps.joined("g", ["bob"], mark)
    gaps.joined("g", ["nobody-here"], mark)
    hub.chat.heard(ChatMessage(min_id_at(now - 0.5), "ann", "later", now, group="g"))
    horizon.release(None)
    assert sink.take(1, "message") == []
    await caught_up(gaps)
    assert [m["text"] for m in sink.take(1, "message")] == ["missed", "later"]
