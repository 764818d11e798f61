"""The security rules, one test each (docs/security.md lists them). Each test fails if its
rule is broken: limits, rate limits, slow consumers, authorization, secrets, drain."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import orjson
import pytest
import trio
from trio.testing import MockClock

from geopresence.client import SessionRefused, connect_stream
from geopresence.shell.http_api import HttpApi
from geopresence.testing import open_server
from tests.helpers import close_code, raw_ws

ADMIN_KEY = "admin-key-for-security-tests-0123456789"
SECRET = "secret-for-security-tests-0123456789abcdef"


def secure(**overrides: Any) -> Any:
    return open_server(insecure=False, admin_key=ADMIN_KEY, secret=SECRET, **overrides)


# ---------------------------------------------------------------------------- limits


async def test_rule_messages_per_second_are_limited_per_connection(
    autojump_clock: MockClock,
) -> None:
    async with open_server(rate_limit=10, rate_burst=5, abuse_limit=1000) as server:
        async with server.connect("mallory") as mallory, server.connect("bob") as bob:
            for i in range(8):
                await mallory.send({"type": "heartbeat", "id": i})
            replies = [await mallory.recv() for _ in range(8)]
            assert [r["type"] for r in replies[:5]] == ["heartbeat"] * 5  # the burst
            limited = replies[5:]
            assert all(r["type"] == "error" and r["code"] == "rate_limited" for r in limited)
            assert [r["re"] for r in limited] == [5, 6, 7]
            assert "retry in" in limited[0]["message"]
            await trio.sleep(1)  # refilled: 10 per second
            assert (await mallory.request("heartbeat"))["type"] == "heartbeat"
            assert (await bob.request("heartbeat"))["type"] == "heartbeat"  # others unaffected
        metrics = await server.admin.metrics()
        assert "geopresence_rate_limited_total 3" in metrics
        assert 'geopresence_errors_total{code="rate_limited"} 3' in metrics


async def test_rule_sustained_rate_abuse_closes_4008(autojump_clock: MockClock) -> None:
    async with open_server(rate_limit=10, rate_burst=5, abuse_limit=20) as server:
        async with server.connect("mallory") as mallory:
            for i in range(40):
                await mallory.send({"type": "heartbeat", "id": i})
            assert (await mallory.closed())[0] == 4008


async def test_rule_devices_per_user_are_limited(autojump_clock: MockClock) -> None:
    async with open_server(max_devices_per_user=2) as server:
        async with server.connect("alice", "phone"), server.connect("alice", "laptop"):
            with pytest.raises(SessionRefused) as info:
                async with server.connect("alice", "tablet"):
                    pass  # pragma: no cover
            assert info.value.close_code == 1008
            assert info.value.error is not None and info.value.error["code"] == "forbidden"
            assert "max_devices_per_user" in info.value.error["message"]
            async with server.connect("alice", "phone") as again:  # a known device: replaces
                assert again.device == "phone"


async def test_rule_frames_larger_than_the_limit_close_1009(autojump_clock: MockClock) -> None:
    async with open_server(max_message_bytes=1000) as server, server.connect("alice") as alice:
        await alice.send_raw('{"type":"heartbeat","pad":"' + "x" * 2000 + '"}')
        assert (await alice.closed())[0] == 1009


async def test_rule_a_silent_connection_is_closed_after_the_hello_timeout(
    autojump_clock: MockClock,
) -> None:
    async with open_server(hello_timeout=10) as server, raw_ws(server) as ws:
        start = trio.current_time()
        assert await close_code(ws) == 1008
        assert trio.current_time() - start == pytest.approx(10, abs=0.1)


async def test_rule_memory_stays_bounded_for_a_client_that_never_reads(
    autojump_clock: MockClock,
) -> None:
    """A busy friend moves every second for an hour of virtual time while a watcher reads
    nothing: its queue holds one position per friend (latest-wins) and stays tiny."""
    async with open_server(location_ttl=7200, offline_after=30) as server:
        await server.admin.befriend("watcher", "busy")
        stream = server.open_memory_connection(lockstep=True)
        async with connect_stream(stream, user="watcher", device="d", heartbeat=True):
            async with server.connect("busy", heartbeat=True) as busy:
                await busy.send({"type": "location", "lat": 37.5, "lon": 127.0})
                for second in range(3600):
                    lon = 127.0 + (second % 100) * 1e-5
                    await busy.send({"type": "location", "lat": 37.5, "lon": lon})
                    await trio.sleep(1)
                    if second % 600 == 0:
                        [conn] = server.running.hub.connections_of("watcher")
                        assert len(server.running.server.connections.by_id[conn].outbox) <= 4
        metrics = await server.admin.metrics()
        assert 'geopresence_closes_total{code="4008"}' not in metrics


# ---------------------------------------------------------------------------- authorization


async def test_rule_a_connection_acts_only_as_its_authenticated_user(
    autojump_clock: MockClock,
) -> None:
    async with secure() as server:
        await server.admin.befriend("alice", "bob")
        async with server.connect("alice") as alice, server.connect("bob") as bob:
            # "from" and "user" fields in client messages are ignored
            sent = await alice.request("send", to="bob", text="hi", **{"from": "carol"})
            assert sent["type"] == "sent"
            message = await bob.recv_type("message")
            assert message["from"] == "alice"
            reply = await alice.request("settings", share_location=False, user="bob")
            assert reply["share_location"] is False
            assert (await bob.request("settings"))["share_location"] is True
        # a hello naming another user authenticates as the token's subject
        async with raw_ws(server) as ws:
            hello = {"type": "hello", "token": server.token("alice"), "user": "bob", "device": "d"}
            await ws.send_message(orjson.dumps(hello).decode())
            assert orjson.loads(await ws.get_message())["user"] == "alice"


async def test_rule_locations_reach_only_friends_within_radius(
    autojump_clock: MockClock,
) -> None:
    async with open_server() as server:
        await server.admin.befriend("alice", "near")
        await server.admin.befriend("alice", "far")
        async with (
            server.connect("alice") as alice,
            server.connect("near") as near,
            server.connect("far") as far,
            server.connect("stranger") as stranger,
        ):
            await near.send({"type": "location", "lat": 37.50, "lon": 127.0})
            await far.send({"type": "location", "lat": 38.50, "lon": 127.0})  # ~111 km
            await stranger.send({"type": "location", "lat": 37.50, "lon": 127.0})
            await stranger.request("watch_strangers", on=True)
            await alice.send({"type": "location", "lat": 37.501, "lon": 127.0})
            assert (await near.recv_type("friend_location"))["user"] == "alice"
            for client in (far, stranger):
                with trio.move_on_after(1):
                    frame = await client.recv_type("friend_location", "stranger_nearby")
                    pytest.fail(f"{client.user} was told about alice: {frame}")
            page = await stranger.request("nearby_people")
            assert page["people"] == []  # alice did not opt in to strangers


async def test_rule_strangers_get_only_a_rounded_distance_with_opt_in(
    autojump_clock: MockClock,
) -> None:
    async with open_server() as server, server.connect("zoe") as zoe:
        async with server.connect("watcher") as watcher:
            await watcher.send({"type": "location", "lat": 37.5, "lon": 127.0})
            await watcher.request("watch_strangers", on=True)
            await zoe.request("settings", visible_to_strangers=True)
            await zoe.send({"type": "location", "lat": 37.5123, "lon": 127.0})
            seen = await watcher.recv_type("stranger_nearby")
            assert set(seen) == {"type", "user", "distance_m", "ts"}  # no coordinates
            assert seen["distance_m"] % 100 == 0


async def test_rule_chat_only_between_friends_and_group_members(
    autojump_clock: MockClock,
) -> None:
    async with open_server() as server:
        await server.admin.set_group("g", ["alice", "bob"])
        async with server.connect("mallory") as mallory:
            assert (await mallory.send_message("hi", to="alice"))["code"] == "forbidden"
            assert (await mallory.send_message("hi", group="g"))["code"] == "forbidden"
            assert (await mallory.sync())["messages"] == []


async def test_rule_admin_endpoints_need_the_admin_key(autojump_clock: MockClock) -> None:
    async with secure() as server:
        transport = httpx.ASGITransport(app=HttpApi(server.running.server))
        async with httpx.AsyncClient(base_url="http://t", transport=transport) as http:
            calls = [
                ("GET", "/metrics"), ("PUT", "/v1/friendships/a/b"),
                ("DELETE", "/v1/friendships/a/b"), ("POST", "/v1/friendships"),
                ("GET", "/v1/users/a"), ("GET", "/v1/users/a/friends"),
                ("POST", "/v1/users/a/logout"), ("POST", "/v1/tokens"),
                ("PUT", "/v1/groups/g"), ("GET", "/v1/groups/g"), ("DELETE", "/v1/groups/g"),
                ("PUT", "/v1/groups/g/members/a"), ("DELETE", "/v1/groups/g/members/a"),
                ("POST", "/v1/snapshot"), ("POST", "/v1/drain"),
            ]  # fmt: skip
            for method, path in calls:
                for headers in ({}, {"authorization": "Bearer nope"}):
                    response = await http.request(method, path, headers=headers)
                    assert response.status_code == 401, (method, path)
            assert (await http.get("/healthz")).status_code == 200


async def test_rule_tokens_expire(autojump_clock: MockClock) -> None:
    async with secure() as server:
        token = server.token("alice", ttl=30)
        await trio.sleep(31)
        with pytest.raises(SessionRefused) as info:
            async with server.connect("alice", token=token):
                pass  # pragma: no cover
        assert info.value.close_code == 1008


async def test_rule_secrets_never_appear_in_logs_or_metrics(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with secure() as server:
        token = server.token("alice")
        async with server.connect("alice", token=token) as alice:
            await alice.request("heartbeat")
        with pytest.raises(SessionRefused):
            async with server.connect("alice", token=token + "x"):
                pass  # pragma: no cover
        transport = httpx.ASGITransport(app=HttpApi(server.running.server))
        async with httpx.AsyncClient(base_url="http://t", transport=transport) as http:
            await http.get("/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}x"})
        metrics = await server.admin.metrics()
    for secret in (ADMIN_KEY, SECRET, token):
        assert secret not in caplog.text
        assert secret not in metrics


# ---------------------------------------------------------------------------- drain


async def test_rule_drain_moves_clients_away_with_1001_and_stops(
    autojump_clock: MockClock,
) -> None:
    async with open_server() as server:
        async with server.connect("alice") as alice:
            response = await server.admin.call("POST", "/v1/drain")
            assert response == {"draining": True, "connections": 1}
            assert await alice.closed() == (1001, "server shutting down")
        with trio.fail_after(30):
            while not server.running.server.stopping:
                await trio.sleep(0.1)


async def test_rule_connections_per_user_are_limited(autojump_clock: MockClock) -> None:
    async with open_server(max_connections_per_user=2) as server:
        async with server.connect("alice", "phone"), server.connect("alice", "laptop"):
            with pytest.raises(SessionRefused) as info:
                async with server.connect("alice", "tablet"):
                    pass  # pragma: no cover
            assert info.value.error is not None
            assert "max_connections_per_user" in info.value.error["message"]


def test_rule_logs_can_be_one_json_object_per_line() -> None:
    from geopresence.shell.logs import JsonFormatter

    record = logging.LogRecord(
        "geopresence", logging.WARNING, __file__, 1, "conn %d: %s", (7, "x"), None
    )
    record.conn = 7
    line = JsonFormatter().format(record)
    entry = orjson.loads(line)
    assert entry["level"] == "warning" and entry["logger"] == "geopresence"
    assert entry["message"] == "conn 7: x" and entry["conn"] == 7
    assert entry["ts"].endswith("Z") and "\n" not in line
