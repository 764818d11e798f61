"""Forgetting a user in the hub, without an event loop: what goes, who is told, and the
messages still on their way to disk."""

from __future__ import annotations

from typing import Any

from geopresence.core.chat_message_wire import PushRequest
from geopresence.core.hub import Hub, HubSettings
from geopresence.core.store import DEFAULT_SETTINGS, MemoryStore, UserSettings
from geopresence.model.records import Record, UserForgotten
from geopresence.wire.client_messages import (
    LocationUpdate,
    NearbyPeopleQuery,
    Send,
    Sync,
    WatchStrangers,
)
from geopresence.wire.errors import CLOSE_LOGGED_OUT
from tests.helpers import RecordingSink

NOW = 1_000.0
HERE = {"lat": 37.5665, "lon": 126.978}


class HeldJournal:
    """A journal whose records become durable only when the test says so."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.durable_seq = 0

    def append(self, record: Record) -> int:
        self.records.append(record)
        return len(self.records)

    def flush(self) -> None:
        self.durable_seq = len(self.records)


def make_hub(journal: Any = None) -> tuple[Hub, RecordingSink, list[PushRequest], list[str]]:
    sink = RecordingSink()
    pushes: list[PushRequest] = []
    hub = Hub(HubSettings(), MemoryStore(), sink, journal=journal, push=pushes.append)
    told: list[str] = []
    hub.forgetting.on_forgotten = told.append
    return hub, sink, pushes, told


def test_forget_removes_the_user_and_tells_its_friends_as_an_unfriending() -> None:
    hub, sink, _, told = make_hub()
    hub.membership.add_friendship("alice", "bob", NOW)
    hub.membership.add_friendship("alice", "carol", NOW)
    hub.membership.set_group("hikers", ["alice", "bob"])
    hub.nearby.change_settings("alice", UserSettings(True, 900.0, True), NOW)
    for conn, user in ((1, "alice"), (2, "bob"), (3, "zoe")):
        hub.open_session(conn, user, "phone", NOW)
    hub.handle(3, WatchStrangers(id=1, on=True), NOW)
    hub.handle(2, LocationUpdate(**HERE), NOW)
    hub.handle(3, LocationUpdate(lat=37.567, lon=126.978), NOW)
    hub.handle(1, LocationUpdate(lat=37.5666, lon=126.978), NOW)
    hub.handle(1, Send(id=2, to="bob", text="secret", client_msg_id="c1"), NOW)
    hub.handle(2, Send(id=3, to="alice", text="answer"), NOW)
    hub.handle(1, Send(id=4, group="hikers", text="to the group"), NOW)
    hub.handle(2, Send(id=5, group="hikers", text="bob to the group"), NOW)
    for conn in (1, 2, 3):
        sink.take(conn)

    report = hub.forgetting.forget("alice", NOW + 1)

    assert (report.friends, report.groups, report.messages) == (2, 1, 3)
    assert (report.settings, report.location, report.devices) == (True, True, 1)
    assert told == ["alice"]
    assert sink.closed == {1: CLOSE_LOGGED_OUT}
    assert sink.take(2) == [
        {"type": "friend_gone", "user": "alice", "reason": "unfriended"},
        {"type": "friend_removed", "user": "alice"},
    ]
    assert sink.take(3) == [{"type": "stranger_gone", "user": "alice", "reason": "offline"}]
    store = hub.state.users
    assert not store.friends_of("alice") and not store.friends_of("bob")
    assert store.group_members("hikers") == {"bob"} and store.groups_of("alice") == set()
    assert store.get_settings("alice") == DEFAULT_SETTINGS
    assert hub.nearby.location_of("alice", NOW + 1) is None
    presence = hub.statuses.user_presence("alice", NOW + 1)
    assert (presence.status, presence.last_active_at, presence.devices) == ("offline", None, 0)
    assert [m.text for m in hub.chat.store.messages()] == ["bob to the group"]
    assert hub.chat.store.find_client_msg("alice", "c1") is None
    # bob's own view: only what involves no one forgotten
    hub.handle(2, Sync(id=6, after=0, limit=100), NOW + 1)
    [page] = sink.take(2)
    assert [m["text"] for m in page["messages"]] == ["bob to the group"]
    # zoe's strangers view has nobody
    hub.handle(3, NearbyPeopleQuery(id=7, page=0), NOW + 1)
    [people] = sink.take(3)
    assert people["people"] == []


def test_messages_on_their_way_to_disk_are_acked_but_never_stored_or_pushed() -> None:
    journal = HeldJournal()
    hub, sink, pushes, _ = make_hub(journal)
    hub.membership.add_friendship("alice", "bob", NOW)
    hub.membership.add_friendship("bob", "carol", NOW)
    hub.open_session(2, "bob", "phone", NOW)
    journal.flush()
    hub.journal_advanced(NOW)
    sink.take(2)
    hub.handle(2, Send(id=1, to="alice", text="not yet durable"), NOW)
    hub.handle(2, Send(id=2, to="carol", text="to carol"), NOW)
    hub.forgetting.forget("alice", NOW)
    assert isinstance(journal.records[-1], UserForgotten)
    assert hub.chat.pending_messages()[0].to == "carol"  # a snapshot now leaves it out
    journal.flush()
    hub.journal_advanced(NOW)
    acks = sink.take(2, "sent")
    assert [a["re"] for a in acks] == [1, 2]  # the sender learns its send went through
    assert [m.to for m in hub.chat.store.messages()] == ["carol"]
    assert [r.recipients for r in pushes] == [("carol",)]


def test_forgetting_an_unknown_user_changes_nothing_but_is_journaled() -> None:
    journal = HeldJournal()
    hub, _, _, told = make_hub(journal)
    hub.membership.add_friendship("bob", "carol", NOW)
    report = hub.forgetting.forget("nobody", NOW)
    assert (report.friends, report.groups, report.messages, report.devices) == (0, 0, 0, 0)
    assert journal.records[-1] == UserForgotten("nobody") and told == ["nobody"]
    assert hub.state.users.are_friends("bob", "carol")


def test_a_user_forgotten_can_come_back_as_a_new_user() -> None:
    hub, sink, _, _ = make_hub()
    hub.membership.add_friendship("alice", "bob", NOW)
    hub.forgetting.forget("alice", NOW)
    hub.membership.add_friendship("alice", "bob", NOW + 1)
    hub.open_session(1, "alice", "phone", NOW + 1)
    hub.open_session(2, "bob", "phone", NOW + 1)
    hub.handle(1, Send(id=1, to="bob", text="hello again"), NOW + 2)
    assert [m["text"] for m in sink.take(2, "message")] == ["hello again"]
