"""Replies in the order of their requests (``geopresence.core.replies``), without an event loop.

First the line itself on a recording sink, then the hub with a journal that makes records
durable only when the test says so: a reply that waits (``sent``, ``settings``) holds back
the later replies to its own connection only, and nothing waits in memory.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from geopresence.core.chat_horizon import Horizon
from geopresence.core.hub import Hub, HubSettings
from geopresence.core.replies import Replies
from geopresence.core.store import MemoryStore
from geopresence.model.snowflake import min_id_at
from geopresence.wire.client_messages import (
    Heartbeat,
    LocationUpdate,
    NearbyFriendsQuery,
    Send,
    SettingsUpdate,
)
from geopresence.wire.outgoing import Outgoing
from tests.core.test_hub_chat import HeldJournal
from tests.helpers import RecordingSink, places_taken


def frame(re: int) -> Outgoing:
    return Outgoing(orjson.dumps({"type": "reply", "re": re}).decode())


def event(n: int) -> Outgoing:
    return Outgoing(orjson.dumps({"type": "event", "n": n}).decode(), ("key", n))


def seen(sink: RecordingSink, conn: int) -> list[Any]:
    return [f.get("re", f.get("n")) for f in sink.take(conn)]


def make_replies(max_frames: int = 100, max_chars: int = 10_000) -> tuple[Replies, RecordingSink]:
    sink = RecordingSink()
    return Replies(sink, max_frames=max_frames, max_chars=max_chars), sink


# ---------------------------------------------------------------- the line


def test_a_reply_made_later_takes_its_place_and_the_line_flushes_from_its_head() -> None:
    replies, sink = make_replies()
    first = replies.place(1)
    replies.reply(1, frame(2))
    third = replies.place(1)
    replies.reply(1, frame(4))
    replies.reply(2, frame(9))  # another connection: at once
    assert seen(sink, 1) == [] and seen(sink, 2) == [9]
    replies.fill(third, frame(3))
    assert seen(sink, 1) == []
    replies.fill(first, frame(1))
    assert seen(sink, 1) == [1, 2, 3, 4]
    assert len(replies) == 0  # nothing waits: no line
    replies.reply(1, frame(5))
    assert seen(sink, 1) == [5]


def test_events_pass_a_waiting_place_but_never_a_reply_made_before_them() -> None:
    """A reply made behind a waiting place may be a snapshot (``nearby_friends``): an update
    made after it must not reach the client first."""
    replies, sink = make_replies()
    place = replies.place(1)
    replies.send(1, event(10))
    assert seen(sink, 1) == [10]
    replies.reply(1, frame(2))
    replies.send(1, event(11))
    assert seen(sink, 1) == []
    replies.fill(place, frame(1))
    assert seen(sink, 1) == [1, 2, 11]


def test_a_place_filled_with_nothing_lets_the_line_go() -> None:
    replies, sink = make_replies()
    place = replies.place(1)
    replies.reply(1, frame(2))
    replies.fill(place, None)
    replies.fill(place, frame(1))  # once only
    assert seen(sink, 1) == [2] and len(replies) == 0


def test_forget_sends_what_was_made_and_ignores_places_filled_later() -> None:
    replies, sink = make_replies()
    first = replies.place(1)
    replies.reply(1, frame(2))
    replies.place(1)
    replies.reply(1, frame(4))
    replies.forget(1)
    assert seen(sink, 1) == [2, 4] and len(replies) == 0
    replies.fill(first, frame(1))
    assert seen(sink, 1) == [] and len(replies) == 0


def test_answering_fills_the_kept_place_or_hands_it_on_or_gives_it_up() -> None:
    replies, sink = make_replies()
    asked = replies.place(1)  # a request answered after a round trip
    replies.reply(1, frame(2))
    with replies.answering(asked):
        replies.reply(1, frame(1))  # its answer
    assert seen(sink, 1) == [1, 2]

    asked = replies.place(1)
    replies.reply(1, frame(2))
    with replies.answering(asked):
        again = replies.place(1)  # its answer must wait further: the same place
    assert again is asked and seen(sink, 1) == []
    replies.fill(again, frame(1))
    assert seen(sink, 1) == [1, 2]

    asked = replies.place(1)
    replies.reply(1, frame(2))
    with replies.answering(asked):
        pass  # no answer (the session ended meanwhile, say)
    assert seen(sink, 1) == [2] and len(replies) == 0


def test_a_line_past_its_bounds_is_a_slow_consumer() -> None:
    replies, sink = make_replies(max_frames=3)
    place = replies.place(1)
    for re in range(2, 5):
        replies.reply(1, frame(re))
    assert sink.closed == {}
    replies.reply(1, frame(5))
    assert sink.closed == {1: 4008} and len(replies) == 0
    replies.fill(place, frame(1))
    assert seen(sink, 1) == []

    replies, sink = make_replies(max_chars=100)
    replies.place(1)
    replies.reply(1, Outgoing("x" * 101))
    assert sink.closed == {1: 4008} and len(replies) == 0


# ---------------------------------------------------------------- in the hub


def make_hub(journal: Any = None) -> tuple[Hub, RecordingSink]:
    sink = RecordingSink()
    hub = Hub(HubSettings(), MemoryStore(), sink, journal=journal)
    hub.membership.add_friendship("alice", "bob", 0)
    for conn, user, device in ((1, "alice", "phone"), (2, "alice", "laptop"), (3, "bob", "x")):
        hub.open_session(conn, user, device, now=1)
    for conn in (1, 2, 3):
        sink.take(conn)
    return hub, sink


def res(sink: RecordingSink, conn: int) -> list[tuple[Any, str]]:
    return [(f["re"], f["type"]) for f in sink.take(conn) if "re" in f]


def test_a_sent_waiting_for_the_journal_holds_back_its_connection_s_later_replies_only() -> None:
    journal = HeldJournal()
    hub, sink = make_hub(journal)
    hub.handle(1, LocationUpdate(lat=48.85, lon=2.35), now=2)
    hub.handle(1, Send(id=1, to="bob", text="hi"), now=2)
    hub.handle(1, Heartbeat(id=2), now=2)
    hub.handle(1, Send(id=3, to="carol", text="x"), now=2)  # an error, at once
    hub.handle(1, NearbyFriendsQuery(id=4), now=2)
    hub.handle(2, Heartbeat(id=5), now=2)  # alice's other device
    hub.handle(3, Heartbeat(id=6), now=2)  # bob
    assert res(sink, 1) == []
    assert res(sink, 2) == [(5, "heartbeat")] and res(sink, 3) == [(6, "heartbeat")]
    journal.flush()
    hub.journal_advanced(now=3)
    assert res(sink, 1) == [(1, "sent"), (2, "heartbeat"), (3, "error"), (4, "nearby_friends")]
    assert len(hub.replies) == 0


def test_a_settings_reply_released_after_a_later_sent_still_comes_first() -> None:
    """``journal_advanced`` commits chat (acks ``sent``) before it releases the replies
    ``Acks`` holds: their places keep the requests' order."""
    journal = HeldJournal()
    hub, sink = make_hub(journal)
    hub.handle(1, SettingsUpdate(id=1, radius_m=1500), now=2)
    hub.handle(1, Send(id=2, to="bob", text="hi"), now=2)
    hub.handle(1, SettingsUpdate(id=3, share_location=False), now=2)
    hub.handle(1, Heartbeat(id=4), now=2)
    assert res(sink, 1) == []
    journal.flush()
    hub.journal_advanced(now=3)
    assert res(sink, 1) == [(1, "settings"), (2, "sent"), (3, "settings"), (4, "heartbeat")]


def test_a_resend_answered_from_the_store_waits_for_a_newer_send() -> None:
    journal = HeldJournal()
    hub, sink = make_hub(journal)
    hub.handle(1, Send(id=1, to="bob", text="one", client_msg_id="a"), now=2)
    journal.flush()
    hub.journal_advanced(now=2)
    assert res(sink, 1) == [(1, "sent")]
    hub.handle(1, Send(id=2, to="bob", text="two", client_msg_id="b"), now=3)
    hub.handle(1, Send(id=3, to="bob", text="one", client_msg_id="a"), now=3)  # stored
    hub.handle(1, Send(id=4, to="bob", text="two", client_msg_id="b"), now=3)  # pending
    assert res(sink, 1) == []
    journal.flush()
    hub.journal_advanced(now=4)
    assert res(sink, 1) == [(2, "sent"), (3, "sent"), (4, "sent")]


def test_a_closed_connection_forgets_its_line() -> None:
    journal = HeldJournal()
    hub, sink = make_hub(journal)
    hub.handle(1, Send(id=1, to="bob", text="hi"), now=2)
    hub.handle(1, Heartbeat(id=2), now=2)
    assert len(hub.replies) == 1
    hub.close_session(1)
    assert len(hub.replies) == 0
    assert res(sink, 1) == [(2, "heartbeat")]  # made before the close: sent, as it was
    journal.flush()
    hub.journal_advanced(now=3)
    assert res(sink, 1) == [] and len(hub.replies) == 0
    assert [f["text"] for f in sink.take(3, "message")] == ["hi"]


def test_in_memory_nothing_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    hub, sink = make_hub()
    places = places_taken(hub, monkeypatch)
    hub.handle(1, Send(id=1, to="bob", text="hi", client_msg_id="a"), now=2)
    assert res(sink, 1) == [(1, "sent")]
    hub.handle(1, SettingsUpdate(id=2, radius_m=1500), now=2)
    assert res(sink, 1) == [(2, "settings")]
    hub.handle(1, Send(id=3, to="bob", text="hi", client_msg_id="a"), now=2)
    assert res(sink, 1) == [(3, "sent")]
    hub.handle(1, Heartbeat(id=4), now=2)
    assert res(sink, 1) == [(4, "heartbeat")]
    assert places == [] and len(hub.replies) == 0


def test_a_sent_waiting_for_the_chat_horizon_keeps_its_place() -> None:
    """Several nodes: an ack waits until no node can still commit a lower id; a reply made
    meanwhile (a duplicate from the store, a heartbeat) waits behind it."""
    hub, sink = make_hub()
    now = 1_800_000_000.0
    horizon = hub.chat.horizon = Horizon(lambda: now + 10, silence=60.0)
    horizon.heard(2, min_id_at(now - 1))  # node 2 may still commit ids from then on
    hub.handle(1, Send(id=1, to="bob", text="one", client_msg_id="a"), now=now)
    hub.handle(1, Heartbeat(id=2), now=now)
    hub.handle(1, Send(id=3, to="bob", text="one", client_msg_id="a"), now=now)  # stored
    hub.handle(3, Heartbeat(id=4), now=now)
    assert res(sink, 1) == [] and res(sink, 3) == [(4, "heartbeat")]
    horizon.heard(2, min_id_at(now + 5))
    hub.chat.release()
    assert res(sink, 1) == [(1, "sent"), (2, "heartbeat"), (3, "sent")]
    assert len(hub.replies) == 0
