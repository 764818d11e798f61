"""The HTTP API (in-memory ASGI): auth, every endpoint, and clear errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import orjson
import pytest
import trio
from trio.testing import MockClock

from geopresence.client import AdminClient, ApiError
from geopresence.core.broker import ConnId
from geopresence.core.hub import Hub, HubSettings
from geopresence.core.journal import MemoryJournal
from geopresence.core.store import MemoryStore
from geopresence.model.records import GroupSet, Record
from geopresence.shell.auth import DEFAULT_TOKEN_TTL
from geopresence.shell.http_api import HttpApi
from geopresence.testing import TestServer, open_server
from geopresence.wire.outgoing import Outgoing

ADMIN_KEY = "admin-key-for-tests-0123456789"
SECRET = "test-secret-test-secret-test-secret-0123"


@pytest.fixture
async def secure() -> AsyncIterator[TestServer]:
    async with open_server(insecure=False, admin_key=ADMIN_KEY, secret=SECRET) as server:
        yield server


def raw_client(server: TestServer) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=HttpApi(server.running.server))
    return httpx.AsyncClient(base_url="http://test", transport=transport)


async def test_admin_key_required(secure: TestServer, autojump_clock: MockClock) -> None:
    async with raw_client(secure) as http:
        health = await http.get("/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": ADMIN_KEY}):
            response = await http.put("/v1/friendships/a/b", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"] == "unauthorized"
        assert (await http.get("/metrics")).status_code == 401
        ok = await http.put("/v1/friendships/a/b", headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert ok.json() == {"friends": ["a", "b"], "created": True}


async def test_friendships_and_users(server: TestServer, autojump_clock: MockClock) -> None:
    admin = server.admin
    assert (await admin.befriend("alice", "bob"))["created"] is True
    assert (await admin.befriend("bob", "alice"))["created"] is False
    assert await admin.befriend_many([("alice", "carol"), ("dave", "alice"), ("bob", "alice")]) == 2
    async with server.connect("carol"):
        friends = await admin.friends("alice")
        assert [f["user"] for f in friends] == ["bob", "carol", "dave"]
        assert friends[1] == {"user": "carol", "status": "online", "last_active_at": 0}
        assert await admin.user("carol") == {
            "user": "carol",
            "status": "online",
            "last_active_at": 0,
            "devices": 1,
        }
    assert (await admin.unfriend("alice", "bob"))["deleted"] is True
    assert (await admin.unfriend("alice", "bob"))["deleted"] is False
    assert await admin.user("nobody") == {
        "user": "nobody",
        "status": "offline",
        "last_active_at": None,
        "devices": 0,
    }


async def test_bulk_is_validated_before_anything_is_applied(
    server: TestServer, autojump_clock: MockClock
) -> None:
    admin = server.admin
    with pytest.raises(ApiError) as info:
        await admin.call("POST", "/v1/friendships", {"pairs": [["a", "b"], ["c", "c"]]})
    assert (info.value.status, info.value.code) == (400, "bad_request")
    assert "pairs[1]" in info.value.message
    assert await admin.friends("a") == []
    for body in ({"pairs": [["a"]]}, {"pairs": "x"}, {"pairs": [["a", "b c"]]}, [1]):
        with pytest.raises(ApiError) as info:
            await admin.call("POST", "/v1/friendships", body)
        assert info.value.status == 400
    with pytest.raises(ApiError) as info:
        await admin.call("POST", "/v1/friendships", {"pairs": [["a", "b"]] * 10_001})
    assert (info.value.status, info.value.code) == (413, "too_large")
    pairs = [(f"u{i}", f"v{i}") for i in range(10_000)]
    assert await admin.befriend_many(pairs) == 10_000


async def test_limits_and_bad_requests(autojump_clock: MockClock) -> None:
    async with open_server(max_friends=1) as server:
        admin = server.admin
        await admin.befriend("a", "b")
        with pytest.raises(ApiError) as info:
            await admin.befriend("a", "c")
        assert (info.value.status, info.value.code) == (409, "too_large")
        with pytest.raises(ApiError) as info:
            await admin.befriend("c", "c")
        assert info.value.status == 400
        with pytest.raises(ApiError) as info:
            await admin.call("PUT", "/v1/friendships/has%20space/b")
        assert info.value.status == 400
        # The message names the id (not the route's field, ``a``).
        assert info.value.message.startswith("user 'has space' must be 1..64 characters")
        with pytest.raises(ApiError) as info:
            await admin.call("GET", "/v1/groups/x%2Fy")
        assert info.value.message.startswith("group 'x/y' must be")
        with pytest.raises(ApiError) as info:
            await admin.call("GET", "/v1/nothing")
        assert (info.value.status, info.value.code) == (404, "not_found")
        with pytest.raises(ApiError) as info:
            await admin.call("PATCH", "/v1/friendships/a/b")
        assert info.value.status == 405
        assert "PUT" in info.value.message
        async with raw_client(server) as http:
            response = await http.post("/v1/tokens", content=b"{not json")
            assert response.status_code == 400
            assert "not valid JSON" in response.json()["message"]
        # A group replaced without "members" (a typo) is refused, never emptied.
        await admin.set_group("g", ["a", "b"])
        for body in ({}, {"member": ["a"]}):
            with pytest.raises(ApiError) as info:
                await admin.call("PUT", "/v1/groups/g", body)
            assert (info.value.status, info.value.code) == (400, "bad_request")
            assert "members is required" in info.value.message
        assert (await admin.group("g"))["members"] == ["a", "b"]
        assert (await admin.set_group("g", []))["removed"] == 2


async def test_tokens_endpoint(secure: TestServer, autojump_clock: MockClock) -> None:
    async with AdminClient(
        "http://test",
        ADMIN_KEY,
        transport=httpx.ASGITransport(app=HttpApi(secure.running.server)),
    ) as admin:
        token = await admin.token("alice", ttl=120)
        async with secure.connect("alice", token=token) as alice:
            assert alice.user == "alice"
        for body in ({"user": "a b"}, {"user": "a", "ttl": -1}, {"user": "a", "ttl": "x"}, {}):
            with pytest.raises(ApiError) as info:
                await admin.call("POST", "/v1/tokens", body)
            assert info.value.status == 400
        # Without a ttl, the client and the embedder's helper give the server's default (24 h).
        for token in (await admin.token("alice"), secure.token("alice")):
            claims = jwt.decode(token, options={"verify_signature": False})
            assert claims["exp"] - secure.now() == pytest.approx(DEFAULT_TOKEN_TTL, abs=1)


async def test_groups_endpoints(server: TestServer, autojump_clock: MockClock) -> None:
    admin = server.admin
    assert await admin.set_group("g1", ["a", "b", "a"]) == {
        "group": "g1",
        "total": 2,
        "added": 2,
        "removed": 0,
    }
    assert (await admin.add_member("g1", "c"))["added"] is True
    assert (await admin.remove_member("g1", "a"))["removed"] is True
    async with server.connect("b"):
        assert await admin.group("g1") == {
            "group": "g1",
            "members": ["b", "c"],
            "online": ["b"],
            "total": 2,
        }
    await admin.delete_group("g1")
    for call in (admin.group("g1"), admin.delete_group("g1"), admin.remove_member("g1", "b")):
        with pytest.raises(ApiError) as info:
            await call
        assert info.value.status == 404
    with pytest.raises(ApiError) as info:
        await admin.set_group("g2", ["ok", "not ok"])
    assert info.value.status == 400


async def test_metrics_text(secure: TestServer, autojump_clock: MockClock) -> None:
    async with secure.connect("alice") as alice:
        await alice.send_raw("nope")
        await alice.recv()
        async with raw_client(secure) as http:
            response = await http.get("/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"})
        text = response.text
        assert response.headers["content-type"].startswith("text/plain")
        assert "geopresence_connections 1" in text
        assert "geopresence_users_online 1" in text
        assert "# TYPE geopresence_messages_in_total counter" in text
        assert "geopresence_messages_in_total 2" in text  # hello + the bad frame
        assert "geopresence_messages_out_total" in text
        assert 'geopresence_errors_total{code="bad_request"} 1' in text
        assert ADMIN_KEY not in text and SECRET not in text


async def test_405_has_allow_and_errors_are_counted(
    server: TestServer, autojump_clock: MockClock
) -> None:
    async with raw_client(server) as http:
        response = await http.post("/v1/users/alice")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, DELETE"
    async with server.connect("alice") as alice:
        await alice.request("group_presence", group="nope")  # forbidden, sent by the hub
        await alice.send({"type": "hello", "device": "again", "user": "alice"})
        await alice.recv()
    metrics = await server.admin.metrics()
    assert 'geopresence_errors_total{code="forbidden"} 1' in metrics
    assert 'geopresence_errors_total{code="bad_request"} 2' in metrics  # hello + the 405


async def test_encoded_slashes_are_not_path_separators(
    server: TestServer, autojump_clock: MockClock
) -> None:
    async with raw_client(server) as http:
        for method, url in (
            ("PUT", "/v1/friendships/x%2Fy"),
            ("PUT", "/v1/friendships/a/x%2Fy"),
            ("POST", "/v1/users/bob%2Flogout"),
            ("PUT", "/v1/groups/g%2Fmembers%2Fbob"),
        ):
            response = await http.request(method, url, json={"members": []})
            assert response.status_code in (400, 404, 405), (method, url, response.text)
        assert await server.admin.friends("x") == []
        ok = await http.get("/v1/users/al%69ce")  # plain percent-encoding still works
        assert ok.json()["user"] == "alice"


async def test_head_healthz(server: TestServer, autojump_clock: MockClock) -> None:
    async with raw_client(server) as http:
        response = await http.head("/healthz")
        assert response.status_code == 200


async def test_without_the_key_no_route_can_be_mapped(
    secure: TestServer, autojump_clock: MockClock
) -> None:
    """404 and 405 would tell which admin routes exist: without the key, every path but
    /healthz answers 401."""
    key = {"authorization": f"Bearer {ADMIN_KEY}"}
    async with raw_client(secure) as http:
        for method, path in [
            ("GET", "/no/such/path"),
            ("DELETE", "/v1/tokens"),
            ("GET", "/v1/drain"),
            ("POST", "/healthz/x"),
        ]:
            response = await http.request(method, path)
            assert response.status_code == 401, (method, path)
            assert "allow" not in response.headers
        assert (await http.request("GET", "/no/such/path", headers=key)).status_code == 404
        assert (await http.request("GET", "/v1/drain", headers=key)).status_code == 405
        assert (await http.post("/healthz")).status_code == 405  # public: no key needed


async def test_a_large_group_is_applied_in_slices_that_let_others_run(
    server: TestServer, autojump_clock: MockClock
) -> None:
    """PUT /v1/groups/G with 100,000 members: clients are answered while it is applied,
    and the result (and its journal record) is the whole membership."""
    hub = server.running.server.hub
    members = [f"m{i}" for i in range(100_000)]
    answered_during_put = 0
    done = trio.Event()

    async def put() -> None:
        await server.admin.set_group("big", members)
        done.set()

    async with server.connect("alice") as alice, trio.open_nursery() as nursery:
        nursery.start_soon(put)
        with trio.fail_after(60):
            while not done.is_set():
                if 0 < len(hub.store.group_members("big") or ()) < len(members):
                    break  # part way
                await trio.sleep(0)
            assert not done.is_set(), "the membership never was part way: applied in one go"
            while not done.is_set():
                reply = await alice.request("heartbeat")
                assert reply["type"] != "error"
                answered_during_put += not done.is_set()
    assert answered_during_put >= 1
    assert hub.store.group_members("big") == set(members)
    assert (await server.admin.group("big"))["total"] == 100_000


def test_set_group_in_slices_journals_the_membership_as_it_ends() -> None:
    class Recording(MemoryJournal):
        def __init__(self) -> None:
            super().__init__()
            self.records: list[Record] = []

        def append(self, record: Record) -> int:
            self.records.append(record)
            return super().append(record)

    class NoClients:
        def send(self, conn: ConnId, message: Outgoing) -> None:
            raise AssertionError("no client is connected")

        def close(self, conn: ConnId, code: int, reason: str) -> None:
            raise AssertionError("no client is connected")

    journal = Recording()
    hub = Hub(HubSettings(), MemoryStore(), NoClients(), journal=journal)
    hub.membership.set_group("g", ["a", "b", "c"])
    steps = hub.membership.set_group_in_slices("g", ["c", "d", "e", "f"], slice_size=1)
    next(steps)
    hub.membership.add_member("g", "x")  # interleaves with the replacement
    with pytest.raises(StopIteration) as stop:
        while True:
            next(steps)
    assert stop.value.value == (3, 2)
    assert hub.store.group_members("g") == {"c", "d", "e", "f", "x"}
    last = journal.records[-1]
    assert isinstance(last, GroupSet) and last.members == ["c", "d", "e", "f", "x"]


async def upgrade(server: TestServer, path: bytes, header: bytes = b"") -> tuple[bytes, Any]:
    """A WebSocket upgrade request to the HTTP port over a real socket (hypercorn): the
    status line of the answer and its JSON body."""
    host, port = server.http_url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n" + header + b"\r\n"
        )
        received = b""
        with trio.fail_after(10):
            while b"}" not in received:
                chunk = await stream.receive_some()
                assert chunk, received
                received += chunk
    head, body = received.split(b"\r\n\r\n", 1)
    return head.split(b"\r\n", 1)[0], orjson.loads(body)


async def test_a_websocket_on_the_http_port_is_refused_with_a_json_403() -> None:
    """The 403 carries the API's error body naming the port."""
    async with open_server(insecure=True) as server:
        assert await upgrade(server, b"/ws") == (
            b"HTTP/1.1 403 ",
            {
                "error": "forbidden",
                "message": "WebSocket clients use the WebSocket port (--port), path /ws",
            },
        )


async def test_a_websocket_upgrade_to_the_api_without_the_key_gets_401() -> None:
    """Every /v1/... request without a valid admin key gets 401, whatever its method: an
    upgrade too (it would still be refused with 403 once authenticated)."""
    async with open_server(insecure=False, admin_key="k3y") as server:
        for path in (b"/v1/users/alice", b"/v1/nothing", b"/v1"):
            status, body = await upgrade(server, path)
            assert status == b"HTTP/1.1 401 ", path
            assert body["error"] == "unauthorized"
        wrong = await upgrade(server, b"/v1/users/alice", b"Authorization: Bearer nope\r\n")
        assert (wrong[0], wrong[1]["message"]) == (b"HTTP/1.1 401 ", "wrong admin key")
        right = await upgrade(server, b"/v1/users/alice", b"Authorization: Bearer k3y\r\n")
        assert (right[0], right[1]["error"]) == (b"HTTP/1.1 403 ", "forbidden")


async def test_admin_client_sends_dot_ids_as_ids(
    server: TestServer, autojump_clock: MockClock
) -> None:
    """ "." and ".." are valid ids: sent as path segments they were dot segments, which the
    HTTP client resolves (DELETE /v1/groups/g/members/.. became DELETE /v1/groups/g)."""
    admin = server.admin
    await admin.set_group("g", ["alice", "..", "."])
    assert (await admin.remove_member("g", "..")) == {"group": "g", "user": "..", "removed": True}
    assert (await admin.group("g"))["members"] == [".", "alice"]
    assert (await admin.befriend(".", ".."))["friends"] == [".", ".."]
    assert [f["user"] for f in await admin.friends(".")] == [".."]
    assert (await admin.user(".."))["user"] == ".."
    with pytest.raises(ApiError, match="user 'a/b'"):  # an invalid id, not another route
        await admin.befriend("a/b", "c")
