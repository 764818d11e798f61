"""Several real ``geopresence serve`` processes on one Redis (standalone, and a 3-master
Redis Cluster with sharded pub/sub): every user sees the same thing whichever node each
client is connected to."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from geopresence.client import AdminClient, Client, connect
from tests.helpers import files_naming
from tests.redis_server import free_port, redis_cluster, redis_server

LISTENING = re.compile(r"^listening ws=(?P<ws>\S+):(?P<wp>\d+) http=(?P<http>\S+):(?P<hp>\d+)$")

OFFLINE_AFTER = 2.0
SWEEP = 0.2
LEASE = 1.0
"""A killed node's users go offline LEASE + OFFLINE_AFTER after its last lease renewal."""


class Node:
    """One ``geopresence serve`` process; its output goes to a file (never a full pipe)."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, ws_port: int, http_port: int):
        self.proc = proc
        self.log = log
        self.ws_url = f"ws://127.0.0.1:{ws_port}/ws"
        self.http_url = f"http://127.0.0.1:{http_port}"

    def admin(self) -> AdminClient:
        return AdminClient(self.http_url, timeout=10)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def start_node(
    redis_args: list[str],
    node_id: int,
    workdir: Path,
    *extra: str,
    insecure: bool = True,
    env: dict[str, str] | None = None,
) -> Node:
    log = workdir / f"node{node_id}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "geopresence", "serve", *redis_args,
                "--node-id", str(node_id), "--port", "0", "--http-port", "0",
                *(["--insecure"] if insecure else []),
                "--heartbeat-interval", "0.5", "--offline-after", str(OFFLINE_AFTER),
                "--data-dir", str(workdir / f"data{node_id}"), "--log-level", "info",
                "--redis-sweep-interval", str(SWEEP), "--redis-lease", str(LEASE), *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            match = LISTENING.match(line.strip())
            if match:
                return Node(proc, log, int(match["wp"]), int(match["hp"]))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"node {node_id} did not start:\n{log.read_text()}")


@contextmanager
def cluster_of(
    kind: str, count: int, workdir: Path, *extra: str
) -> Iterator[tuple[list[Node], list[str]]]:
    """``count`` nodes on a fresh standalone Redis or 3-master Redis Cluster, each given the
    flags ``extra``."""
    with ExitStack() as stack:
        if kind == "standalone":
            port = stack.enter_context(redis_server())
            args = ["--redis", f"redis://127.0.0.1:{port}/0"]
        else:
            ports = stack.enter_context(redis_cluster())
            args = ["--redis-cluster", ",".join(f"127.0.0.1:{p}" for p in ports)]
        nodes: list[Node] = []
        try:
            for node_id in range(1, count + 1):
                nodes.append(start_node(args, node_id, workdir, *extra))
            yield nodes, args
        finally:
            for node in nodes:
                if node.proc.poll() is None:
                    node.proc.terminate()
            for node in nodes:
                try:
                    node.proc.wait(15)
                except subprocess.TimeoutExpired:
                    node.proc.kill()


@pytest.fixture(params=["standalone", "cluster"])
def two_nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Node]]:
    with cluster_of(request.param, 2, tmp_path) as (nodes, _):
        yield nodes


@asynccontextmanager
async def session(node: Node, user: str, device: str = "phone") -> AsyncIterator[Client]:
    async with connect(node.ws_url, user=user, device=device, heartbeat=True) as client:
        yield client


async def expect(
    client: Client, kind: str, *, within: float = 10.0, **fields: Any
) -> dict[str, Any]:
    """The next frame of ``kind`` whose fields match (others of that kind fail the test)."""
    with trio.fail_after(within):
        frame = await client.recv_type(kind)
    for name, value in fields.items():
        assert frame.get(name) == value, (kind, frame)
    return frame


async def sees(client: Client, friend: str, status: str) -> None:
    """``client`` ends up seeing ``friend`` with ``status``: in its initial friends_presence
    or, if that was taken before the change reached its node, in the next presence event."""
    initial = {f["user"]: f["status"] for f in client.friends}
    if initial.get(friend) != status:
        await expect(client, "presence", user=friend, status=status)


async def nothing_of(client: Client, kind: str, seconds: float = 1.0) -> None:
    with trio.move_on_after(seconds):
        frame = await client.recv_type(kind)
        raise AssertionError(f"unexpected {frame}")


async def test_presence_and_friendships_cross_nodes(two_nodes: list[Node]) -> None:
    a, b = two_nodes
    async with a.admin() as admin_a, b.admin() as admin_b:
        await admin_a.befriend("alice", "bob")
        async with session(b, "bob") as bob:
            if not bob.friends:  # node b's replica had not read the friendship off the feed yet
                listed = await expect(bob, "friends_presence")
                assert [f["user"] for f in listed["friends"]] == ["alice"]
            else:
                assert [f["user"] for f in bob.friends] == ["alice"]
            async with session(a, "alice") as alice:
                await expect(bob, "presence", user="alice", status="online")
                await sees(alice, "bob", "online")  # bob is on node b
                # A friendship made through node b reaches alice's live connection on a.
                await admin_b.befriend("alice", "carol")
                listed = await expect(alice, "friends_presence")
                assert [f["user"] for f in listed["friends"]] == ["carol"]
                await alice.logout()
            await expect(bob, "presence", user="alice", status="offline")
            await nothing_of(bob, "presence")  # exactly one event per transition
            assert (await admin_b.user("alice"))["status"] == "offline"


async def test_devices_on_two_nodes_make_one_presence(two_nodes: list[Node]) -> None:
    a, b = two_nodes
    async with a.admin() as admin:
        await admin.befriend("alice", "bob")
    async with session(a, "bob") as bob:
        async with session(a, "alice", "phone") as phone:
            await expect(bob, "presence", user="alice", status="online")
            async with session(b, "alice", "laptop") as laptop:
                await laptop.logout()
            await phone.logout()
        await expect(bob, "presence", user="alice", status="offline")
        await nothing_of(bob, "presence")


async def test_nearby_friends_strangers_and_chat_cross_nodes(two_nodes: list[Node]) -> None:
    a, b = two_nodes
    async with a.admin() as admin:
        await admin.befriend("alice", "bob")
    async with session(a, "alice") as alice, session(b, "bob") as bob, session(b, "sam") as sam:
        await alice.send({"type": "location", "lat": 37.5665, "lon": 126.9780})
        await trio.sleep(0.3)  # the update reaches node b's replica
        # bob's first location: alice (on node a) is in his initial list.
        reply = await bob.request("nearby_friends", lat=37.5700, lon=126.9800)
        assert [f["user"] for f in reply["friends"]] == ["alice"]
        # alice moves: bob hears it through her channel.
        await alice.send({"type": "location", "lat": 37.5670, "lon": 126.9785})
        moved = await expect(bob, "friend_location", user="alice")
        assert moved["lat"] == 37.5670
        # A stranger on node b who opted in sees alice only once she is visible to strangers.
        await sam.request("settings", visible_to_strangers=True)
        await sam.send({"type": "location", "lat": 37.5668, "lon": 126.9782})
        await alice.request("watch_strangers", on=True)
        await trio.sleep(0.3)
        people = await alice.request("nearby_people")
        assert [p["user"] for p in people["people"]] == ["sam"]
        await sam.send({"type": "location", "lat": 37.5669, "lon": 126.9783})
        await expect(alice, "stranger_nearby", user="sam")
        # Chat: sent on node a, delivered on node b, synced from either.
        sent = await alice.send_message(to="bob", text="hi bob", client_msg_id="m1")
        got = await expect(bob, "message", text="hi bob")
        assert got["from"] == "alice" and got["message_id"] == sent["message_id"]
        synced = await bob.sync_all()
        assert [m["text"] for m in synced] == ["hi bob"]
        again = await alice.send_message(to="bob", text="hi bob", client_msg_id="m1")
        assert again["message_id"] == sent["message_id"] and again["duplicate"] is True


async def test_a_new_friendship_across_nodes_shows_locations_at_once(
    two_nodes: list[Node],
) -> None:
    """Alice (node a) and bob (node b) are near each other, not friends. Once they are, each
    gets the other's location at once, not at the other's next move."""
    a, b = two_nodes
    async with session(a, "alice") as alice, session(b, "bob") as bob:
        await alice.send({"type": "location", "lat": 37.5665, "lon": 126.9780})
        await bob.send({"type": "location", "lat": 37.5700, "lon": 126.9800})
        await trio.sleep(1.0)  # both locations are in Redis (written a moment after)
        async with b.admin() as admin:
            await admin.befriend("alice", "bob")
        seen_by_bob = await expect(bob, "friend_location", user="alice")
        assert seen_by_bob["lat"] == 37.5665
        seen_by_alice = await expect(alice, "friend_location", user="bob")
        assert seen_by_alice["lat"] == 37.5700


async def test_a_killed_node_s_users_go_offline_once(tmp_path: Path) -> None:
    """Her friends hear it, and her co-member of a small group (dave: the sweeping node, b
    or c, may never have held her groups; they are read from Redis then)."""
    with cluster_of("cluster", 3, tmp_path) as (nodes, _):
        a, b, c = nodes
        async with a.admin() as admin:
            await admin.befriend("alice", "bob")
            await admin.befriend("alice", "carol")
            await admin.set_group("club", ["alice", "dave"])
        async with (
            session(b, "bob") as bob,
            session(c, "carol") as carol,
            session(c, "dave") as dave,
        ):
            # alice on node a, without our heartbeats: the node is killed under her.
            async with connect(a.ws_url, user="alice", device="phone") as alice:
                for watcher in (bob, carol, dave):
                    await expect(watcher, "presence", user="alice", status="online")
                a.kill()
                with trio.move_on_after(1):
                    await alice.closed()
            # Once a's lease has lapsed and the grace window has passed (the bound is the
            # fake-clock test's, test_redis_presence): here, that it happens, once.
            gone = await expect(bob, "presence", within=15, user="alice", status="offline")
            assert gone["last_active_at"] is not None
            await expect(carol, "presence", user="alice", status="offline")
            await expect(dave, "presence", user="alice", status="offline", within=3)
            await nothing_of(bob, "presence", 1.5)
            await nothing_of(carol, "presence", 0.1)
            await nothing_of(dave, "presence", 0.1)


async def test_reconnecting_to_another_node_does_not_flap(two_nodes: list[Node]) -> None:
    a, b = two_nodes
    async with a.admin() as admin:
        await admin.befriend("alice", "bob")
    async with session(b, "bob") as bob:
        async with session(a, "alice"):
            await expect(bob, "presence", user="alice", status="online")
        # The connection dropped (no logout); alice is back within offline_after, elsewhere.
        async with session(b, "alice"):
            await nothing_of(bob, "presence", OFFLINE_AFTER + 1.0)


async def test_a_device_connecting_to_another_node_replaces_its_connection(
    two_nodes: list[Node],
) -> None:
    """The contract's 4002 whichever node each connection uses: the older connection of the
    same user+device closes, and friends see no presence change."""
    a, b = two_nodes
    async with a.admin() as admin:
        await admin.befriend("alice", "bob")
    async with session(b, "bob") as bob, session(a, "alice", "phone") as old:
        await expect(bob, "presence", user="alice", status="online")
        async with session(b, "alice", "phone"):
            with trio.fail_after(10):
                code, reason = await old.closed()
            assert code == 4002 and "replaced" in (reason or "")
            await nothing_of(bob, "presence", OFFLINE_AFTER + 1.0)  # no flap
            async with b.admin() as admin:
                assert (await admin.user("alice"))["status"] == "online"


def test_two_nodes_with_one_node_id_refuse(tmp_path: Path) -> None:
    with cluster_of("standalone", 1, tmp_path) as (_, args):
        result = subprocess.run(
            [sys.executable, "-m", "geopresence", "serve", *args, "--node-id", "1",
             "--port", "0", "--http-port", "0", "--insecure",
             "--data-dir", str(tmp_path / "other")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 1
        assert "node id 1 is in use" in result.stderr


async def test_a_drained_node_s_clients_move_without_flap(two_nodes: list[Node]) -> None:
    a, b = two_nodes
    async with a.admin() as admin:
        await admin.befriend("alice", "bob")
    async with session(b, "bob") as bob:
        async with session(a, "alice") as alice:
            await expect(bob, "presence", user="alice", status="online")
            async with a.admin() as admin:
                await admin.call("POST", "/v1/drain")
            with trio.fail_after(10):
                code, _ = await alice.closed()
            assert code == 1001
        async with session(b, "alice"):  # alice's client reconnects to node b
            await nothing_of(bob, "presence", OFFLINE_AFTER + 1.0)
        assert a.proc.wait(15) == 0


def persistent_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A standalone redis-server with an fsync-always AOF (it keeps its data over restarts)."""
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes", "--appendfsync", "always", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    with redis_client_ready(port):
        return proc


@contextmanager
def redis_client_ready(port: int) -> Iterator[None]:
    deadline = time.monotonic() + 10
    while (
        subprocess.run(
            ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True
        ).stdout.strip()
        != "PONG"
    ):
        assert time.monotonic() < deadline, "redis did not start"
        time.sleep(0.05)
    yield


async def test_nodes_carry_on_after_redis_restarts(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    port = free_port()
    workdir = tmp_path / "redis"
    workdir.mkdir()
    redis = persistent_redis(port, workdir)
    args = ["--redis", f"redis://127.0.0.1:{port}/0"]
    nodes = [start_node(args, 1, tmp_path), start_node(args, 2, tmp_path)]
    try:
        a, b = nodes
        async with a.admin() as admin:
            await admin.befriend("alice", "bob")
        async with session(b, "bob") as bob, session(a, "alice") as alice:
            await expect(bob, "presence", user="alice", status="online")
            redis.terminate()  # Redis goes away under both nodes, then comes back
            redis.wait(10)
            await trio.sleep(1.0)
            redis = persistent_redis(port, workdir)
            await trio.sleep(2.0)  # the nodes reconnect and subscribe again
            async with b.admin() as admin:
                with trio.fail_after(15):  # a write waits for Redis, then is acked
                    await admin.befriend("alice", "carol")
            listed = await expect(alice, "friends_presence")
            assert [f["user"] for f in listed["friends"]] == ["carol"]
            await alice.logout()
            await expect(bob, "presence", user="alice", status="offline")
        # A node started now loads everything, including what was written after the restart.
        c = start_node(args, 3, tmp_path)
        nodes.append(c)
        async with c.admin() as admin:
            friends = {f["user"] for f in await admin.friends("alice")}
        assert friends == {"bob", "carol"}
    finally:
        for node in nodes:
            node.proc.terminate()
        for node in nodes:
            node.proc.wait(15)
        redis.terminate()
        redis.wait(10)


def test_an_unreachable_redis_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "geopresence", "serve", "--redis", "redis://127.0.0.1:1/0",
         "--port", "0", "--http-port", "0", "--insecure", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("geopresence: cannot reach Redis:")
    assert "Traceback" not in result.stderr


async def test_a_node_cut_off_from_redis_catches_up_on_the_feed(tmp_path: Path) -> None:
    """Every client connection of both nodes is killed: the changes made meanwhile reach
    the other node's replica anyway (the feed is a stream read from the last entry)."""
    with cluster_of("standalone", 2, tmp_path) as (nodes, args):
        a, b = nodes
        port = args[1].rsplit(":", 1)[1].split("/")[0]
        async with a.admin() as admin_a, b.admin() as admin_b:
            await admin_a.befriend("alice", "bob")
            for kind in ("normal", "pubsub"):
                subprocess.run(["redis-cli", "-p", port, "client", "kill", "type", kind],
                               capture_output=True, check=True)  # fmt: skip
            await admin_b.befriend("alice", "zed")
            with trio.fail_after(10):
                while {f["user"] for f in await admin_a.friends("alice")} != {"bob", "zed"}:
                    await trio.sleep(0.1)


def _refused(
    redis_args: list[str], node_id: int, workdir: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geopresence", "serve", *redis_args, "--node-id", str(node_id),
         "--port", "0", "--http-port", "0", "--data-dir", str(workdir / f"data{node_id}")],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )  # fmt: skip


def _keys_of(workdir: Path) -> dict[str, str]:
    """The second node of the docs/cluster.md quick start: the first one's secret and admin
    key, from the environment."""
    return {
        "GEOPRESENCE_SECRET": (workdir / "data1" / "secret").read_text().strip(),
        "GEOPRESENCE_ADMIN_KEY": (workdir / "data1" / "admin_key").read_text().strip(),
    }


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
async def test_nodes_with_another_secret_or_admin_key_refuse_to_start(
    kind: str, tmp_path: Path
) -> None:
    """The docs/cluster.md quick start run literally (each node its own data dir, so its
    own generated secret and admin key): the second node refuses in one line, exit 1. With
    the first node's secret and admin key in its environment, it starts and takes the first
    node's tokens and admin key. Redis holds fingerprints, never the keys."""
    with ExitStack() as stack:
        if kind == "standalone":
            port = stack.enter_context(redis_server())
            args, ports = ["--redis", f"redis://127.0.0.1:{port}/0"], [port]
        else:
            ports = stack.enter_context(redis_cluster())
            args = ["--redis-cluster", ",".join(f"127.0.0.1:{p}" for p in ports)]
        first = start_node(args, 1, tmp_path, insecure=False)
        stack.callback(first.proc.kill)
        keys = _keys_of(tmp_path)

        refused = _refused(args, 2, tmp_path, {})
        assert refused.returncode == 1, refused.stderr
        [line] = refused.stderr.strip().splitlines()
        assert line.startswith("geopresence: this node's admin key (--admin-key,"), line
        assert "differs from the other nodes' sharing this Redis (key prefix gp)" in line
        secret_only = {"GEOPRESENCE_SECRET": keys["GEOPRESENCE_SECRET"]}
        refused = _refused(args, 2, tmp_path, secret_only)
        assert refused.returncode == 1
        assert refused.stderr.startswith("geopresence: this node's admin key"), refused.stderr
        key_only = {"GEOPRESENCE_ADMIN_KEY": keys["GEOPRESENCE_ADMIN_KEY"]}
        refused = _refused(args, 2, tmp_path, key_only)
        assert refused.returncode == 1
        assert refused.stderr.startswith("geopresence: this node's token secret"), refused.stderr

        second = start_node(args, 2, tmp_path, insecure=False, env=keys)
        stack.callback(second.proc.kill)
        token = subprocess.run(
            [sys.executable, "-m", "geopresence", "token", "alice",
             "--data-dir", str(tmp_path / "data1")],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.strip()  # fmt: skip
        async with connect(second.ws_url, token=token) as alice:
            assert alice.welcome["user"] == "alice"
        async with AdminClient(second.http_url, keys["GEOPRESENCE_ADMIN_KEY"]) as admin:
            await admin.befriend("alice", "bob")

        dump = b""
        for port in ports:
            dump += subprocess.run(
                ["redis-cli", "-p", str(port), "--no-raw", "eval",
                 "local out = {} for _, k in ipairs(redis.call('keys', '*')) do "
                 "if redis.call('type', k).ok == 'string' then "
                 "table.insert(out, k) table.insert(out, redis.call('get', k)) end end "
                 "return out", "0"],
                capture_output=True, timeout=30, check=True,
            ).stdout  # fmt: skip
        assert b"fingerprint" in dump
        for value in keys.values():
            assert value.encode() not in dump


async def test_an_insecure_node_takes_no_part_in_the_key_check(tmp_path: Path) -> None:
    """--insecure nodes (development) neither store nor compare fingerprints."""
    with cluster_of("standalone", 1, tmp_path) as (_, args):
        second = start_node(args, 2, tmp_path, insecure=False)  # its own generated keys
        try:
            assert second.proc.poll() is None
        finally:
            second.proc.terminate()
            second.proc.wait(15)


def names_alice(data_dir: Path) -> list[str]:
    return files_naming(data_dir, "alice")


async def until(check: Any, within: float = 10.0) -> None:
    with trio.fail_after(within):
        while not check():
            await trio.sleep(0.05)


def redis_of(args: list[str]) -> Any:
    import coredis

    if args[0] == "--redis":
        return coredis.Redis.from_url(args[1])
    host, _, port = args[1].split(",")[0].rpartition(":")
    return coredis.RedisCluster(host=host, port=int(port))


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
async def test_a_forget_reaches_every_node_redis_and_each_node_s_history(
    kind: str, tmp_path: Path
) -> None:
    """Made through node 1, applied by node 2 from the feed (alice's connection there closed
    with 4001, bob told); Redis keeps nothing of alice but her name in gp:forgotten, which a
    node that was down reads to scrub its own history when it joins."""
    down = tmp_path / "data3" / "history"
    down.mkdir(parents=True)
    (down / "locations-000001.jsonl").write_bytes(
        b'{"user":"alice","lat":1.0,"lon":2.0,"ts":1.0}\n{"user":"bob","lat":1.0,"lon":2.0,"ts":2.0}\n'
    )
    with cluster_of(kind, 2, tmp_path) as (nodes, args):
        a, b = nodes
        async with a.admin() as admin:
            for x, y in (("alice", "bob"), ("alice", "carol"), ("bob", "carol")):
                await admin.befriend(x, y)
            await admin.set_group("hikers", ["alice", "bob"])
        async with session(b, "alice") as alice, session(a, "bob") as bob:
            await alice.request("settings", visible_to_strangers=True)
            await alice.send({"type": "location", "lat": 37.5665, "lon": 126.978})
            await alice.send_message("for bob", to="bob")
            await alice.send_message("for the hikers", group="hikers")
            await expect(bob, "message", text="for bob")
            await expect(bob, "message", text="for the hikers")
            await until(lambda: names_alice(tmp_path / "data2"))  # her history, on node 2
            async with redis_of(args) as client:
                with trio.fail_after(10):  # she is in a strangers' cell (written after the ack)
                    while not await stranger_cells_with(client, "alice"):
                        await trio.sleep(0.05)
            async with a.admin() as admin:
                result = await admin.forget("alice")
            assert (result["friends"], result["groups"], result["messages"]) == (2, 1, 2)
            assert (await alice.closed())[0] == 4001
            await expect(bob, "friend_removed", user="alice")
        await until(lambda: not names_alice(tmp_path / "data1") + names_alice(tmp_path / "data2"))
        for node in (a, b):
            async with node.admin() as admin:
                assert await admin.friends("alice") == []
                assert [f["user"] for f in await admin.friends("bob")] == ["carol"]
                assert (await admin.user("alice"))["last_active_at"] is None
        client = redis_of(args)
        async with client:
            keys = [k async for k in client.scan_iter(match="*alice*")]
            assert keys == []
            assert not await client.sismember("gp:users", "alice")
            chats = sorted(str(c, "utf-8") for c in await client.smembers("gp:chats"))
            assert chats == ["g:hikers"]
            assert await client.zrange("gp:chat:{g:hikers}", 0, -1) == ()
            assert await client.zscore("gp:forgotten", "alice") is not None
            assert await stranger_cells_with(client, "alice") == []
        late = start_node(args, 3, tmp_path)  # was down: scrubs alice from its history
        try:
            await until(lambda: not names_alice(tmp_path / "data3"))
            assert (down / "scrubbed-through").exists()
            assert b'"bob"' in (down / "locations-000001.jsonl").read_bytes()
        finally:
            late.proc.terminate()
            late.proc.wait(15)


async def stranger_cells_with(client: Any, user: str) -> list[str]:
    """The strangers' cells (``gp:strangers-ts:{H}``) that list ``user``."""
    keys = [str(k, "utf-8") async for k in client.scan_iter(match="gp:strangers-ts:*")]
    return [key for key in keys if await client.hexists(key, user)]


def _gauge(metrics: str, name: str) -> float:
    match = re.search(rf"^geopresence_{name} (\S+)$", metrics, re.MULTILINE)
    assert match is not None, metrics
    return float(match[1])


async def test_a_node_holds_only_the_locations_its_sessions_need(tmp_path: Path) -> None:
    """Locations do not travel to every node: a node reads those a session needs as it
    opens (its user's and its online friends') and hears the rest on their channels while
    one of its sessions needs them; the feed carries none (nobody is visible to strangers)."""
    import coredis

    with cluster_of("standalone", 2, tmp_path) as (nodes, args):
        a, b = nodes
        redis = coredis.Redis.from_url(args[1])
        async with redis, a.admin() as admin_a, b.admin() as admin_b:
            await admin_a.befriend("alice", "bob")
            async with session(a, "alice") as alice, session(a, "dave") as dave:
                await alice.send({"type": "location", "lat": 37.5665, "lon": 126.9780})
                await dave.send({"type": "location", "lat": 37.5665, "lon": 126.9780})
                await trio.sleep(0.3)
                assert _gauge(await admin_a.metrics(), "locations") == 2
                assert _gauge(await admin_b.metrics(), "locations") == 0  # nobody needs them
                # bob's first request on node b finds alice: read from Redis as he connected.
                async with session(b, "bob") as bob:
                    reply = await bob.request("nearby_friends", lat=37.5700, lon=126.9800)
                    assert [f["user"] for f in reply["friends"]] == ["alice"]
                    assert _gauge(await admin_b.metrics(), "locations") == 2  # alice, bob
                    await alice.send({"type": "location", "lat": 37.5670, "lon": 126.9785})
                    await expect(bob, "friend_location", user="alice")
                # bob gone: node b no longer hears alice, and forgets where she was.
                await trio.sleep(0.3)
                assert _gauge(await admin_b.metrics(), "locations") == 0
                # Redis holds each location under its own key, expiring with the TTL.
                assert await redis.pttl("gp:loc:{alice}") > 0
            # Neither the friendship, nor the moves above, nor the sessions' presence
            # transitions were on the feed: they travel on the users' channels.
            ops = [entry.field_values[b"op"] for entry in await redis.xrange("gp:feed")]
            assert all(op == b'{"t":"mark"}' for op in ops), ops


async def test_a_resend_through_another_node_at_once_is_stored_once(
    two_nodes: list[Node],
) -> None:
    """The same client_msg_id sent through both nodes at the same moment (a client that
    reconnected elsewhere and resent before the first ack): each node's replica does not
    know the other's yet, and Redis decides: one message, both acks name it."""
    a, b = two_nodes
    async with a.admin() as admin:
        await admin.befriend("alice", "bob")
    async with (
        session(a, "alice") as first,
        session(b, "alice", "laptop") as second,
        session(b, "bob") as bob,
    ):
        for round_ in range(5):
            acks: list[dict[str, Any]] = []

            async def send(
                client: Client, acks: list[dict[str, Any]] = acks, i: int = round_
            ) -> None:
                acks.append(
                    await client.send_message(to="bob", text=f"hi {i}", client_msg_id=f"m{i}")
                )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, first)
                nursery.start_soon(send, second)
            assert [ack["type"] for ack in acks] == ["sent", "sent"], acks
            assert acks[0]["message_id"] == acks[1]["message_id"], acks
        await trio.sleep(0.3)  # every feed entry applied on both nodes
        for node in (a, b):
            async with session(node, "bob", "tablet") as reader:
                texts = [m["text"] for m in await reader.sync_all()]
                assert texts == [f"hi {i}" for i in range(5)], texts
        # bob, online all along, was told of each message once.
        received = [(await expect(bob, "message"))["text"] for _ in range(5)]
        assert sorted(received) == [f"hi {i}" for i in range(5)]
        await nothing_of(bob, "message", 0.3)


async def test_a_reused_client_msg_id_through_another_node_is_refused(
    two_nodes: list[Node],
) -> None:
    """The same client_msg_id with another text through both nodes at the same moment:
    as on one node, one message is stored and acked, the other send gets bad_request."""
    a, b = two_nodes
    async with a.admin() as admin:
        await admin.befriend("alice", "bob")
    async with session(a, "alice") as first, session(b, "alice", "laptop") as second:
        for round_ in range(3):
            replies: dict[str, dict[str, Any]] = {}

            async def send(
                client: Client, text: str, replies: dict[str, Any] = replies, i: int = round_
            ) -> None:
                cmid = f"r{i}"
                replies[text] = await client.send_message(to="bob", text=text, client_msg_id=cmid)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, first, f"one {round_}")
                nursery.start_soon(send, second, f"two {round_}")
            kinds = sorted(reply["type"] for reply in replies.values())
            assert kinds == ["error", "sent"], replies
            refused = next(r for r in replies.values() if r["type"] == "error")
            assert refused["code"] == "bad_request" and "already used" in refused["message"]


@asynccontextmanager
async def a_slow_commit_race(
    tmp_path: Path, delay: float
) -> AsyncIterator[tuple[Node, Client, dict[str, dict[str, Any]]]]:
    """Nodes a, whose every Redis write takes ``delay`` s, and b on one Redis. alice (on a)
    sends bob "first", which gets its id at once and is committed ``delay`` s later; 0.2 s
    after, carol (on b) sends bob "second", a later id committed at once. Yields node b, bob's
    session there and the acks by text (filled in as they come: both once the block ends)."""
    with redis_server() as port:
        args = ["--redis", f"redis://127.0.0.1:{port}/0"]
        slow = {"GEOPRESENCE_TEST_REDIS_WRITE_DELAY": str(delay)}
        # Stopped, it gives up its last slow writes after a second (the test is over).
        a = start_node(args, 1, tmp_path, "--drain-timeout", "1", env=slow)
        b = start_node(args, 2, tmp_path)
        try:
            async with b.admin() as admin:
                await admin.befriend("alice", "bob")
                await admin.befriend("carol", "bob")
            await trio.sleep(1.5)  # node a's sessions will read the friendships
            async with (
                session(a, "alice") as alice,
                session(b, "carol") as carol,
                session(b, "bob") as bob,
                trio.open_nursery() as nursery,
            ):
                acks: dict[str, dict[str, Any]] = {}

                async def send(client: Client, text: str) -> None:
                    acks[text] = await client.send_message(to="bob", text=text)

                nursery.start_soon(send, alice, "first")
                await trio.sleep(0.2)
                nursery.start_soon(send, carol, "second")
                yield b, bob, acks
            assert int(acks["first"]["message_id"]) < int(acks["second"]["message_id"])
        finally:
            for node in (a, b):
                node.proc.terminate()
                node.proc.wait(15)


async def test_sync_never_skips_a_message_another_node_commits_slowly(tmp_path: Path) -> None:
    """Node a takes a second to write anything to Redis: alice's message there gets its id
    first and is committed last. bob (on node b) must not see carol's later message before
    it, live or through sync: a device that did would sync after carol's id and skip
    alice's."""
    async with a_slow_commit_race(tmp_path, 1.0) as (b, bob, _):
        await trio.sleep(0.4)
        # carol's message is in Redis, alice's is not yet: bob gets both live, in order,
        # never carol's before alice's. A device connecting now gets both from its sync
        # (which waits until no message published before the device connected can be
        # missing) or live, in order; a message that came live while the sync waited may
        # come in the page too (clients de-duplicate by message_id, docs/protocol.md).
        async with session(b, "bob", "tablet") as early:
            synced = [m["text"] for m in await early.sync_all()]
            assert synced == ["first", "second"][: len(synced)]
            live = [(await expect(bob, "message", within=5))["text"] for _ in range(2)]
            assert live == ["first", "second"]
            await nothing_of(bob, "message", 0.3)
            got = list(synced)
            while True:
                try:
                    within = 5 if len(got) < 2 else 0.5
                    text = (await expect(early, "message", within=within))["text"]
                except trio.TooSlowError:
                    break
                if text not in got:  # else a duplicate of what the page held
                    got.append(text)
                    assert got == ["first", "second"][: len(got)]
            assert got == ["first", "second"]
        async with session(b, "bob", "tablet") as late:
            texts = [m["text"] for m in await late.sync_all()]
            assert texts == ["first", "second"]


async def test_a_node_that_stops_cleanly_tells_the_others_not_to_wait_for_it(
    tmp_path: Path,
) -> None:
    """Its last feed entry carries the LEFT watermark: the others' chat horizon drops it
    at once instead of after its silence (tests/core/test_chat_horizon.py)."""
    import coredis

    with cluster_of("standalone", 2, tmp_path) as (nodes, args):
        nodes[1].proc.terminate()
        assert nodes[1].proc.wait(15) == 0
        async with coredis.Redis.from_url(args[1]) as redis:
            entries = await redis.xrevrange("gp:feed", count=50)
        last = next(e.field_values for e in entries if e.field_values[b"n"] == b"2")
        assert last[b"w"] == b"-1", last
