"""Heartbeats stay on the node: real ``geopresence serve`` nodes on a standalone Redis and
on a 3-master Redis Cluster. Redis hears a device only at its transitions on a node; a
killed node's users go offline once its lease has lapsed and their grace window passed,
unless they reconnected to another node meanwhile (no flap)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.cluster.test_multinode import (
    LEASE,
    OFFLINE_AFTER,
    SWEEP,
    cluster_of,
    expect,
    nothing_of,
    session,
)
from tests.cluster.test_multinode_friendships import with_a_mute_writer

KINDS = pytest.mark.parametrize("kind", ["standalone", "cluster"])


def redis_ports(redis_args: list[str]) -> list[int]:
    """The ports of the Redis servers the nodes were given (every master of a Cluster)."""
    if redis_args[0] == "--redis":
        return [int(redis_args[1].rsplit(":", 1)[1].split("/")[0])]
    return [int(address.rsplit(":", 1)[1]) for address in redis_args[1].split(",")]


@contextmanager
def monitoring(ports: list[int], workdir: Path) -> Iterator[Callable[[], list[str]]]:
    """``MONITOR`` on each Redis while the block runs; yields what reads every command seen
    so far (one line each; a Lua script's own commands too, marked ``[0 lua]``)."""
    files = [workdir / f"monitor-{port}-{time.monotonic_ns()}.log" for port in ports]
    with ExitStack() as stack:
        for port, path in zip(ports, files, strict=True):
            out = stack.enter_context(path.open("wb"))
            proc = subprocess.Popen(["redis-cli", "-p", str(port), "monitor"], stdout=out)
            stack.callback(proc.wait, 10)
            stack.callback(proc.terminate)
        deadline = time.monotonic() + 10
        while not all(path.read_bytes().startswith(b"OK") for path in files):
            assert time.monotonic() < deadline, "MONITOR did not start"
            time.sleep(0.02)

        def lines() -> list[str]:
            return [line for path in files for line in path.read_text().splitlines()[1:]]

        yield lines


def presence_commands(lines: list[str]) -> list[str]:
    """The commands on presence keys: a user's presence hash, a node's set of devices."""
    return [line for line in lines if '"gp:presence:' in line or '"gp:held:' in line]


@KINDS
async def test_heartbeats_reach_no_redis(kind: str, tmp_path: Path) -> None:
    """A session's opening is one report to Redis; its heartbeats, none. (The monitor sees
    the nodes' lease renewals meanwhile: it does see commands.)"""
    with cluster_of(kind, 2, tmp_path) as (nodes, redis_args):
        a, _ = nodes
        ports = redis_ports(redis_args)
        with monitoring(ports, tmp_path) as opening:
            async with session(a, "alice") as alice:
                await trio.sleep(0.5)  # the session's report reaches Redis
                assert presence_commands(opening()) != []
                with monitoring(ports, tmp_path) as beating:
                    for _ in range(8):
                        await alice.request("heartbeat")  # acked: the node handled it
                        await trio.sleep(0.1)
                assert presence_commands(beating()) == []
                assert any('"gp:nodes"' in line for line in beating())


@KINDS
async def test_a_client_of_a_killed_node_that_reconnects_elsewhere_never_flaps(
    kind: str, tmp_path: Path
) -> None:
    """Node a is killed under alice; her client reconnects to node b within its grace
    window: bob, on b, sees nothing, also once a's devices have been swept. Her logout
    later is one offline event."""
    with cluster_of(kind, 2, tmp_path) as (nodes, _):
        a, b = nodes
        async with a.admin() as admin:
            await admin.befriend("alice", "bob")
        async with session(b, "bob") as bob:
            async with session(a, "alice"):
                await expect(bob, "presence", user="alice", status="online")
                a.kill()
            async with session(b, "alice") as alice:
                # Past a's lease and the grace window: the sweep has run, and changed nothing.
                await nothing_of(bob, "presence", LEASE + OFFLINE_AFTER + 4 * SWEEP + 1.0)
                await alice.logout()
            await expect(bob, "presence", user="alice", status="offline")
            await nothing_of(bob, "presence")


@KINDS
async def test_a_logout_through_another_node_ends_the_device_at_once(
    kind: str, tmp_path: Path
) -> None:
    """``POST /v1/users/alice/logout`` through node b while alice is on node a: her
    connection closes with 4001, bob sees one offline event, the answer says offline."""
    with cluster_of(kind, 2, tmp_path) as (nodes, _):
        a, b = nodes
        async with a.admin() as admin:
            await admin.befriend("alice", "bob")
        async with session(b, "bob") as bob, session(a, "alice") as alice:
            await expect(bob, "presence", user="alice", status="online")
            async with b.admin() as admin:
                answer = await admin.logout("alice")
            assert answer["status"] == "offline"
            assert answer["devices_logged_out"] == 1  # held on a, counted through b
            with trio.fail_after(10):
                code, _ = await alice.closed()
            assert code == 4001
            await expect(bob, "presence", user="alice", status="offline")
            await nothing_of(bob, "presence", OFFLINE_AFTER + 1.0)


async def test_a_logout_whose_notice_was_lost_ends_the_device_after_a_gap(
    tmp_path: Path,
) -> None:
    """A logout through node w, which cannot publish: its notice to node a is lost, and
    alice's phone stays connected there until a's control channel has a gap (its pub/sub
    connection is killed): a then finds the tombstone the logout left and closes it (4001).
    Her tablet and bob, with none, stay; so do they after Redis lost its data and a gap."""
    with with_a_mute_writer(tmp_path) as (a, _, w, port):
        async with (
            session(a, "alice") as phone,
            session(a, "alice", "tablet") as tablet,
            session(a, "bob") as bob,
        ):
            async with w.admin() as admin:
                answer = await admin.logout("alice", "phone")
            assert answer["devices_logged_out"] == 1
            with trio.move_on_after(1.5):
                await phone.closed()
                raise AssertionError("closed without its notice")
            kill_subscribers(port)
            with trio.fail_after(10):
                code, _ = await phone.closed()
            assert code == 4001
            subprocess.run(["redis-cli", "-p", str(port), "FLUSHALL"], check=True)
            kill_subscribers(port)
            await trio.sleep(2.0)
            for client in (tablet, bob):
                assert "server_time" in await client.request("heartbeat")  # still connected


def kill_subscribers(port: int) -> None:
    """Cut every pub/sub connection to the Redis on ``port`` (their nodes reconnect)."""
    subprocess.run(["redis-cli", "-p", str(port), "CLIENT", "KILL", "TYPE", "pubsub"], check=True)


@KINDS
async def test_a_user_s_devices_are_counted_on_every_node(kind: str, tmp_path: Path) -> None:
    """``GET /v1/users/alice`` counts her devices on every node, whichever node answers,
    and a logout through either counts every device it ended."""
    with cluster_of(kind, 2, tmp_path) as (nodes, _):
        a, b = nodes
        async with session(a, "alice", "phone"), session(b, "alice", "laptop"):
            for node in (a, b):
                assert await devices_seen(node, "alice", 2) == 2
            async with a.admin() as admin:
                answer = await admin.logout("alice")
            assert answer["devices_logged_out"] == 2
            # b ends its device when the logout reaches it (its control channel): a moment later.
            assert await devices_seen(b, "alice", 0) == 0


async def devices_seen(node: Any, user: str, expected: int, within: float = 5.0) -> int:
    """``devices`` of ``GET /v1/users/{user}`` through ``node``, once it says ``expected``
    (or whatever it says last, after ``within`` seconds)."""
    async with node.admin() as admin:
        with trio.move_on_after(within):
            while (await admin.user(user))["devices"] != expected:
                await trio.sleep(0.05)
        return int((await admin.user(user))["devices"])


async def test_a_node_stalled_past_its_lease_keeps_its_users_online(tmp_path: Path) -> None:
    """Node a stops (SIGSTOP) for longer than its lease, less than its own deadline for
    alice (offline_after after her last heartbeat): node b counts it gone. Back, a finds
    its lease lost, becomes a new incarnation and reports its devices again before b's
    sweeper may end them: bob sees nothing."""
    with cluster_of("standalone", 2, tmp_path) as (nodes, _):
        a, b = nodes
        async with a.admin() as admin:
            await admin.befriend("alice", "bob")
        async with session(b, "bob") as bob, session(a, "alice"):
            await expect(bob, "presence", user="alice", status="online")
            a.proc.send_signal(signal.SIGSTOP)
            try:
                await trio.sleep(LEASE + 0.3)  # her heartbeats (every 0.5 s) wait meanwhile
            finally:
                a.proc.send_signal(signal.SIGCONT)
            await nothing_of(bob, "presence", LEASE + OFFLINE_AFTER + 4 * SWEEP + 1.0)
            async with b.admin() as admin:
                assert (await admin.user("alice"))["status"] == "online"
        assert "had lost its lease" in a.log.read_text()
