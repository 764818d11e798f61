"""The Redis broker across nodes: two brokers (two "nodes") on one real Redis."""

from __future__ import annotations

from typing import Any

import coredis
import trio

from geopresence.cluster.redis_broker import RedisBroker, hub_channel, redis_channel
from geopresence.cluster.redis_subscriber import RedisAddress
from geopresence.core.broker import ConnId
from geopresence.core.locations import Location
from geopresence.core.nearby import LocationEvent
from geopresence.wire.outgoing import Outgoing
from tests.redis_server import redis_cluster, redis_server


class Recorder:
    def __init__(self) -> None:
        self.got: list[tuple[ConnId, Any]] = []

    def __call__(self, conn: ConnId, event: Any) -> None:
        self.got.append((conn, event))


async def numsub(client: Any, channel: str) -> int:
    counts = await client.pubsub_numsub(channel)
    return int(dict(counts).get(channel.encode(), 0))


async def wait_for(predicate: Any, seconds: float = 5.0) -> None:
    with trio.fail_after(seconds):
        while not await predicate():
            await trio.sleep(0.01)


async def test_a_publish_reaches_other_nodes_once_and_never_echoes() -> None:
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        a_got, b_got = Recorder(), Recorder()
        async with client:
            address = RedisAddress("127.0.0.1", port)
            a = RedisBroker(a_got, client, node_id=1, address=address)
            b = RedisBroker(b_got, client, node_id=2, address=address)
            async with trio.open_nursery() as nursery:
                await nursery.start(a.run)
                await nursery.start(b.run)
                b.subscribe("user:alice", 10)
                b.subscribe("group:g", 10)  # subscribed to both channels of the publish
                b.subscribe("user:alice", 11)  # a second local subscriber: one SUBSCRIBE
                a.subscribe("user:alice", 1)

                async def subscribed() -> bool:
                    return await numsub(client, redis_channel("user:alice")) == 2  # one per node

                await wait_for(subscribed)
                await wait_for(_has(b_got, 0))
                frame = Outgoing("hello", ("presence", "alice"))
                assert a.publish(["user:alice", "group:g"], frame) == 1  # local: conn 1
                assert a_got.got == [(1, frame)]

                await wait_for(_has(b_got, 2))
                await trio.sleep(0.2)  # nothing more arrives
                assert sorted(conn for conn, _ in b_got.got) == [10, 11]  # once each
                assert all(event == frame for _, event in b_got.got)
                assert a_got.got == [(1, frame)]  # its own envelope is not delivered twice
                assert b.received == 1

                moved = LocationEvent("alice", Location(37.5, 127.0, 5.0), 6.0)
                b_got.got.clear()
                a.publish(["user:alice"], moved)
                await wait_for(_has(b_got, 2))
                assert {event for _, event in b_got.got} == {moved}

                b.unsubscribe_all(10)
                b.unsubscribe_all(11)

                async def unsubscribed() -> bool:
                    return await numsub(client, redis_channel("user:alice")) == 1

                await wait_for(unsubscribed)
                nursery.cancel_scope.cancel()


def _has(recorder: Recorder, count: int) -> Any:
    async def check() -> bool:
        return len(recorder.got) >= count

    return check


async def test_sharded_pubsub_on_a_redis_cluster() -> None:
    """Redis 7 sharded pub/sub (SSUBSCRIBE/SPUBLISH) across a 3-master cluster: each channel
    lives on the shard owning its slot; nodes still get every publish once."""
    with redis_cluster() as ports:
        client = coredis.RedisCluster(host="127.0.0.1", port=ports[0])
        a_got, b_got = Recorder(), Recorder()
        async with client:
            a = RedisBroker(a_got, client, node_id=1, sharded=True)
            b = RedisBroker(b_got, client, node_id=2, sharded=True)
            async with trio.open_nursery() as nursery:
                await nursery.start(a.run)
                await nursery.start(b.run)
                channels = [f"user:{name}" for name in ("alice", "bob", "carol", "dave", "erin")]
                for channel in channels:  # spread over the three shards' slots
                    b.subscribe(channel, 10)
                with trio.fail_after(10):
                    for channel in channels:
                        name = redis_channel(channel)
                        while not dict(await client.pubsub_shardnumsub(name)).get(name.encode()):
                            await trio.sleep(0.02)
                frames = [Outgoing(f"to {channel}") for channel in channels]
                for channel, frame in zip(channels, frames, strict=True):
                    a.publish([channel], frame)
                with trio.fail_after(10):
                    while len(b_got.got) < len(channels):
                        await trio.sleep(0.02)
                await trio.sleep(0.3)  # and nothing more
                texts = sorted(event.text for _, event in b_got.got)
                assert texts == sorted(frame.text for frame in frames)
                nursery.cancel_scope.cancel()


def test_gap_channels_reach_the_node_by_their_hub_names() -> None:
    """The subscriber names channels as Redis does; what reads statuses again and catches up
    on chat knows them by the hub's names."""
    assert hub_channel(redis_channel("user:alice")) == "user:alice"
    assert hub_channel(redis_channel("inbox:bob", "x"), "x") == "inbox:bob"
    assert hub_channel("other:user:{alice}") is None
    assert hub_channel("gp:user:alice") is None
    broker = RedisBroker(Recorder(), object(), node_id=1, address=RedisAddress("127.0.0.1", 1))
    gaps: list[list[str]] = []
    broker.on_gap = gaps.append
    broker._gap(["gp:user:{alice}", "gp:group:{g}", "elsewhere"])
    assert gaps == [["user:alice", "group:g"]]


def test_publish_local_never_travels_to_other_nodes() -> None:
    """An event every node derives itself (a location's TTL ending) is published locally
    only: nothing is queued for Redis, while ``publish`` queues one publication per channel."""
    broker = RedisBroker(Recorder(), client=None, node_id=1)
    broker.subscribe("user:a", 1)
    broker.subscribe("user:b", 2)
    queued = broker.pending  # the subscriptions
    assert broker.publish_local(["user:a", "user:b"], Outgoing("expired")) == 2
    assert broker.pending == queued
    assert broker.publish(["user:a", "user:b"], Outgoing("moved")) == 2
    assert broker.pending == queued + 2


async def test_publications_go_in_the_caller_s_pipeline_and_reach_the_others() -> None:
    """Chat is published by the journal, in order with its writes (``chat_writes``)."""
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        got = Recorder()
        async with client:
            address = RedisAddress("127.0.0.1", port)
            sender = RedisBroker(Recorder(), client, node_id=1, address=address)
            receiver = RedisBroker(got, client, node_id=2, address=address)
            async with trio.open_nursery() as nursery:
                await nursery.start(receiver.run)
                receiver.subscribe("inbox:bob", 7)
                await receiver.subscribed()
                frame = Outgoing("hi")
                publications = sender.publications(["inbox:bob", "inbox:ann"], frame)
                assert [(c, ch) for c, ch, _ in publications] == [
                    ("publish", "gp:inbox:{bob}"),
                    ("publish", "gp:inbox:{ann}"),
                ]
                async with client.pipeline(transaction=False) as pipe:
                    for command, channel, data in publications:
                        getattr(pipe, command)(channel, data)
                with trio.fail_after(10):
                    while not got.got:
                        await trio.sleep(0.01)
                assert [(conn, event.text) for conn, event in got.got] == [(7, "hi")]
                nursery.cancel_scope.cancel()
