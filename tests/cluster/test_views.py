"""What a node holds for its sessions (``cluster/views.py``), against a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from typing import Any

import coredis
import orjson
import trio

from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.views import Views
from geopresence.core.hub import Hub, HubSettings
from geopresence.core.store import MemoryStore
from geopresence.wire.client_messages import LocationUpdate
from tests.helpers import RecordingSink
from tests.redis_server import redis_server

NOW = 1_800_000_000.0


class ListeningBroker:
    """The broker seam as ``Views`` uses it: every channel listened to, at once."""

    def subscribers(self, channel: str) -> set[int]:
        return {1}

    async def subscribed(self) -> None:
        pass

    def hold(self, channel: str) -> None:
        pass

    def release(self, channel: str) -> None:
        pass


class GatedRedis:
    """A client whose pipelines wait for ``gate`` (a slow Redis); with ``replies_held``,
    Redis runs them at once and their replies wait (a slow way back). ``waiting`` is set
    once one waits."""

    def __init__(self, client: Any, *, replies_held: bool = False) -> None:
        self.client = client
        self.gate = trio.Event()
        self.waiting = trio.Event()
        self._replies_held = replies_held

    @asynccontextmanager
    async def pipeline(self, **kwargs: Any) -> AsyncIterator[Any]:
        if not self._replies_held:
            await self._wait()
        async with self.client.pipeline(**kwargs) as pipe:
            yield pipe
        if self._replies_held:
            await self._wait()

    async def _wait(self) -> None:
        self.waiting.set()
        await self.gate.wait()


async def _read_nothing(users: Collection[str]) -> None:
    """This hub is its own single node: it knows every status."""


async def test_a_friendship_ended_while_its_locations_load_shows_nothing() -> None:
    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            keys = Keys("views")
            await client.set(keys.location("bob"), orjson.dumps([37.5701, 126.98, NOW, NOW]))
            sink = RecordingSink()
            hub = Hub(HubSettings(), MemoryStore(), sink)
            hub.open_session(1, "alice", "phone", now=NOW)
            hub.open_session(2, "bob", "phone", now=NOW)
            hub.handle(1, LocationUpdate(lat=37.57, lon=126.98), NOW)
            hub.membership.add_friendships([("alice", "bob")], NOW)
            sink.take(1)
            redis = GatedRedis(client)
            views = Views(
                redis,
                keys,
                ListeningBroker(),  # type: ignore[arg-type]
                hub,
                lambda: NOW,
                _read_nothing,
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(views.run)
                views.befriended("alice", "bob")
                await redis.waiting.wait()  # bob's location is being read...
                hub.membership.remove_friendship("alice", "bob")  # ...as they unfriend
                redis.gate.set()
                await trio.sleep(0.2)
                assert sink.take(1, "friend_location") == []
                # A friendship that stays shows at once.
                hub.membership.add_friendships([("alice", "bob")], NOW)
                hub.nearby.drop_cached("bob")
                views.befriended("alice", "bob")
                with trio.fail_after(5):
                    while not sink.take(1, "friend_location"):
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
