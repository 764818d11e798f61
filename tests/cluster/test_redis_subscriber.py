"""The lean pub/sub subscriber: slots, addresses, batches, reconnects, logins, shards."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import coredis
import pytest
import trio

from geopresence.cluster.redis_subscriber import (
    RedisAddress,
    Subscriber,
    commands,
    hash_slot,
)
from tests.redis_server import redis_cluster, redis_server


def test_hash_slots_are_redis_cluster_s() -> None:
    assert hash_slot("123456789") == 12739  # the CRC16 check value of the Cluster spec
    assert hash_slot("{user1000}.following") == hash_slot("user1000")
    assert hash_slot("gp:user:{alice}") == hash_slot("alice")
    assert hash_slot("foo{}{bar}") != hash_slot("bar")  # an empty tag: the whole key
    assert hash_slot("foo{{bar}}zap") == hash_slot("{bar")
    assert hash_slot("foo{bar}{zap}") == hash_slot("bar")


def test_shard_channel_commands_are_split_by_slot() -> None:
    channels = ["gp:user:{alice}", "gp:group:{alice}", "gp:user:{bob}"]
    sharded = commands("SSUBSCRIBE", channels)
    assert len(sharded) == 2  # alice's two channels share a slot; bob's is another
    assert b"{alice}" in sharded[0] and b"{bob}" not in sharded[0]
    assert len(commands("SUBSCRIBE", channels)) == 1  # unsharded: one command


def test_addresses_from_urls() -> None:
    assert RedisAddress.from_url("redis://127.0.0.1:6380/2") == RedisAddress("127.0.0.1", 6380)
    assert RedisAddress.from_url("rediss://u%40x:p%3Aw@cache.example") == RedisAddress(
        "cache.example", 6379, "u@x", "p:w", tls=True
    )
    assert RedisAddress.from_url("redis://:secret@h:1").password == "secret"
    with pytest.raises(ValueError, match="redis://"):
        RedisAddress.from_url("http://127.0.0.1:6379")


class Got:
    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []

    def __call__(self, payloads: list[bytes]) -> None:
        self.batches.append(list(payloads))

    @property
    def messages(self) -> list[bytes]:
        return [m for batch in self.batches for m in batch]

    async def until(self, count: int) -> None:
        with trio.fail_after(10):
            while len(self.messages) < count:
                await trio.sleep(0.01)


@asynccontextmanager
async def subscribing(port: int) -> AsyncIterator[tuple[Got, Subscriber, Any]]:
    """A running ``Subscriber`` of a standalone Redis, what it got, and a client to it."""
    got = Got()
    subscriber = Subscriber(got, address=RedisAddress("127.0.0.1", port))
    async with coredis.Redis(host="127.0.0.1", port=port) as client:
        async with trio.open_nursery() as nursery:
            await nursery.start(subscriber.run)
            yield got, subscriber, client
            nursery.cancel_scope.cancel()


async def test_messages_arrive_in_batches_and_stop_after_unsubscribe() -> None:
    with redis_server() as port:
        async with subscribing(port) as (got, subscriber, client):
            await subscriber.subscribe(["gp:user:{a}", "gp:user:{b}"])
            await subscriber.sync()
            async with client.pipeline(transaction=False) as pipe:
                for i in range(200):
                    pipe.publish("gp:user:{a}" if i % 2 else "gp:user:{b}", b"m%d" % i)
            await got.until(200)
            assert got.messages == [b"m%d" % i for i in range(200)]  # in order
            assert len(got.batches) < 200  # a read's messages come together

            await subscriber.unsubscribe(["gp:user:{a}"])
            await subscriber.sync()
            assert subscriber.channels == {"gp:user:{b}"}
            await client.publish("gp:user:{a}", b"not for us")
            await client.publish("gp:user:{b}", b"last")
            await got.until(201)
            assert got.messages[-1] == b"last"


async def test_a_lost_connection_is_reopened_and_subscribed_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "geopresence.redis")
    with redis_server() as port:
        async with subscribing(port) as (got, subscriber, client):
            gaps: list[list[str]] = []
            subscriber.on_gap = gaps.append
            await subscriber.subscribe(["gp:user:{a}"])
            await subscriber.sync()
            assert gaps == []  # the first connection misses nothing
            assert await client.client_kill(type_=coredis.PureToken.PUBSUB) == 1

            async def subscribed_again() -> bool:
                counts: Any = await client.pubsub_numsub("gp:user:{a}")
                return bool(dict(counts).get(b"gp:user:{a}"))

            with trio.fail_after(10):
                while not await subscribed_again():
                    await trio.sleep(0.02)
            await subscriber.sync()
            await client.publish("gp:user:{a}", b"after")
            await got.until(1)
            assert got.messages == [b"after"]
            # What was published while it was down is missed: the owner is told which.
            assert gaps == [["gp:user:{a}"]]
    logged = [r.getMessage() for r in caplog.records]
    assert any("lost" in line and "reconnecting" in line for line in logged)
    assert any("connected again" in line for line in logged)


async def test_a_password_in_the_url_logs_in() -> None:
    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            await client.config_set({"requirepass": "s3cret"})
        got = Got()
        address = RedisAddress.from_url(f"redis://:s3cret@127.0.0.1:{port}")
        subscriber = Subscriber(got, address=address)
        async with coredis.Redis(host="127.0.0.1", port=port, password="s3cret") as client:
            async with trio.open_nursery() as nursery:
                await nursery.start(subscriber.run)
                await subscriber.subscribe(["gp:user:{a}"])
                with trio.fail_after(10):
                    await subscriber.sync()
                await client.publish("gp:user:{a}", b"hi")
                await got.until(1)
                nursery.cancel_scope.cancel()


async def test_shard_channels_are_subscribed_on_their_slots_master() -> None:
    with redis_cluster() as ports:
        got = Got()
        async with coredis.RedisCluster(host="127.0.0.1", port=ports[0]) as client:
            subscriber = Subscriber(got, cluster=client)
            channels = [f"gp:user:{{u{i}}}" for i in range(30)]  # spread over 3 masters
            async with trio.open_nursery() as nursery:
                await nursery.start(subscriber.run)
                await subscriber.subscribe(channels)
                await subscriber.sync()
                for channel in channels:
                    counts: Any = await client.pubsub_shardnumsub(channel)
                    assert dict(counts)[channel.encode()] == 1
                for channel in channels:
                    await client.spublish(channel, channel.encode())
                await got.until(len(channels))
                assert sorted(got.messages) == sorted(c.encode() for c in channels)
                nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------- a Cluster that moves


class MovableCluster:
    """Stands in for a coredis ``RedisCluster``: ``cluster_shards`` says which standalone
    redis-server (which take SSUBSCRIBE too) owns every slot; a test moves them."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reads = 0

    async def cluster_shards(self) -> list[dict[bytes, Any]]:
        self.reads += 1
        master = {b"role": b"master", b"ip": b"127.0.0.1", b"port": self.port}
        return [{b"slots": [0, 16383], b"nodes": [master]}]


async def shard_subscribers(port: int, channels: list[str]) -> int:
    async with coredis.Redis(host="127.0.0.1", port=port) as client:
        counts: Any = await client.pubsub_shardnumsub(*channels)
        return sum(1 for n in dict(counts).values() if n)


async def test_channels_follow_their_slots_to_a_new_master_and_sync_waits_for_it() -> None:
    with redis_server() as first, redis_server() as second:
        cluster = MovableCluster(first)
        subscriber = Subscriber(Got(), cluster=cluster)
        gaps: list[list[str]] = []
        subscriber.on_gap = gaps.append
        channels = [f"gp:user:{{u{i}}}" for i in range(200)]
        async with trio.open_nursery() as nursery:
            await nursery.start(subscriber.run)
            await subscriber.subscribe(channels)
            await subscriber.sync()
            assert await shard_subscribers(first, channels) == 200
            cluster.port = second  # a resharding moved every slot
            subscriber.topology_changed()
            await trio.sleep(0.15)  # the shards are being read again...
            await subscriber.unsubscribe([channels[5]])  # ...as a user leaves
            await subscriber.sync()
            await subscriber.sync()  # and once more: no barrier is left behind
            assert subscriber.channels == set(channels) - {channels[5]}
            assert await shard_subscribers(second, channels) == 199
            assert await shard_subscribers(first, channels) == 0
            assert sorted(c for gap in gaps for c in gap) == sorted(channels)  # all moved
            nursery.cancel_scope.cancel()


async def test_a_sunsubscribe_from_redis_itself_subscribes_again() -> None:
    """Redis ends a shard channel's subscription itself when its slot moves; if the slot
    map read again still names the same master (it moved back), subscribe there again."""
    with redis_server() as port:
        cluster = MovableCluster(port)
        subscriber = Subscriber(Got(), cluster=cluster)
        async with trio.open_nursery() as nursery:
            await nursery.start(subscriber.run)
            await subscriber.subscribe(["gp:user:{a}", "gp:user:{b}"])
            await subscriber.sync()
            [connection] = subscriber._servers.values()
            connection._other(b"sunsubscribe", [b"sunsubscribe", b"gp:user:{a}", 1])
            assert subscriber.channels == {"gp:user:{a}", "gp:user:{b}"}  # still wanted
            with trio.fail_after(5):
                while cluster.reads < 2:
                    await trio.sleep(0.01)
            await subscriber.sync()
            assert await shard_subscribers(port, ["gp:user:{a}", "gp:user:{b}"]) == 2
            # Our own unsubscription confirmed later is not taken for a move.
            reads = cluster.reads
            await subscriber.unsubscribe(["gp:user:{b}"])
            await subscriber.subscribe(["gp:user:{b}"])
            await subscriber.sync()
            await trio.sleep(0.3)
            assert cluster.reads == reads
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------- a Redis that misbehaves


class FakeRedis:
    """A TCP server speaking just enough RESP: SUBSCRIBE is confirmed, PING answered by
    ``ping_answers`` in turn (then pong), AUTH never answered if ``silent_auth``."""

    def __init__(self, ping_answers: Sequence[bytes] = (), *, silent_auth: bool = False) -> None:
        self.ping_answers = list(ping_answers)
        self.silent_auth = silent_auth
        self.connections = 0

    async def serve(self, stream: trio.SocketStream) -> None:
        import hiredis

        self.connections += 1
        reader = hiredis.Reader()
        while data := await stream.receive_some(65536):
            reader.feed(data)
            while (command := reader.gets()) is not False:
                name = command[0].upper()
                if name == b"AUTH" and self.silent_auth:
                    await trio.sleep_forever()
                elif name == b"SUBSCRIBE":
                    for i, channel in enumerate(command[1:], 1):
                        await stream.send_all(
                            b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:%d\r\n"
                            % (len(channel), channel, i)
                        )
                elif name == b"PING":
                    answer = self.ping_answers.pop(0) if self.ping_answers else None
                    await stream.send_all(answer or b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")


async def serving(nursery: trio.Nursery, fake: FakeRedis) -> int:
    serve = partial(trio.serve_tcp, fake.serve, 0, host="127.0.0.1")
    listeners = await nursery.start(serve)
    return int(listeners[0].socket.getsockname()[1])


async def test_an_error_answering_a_ping_answers_it() -> None:
    """While Redis loads its data it takes SUBSCRIBE but answers PING with -LOADING: that
    is still the PING's answer, and each later barrier waits for its own."""
    fake = FakeRedis([b"-LOADING Redis is loading the dataset in memory\r\n"])
    async with trio.open_nursery() as nursery:
        port = await serving(nursery, fake)
        subscriber = Subscriber(Got(), address=RedisAddress("127.0.0.1", port))
        await nursery.start(subscriber.run)
        await subscriber.subscribe(["gp:user:{a}"])
        with trio.fail_after(5):
            for _ in range(3):
                await subscriber.sync()  # each returns on its own answer
        nursery.cancel_scope.cancel()


async def test_a_server_that_never_answers_the_login_is_left_and_tried_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeRedis(silent_auth=True)
    async with trio.open_nursery() as nursery:
        port = await serving(nursery, fake)
        address = RedisAddress("127.0.0.1", port, password="pw")
        subscriber = Subscriber(Got(), address=address)
        await nursery.start(subscriber.run)
        await trio.sleep(12)  # CONNECT_TIMEOUT is 5 s
        assert fake.connections >= 2
        nursery.cancel_scope.cancel()


def test_tls_options_of_the_url_are_applied_or_refused() -> None:
    import ssl

    address = RedisAddress.from_url("rediss://h:6380/0?ssl_cert_reqs=none&decode_responses=1")
    assert address.ssl_context().verify_mode == ssl.CERT_NONE
    assert RedisAddress.from_url("rediss://h").ssl_context().verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ValueError, match="ssl_ciphers"):
        RedisAddress.from_url("rediss://h?ssl_ciphers=HIGH")
