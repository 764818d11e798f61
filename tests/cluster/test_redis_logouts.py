"""Logouts decided in Redis (``presence_scripts``): a logout made at time T ends the
connections of the device(s) that opened at or before T, and no later one, whoever holds
them; it names their holders (their nodes end them, 4001) and leaves tombstones that a
report reaching Redis late is judged by. Reporters on one real Redis (and a 3-master
cluster), on a fake clock."""

from __future__ import annotations

from typing import Any

import coredis
import trio

from geopresence.cluster.control import Control
from geopresence.cluster.presence_scripts import END
from geopresence.cluster.redis_keys import string
from geopresence.wire.errors import CLOSE_LOGGED_OUT
from tests.cluster.test_control import Broker, hub_with
from tests.cluster.test_redis_presence import (
    LEASE,
    OFFLINE_AFTER,
    T0,
    advance,
    settle,
    two_nodes,
)
from tests.redis_server import AnyRedis, redis_server


async def test_a_logout_names_the_holders_and_leaves_tombstones(any_redis: AnyRedis) -> None:
    """A logout through b of devices a holds names a's incarnation for each, with the
    logout's time (its node ends them, 4001), and leaves a tombstone per device and one for
    the user; retried (its first reply lost), it names them again. A device's next session
    passes its tombstone; a tombstone older than a day goes with the user's next end."""
    async with two_nodes(any_redis) as (nodes, a, b, lease_a, lease_b):
        told: list[tuple[str, str, str, float]] = []
        b.batches.on_logged_out = lambda *notice: told.append(notice)
        a.device_alive("fay", "phone", T0)
        a.device_alive("fay", "tablet", T0)
        b.device_alive("fay", "laptop", T0)
        await settle(a, b)
        nodes.clock.now = T0 + 1
        b.logout_user("fay", None)
        await settle(b)
        mine, ms = lease_a.incarnation, int((T0 + 1) * 1000)
        expected = [
            ("fay", "laptop", lease_b.incarnation, T0 + 1),  # b's own (ended there already)
            ("fay", "phone", mine, T0 + 1),
            ("fay", "tablet", mine, T0 + 1),
        ]
        assert sorted(told) == expected
        key = nodes.keys.of("presence", "fay")
        assert await tombstones(any_redis, key) == {
            "lo:phone": f"{mine} {ms}",
            "lo:tablet": f"{mine} {ms}",
            "lo:laptop": f"{lease_b.incarnation} {ms}",
            "lo:*": f"- {ms}",
        }
        told.clear()
        b.logout_user("fay", None)  # a retry: nothing left to end, a is told again
        await settle(b)
        assert sorted(told) == expected
        a.device_alive("fay", "phone", T0 + 2)  # a new session of the phone
        await settle(a)
        assert "lo:phone" in await tombstones(any_redis, key)  # for late reports
        assert nodes.transitions("fay") == ["online", "offline", "online"]
        nodes.clock.now = T0 + 1 + 86_400 + 1
        a.device_ended("fay", "phone", T0 + 3, logout=False)
        await settle(a)
        assert await tombstones(any_redis, key) == {}


async def test_a_late_report_of_a_device_logged_out_since_its_connection_opened() -> None:
    """Node a was stalled past its lease. Meanwhile b logged out alice's phone (a held it),
    its sweeper ended a's other devices, then b logged out bob's phone (held by none) and
    every device of carol. a's new incarnation reports its devices again: not those three,
    each logged out after its connection opened (a ends them, 4001: told with its own
    incarnation), but dan's phone; and no user flaps."""
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client, two_nodes(client) as (nodes, a, b, lease_a, lease_b):
            told: list[tuple[str, str, str, float]] = []
            a.batches.on_logged_out = lambda *notice: told.append(notice)
            b.batches.on_logged_out = lambda *notice: None  # lost with a's lease
            users = ("alice", "bob", "carol", "dan")
            for user in users:
                a.device_alive(user, "phone", T0)
            await settle(a)
            await advance(nodes.clock, T0 + 1, lease_a, lease_b)
            b.device_ended("alice", "phone", None, logout=True)
            await settle(b)
            await advance(nodes.clock, T0 + LEASE + OFFLINE_AFTER + 2, lease_b)
            assert await b.sweep() == 3
            at = nodes.clock.now
            b.device_ended("bob", "phone", None, logout=True)
            b.logout_user("carol", None)
            await settle(b)
            assert not await lease_a.renew()
            assert await lease_a.retake() == 0
            a.holder = lease_a.incarnation
            a.reclaim([(user, "phone", T0 + 1, T0) for user in users])
            await settle(a)
            mine = lease_a.incarnation
            assert sorted(told) == [
                ("alice", "phone", mine, T0 + 1),
                ("bob", "phone", mine, at),
                ("carol", "phone", mine, at),
            ]
            assert await nodes.held(lease_a) == ["dan\nphone"]
            for user in users:
                assert (
                    nodes.transitions(user)
                    == ["online", "offline", "online"][: 3 if user == "dan" else 2]
                )


async def test_a_reclaim_replaced_before_it_reached_redis_judges_no_later_session() -> None:
    """A device reported again after a lost lease, then logged out on the session itself
    before that report left: a new session of it later is made alive, by its own time."""
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client, two_nodes(client) as (nodes, a, _, lease_a, _):
            nodes.clock.now = T0 + 1
            a.reclaim([("gus", "phone", T0, T0)])
            a.device_ended("gus", "phone", T0, logout=True)  # before the loop ran
            await settle(a)
            nodes.clock.now = T0 + 10
            await a.alive_now("gus", "phone", T0 + 10)  # as a session opens, before its welcome
            a.device_alive("gus", "phone", T0 + 10)
            assert await nodes.held(lease_a) == ["gus\nphone"]


async def test_a_logout_judges_connections_by_when_they_opened() -> None:
    """A logout ends the connections opened at or before it, by the times their nodes
    report, and no later one: a logout and a reconnect queued together on a leave the new
    session held; a logout made before a connection opened (b's clock) leaves it held;
    ``alive_now`` for a connection opened before a logout that reached Redis first says
    4001 (the session must not start)."""
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client, two_nodes(client) as (nodes, a, b, lease_a, _):
            told: list[tuple[str, str, str, float]] = []
            b.batches.on_logged_out = lambda *notice: told.append(notice)
            a.device_alive("hal", "phone", T0)
            a.device_alive("ida", "phone", T0 + 5)
            await settle(a)
            nodes.clock.now = T0 + 6
            a.device_ended("hal", "phone", T0 + 6, logout=True)  # on the session itself
            nodes.clock.now = T0 + 7
            a.device_alive("hal", "phone", T0 + 7)  # reconnected before the loop ran
            await settle(a)
            assert nodes.transitions("hal") == ["online", "offline", "online"]
            nodes.clock.now = T0 + 4  # b's clock: before ida's connection opened on a
            b.device_ended("ida", "phone", None, logout=True)
            await settle(b)
            assert told == []
            assert nodes.transitions("ida") == ["online"]
            assert await nodes.held(lease_a) == ["hal\nphone", "ida\nphone"]
            nodes.clock.now = T0 + 9
            b.logout_user("jo", None)  # no device of jo is held yet
            await settle(b)
            assert await a.alive_now("jo", "phone", T0 + 8) == CLOSE_LOGGED_OUT
            assert await a.alive_now("jo", "laptop", T0 + 10) is None
            assert await nodes.held(lease_a) == ["hal\nphone", "ida\nphone", "jo\nlaptop"]


async def test_a_late_report_loses_to_what_came_after_its_connection_opened() -> None:
    """Node a's reports wait (it has no lease): kim's phone opened there at T0 and was
    logged out through b at T0 + 1, lee's phone opened there at T0 and again on b at T0 + 2;
    both phones then reconnect on b. a's late reports change nothing: kim's is told logged
    out (4001), lee's superseded (4002), and b keeps both, with no takeover notice."""
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client, two_nodes(client) as (nodes, a, b, lease_a, lease_b):
            told: list[tuple[str, str, str, float]] = []
            superseded: list[tuple[str, str, float]] = []
            taken: list[tuple[str, str, str]] = []
            a.batches.on_logged_out = lambda *notice: told.append(notice)
            a.batches.on_superseded = lambda *notice: superseded.append(notice)
            b.batches.on_taken_over = a.batches.on_taken_over = lambda *notice: taken.append(notice)
            a.holder = None
            a.device_alive("kim", "phone", T0)
            a.device_alive("lee", "phone", T0)
            nodes.clock.now = T0 + 1
            b.device_ended("kim", "phone", None, logout=True)
            await settle(b)
            b.device_alive("kim", "phone", T0 + 2)
            b.device_alive("lee", "phone", T0 + 2)
            await settle(b)
            a.holder = lease_a.incarnation
            await settle(a)
            assert told == [("kim", "phone", lease_a.incarnation, T0 + 1)]
            assert superseded == [("lee", "phone", T0)]
            assert taken == []
            assert await nodes.held(lease_a) == []
            assert await nodes.held(lease_b) == ["kim\nphone", "lee\nphone"]
            assert nodes.transitions("kim") == ["online"] and nodes.transitions("lee") == ["online"]


async def test_tombstones_of_a_user_without_presence_expire() -> None:
    """A logout of a user Redis has no presence of (never seen, or forgotten meanwhile)
    leaves its tombstones in a hash that expires; a session of the user keeps it."""
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client, two_nodes(client) as (nodes, a, b, _, _):
            b.logout_user("max", None)
            await settle(b)
            key = nodes.keys.of("presence", "max")
            assert 0 < await client.pttl(key) <= 86_400_000
            nodes.clock.now = T0 + 1
            a.device_alive("max", "phone", T0 + 1)
            await settle(a)
            assert await client.pttl(key) == -1


async def tombstones(client: Any, key: str) -> dict[str, str]:
    fields = await client.hgetall(key)
    return {string(k): string(v) for k, v in fields.items() if string(k).startswith("lo:")}


async def test_a_logout_through_the_node_where_the_device_is_opening_ends_it() -> None:
    """fay's phone is opening on a (reported alive, not yet welcomed) when a logout of
    every device of fay is made through a itself: the session ends (4001) as it opens."""
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client, two_nodes(client) as (nodes, a, _, lease_a, _):
            hub, sink = hub_with()
            async with trio.open_nursery() as nursery:
                broker: Any = Broker()
                control = Control(
                    client, nodes.keys, broker, hub, lambda: lease_a.incarnation, nursery
                )
                control.listen(1)
                control.attach(a)
                assert await a.alive_now("fay", "phone", T0) is None
                nodes.clock.now = T0 + 1
                a.logout_user("fay", None)  # no session of fay here yet
                await settle(a)
                hub.open_session(1, "fay", "phone", T0 + 1.5, since=T0)
                a.device_alive("fay", "phone", T0)  # as the session opens (its replicator)
            assert sink.closed == {1: CLOSE_LOGGED_OUT}


async def test_a_reclaim_that_takes_a_device_over_tells_the_older_connection() -> None:
    """gus's phone is held on b since T0 and reconnected to a at T0 + 5 while a had no
    lease: a's report again takes it over, and b's older connection is told (4002)."""
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client, two_nodes(client) as (nodes, a, b, lease_a, lease_b):
            taken: list[tuple[str, str, str, float]] = []
            a.batches.on_taken_over = lambda *notice: taken.append(notice)
            assert await b.alive_now("gus", "phone", T0) is None
            nodes.clock.now = T0 + 6
            a.reclaim([("gus", "phone", T0 + 5, T0 + 5)])
            await settle(a)
            assert await nodes.held(lease_a) == ["gus\nphone"]
            assert taken == [("gus", "phone", lease_b.incarnation, T0 + 5)]


async def test_end_replies_once_per_device_and_never_a_deadline_as_a_holder() -> None:
    """A logout ending a device whose earlier tombstone is listed after it in the hash
    names only its holder now; an older version's deadline in ``d:`` names no holder."""
    with redis_server() as port:
        async with coredis.Redis(host="127.0.0.1", port=port) as client:
            key = "gp:presence:{ann}"
            await client.hset(key, {"status": "online", "d:a": "1/x 1000", "lo:a": "2/y 500"})
            await client.hset(key, {"d:b": "1700000000.5"})
            now = str(int(T0 * 1000))
            reply = await client.eval(
                END, keys=[key], args=["*", "logout_all", "3/me", "", now, now]
            )
            assert isinstance(reply, list)
            entries = [string(entry) for entry in reply[4:]]
            assert sorted(tuple(entries[i : i + 4]) for i in range(0, len(entries), 4)) == [
                ("a", "1/x", now, "1"),
                ("b", "", now, "1"),
            ]
            assert string(await client.hget(key, "lo:b")) == f"- {now}"
