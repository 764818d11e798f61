"""Bad input over real sessions: errors keep the connection open, policy breaches close it,
and nothing one client does disturbs another."""

from __future__ import annotations

import orjson
import pytest
import trio
from trio.testing import MockClock

from geopresence.client import SessionRefused
from geopresence.shell.aio import collapse_exception_groups
from geopresence.testing import TestServer, open_server
from tests.helpers import close_code, raw_ws

SECRET = "test-secret-test-secret-test-secret-0123"


async def test_bad_frames_get_errors_and_the_session_survives(
    server: TestServer, autojump_clock: MockClock
) -> None:
    async with server.connect("alice") as alice:
        bad = [
            ("{", "invalid JSON"),
            ("[]", "JSON object"),
            ('{"type":"warp"}', "unknown message type"),
            ('{"type":"group_presence","id":3}', "group: required field missing"),
            ('{"type":"heartbeat","id":1e400}', None),
            ('{"type":"heartbeat","id":1180591620717411303424}', "within ±(2**53 - 1)"),
            ('{"type":"heartbeat","id":-1180591620717411303424}', "within ±(2**53 - 1)"),
            ('{"type":"heartbeat","id":[1]}', "id must be"),
        ]
        for frame, fragment in bad:
            await alice.send_raw(frame)
            reply = await alice.recv()
            assert reply["type"] == "error"
            assert reply["code"] == "bad_request"
            if fragment:
                assert fragment in reply["message"]
        await alice.send_raw(b"\x00binary")
        assert (await alice.recv())["message"].startswith("binary frames")
        reply = await alice.request("group_presence", group=5)
        assert reply["re"] is not None and reply["code"] == "bad_request"
        assert (await alice.request("heartbeat"))["type"] == "heartbeat"


async def test_first_message_must_be_hello(server: TestServer, autojump_clock: MockClock) -> None:
    async with raw_ws(server) as ws:
        await ws.send_message('{"type":"heartbeat","id":1}')
        error = orjson.loads(await ws.get_message())
        assert error == {
            "type": "error",
            "re": 1,
            "code": "bad_request",
            "message": "the first message must be a hello",
        }
        assert await close_code(ws) == 1008


async def test_no_hello_in_time_closes_1008(server: TestServer, autojump_clock: MockClock) -> None:
    async with raw_ws(server) as ws:
        start = trio.current_time()
        error = orjson.loads(await ws.get_message())
        assert error["code"] == "unauthorized"
        assert await close_code(ws) == 1008
        assert trio.current_time() - start == 10


async def test_wrong_path_is_rejected(server: TestServer, autojump_clock: MockClock) -> None:
    from trio_websocket import ConnectionRejected

    with pytest.raises(ConnectionRejected) as info, collapse_exception_groups():
        async with raw_ws(server, "/other"):
            pass
    assert info.value.status_code == 404


async def test_frame_too_big_closes_1009(autojump_clock: MockClock) -> None:
    async with open_server(max_message_bytes=1000) as server:
        async with server.connect("bob") as bob:
            await bob.send_raw('{"type":"heartbeat","pad":"' + "x" * 2000 + '"}')
            assert (await bob.closed())[0] == 1009
        async with server.connect("carol") as carol:
            # 600 characters but 1200 UTF-8 bytes: the limit is in bytes
            await carol.send_raw('{"type":"heartbeat","pad":"' + "é" * 600 + '"}')
            assert (await carol.closed())[0] == 1009
        async with server.connect("dave") as dave:
            await dave.send_raw('{"type":"heartbeat","id":1,"pad":"' + "x" * 900 + '"}')
            assert (await dave.recv())["type"] == "heartbeat"
        metrics = await server.admin.metrics()
        assert 'geopresence_closes_total{code="1009"} 2' in metrics


async def test_misbehaving_client_does_not_disturb_others(
    server: TestServer, autojump_clock: MockClock
) -> None:
    await server.admin.befriend("alice", "bob")
    async with server.connect("alice", heartbeat=True) as alice:
        async with server.connect("bob", heartbeat=True) as bob:
            assert (await alice.recv_type("presence"))["status"] == "online"
            for _ in range(50):
                await bob.send_raw('{"type": 1}')
            await bob.send_raw("x" * 70_000)  # over the default 64 KiB: closed 1009
            assert (await bob.closed())[0] == 1009
        assert (await alice.request("heartbeat"))["type"] == "heartbeat"
        assert (await alice.recv_type("presence"))["status"] == "offline"


async def test_tokens_are_required_without_insecure(autojump_clock: MockClock) -> None:
    async with open_server(insecure=False, secret=SECRET) as server:
        token = server.token("alice", ttl=60)
        async with server.connect("alice", token=token) as alice:
            assert alice.user == "alice"
        # a bare user is refused when the server is not --insecure
        async with raw_ws(server) as ws:
            await ws.send_message('{"type":"hello","user":"alice","device":"d"}')
            error = orjson.loads(await ws.get_message())
            assert error["code"] == "unauthorized"
            assert await close_code(ws) == 1008
        # a hello naming another user still authenticates as the token's subject
        async with raw_ws(server) as ws:
            hello = {"type": "hello", "id": "h1", "token": token, "user": "mallory", "device": "d"}
            await ws.send_message(orjson.dumps(hello).decode())
            welcome = orjson.loads(await ws.get_message())
            assert welcome["user"] == "alice"
            assert welcome["re"] == "h1"  # the hello's id comes back when there is one


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "", "forged"],
)
async def test_invalid_tokens_close_1008(token: str, autojump_clock: MockClock) -> None:
    async with open_server(insecure=False, secret=SECRET) as server:
        if token == "forged":
            from geopresence.shell.auth import mint_token

            token = mint_token("x" * 40, "alice", 60, server.now())
        with pytest.raises(SessionRefused) as info:
            async with server.connect("alice", token=token):
                pass
        assert info.value.close_code == 1008
        assert info.value.error is not None
        assert info.value.error["code"] == "unauthorized"
        assert token not in info.value.error["message"] or not token


async def test_expired_token_is_refused(autojump_clock: MockClock) -> None:
    async with open_server(insecure=False, secret=SECRET) as server:
        token = server.token("alice", ttl=10)
        await trio.sleep(11)
        with pytest.raises(SessionRefused) as info:
            async with server.connect("alice", token=token):
                pass
        assert info.value.error is not None
        assert info.value.error["message"] == "token expired"


async def test_insecure_hello_without_user_is_refused(
    server: TestServer, autojump_clock: MockClock
) -> None:
    async with raw_ws(server) as ws:
        await ws.send_message('{"type":"hello","device":"d"}')
        assert orjson.loads(await ws.get_message())["code"] == "unauthorized"
        assert await close_code(ws) == 1008
