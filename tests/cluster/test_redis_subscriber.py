"""The lean pub/sub subscriber: slots, addresses, batches, reconnects, logins, shards."""

from __future__ import annotations

import logging
from typing import Any

import coredis
import pytest
import trio

from geopresence.cluster.redis_subscriber import (
    RedisAddress,
    Subscriber,
    _commands,
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
    commands = _commands("SSUBSCRIBE", channels)
    assert len(commands) == 2  # alice's two channels share a slot; bob's is another
    assert b"{alice}" in commands[0] and b"{bob}" not in commands[0]
    assert len(_commands("SUBSCRIBE", channels)) == 1  # unsharded: one command


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


async def test_messages_arrive_in_batches_and_stop_after_unsubscribe() -> None:
    with redis_server() as port:
        got = Got()
        subscriber = Subscriber(got, address=RedisAddress("127.0.0.1", port))
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            async with trio.open_nursery() as nursery:
                await nursery.start(subscriber.run)
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
                nursery.cancel_scope.cancel()


async def test_a_lost_connection_is_reopened_and_subscribed_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "geopresence.redis")
    with redis_server() as port:
        got = Got()
        subscriber = Subscriber(got, address=RedisAddress("127.0.0.1", port))
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            async with trio.open_nursery() as nursery:
                await nursery.start(subscriber.run)
                await subscriber.subscribe(["gp:user:{a}"])
                await subscriber.sync()
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
                nursery.cancel_scope.cancel()
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
