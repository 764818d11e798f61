"""The Redis store on a real Redis and a Redis Cluster: what one node writes, a node that
starts later loads, exactly."""

from __future__ import annotations

from collections.abc import Set
from typing import Any

import coredis
import trio

from geopresence.redis_store import RedisStore
from geopresence.store import Store, UserSettings
from tests.redis_server import redis_cluster, redis_server


def dump(store: Store) -> tuple[Any, ...]:
    return (
        sorted(tuple(sorted(pair)) for pair in store.friendships()),
        sorted((group, sorted(members)) for group, members in store.groups()),
        sorted(store.settings_items()),
    )


async def write_then_load(client: Any) -> None:
    first = RedisStore(client)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        first.add_friendship("alice", "bob")
        first.add_friendship("alice", "carol")
        first.add_friendship("dave", "erin")
        first.remove_friendship("dave", "erin")
        first.set_group("hikers", ["alice", "bob", "carol"])
        first.remove_member("hikers", "carol")
        first.add_member("climbers", "dave")
        first.set_group("gone", ["x"])
        first.delete_group("gone")
        first.put_settings("alice", UserSettings(share_location=False, radius_m=1200.0))
        first.put_settings("bob", UserSettings(visible_to_strangers=True))
        first.put_settings("bob", UserSettings())  # back to the defaults: removed
        with trio.fail_after(10):
            await first.flush()
        assert first.pending == 0
        nursery.cancel_scope.cancel()
    second = RedisStore(client)
    await second.load()
    assert dump(second) == dump(first)
    friends: Set[str] = second.friends_of("alice")
    assert set(friends) == {"bob", "carol"} and not second.friends_of("dave")
    assert second.groups_of("carol") == set() and second.group_members("gone") is None
    assert second.get_settings("alice").radius_m == 1200.0


async def test_what_one_node_writes_another_loads() -> None:
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client:
            await write_then_load(client)


async def test_the_same_on_a_redis_cluster() -> None:
    with redis_cluster() as ports:
        client = coredis.RedisCluster(host="127.0.0.1", port=ports[0])
        async with client:
            await write_then_load(client)
