"""The wire codec, without an event loop: strict decoding, readable errors, fuzzing."""

from __future__ import annotations

from typing import Any

import attrs
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from geopresence.wire.client_messages import (
    GroupPresenceQuery,
    Heartbeat,
    Hello,
    Logout,
    Send,
    Sync,
)
from geopresence.wire.errors import ProtocolError
from geopresence.wire.protocol import decode, encode
from geopresence.wire.server_messages import (
    ChatMessageOut,
    FriendsPresence,
    FriendStatus,
    Presence,
    Sent,
    SettingsReply,
    Welcome,
)


def test_decode_hello_with_token_and_with_user() -> None:
    assert decode('{"type":"hello","token":"t","device":"phone"}') == Hello(
        device="phone", token="t"
    )
    assert decode('{"type":"hello","user":"alice","device":"phone","id":1}') == Hello(
        device="phone", user="alice", id=1
    )


def test_decode_other_messages() -> None:
    assert decode('{"type":"heartbeat"}') == Heartbeat()
    assert decode('{"type":"logout","id":"x"}') == Logout(id="x")
    assert decode('{"type":"group_presence","id":1,"group":"g1"}') == GroupPresenceQuery(
        group="g1", id=1
    )


def test_decode_chat_messages() -> None:
    assert decode('{"type":"send","id":7,"to":"bob","text":"hi","client_msg_id":"u"}') == Send(
        id=7, to="bob", text="hi", client_msg_id="u"
    )
    assert decode('{"type":"send","group":"g1","text":""}') == Send(group="g1", text="")
    assert decode('{"type":"sync","id":9,"after":"7311","limit":5}') == Sync(
        id=9, after=7311, limit=5
    )
    assert decode('{"type":"sync","after":0}') == Sync(after=0)  # a number is accepted too
    biggest = decode('{"type":"sync","after":"9223372036854775807"}')
    assert isinstance(biggest, Sync) and biggest.after == 2**63 - 1


def test_encode_chat_frames() -> None:
    frame = ChatMessageOut(message_id="5", sender="a", group="g", text="t", created_at=1.5)
    assert orjson.loads(encode(frame)) == {
        "type": "message", "message_id": "5", "from": "a", "group": "g", "text": "t",
        "created_at": 1.5,
    }  # fmt: skip
    assert encode(Sent(re=1, message_id="5", created_at=2.0)).startswith('{"type":"sent"')
    assert '"duplicate":true' in encode(Sent(re=1, message_id="5", created_at=2, duplicate=True))


def test_unknown_fields_are_ignored() -> None:
    assert decode('{"type":"heartbeat","future":[1,2,3]}') == Heartbeat()


@pytest.mark.parametrize(
    ("frame", "fragment", "re"),
    [
        ("not json", "invalid JSON", None),
        ("[1,2]", "JSON object", None),
        ('{"id":4}', '"type"', 4),
        ('{"type":"fly","id":"a"}', "unknown message type 'fly'", "a"),
        ('{"type":"hello","id":5}', "device: required field missing", 5),
        ('{"type":"hello","device":7}', "device: expected a string, got a number", None),
        ('{"type":"hello","device":"a b"}', "device must be 1..64 characters", None),
        ('{"type":"hello","device":"' + "d" * 65 + '"}', "1..64", None),
        ('{"type":"hello","device":"d","user":true}', "user: expected a string", None),
        ('{"type":"group_presence","group":null}', "group: expected a string, got null", None),
        ('{"type":"heartbeat","id":true}', "id must be a number or a string", None),
        ('{"type":"heartbeat","id":{}}', "id must be a number or a string", None),
        ('{"type":"heartbeat","id":"' + "x" * 200 + '"}', "at most 128", None),
        ('{"type":"heartbeat","id":NaN}', "invalid JSON", None),
        ('{"type":"send","id":1,"to":"bob"}', "text: required field missing", 1),
        ('{"type":"send","text":"x"}', 'exactly one of "to" and "group"', None),
        ('{"type":"send","text":"x","to":"a","group":"g"}', 'exactly one of "to"', None),
        ('{"type":"send","text":"x","to":"a b"}', "to must be 1..64", None),
        ('{"type":"send","text":"x","to":"a","client_msg_id":""}', "client_msg_id must", None),
        ('{"type":"sync","after":"12x"}', "after: a message id is a decimal string", None),
        ('{"type":"sync","after":"9223372036854775808"}', "0..2**63-1", None),
        ('{"type":"sync","after":-1}', "0..2**63-1", None),
        ('{"type":"sync","after":null}', "after: expected a message id", None),
        ('{"type":"sync","limit":0}', "limit must be at least 1", None),
        ('{"type":"sync","limit":"5"}', "limit: expected an integer", None),
        ('{"type":"nearby_people","page":2000000}', "page must be in [0, 1000000], got", None),
    ],
)
def test_bad_frames_give_bad_request(frame: str, fragment: str, re: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    assert info.value.code == "bad_request"
    assert fragment in info.value.message
    assert info.value.re == re


def test_binary_frames_are_refused() -> None:
    with pytest.raises(ProtocolError, match="binary"):
        decode(b'{"type":"heartbeat"}')


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(ProtocolError):
        decode("[" * 100_000 + "]" * 100_000)


def test_encode_puts_type_first_and_uses_null() -> None:
    text = encode(Presence(user="bob", status="online", last_active_at=None))
    assert text.startswith('{"type":"presence"')
    assert orjson.loads(text) == {
        "type": "presence",
        "user": "bob",
        "status": "online",
        "last_active_at": None,
    }
    welcome = Welcome(user="a", device="d", heartbeat_interval=5, offline_after=30, server_time=1.5)
    assert orjson.loads(encode(welcome))["server_time"] == 1.5
    snapshot = FriendsPresence(friends=[FriendStatus(user="b", status="offline", last_active_at=2)])
    assert orjson.loads(encode(snapshot))["friends"] == [
        {"user": "b", "status": "offline", "last_active_at": 2}
    ]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(
            ["type", "id", "device", "user", "token", "group", "x", "to", "text", "after", "limit"]
        ),
        json_values
        | st.sampled_from(["hello", "heartbeat", "logout", "group_presence", "send", "sync"]),
    )
)
def test_fuzz_decode_never_raises_anything_but_protocol_error(obj: dict[str, Any]) -> None:
    try:
        frame = orjson.dumps(obj).decode()
    except (TypeError, orjson.JSONEncodeError):
        return
    try:
        decode(frame)
    except ProtocolError as exc:
        assert exc.code == "bad_request"
        assert exc.message


@given(st.text() | st.binary())
def test_fuzz_arbitrary_frames(frame: str | bytes) -> None:
    try:
        decode(frame)
    except ProtocolError as exc:
        assert exc.code == "bad_request"


def test_a_large_id_is_refused_only_when_written_as_an_integer() -> None:
    """Integers beyond ±(2**53 - 1), beyond 64 bits too (which the JSON parser reads as a
    float), are refused; a number written with an exponent or a fraction is a float and
    is echoed as it is."""
    for frame in (
        '{"type":"heartbeat","id":9007199254740992}',
        '{"type":"heartbeat","id":1180591620717411303424}',
        '{"type":"heartbeat", "id" : -1180591620717411303424 }',
    ):
        with pytest.raises(ProtocolError, match=r"within ±\(2\*\*53 - 1\)"):
            decode(frame)
    for frame, expected in (
        ('{"type":"heartbeat","id":1e20}', 1e20),
        ('{"type":"heartbeat","id":-1.5e300}', -1.5e300),
        ('{"type":"heartbeat","id":12345678901234567890.0}', 12345678901234567890.0),
    ):
        assert decode(frame).id == expected


def test_a_large_integer_id_is_judged_by_the_id_field_alone() -> None:
    """Whether the id was written as an integer is read from the ``id`` member itself:
    an escaped key (``"\\u0069d"`` is ``"id"``) does not sneak a 100-bit integer through as
    a float, and an integer ``"id"`` inside another field does not refuse a top-level
    ``1e20``."""
    for frame in (
        '{"type":"heartbeat","\\u0069d":123456789012345678901234567890}',
        '{"type":"sync","\\u0069d":-123456789012345678901234567890}',
    ):
        with pytest.raises(ProtocolError, match=r"within ±\(2\*\*53 - 1\)"):
            decode(frame)
    for frame in (
        '{"type":"heartbeat","x":{"id":5},"id":1e20}',
        '{"type":"send","to":"bob","text":"x","meta":{"id":-7},"id":1e20}',
    ):
        assert decode(frame).id == 1e20


def test_whole_durations_and_radii_are_written_as_integers() -> None:
    """The contract shows ``"heartbeat_interval":5``: a client decoding an integer (Go's
    encoding/json, for one) refuses ``5.0``."""
    welcome = Welcome(
        user="a", device="d", heartbeat_interval=5.0, offline_after=1.5, server_time=2.0
    )
    assert encode(welcome).startswith(
        '{"type":"welcome","user":"a","device":"d","heartbeat_interval":5,"offline_after":1.5,'
    )
    reply = SettingsReply(re=1, share_location=True, radius_m=1000.0, visible_to_strangers=False)
    assert '"radius_m":1000,' in encode(reply)
    assert '"radius_m":8046.72,' in encode(attrs.evolve(reply, radius_m=8046.72))
    assert '"radius_m":1e+300,' in encode(attrs.evolve(reply, radius_m=1e300))  # not 301 digits
