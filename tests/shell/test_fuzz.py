"""Fuzzing a live server: random and malformed frames to a session, random requests to the
HTTP API. The server answers with errors, never raises out of a task, and other sessions
keep working."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import orjson
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geopresence.shell.http_api import HttpApi
from geopresence.testing import open_server
from geopresence.wire.client_messages import CLIENT_MESSAGE_TYPES

FIELDS = [
    "type", "id", "device", "user", "token", "group", "lat", "lon", "ts", "page", "on",
    "share_location", "radius_m", "visible_to_strangers", "to", "text", "client_msg_id",
    "after", "limit",
]  # fmt: skip

nasty_numbers = st.sampled_from(
    [0, -1, 2**53, 2**63, 2**64, -(2**63), 1e308, -1e308, 5e-324, 90.0000001, 180.5]
)
nasty_text = st.sampled_from(
    ["", " ", "\u0000", "\ud800", "💥" * 50, "a" * 5000, "../../etc", "%2F", "<script>", "\n"]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | nasty_numbers | st.text(max_size=30) | nasty_text,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=12,
)  # fmt: skip
messages = st.dictionaries(
    st.sampled_from(FIELDS),
    json_values | st.sampled_from(sorted(CLIENT_MESSAGE_TYPES)),
    max_size=6,
)


def frame_of(message: dict[str, Any]) -> str | None:
    try:
        return orjson.dumps(message).decode()
    except (TypeError, orjson.JSONEncodeError):
        return None


raw_frames = st.one_of(
    # A logout ends the session (4001) by contract: the rest of the test needs it alive.
    messages.filter(lambda m: m.get("type") != "logout").map(frame_of),
    st.text(max_size=200),
    st.sampled_from(
        ["{", "[]", "null", "1e999", '{"type":"send","text":NaN}', '"' + "[" * 5000, "{}" * 99]
    ),
    st.just("[" * 100_000),  # a nesting bomb
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(frames=st.lists(raw_frames, min_size=1, max_size=25), binary=st.booleans())
def test_random_frames_to_a_live_session(frames: list[str | None], binary: bool) -> None:
    async def scenario() -> None:
        async with open_server(max_message_bytes=1_000_000) as server:
            await server.admin.befriend("fuzzer", "bystander")
            await server.admin.set_group("g", ["fuzzer", "bystander"])
            async with server.connect("fuzzer") as fuzzer, server.connect("bystander") as other:
                for frame in frames:
                    if frame is None:
                        continue
                    await fuzzer.send_raw(frame.encode() if binary else frame)
                # Both sessions still work and the server answers in order.
                assert (await fuzzer.request("heartbeat"))["type"] == "heartbeat"
                assert (await other.request("heartbeat"))["type"] == "heartbeat"
            metrics = await server.admin.metrics()
            assert 'geopresence_errors_total{code="internal"}' not in metrics

    trio.run(scenario)


methods = st.sampled_from(["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"])
segments = st.one_of(
    st.sampled_from(["v1", "friendships", "users", "groups", "members", "tokens", "logout",
                     "alice", "bob", "g", "metrics", "healthz", "snapshot", "drain", ""]),
    st.text(alphabet=st.characters(codec="ascii", exclude_characters="/?#"), max_size=70),
)  # fmt: skip
bodies = st.one_of(
    st.none(),
    st.binary(max_size=200),
    json_values.map(lambda v: orjson.dumps(v) if frame_of({"v": v}) else b"{}"),
    st.just(b'{"pairs":' + b"[" * 10_000 + b"]" * 10_000 + b"}"),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    requests=st.lists(
        st.tuples(methods, st.lists(segments, min_size=1, max_size=5), bodies),
        min_size=1,
        max_size=15,
    )
)
def test_random_http_requests_never_break_the_api(
    requests: list[tuple[str, list[str], bytes | None]], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with open_server() as server:
            transport = httpx.ASGITransport(app=HttpApi(server.running.server))
            async with httpx.AsyncClient(base_url="http://t", transport=transport) as http:
                for method, parts, body in requests:
                    if method == "POST" and parts[-1:] == ["drain"]:
                        continue  # would (correctly) stop the server under test
                    path = "/" + "/".join(parts)
                    try:
                        response = await http.request(method, path, content=body)
                    except httpx.InvalidURL:
                        continue
                    assert response.status_code < 500, (method, path, response.text)
                    if response.status_code >= 400 and method != "HEAD":
                        assert response.json()["error"]
                assert (await http.get("/healthz")).status_code == 200

    with caplog.at_level(logging.ERROR):
        trio.run(scenario)
    assert "failed" not in caplog.text
