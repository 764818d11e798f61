"""The fast path for heartbeat and location frames gives exactly what the generic path gives.

``decode_text`` tries ``hot_message`` first and falls back to the generic path (cattrs) for
whatever it declines. These tests hold the fast path to its contract on generated frames,
valid and invalid: equal messages (same class, same field values and types, ``-0.0``
included) or equal errors (code, text, ``re``), from ``str`` and from UTF-8 ``bytes`` alike,
and the fast path really serves the frames clients send.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from geopresence.wire.client_messages import Heartbeat, LocationUpdate
from geopresence.wire.errors import MAX_SAFE_INTEGER, ProtocolError
from geopresence.wire.hot_decode import hot_message
from geopresence.wire.protocol import _structure, decode, decode_text

Outcome = tuple[str, str, str, str]


def outcome(run: Any, frame: Any) -> Outcome:
    """What decoding ``frame`` gives, in a form that compares types too: ``repr`` tells
    ``1`` from ``1.0``, ``-0.0`` from ``0.0`` and ``"1"`` from ``1``."""
    try:
        message = run(frame)
    except ProtocolError as exc:
        return ("error", exc.code, exc.message, repr(exc.re))
    return ("ok", type(message).__name__, repr(message), "")


def generic(frame: str | bytes) -> Any:
    """The generic path alone, as ``decode`` ran before the fast path existed."""
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("bad_request", f"invalid JSON: {exc}") from None
    return _structure(obj, frame)


def assert_paths_agree(frame: str) -> Outcome:
    """The fast path (through ``decode_text``, ``str`` and ``bytes``) agrees with the generic
    path on ``frame``; returns the generic outcome."""
    expected = outcome(generic, frame)
    assert outcome(decode_text, frame) == expected
    assert outcome(decode, frame) == expected
    try:
        data = frame.encode()
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 form to compare
        return expected
    assert outcome(decode_text, data) == expected
    assert outcome(decode_text, bytearray(data)) == expected
    assert outcome(decode_text, memoryview(data)) == expected
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return expected
    if type(obj) is dict:
        fast = hot_message(obj)
        if fast is not None:  # what the fast path accepts, the generic path accepts alike
            assert expected == ("ok", type(fast).__name__, repr(fast), "")
    return expected


# --------------------------------------------------------------------------------------------
# Frames as clients send them: the fast path serves them.

CLIENT_FRAMES = [
    ('{"type":"heartbeat"}', Heartbeat()),
    ('{"type":"heartbeat","id":17}', Heartbeat(id=17)),
    ('{"type":"heartbeat","id":"h-1"}', Heartbeat(id="h-1")),
    ('{"type":"heartbeat","id":2.5}', Heartbeat(id=2.5)),
    ('{"type":"location","lat":37.5665,"lon":126.978}', LocationUpdate(lat=37.5665, lon=126.978)),
    (
        '{"type":"location","lat":37.5796,"lon":126.977,"ts":1767225600.123456}',
        LocationUpdate(lat=37.5796, lon=126.977, ts=1767225600.123456),
    ),
    (
        '{"type":"location","id":3,"lat":-90,"lon":180,"ts":1767225600,"accuracy":12.5}',
        LocationUpdate(lat=-90.0, lon=180.0, ts=1767225600.0, id=3),
    ),
    ('{"id":null,"lon":-0.0,"lat":0,"type":"location"}', LocationUpdate(lat=0.0, lon=-0.0)),
]


@pytest.mark.parametrize(("frame", "message"), CLIENT_FRAMES)
def test_client_frames_take_the_fast_path(frame: str, message: Any) -> None:
    fast = hot_message(orjson.loads(frame))
    assert fast is not None
    assert repr(fast) == repr(message)
    assert repr(decode_text(frame)) == repr(decode_text(frame.encode())) == repr(message)
    assert_paths_agree(frame)


@pytest.mark.parametrize(
    ("frame", "error", "re"),
    [
        ('{"type":"location"}', "lat: required field missing; lon: required field missing", None),
        ('{"type":"location","id":1,"lat":91,"lon":0}', "lat must be in [-90, 90], got 91.0", 1),
        (
            '{"type":"location","lat":0,"lon":-180.5}',
            "lon must be in [-180, 180], got -180.5",
            None,
        ),
        ('{"type":"location","lat":true,"lon":0}', "lat: expected a number, got a boolean", None),
        (
            '{"type":"location","lat":0,"lon":0,"ts":"1"}',
            "ts: expected a number, got a string",
            None,
        ),
        ('{"type":"location","lat":1e400,"lon":0}', "invalid JSON: number is infinity", None),
        ('{"type":"location","lat":NaN,"lon":0}', "invalid JSON", None),
        ('{"type":"heartbeat","id":[1]}', "id must be a number or a string", None),
        ('{"type":"heartbeat","id":1180591620717411303424}', "within ±(2**53 - 1)", None),
        ('{"type":"heartbeat","id":"' + "i" * 129 + '"}', "id must be at most 128", None),
    ],
)
def test_bad_hot_frames_get_todays_errors(frame: str, error: str, re: Any) -> None:
    for payload in (frame, frame.encode()):
        with pytest.raises(ProtocolError) as info:
            decode_text(payload)
        assert info.value.code == "bad_request"
        assert error in info.value.message
        assert info.value.re == re
    assert_paths_agree(frame)


def test_binary_frames_are_still_refused_by_decode() -> None:
    """``decode`` is for transports that hand a binary frame over as bytes; a text frame's
    bytes go to ``decode_text``."""
    with pytest.raises(ProtocolError, match="binary"):
        decode(b'{"type":"heartbeat"}')
    assert decode_text(b'{"type":"heartbeat"}') == Heartbeat()


# --------------------------------------------------------------------------------------------
# Generated frames: every value written as JSON text, so that what no encoder writes (NaN,
# 1e400, integers beyond 64 bits, duplicate keys, odd spacing) is generated too.

SPECIAL_LITERALS = [
    "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e20", "-1.5e300", "0.0", "-0.0", "-0",
    "9007199254740991", "9007199254740992", "-9007199254740993", "12345678901234567890.0",
    "18446744073709551616", "-9223372036854775809", "1180591620717411303424", "1E2", "90.0000001",
    "-180", "180.0", "1" + "0" * 400, "true", "false", "null", '""', "[]", "{}", '{"lat":1}',
    "[[[[1]]]]", '"90"', '"\\u0000"', "01", ".5", "1.", "+1", "tru", '"unterminated',
]  # fmt: skip

nested_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def as_json(value: Any) -> str:
    """``value`` as JSON text, non-finite floats as Python writes them (NaN, Infinity)."""
    return json.dumps(value, ensure_ascii=False)


def json_texts(*values: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    """JSON texts of ``values``, one branch in ``len(values) + 1`` a special literal."""
    return st.one_of(*(value.map(as_json) for value in values), st.sampled_from(SPECIAL_LITERALS))


ids = json_texts(
    st.none(),
    st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
    st.integers(),  # beyond 2**53 and beyond 64 bits
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(),
    st.text(max_size=130),
    st.text(min_size=127, max_size=130, alphabet="ab"),
    st.booleans(),
    nested_json,
)

coordinates = json_texts(
    st.floats(min_value=-90, max_value=90),
    st.floats(min_value=-180, max_value=180),
    st.floats(min_value=-200, max_value=200),
    st.floats(),
    st.integers(-200, 200),
    st.integers(),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    nested_json,
)

times = json_texts(
    st.floats(min_value=0, max_value=4e9),
    st.floats(),
    st.integers(),
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    nested_json,
)

kinds = st.sampled_from(["heartbeat", "location"]).map(as_json) | st.sampled_from(
    ['"Heartbeat"', '"location "', '"hello"', '"send"', "null", "7", '["location"]', '"heartbeat']
)

fields = st.one_of(
    st.tuples(st.just("type"), kinds),
    st.tuples(st.just("id"), ids),
    st.tuples(st.just("lat"), coordinates),
    st.tuples(st.just("lon"), coordinates),
    st.tuples(st.just("ts"), times),
    st.tuples(
        st.sampled_from(["accuracy", "speed", "x", "page", "LAT", "", "ïd"]),
        nested_json.map(as_json),
    ),
)

spaces = st.sampled_from(["", " ", "\n\t "])


@st.composite
def frames(draw: st.DrawFn) -> str:
    """A JSON object text, mostly with a hot ``type``; keys may repeat (orjson keeps the
    last, for both paths alike)."""
    pairs = [("type", draw(kinds))] if draw(st.integers(0, 9)) else []
    pairs += draw(st.lists(fields, max_size=6))
    pairs = draw(st.permutations(pairs))
    gap = draw(spaces)
    body = ",".join(f"{gap}{as_json(key)}{gap}:{gap}{value}{gap}" for key, value in pairs)
    return "{" + body + "}"


@settings(max_examples=1000)
@given(frames())
@example('{"type":"location","lat":10,"lon":0,"lat":100}')
@example('{"type":"heartbeat","id":"x","type":"location"}')
@example('{"type":"location","id":1e20,"lat":0,"lon":0}')
@example('{"type":"location","id":18446744073709551616,"lat":0,"lon":0}')
@example('{"type":"heartbeat","id":-1.5e300}')
def test_generated_frames_decode_alike_on_both_paths(frame: str) -> None:
    assert_paths_agree(frame)


valid_ids = st.one_of(
    st.none(),
    st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=128),
)


@given(
    st.sampled_from(["heartbeat", "location"]).flatmap(
        lambda kind: (
            st.fixed_dictionaries({"type": st.just(kind)}, optional={"id": valid_ids})
            if kind == "heartbeat"
            else st.fixed_dictionaries(
                {
                    "type": st.just(kind),
                    "lat": st.floats(-90, 90) | st.integers(-90, 90),
                    "lon": st.floats(-180, 180) | st.integers(-180, 180),
                },
                optional={
                    "ts": st.none() | st.floats(0, 4e9) | st.integers(0, 2**63),
                    "id": nested_json,
                    "accuracy": nested_json,
                },
            )
        )
    )
)
def test_valid_hot_frames_take_the_fast_path(obj: dict[str, Any]) -> None:
    """Every frame the generic path accepts is served by the fast path, except a float id
    that is a whole number beyond ±(2**53 - 1), which only the frame's text can judge."""
    frame = as_json(obj)
    result = assert_paths_agree(frame)
    request_id = obj.get("id")
    declined = (
        isinstance(request_id, float)
        and request_id.is_integer()
        and abs(request_id) > MAX_SAFE_INTEGER
    )
    if result[0] == "ok" and not declined:
        assert hot_message(orjson.loads(frame)) is not None


@given(st.text(max_size=60) | st.binary(max_size=60).map(lambda data: data.decode("latin-1")))
def test_arbitrary_text_decodes_alike_on_both_paths(frame: str) -> None:
    assert_paths_agree(frame)
