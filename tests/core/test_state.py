"""The durable state (geopresence.core.state): one record -> change table, applied to a state
without a hub; the tables of the other readers of records cover every kind too."""

from __future__ import annotations

from typing import Any

import pytest

from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.state_writes import WRITERS, blind_commands
from geopresence.core.hub import FEED_APPLY
from geopresence.core.replication import FEED_KINDS, LocationSet, LogoutRequested, PresenceSet
from geopresence.core.state import (
    APPLY,
    RECORD_KINDS,
    DurableState,
    one_entry_per_kind,
    settings_from,
    settings_record,
)
from geopresence.core.store import DEFAULT_SETTINGS, UserSettings
from geopresence.model.chat_message import ChatMessage
from geopresence.model.records import (
    TAGS,
    Befriended,
    GroupDeleted,
    GroupSet,
    MemberAdded,
    MemberRemoved,
    Record,
    SettingsChanged,
    Unfriended,
    UserForgotten,
)
from geopresence.storage.snapshot import capture, restore

M1 = 1 << 22  # message ids (any ascending positive ids will do)
M2 = 2 << 22
M3 = 3 << 22


def dm(message_id: int, sender: str = "ann", to: str = "ben") -> ChatMessage:
    return ChatMessage(message_id, sender, f"hi {message_id}", 1.0, to=to)


def in_group(message_id: int, group: str = "g", sender: str = "ann") -> ChatMessage:
    return ChatMessage(message_id, sender, f"all {message_id}", 1.0, group=group)


def view(state: DurableState) -> dict[str, Any]:
    """Everything a state holds, order-insensitive."""
    users, chat = state.users, state.chat
    return {
        "friendships": sorted(tuple(sorted(pair)) for pair in users.friendships()),
        "groups": {group: sorted(members) for group, members in users.groups()},
        "memberships": chat.memberships(),
        "settings": dict(users.settings_items()),
        "messages": [m.message_id for m in chat.messages()],
        "last_id": state.ids.last_id,
    }


def built(*records: Record) -> DurableState:
    state = DurableState()
    for record in records:
        state.apply(record)
    return state


BEFORE: list[Record] = [
    Befriended("ann", "ben"),
    GroupSet("g", ["ann", "ben"], 0),
    dm(M1),
    in_group(M2),
]
"""A state to change: ann and ben are friends and the members of g (joined at 0), with one
1:1 and one group message."""

CASES: dict[str, tuple[Record, dict[str, Any]]] = {
    "befriended": (
        Befriended("cat", "ann"),
        {"friendships": [("ann", "ben"), ("ann", "cat")]},
    ),
    "befriended itself": (Befriended("ann", "ann"), {}),  # never valid: ignored
    "unfriended": (Unfriended("ben", "ann"), {"friendships": []}),
    "group set": (
        GroupSet("g", ["ben", "cat"], M2),
        {
            "groups": {"g": ["ben", "cat"]},
            "memberships": {("g", "ben"): 0, ("g", "cat"): M2},
        },
    ),
    "group set, new group": (
        GroupSet("h", ["dan"], M3),
        {
            "groups": {"g": ["ann", "ben"], "h": ["dan"]},
            "memberships": {("g", "ann"): 0, ("g", "ben"): 0, ("h", "dan"): M3},
            "last_id": M3,  # a mark is an id issued: never issued again
        },
    ),
    "group deleted": (
        GroupDeleted("g"),
        {"groups": {}, "memberships": {}, "messages": [M1]},  # its messages go with it
    ),
    "member added": (
        MemberAdded("g", "cat", M2),
        {
            "groups": {"g": ["ann", "ben", "cat"]},
            "memberships": {("g", "ann"): 0, ("g", "ben"): 0, ("g", "cat"): M2},
        },
    ),
    "member removed": (
        MemberRemoved("g", "ben"),
        {"groups": {"g": ["ann"]}, "memberships": {("g", "ann"): 0}},
    ),
    "settings changed": (
        SettingsChanged("ben", False, 1200.0, True),
        {"settings": {"ben": UserSettings(False, 1200.0, True)}},
    ),
    "settings back to the defaults": (SettingsChanged("ben", True, None, False), {}),
    "message": (dm(M3, "ben", "ann"), {"messages": [M1, M2, M3], "last_id": M3}),
    "message replayed again": (dm(M1), {}),  # at or below the last id: already there
    "user forgotten": (
        UserForgotten("ann"),  # its friendship, membership, 1:1 and group messages go
        {
            "friendships": [],
            "groups": {"g": ["ben"]},
            "memberships": {("g", "ben"): 0},
            "messages": [],
        },
    ),
    "user forgotten, the other side": (
        UserForgotten("ben"),  # the 1:1 message it received goes; ann's group message stays
        {
            "friendships": [],
            "groups": {"g": ["ann"]},
            "memberships": {("g", "ann"): 0},
            "messages": [M2],
        },
    ),
    "user forgotten, unknown": (UserForgotten("zed"), {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_apply_makes_the_change_of_each_record_kind(case: str) -> None:
    record, changed = CASES[case]
    state = built(*BEFORE)
    expected = {**view(state), **changed}
    state.apply(record)
    assert view(state) == expected
    state.apply(record)  # a replay that sees a record twice ends the same way
    assert view(state) == expected


def test_every_record_kind_has_a_change_and_a_case() -> None:
    assert set(APPLY) == RECORD_KINDS == set(TAGS)
    assert {type(record) for record, _ in CASES.values()} == RECORD_KINDS


def test_apply_on_an_empty_state_and_unknown_names() -> None:
    """Records about users and groups the state never saw change nothing, or start them."""
    state = built(
        Unfriended("x", "y"),
        GroupDeleted("nope"),
        MemberRemoved("nope", "x"),
        MemberAdded("new", "x", 5),
    )
    assert view(state) == {
        "friendships": [],
        "groups": {"new": ["x"]},
        "memberships": {("new", "x"): 5},
        "settings": {},
        "messages": [],
        "last_id": 5,
    }


def test_a_member_reads_only_what_came_after_joining() -> None:
    state = built(*BEFORE, MemberAdded("g", "cat", M2), in_group(M3, sender="ben"))
    read = [m.message_id for m in state.chat.read_after("cat", ["g"], 0)]
    assert read == [M3]


def test_load_gives_what_replaying_the_records_gives() -> None:
    replayed = built(*BEFORE, SettingsChanged("ben", False, None, False), MemberAdded("g", "c", 7))
    loaded = DurableState()
    restore(loaded, capture(replayed, 0, 0.0))
    assert view(loaded) == view(replayed)
    # The marks and messages count for the id generator, whatever the high-water mark says.
    fresh = DurableState()
    fresh.load(
        friendships=[("a", "b"), ("b", "a")],
        groups={"g": {"a": M3}},
        settings=[],
        messages=[dm(M1, "a", "b")],
    )
    assert fresh.ids.last_id == M1  # only the last message's id: marks come as last_message_id
    assert view(fresh)["friendships"] == [("a", "b")]


def test_settings_conversion_both_ways() -> None:
    record = SettingsChanged("ann", False, 250.0, True)
    settings = settings_from(record)
    assert settings == UserSettings(share_location=False, radius_m=250.0, visible_to_strangers=True)
    assert settings_record("ann", settings) == record
    assert settings_from(settings_record("x", DEFAULT_SETTINGS)) == DEFAULT_SETTINGS


def test_covering_refuses_a_table_that_misses_or_adds_a_kind() -> None:
    complete = {kind: kind.__name__ for kind in RECORD_KINDS}
    assert one_entry_per_kind(complete, what="t") == complete
    with pytest.raises(TypeError, match=r"t: no entry for \['Befriended'\]"):
        one_entry_per_kind({k: v for k, v in complete.items() if k is not Befriended}, what="t")
    with pytest.raises(TypeError, match=r"unexpected \['LocationSet'\]"):
        one_entry_per_kind({**complete, LocationSet: "x"}, what="t")


def test_the_hub_and_redis_tables_cover_every_feed_op() -> None:
    assert set(WRITERS) == FEED_KINDS
    # Announced, or told to the subscribers, outside the replay scope.
    assert set(FEED_APPLY) == FEED_KINDS - {PresenceSet, ChatMessage}


K = Keys("gp", location_ttl=600.0)


@pytest.mark.parametrize(
    ("op", "commands"),
    [
        # Messages: stored and published in batches of their own (chat_writes).
        (dm(M1), None),
        (ChatMessage(M1, "ann", "hi", 1.0, to="ben", client_msg_id="c1"), None),
        (
            LocationSet("ann", 1.5, 2.5, 3.0, 4.0),
            [("set", ("gp:loc:{ann}", b"[1.5,2.5,3.0,4.0]"), {"pxat": 604_000})],
        ),
        (
            Befriended("ann", "ben"),
            [
                ("sadd", ("gp:friends:{ann}", ["ben"])),
                ("sadd", ("gp:friends:{ben}", ["ann"])),
                ("sadd", ("gp:users", ["ann", "ben"])),
            ],
        ),
        (
            Unfriended("ann", "ben"),
            [("srem", ("gp:friends:{ann}", ["ben"])), ("srem", ("gp:friends:{ben}", ["ann"]))],
        ),
        (
            MemberAdded("g", "ann", 9),
            [
                ("hsetnx", ("gp:group:{g}", "ann", "9")),
                ("sadd", ("gp:groups_of:{ann}", ["g"])),
                ("sadd", ("gp:groups", ["g"])),
            ],
        ),
        (
            MemberRemoved("g", "ann"),
            [("hdel", ("gp:group:{g}", ["ann"])), ("srem", ("gp:groups_of:{ann}", ["g"]))],
        ),
        # A versioned script, whose version is published: written on its own.
        (SettingsChanged("ann", False, None, True), None),
        (GroupSet("g", ["ann"], 0), None),  # reads first: written on its own
        (GroupDeleted("g"), None),
        (PresenceSet("ann", "online", 1.0, 1), []),  # only on the feed
        (LogoutRequested("ann", None), []),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, list | None) else "",
)
def test_redis_commands_of_each_feed_op(op: Any, commands: list[Any] | None) -> None:
    """The key layout of geopresence/cluster/redis_keys.py, command by command."""
    assert blind_commands(K, op) == commands


def test_a_forget_undoes_the_records_before_it_and_not_those_after() -> None:
    """Replay order is the journal's: what came before the forget is forgotten (an older
    ``befriended`` does not bring the user back), what came after is a new fact."""
    state = built(
        *BEFORE,
        SettingsChanged("ann", False, 100.0, True),
        Befriended("ann", "cat"),
        dm(M3, "cat", "ann"),
        UserForgotten("ann"),
        Befriended("ann", "dan"),
    )
    assert view(state) == {
        "friendships": [("ann", "dan")],
        "groups": {"g": ["ben"]},
        "memberships": {("g", "ben"): 0},
        "settings": {},
        "messages": [],
        "last_id": M3,  # ids are never issued again
    }
    assert list(state.chat.read_after("ben", ["g"], 0)) == []
    assert state.chat.find_client_msg("ann", "x") is None
    # A snapshot taken after the forget holds nothing of what came before it.
    snapshot = capture(state, 9, 0.0)
    assert "cat" not in str(snapshot) and "ben" not in str(snapshot.friendships)
