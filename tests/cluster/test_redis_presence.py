"""Presence decided in Redis: two reporters (two "nodes") on one real Redis, and on a
3-master cluster. Each user-level transition is announced exactly once, by one of them."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import coredis
import trio

from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.redis_presence import ALIVE, RedisPresence
from geopresence.core.replication import PresenceSet
from tests.redis_server import AnyRedis, redis_server

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def two_nodes(
    client: Any,
) -> AsyncIterator[tuple[RedisPresence, RedisPresence, list[PresenceSet], Clock]]:
    """Two reporters sharing one announcement log; sweeping only when a test asks."""
    announced: list[PresenceSet] = []
    versions: dict[str, int] = {}  # the replica's versions (shared here, as if one node's)

    def announce(transition: PresenceSet) -> None:
        announced.append(transition)
        versions[transition.user] = max(transition.version, versions.get(transition.user, 0))

    def known(user: str) -> int:
        return versions.get(user, 0)

    clock = Clock()
    keys = Keys(f"p{random.getrandbits(32)}")
    a = RedisPresence(client, keys, announce, clock, known_version=known, sweep_interval=3600)
    b = RedisPresence(client, keys, announce, clock, known_version=known, sweep_interval=3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        yield a, b, announced, clock
        nursery.cancel_scope.cancel()


async def settle(*nodes: RedisPresence) -> None:
    with trio.fail_after(10):
        for node in nodes:
            await node.flush()
        await trio.sleep(0.05)  # the last script's result is being handled


def transitions(announced: list[PresenceSet], user: str) -> list[str]:
    """The user's statuses as a replica holds them: one per version, in version order (a
    reporter that did not decide a transition may announce it too, with its version)."""
    by_version: dict[int, str] = {}
    for t in announced:
        if t.user == user:
            assert by_version.setdefault(t.version, t.status) == t.status
    return [by_version[v] for v in sorted(by_version)]


async def exactly_once(client: Any) -> None:
    async with two_nodes(client) as (a, b, announced, clock):
        # alice's phone on node a and laptop on node b come alive at the same time.
        a.device_alive("alice", "phone", T0 + 30, T0)
        b.device_alive("alice", "laptop", T0 + 30, T0)
        await settle(a, b)
        assert transitions(announced, "alice") == ["online"]

        # The phone times out on a; the laptop is still alive on b: no transition.
        clock.now = T0 + 30
        b.device_alive("alice", "laptop", T0 + 60, T0 + 30)
        await settle(b)
        a.device_ended("alice", "phone", T0 + 30)
        await settle(a)
        assert transitions(announced, "alice") == ["online"]

        # The laptop logs out: alice is offline, announced once.
        b.device_ended("alice", "laptop", None)
        await settle(b)
        assert transitions(announced, "alice") == ["online", "offline"]
        last = announced[-1]
        assert last.last_active_at == T0 + 30
        assert last.version > announced[0].version

        # A device that reconnected to node b (deadline extended) survives node a's expiry.
        a.device_alive("bob", "phone", T0 + 40, T0 + 10)
        await settle(a)
        b.device_alive("bob", "phone", T0 + 70, T0 + 40)
        await settle(b)
        clock.now = T0 + 40
        a.device_ended("bob", "phone", T0 + 40)
        await settle(a)
        assert transitions(announced, "bob") == ["online"]


async def test_each_transition_is_announced_once(any_redis: AnyRedis) -> None:
    await exactly_once(any_redis)


async def test_a_dead_nodes_devices_are_swept_once() -> None:
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client, two_nodes(client) as (a, b, announced, clock):
            a.device_alive("carol", "phone", T0 + 30, T0)
            await settle(a)
            # Node a dies: nothing more is reported. Before the deadline nothing is swept.
            clock.now = T0 + 29.9
            assert await b.sweep() == 0
            clock.now = T0 + 30.2
            # Both live sweepers race for it: one of them ends it.
            swept = await b.sweep() + await a.sweep()
            assert swept == 1
            await settle(a, b)
            assert transitions(announced, "carol") == ["online", "offline"]
            assert await client.zcard(a._keys.deadlines) == 0


async def test_random_interleavings_alternate_and_never_repeat() -> None:
    """Random alive/end reports of 3 devices of 5 users from two nodes: per user, a version
    always comes with one status, and in version order the statuses alternate (online,
    offline, online, ...): no transition is decided twice."""
    rng = random.Random(7)
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client, two_nodes(client) as (a, b, announced, clock):
            for step in range(300):
                node = rng.choice((a, b))
                user, device = f"u{rng.randrange(5)}", f"d{rng.randrange(3)}"
                clock.now = T0 + step
                if rng.random() < 0.6:
                    node.device_alive(user, device, clock.now + 5, clock.now)
                elif rng.random() < 0.5:
                    node.device_ended(user, device, None)
                else:
                    node.device_ended(user, device, clock.now)
                if rng.random() < 0.3:
                    await settle(a, b)
            await settle(a, b)
            for user in {t.user for t in announced}:
                statuses = transitions(announced, user)
                assert statuses == ["online", "offline"] * (len(statuses) // 2) + (
                    ["online"] if len(statuses) % 2 else []
                )


async def test_logouts_data_loss_and_a_logout_overtaken_by_a_reconnect() -> None:
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client, two_nodes(client) as (a, b, announced, clock):
            a.device_alive("dan", "phone", T0 + 30, T0)
            b.device_alive("dan", "laptop", T0 + 30, T0)
            await settle(a, b)
            # Logged out through any node: every device of the user ends at once.
            b.logout_user("dan")
            await settle(b)
            assert transitions(announced, "dan") == ["online", "offline"]
            # A logout and a reconnect reported before either reached Redis: offline, then
            # online, as one node would publish them (not swallowed into nothing).
            a.device_alive("eve", "phone", T0 + 30, T0)
            await settle(a)
            a.device_ended("eve", "phone", None)
            a.device_alive("eve", "phone", T0 + 31, T0 + 1)
            await settle(a)
            assert transitions(announced, "eve") == ["online", "offline", "online"]
            # Redis loses everything (no persistence): versions still grow.
            before = announced[-1].version
            await client.flushall()
            clock.now = T0 + 5
            b.device_alive("eve", "phone", T0 + 40, T0 + 5)
            await settle(b)
            assert transitions(announced, "eve")[-1] == "online"
            assert announced[-1].version > before


async def test_a_transition_whose_reply_was_lost_is_announced_by_the_next_call() -> None:
    """The deciding call ran in Redis but its reply never came back (a dropped connection):
    the next report about that user returns the state, which is news to this node."""
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client:
            keys = Keys("lost")
            announced: list[PresenceSet] = []
            presence = RedisPresence(client, keys, announced.append, Clock())
            await client.eval(
                ALIVE,
                keys=[keys.of("presence", "alice")],
                args=["phone", repr(T0 + 30), repr(T0), str(int(T0 * 1000))],
            )  # what the lost call did
            async with trio.open_nursery() as nursery:
                await nursery.start(presence.run)
                presence.device_alive("alice", "phone", T0 + 35, T0 + 5)  # a heartbeat
                await settle(presence)
                nursery.cancel_scope.cancel()
            assert [(t.user, t.status, t.version) for t in announced] == [
                ("alice", "online", int(T0 * 1000))
            ]
