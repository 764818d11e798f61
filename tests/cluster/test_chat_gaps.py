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
from geopresence.model.snowflake import CLOCK_SKEW_S, SnowflakeGenerator, min_id_at
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
    hub.membership.add_friendship("ann", "bob", now)
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
    hub.membership.add_friendship("ann", "bob", now)
    hub.membership.add_friendship("cat", "bob", now)
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
    hub.membership.set_group("g", ["ann"], mark)
    hub.membership.add_member("g", "bob", mark)
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


async def test_a_gap_during_a_join_s_catch_up_reads_from_where_the_horizon_stood(
    any_redis: AnyRedis,
) -> None:
    """A join's catch-up holds from the join mark (a time, ahead of what was shown); a gap
    meanwhile reads back from where the horizon stood, below it: nothing is missed."""
    keys = Keys("gapjoin")
    hub, sink, horizon = node_with_bob()
    now = time.time()
    horizon.heard(2, min_id_at(now - 2))  # node 2 may still commit after now - 2
    hub.membership.add_friendship("ann", "bob", now)
    gaps = ChatGaps(any_redis, keys, hub, Subscribed(hub), time.time, lambda: None)  # type: ignore[arg-type]
    join_mark = min_id_at(now + CLOCK_SKEW_S) - 1  # as SnowflakeGenerator.mark makes it
    hub.membership.set_group("g", ["cat"], join_mark)
    hub.membership.add_member("g", "bob", join_mark)
    gaps.joined("g", ["bob"], join_mark)
    assert gaps.catching_up
    lost = ChatMessage(min_id_at(now - 1), "ann", "lost", now, to="bob")
    await ChatWrites(any_redis, keys, 2)([lost])  # published during bob's inbox's gap
    gaps.gap(["inbox:bob"])
    hub.chat.heard(ChatMessage(min_id_at(now - 0.5), "ann", "later", now, to="bob"))
    horizon.heard(2, min_id_at(time.time() + 1))
    hub.chat.release()
    await caught_up(gaps)
    assert [m["text"] for m in sink.take(1, "message")] == ["lost", "later"]


async def test_a_second_gap_during_a_catch_up_is_read_back(any_redis: AnyRedis) -> None:
    """The same channel's second gap, after the first catch-up fixed its bound, queues a
    round of its own: what the second outage lost is read back too."""
    keys = Keys("gap2")
    hub, sink, horizon = node_with_bob()
    t = time.time()
    horizon.heard(2, min_id_at(t - 2))
    hub.membership.add_friendship("ann", "bob", t)
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
    await caught_up(gaps)
    assert [m["text"] for m in sink.take(1, "message")] == ["first gap", "second gap"]


async def test_a_catch_up_reads_what_a_node_sent_just_after_a_mark(any_redis: AnyRedis) -> None:
    """Node 2 (its clock 40 ms ahead: within CLOCK_SKEW_S) adds a member to a group, then
    sends ann's message to bob while node 1's pub/sub link is down; node 1 catches up 10 ms
    later. The mark did not push node 2's ids ahead of its clock, so the read's bound
    (``min_id_at(now + CLOCK_SKEW_S)``) is above the message."""
    keys = Keys("markjump")
    hub, sink, horizon = node_with_bob()
    t = time.time()
    horizon.heard(2, min_id_at(t - 2))
    hub.membership.add_friendship("ann", "bob", t)
    node2 = SnowflakeGenerator(2)
    node2.cluster_clock = lambda: t + 0.04
    node2.mark()
    sent = ChatMessage(node2.next_id(t + 0.04), "ann", "sent before the read", t, to="bob")
    await ChatWrites(any_redis, keys, 2)([sent])
    gaps = ChatGaps(any_redis, keys, hub, Subscribed(hub), lambda: t + 0.01, lambda: None)  # type: ignore[arg-type]
    gaps.gap(["inbox:bob"])
    horizon.heard(2, min_id_at(time.time() + 1))
    await caught_up(gaps)
    assert [m["text"] for m in sink.take(1, "message")] == ["sent before the read"]


async def test_a_session_opened_before_its_channels_were_confirmed_reads_them_back(
    any_redis: AnyRedis,
) -> None:
    """Redis did not confirm bob's chat subscriptions within the hello timeout: the session
    opened anyway, and what its inbox and groups carried from before it asked is read back
    before anything later is shown."""
    keys = Keys("unconfirmed")
    hub, sink, horizon = node_with_bob()
    now = time.time()
    since = min_id_at(now - 1)
    horizon.heard(2, since)
    hub.membership.add_friendship("ann", "bob", now)
    hub.membership.set_group("g", ["ann", "bob"])
    joined = hub.chat.store.joined_after("g", "bob")
    assert joined is not None and joined < since
    older = ChatMessage(min_id_at(now - 2), "ann", "before it asked", now, to="bob")
    missed = ChatMessage(min_id_at(now - 0.8), "ann", "missed", now, to="bob")
    in_group = ChatMessage(min_id_at(now - 0.6), "ann", "missed too", now, group="g")
    later = ChatMessage(min_id_at(now - 0.4), "ann", "later", now, to="bob")
    await ChatWrites(any_redis, keys, 2)([older, missed, in_group, later])
    gaps = ChatGaps(any_redis, keys, hub, Subscribed(hub), time.time, lambda: None)  # type: ignore[arg-type]
    gaps.unconfirmed("bob", since)
    hub.chat.heard(later)  # arrives live once the subscription is in place
    horizon.heard(2, min_id_at(time.time() + 1))
    hub.chat.release()
    assert sink.take(1, "message") == []
    await caught_up(gaps)
    texts = [m["text"] for m in sink.take(1, "message")]
    assert texts == ["missed", "missed too", "later"]
