"""Presence decided in Redis: reporters (the "nodes") with their leases on one real Redis,
and on a 3-master cluster, on a fake clock. Each user-level transition is announced exactly
once, by one of them; a gone node's devices are ended once, after their grace window."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import coredis
import trio

from geopresence.cluster.presence_scripts import ALIVE
from geopresence.cluster.redis_keys import Keys, strings
from geopresence.cluster.redis_nodes import NodeLease, read_registry
from geopresence.cluster.redis_presence import RedisPresence
from geopresence.core.replication import PresenceSet
from tests.helpers import SettableClock
from tests.redis_server import AnyRedis, redis_server

T0 = 1_800_000_000.0
LEASE = 5.0
OFFLINE_AFTER = 30.0


class Nodes:
    """Reporters sharing one announcement log (as if one replica's), their leases, a clock."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self.clock = SettableClock(T0)
        self.announced: list[PresenceSet] = []
        self.versions: dict[str, int] = {}

    def announce(self, transition: PresenceSet) -> None:
        self.announced.append(transition)
        user = transition.user
        self.versions[user] = max(transition.version, self.versions.get(user, 0))

    async def start(self, nursery: trio.Nursery, node_id: int) -> tuple[RedisPresence, NodeLease]:
        presence = RedisPresence(
            self.client,
            self.keys,
            self.announce,
            self.clock,
            known_version=lambda user: self.versions.get(user, 0),
            sweep_interval=3600,  # sweeping only when a test asks
            offline_after=OFFLINE_AFTER,
        )
        lease = NodeLease(self.client, self.keys, node_id, self.clock, LEASE)
        assert await lease.take() == 0
        presence.holder = lease.incarnation
        await nursery.start(presence.run)
        return presence, lease

    def transitions(self, user: str) -> list[str]:
        """The user's statuses as a replica holds them: one per version, in version order (a
        reporter that did not decide a transition may announce it too, with its version)."""
        by_version: dict[int, str] = {}
        for t in self.announced:
            if t.user == user:
                assert by_version.setdefault(t.version, t.status) == t.status
        return [by_version[v] for v in sorted(by_version)]

    async def held(self, lease: NodeLease) -> list[str]:
        return strings(await self.client.smembers(self.keys.of("held", lease.incarnation)))


@asynccontextmanager
async def two_nodes(
    client: Any,
) -> AsyncIterator[tuple[Nodes, RedisPresence, RedisPresence, NodeLease, NodeLease]]:
    nodes = Nodes(client, Keys(f"p{random.getrandbits(32)}"))
    async with trio.open_nursery() as nursery:
        a, lease_a = await nodes.start(nursery, 1)
        b, lease_b = await nodes.start(nursery, 2)
        yield nodes, a, b, lease_a, lease_b
        nursery.cancel_scope.cancel()


async def advance(clock: SettableClock, now: float, *live: NodeLease) -> None:
    """Time passes until ``now``; the ``live`` nodes renew their leases every second."""
    while clock.now < now:
        clock.now = min(now, clock.now + 1)
        for lease in live:
            assert await lease.renew()


async def settle(*nodes: RedisPresence) -> None:
    with trio.fail_after(10):
        for node in nodes:
            await node.flush()
        await trio.sleep(0.05)  # the last script's result is being handled


async def test_each_transition_is_announced_once(any_redis: AnyRedis) -> None:
    async with two_nodes(any_redis) as (nodes, a, b, lease_a, lease_b):
        # alice's phone on node a and laptop on node b come alive at the same time.
        a.device_alive("alice", "phone", T0)
        b.device_alive("alice", "laptop", T0)
        await settle(a, b)
        assert nodes.transitions("alice") == ["online"]
        assert await nodes.held(lease_a) == ["alice\nphone"]

        # The phone's deadline passes on a; the laptop is still alive on b: no transition.
        a.device_ended("alice", "phone", T0 + 3, logout=False)
        await settle(a)
        assert nodes.transitions("alice") == ["online"]
        assert await nodes.held(lease_a) == []

        # The laptop logs out: alice is offline, announced once, with her latest activity.
        b.device_ended("alice", "laptop", T0 + 1, logout=True)
        await settle(b)
        assert nodes.transitions("alice") == ["online", "offline"]
        last = nodes.announced[-1]
        assert last.last_active_at == T0 + 3
        assert last.version > nodes.announced[0].version

        # bob's phone reconnects from node a to node b: a's end of it changes nothing.
        a.device_alive("bob", "phone", T0 + 10)
        await settle(a)
        b.device_alive("bob", "phone", T0 + 20)
        await settle(b)
        a.device_ended("bob", "phone", T0 + 10, logout=False)
        await settle(a)
        assert nodes.transitions("bob") == ["online"]
        assert (await nodes.held(lease_a), await nodes.held(lease_b)) == ([], ["bob\nphone"])
        b.device_ended("bob", "phone", T0 + 25, logout=False)
        await settle(b)
        assert nodes.transitions("bob") == ["online", "offline"]


async def test_a_gone_nodes_devices_end_once_after_their_grace(any_redis: AnyRedis) -> None:
    """Node a dies (it stops renewing its lease). Once the lease has lapsed and then the
    devices' grace window (offline_after) has passed, the live sweepers end what a held,
    once; a device that reconnected to node b within the window stays online (no flap)."""
    async with two_nodes(any_redis) as (nodes, a, b, lease_a, lease_b):
        a.device_alive("carol", "phone", T0)
        a.device_alive("dan", "phone", T0)
        await settle(a)
        clock = nodes.clock

        async def at(now: float) -> None:
            await advance(clock, now, lease_b)

        await at(T0 + LEASE - 0.1)  # a's lease still runs
        assert await b.sweep() == 0
        await at(T0 + LEASE + 0.1)  # lapsed: a is gone, its devices in their grace window
        assert await b.sweep() == 0
        live, gone = await read_registry(any_redis, nodes.keys)
        assert [node.node_id for node in live] == ["2"]
        assert [(g.incarnation, g.last_seen) for g in gone] == [(lease_a.incarnation, T0)]
        await at(T0 + LEASE + OFFLINE_AFTER - 1)
        b.device_alive("dan", "phone", clock.now)  # dan's client reconnected to node b
        await settle(b)
        assert await b.sweep() == 0
        await at(T0 + LEASE + OFFLINE_AFTER + 0.1)
        # Both live sweepers race for it (a's own, as if a were a zombie): one ends it.
        assert await b.sweep() + await a.sweep() == 1
        await settle(a, b)
        assert nodes.transitions("carol") == ["online", "offline"]
        assert nodes.announced[-1].last_active_at == T0  # a's last sign of life
        assert nodes.transitions("dan") == ["online"]
        assert await nodes.held(lease_a) == []
        assert await nodes.held(lease_b) == ["dan\nphone"]
        assert (await read_registry(any_redis, nodes.keys))[1] == []


async def test_a_node_that_lost_its_lease_reports_its_devices_again() -> None:
    """Node a was stalled past its lease: its renewal says so, it becomes a new incarnation
    and reports its devices again before their grace window ends: they never go offline,
    and the sweep of its old incarnation changes nothing."""
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client, two_nodes(client) as (nodes, a, b, lease_a, lease_b):
            a.device_alive("erin", "phone", T0)
            await settle(a)
            old = lease_a.incarnation
            await advance(nodes.clock, T0 + LEASE + 1, lease_b)  # a is stalled meanwhile
            assert lease_b.steady()  # renewed for a whole lease: b may judge a's
            assert not await lease_a.renew()
            assert await lease_a.retake() == 0
            assert lease_a.incarnation != old
            assert not lease_a.steady()  # not before a whole lease of its own again
            a.holder = lease_a.incarnation
            a.reclaim([("erin", "phone", T0 + 4, T0)])
            await settle(a)
            await advance(nodes.clock, T0 + LEASE + OFFLINE_AFTER + 1, lease_a, lease_b)
            assert await b.sweep() == 0
            assert nodes.transitions("erin") == ["online"]
            assert await nodes.held(lease_a) == ["erin\nphone"]
            assert (await read_registry(client, nodes.keys))[1] == []
            # A node id in use by another live node is refused, saying for how long.
            taken = NodeLease(client, nodes.keys, 1, nodes.clock, LEASE)
            assert await taken.take() == LEASE


async def test_random_interleavings_alternate_and_never_repeat() -> None:
    """Random session opens, local ends and logouts of 3 devices of 5 users from two nodes:
    per user, a version always comes with one status, and in version order the statuses
    alternate (online, offline, online, ...): no transition is decided twice."""
    rng = random.Random(7)
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client, two_nodes(client) as (nodes, a, b, _, _):
            for step in range(300):
                node = rng.choice((a, b))
                user, device = f"u{rng.randrange(5)}", f"d{rng.randrange(3)}"
                now = T0 + step
                if rng.random() < 0.5:
                    node.device_alive(user, device, now)
                elif rng.random() < 0.2:
                    node.logout_user(user, now)
                else:
                    node.device_ended(user, device, now, logout=rng.random() < 0.5)
                if rng.random() < 0.3:
                    await settle(a, b)
            await settle(a, b)
            for user in {t.user for t in nodes.announced}:
                statuses = nodes.transitions(user)
                assert statuses == ["online", "offline"] * (len(statuses) // 2) + (
                    ["online"] if len(statuses) % 2 else []
                )


async def test_logouts_data_loss_and_a_logout_overtaken_by_a_reconnect() -> None:
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client, two_nodes(client) as (nodes, a, b, lease_a, _):
            a.device_alive("dan", "phone", T0)
            b.device_alive("dan", "laptop", T0)
            await settle(a, b)
            # Logged out through any node: every device of the user ends at once.
            b.logout_user("dan", None)
            await settle(b)
            assert nodes.transitions("dan") == ["online", "offline"]
            assert await nodes.held(lease_a) == ["dan\nphone"]  # a superset, until a hears:
            a.device_ended("dan", "phone", None, logout=False)  # the logout, told to a
            await settle(a)
            assert nodes.transitions("dan") == ["online", "offline"]
            # A logout and a reconnect reported before either reached Redis: offline, then
            # online, as one node would publish them (not swallowed into nothing).
            a.device_alive("eve", "phone", T0)
            await settle(a)
            a.device_ended("eve", "phone", T0, logout=True)
            a.device_alive("eve", "phone", T0 + 1)
            await settle(a)
            assert nodes.transitions("eve") == ["online", "offline", "online"]
            assert await nodes.held(lease_a) == ["eve\nphone"]
            # Redis loses everything (no persistence): versions still grow.
            before = nodes.announced[-1].version
            await client.flushall()
            nodes.clock.now = T0 + 5
            b.device_alive("eve", "phone", T0 + 5)
            await settle(b)
            assert nodes.transitions("eve")[-1] == "online"
            assert nodes.announced[-1].version > before


async def test_a_transition_whose_reply_was_lost_is_announced_by_the_next_call() -> None:
    """The deciding call ran in Redis but its reply never came back (a dropped connection):
    the next report about that user returns the state, which is news to this node."""
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client:
            keys = Keys("lost")
            announced: list[PresenceSet] = []
            presence = RedisPresence(
                client,
                keys,
                announced.append,
                SettableClock(T0),
                sweep_interval=0.5,
                offline_after=OFFLINE_AFTER,
            )
            presence.holder = "1/x"
            await client.eval(
                ALIVE,
                keys=[keys.of("presence", "alice")],
                args=["phone", "1/x", repr(T0), str(int(T0 * 1000)), str(int(T0 * 1000))],
            )  # what the lost call did
            async with trio.open_nursery() as nursery:
                await nursery.start(presence.run)
                presence.device_alive("alice", "laptop", T0 + 5)  # a second device
                await settle(presence)
                nursery.cancel_scope.cancel()
            assert [(t.user, t.status, t.version) for t in announced] == [
                ("alice", "online", int(T0 * 1000))
            ]


async def test_devices_recorded_by_an_older_version_are_ended_once() -> None:
    """Before holders, a device's field held its deadline and ``gp:deadlines`` indexed it;
    a node of this version ends those at start, and leaves a held device alone."""
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client, two_nodes(client) as (nodes, a, _, _, _):
            key = nodes.keys.of("presence", "fay")
            await client.hset(key, {"status": "online", "last_active_at": repr(T0), "v": "3"})
            await client.hset(key, {"d:old": repr(T0 + 30), "d:older": repr(T0 + 20)})
            deadlines = nodes.keys.legacy_deadlines
            await client.zadd(deadlines, {"fay\nold": T0 + 30, "fay\nolder": T0 + 20})
            a.device_alive("gus", "phone", T0)
            await settle(a)
            await client.zadd(deadlines, {"gus\nphone": T0 + 30})  # held since: left alone
            assert await a.migrate_legacy() == 2
            await settle(a)
            assert nodes.transitions("fay") == ["online", "offline"]  # (v3 was news here)
            assert nodes.transitions("gus") == ["online"]
            assert await client.exists([deadlines]) == 0


async def test_a_session_reported_before_its_welcome_outlives_its_old_sessions_end() -> None:
    """The hello's ``alive_now`` waits for a batch in flight; meanwhile the device's previous
    session on this node reaches its deadline and is reported ended. The session's own report
    must then follow that end, or the connected device would end in Redis."""
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client, two_nodes(client) as (nodes, a, _, lease_a, _):
            a.device_alive("hal", "phone", T0)
            await settle(a)
            async with trio.open_nursery() as nursery:
                async with a.batches._lock:  # a batch in flight
                    nursery.start_soon(a.alive_now, "hal", "phone", T0 + 40)
                    await trio.sleep(0.05)  # alive_now waits for the batch
                    a.device_ended("hal", "phone", T0 + 10, logout=False)  # its old session
                await trio.sleep(0.05)
            a.device_alive("hal", "phone", T0 + 40)  # the session opens (the hub's report)
            await settle(a)
            assert await nodes.held(lease_a) == ["hal\nphone"]
            assert nodes.transitions("hal")[-1] == "online"


async def test_a_takeover_is_told_to_the_old_holder_but_not_after_a_reclaim() -> None:
    """A session on b of a device a held: a's incarnation is named, so that its node closes
    its connection (4002). A device a reports again after losing its lease is not a newer
    connection: b, which took it over meanwhile, is not told to close its own."""
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client, two_nodes(client) as (nodes, a, b, lease_a, lease_b):
            told_by_a: list[tuple[str, str, str, float]] = []
            told_by_b: list[tuple[str, str, str, float]] = []
            a.batches.on_taken_over = lambda *notice: told_by_a.append(notice)
            b.batches.on_taken_over = lambda *notice: told_by_b.append(notice)
            a.device_alive("alice", "phone", T0)
            await settle(a)
            b.device_alive("alice", "phone", T0 + 1)
            b.device_alive("alice", "laptop", T0 + 1)  # nobody held it: no notice
            await settle(b)
            assert told_by_b == [("alice", "phone", lease_a.incarnation, T0 + 1)]
            await advance(nodes.clock, T0 + LEASE + 1, lease_b)  # a is stalled meanwhile
            assert not await lease_a.renew()
            assert await lease_a.retake() == 0
            a.holder = lease_a.incarnation
            a.reclaim([("alice", "phone", T0, T0)])
            await settle(a)
            assert told_by_a == []
