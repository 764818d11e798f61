"""Channel events between nodes: every kind the hub publishes survives the envelope."""

from __future__ import annotations

from typing import get_args

import pytest

from geopresence.cluster.channel_events import (
    ChannelEvent,
    Envelope,
    LoggedOut,
    Replaced,
    Reread,
    SettingsHeard,
    decode_envelope,
    encode_envelope,
)
from geopresence.core.chat_message_wire import ChatEvent
from geopresence.core.locations import Location
from geopresence.core.nearby import GoneEvent, LocationEvent, LocationKept
from geopresence.core.replication import PresenceSet
from geopresence.core.stranger_events import StrangerEvent, StrangerGoneEvent
from geopresence.model.chat_message import ChatMessage
from geopresence.model.records import SettingsChanged
from geopresence.wire.outgoing import Outgoing

EVENTS: list[ChannelEvent] = [
    Outgoing('{"type":"presence"}', ("presence", "alice"), (("nearby", "alice"), ("presence",))),
    Outgoing("plain"),
    LocationEvent("alice", Location(37.5, 127.0, 12.5), 13.0),
    LocationKept("alice", Location(37.5, 127.0, 12.5), 13.0),
    GoneEvent("alice", "expired"),
    StrangerEvent("zoe", Location(-33.9, 151.2, 1.0), 2.0),
    StrangerGoneEvent("zoe", "hidden"),
    Replaced("alice", "phone", "3/k2Jx", 1_733_000_000.5),
    LoggedOut("alice", "phone", 1_733_000_000.123),
    PresenceSet("alice", "online", 12.5, 7),
    PresenceSet("alice", "offline", None, 8),
    SettingsHeard(SettingsChanged("alice", False, 2500.0, True), 1_733_000_000_000_001),
    SettingsHeard(SettingsChanged("alice", True, None, False), 7),
    Reread(friends_of=("alice", "bob")),
    Reread(groups_of=("carol",), groups=("hikers",)),
]


def test_every_kind_of_event_is_tried() -> None:
    kinds = {type(event) for event in EVENTS} | {ChatEvent}
    assert kinds - {LocationKept} == set(get_args(ChannelEvent))  # (a LocationEvent)


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_events_round_trip(event: ChannelEvent) -> None:
    envelope = Envelope(3, 17, ("user:alice", "group:g"), event)
    back = decode_envelope(encode_envelope(envelope))
    assert back == envelope and type(back.event) is type(event)


def test_chat_events_round_trip() -> None:
    message = ChatMessage(99, "alice", "hi", 1.0, group="g", client_msg_id="k")
    back = decode_envelope(encode_envelope(Envelope(1, 2, ("group:g",), ChatEvent(message))))
    assert isinstance(back.event, ChatEvent) and back.event.message == message


def test_malformed_envelopes_are_errors() -> None:
    bad_status = b'{"k":"presence","op":{"t":"presence","u":"a","s":"away","l":null,"v":1}}'
    for data in (
        b"{}",
        b"[]",
        b'{"node":1,"id":2,"channels":[],"event":{"k":"nope"}}',
        b'{"node":1,"id":2,"channels":[],"event":' + bad_status + b"}",
    ):
        with pytest.raises((ValueError, KeyError, TypeError)):
            decode_envelope(data)
