"""The presence table, without an event loop: unit tests and a model-based property test.

The reference model restates the rule of the wire contract (docs/protocol.md) as directly as
possible: a device is alive while ``now < last_activity + offline_after`` and it has not logged
out; a user is online while any device is alive. The table must agree at every step and must
report exactly one change per user transition."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from geopresence.core.presence import PresenceChange, PresenceTable


def test_connect_activity_expire() -> None:
    table: PresenceTable[int] = PresenceTable(offline_after=30)
    first = table.connect("alice", "phone", 1, now=0)
    assert first.change == PresenceChange("alice", "online", 0)
    assert table.activity("alice", "phone", 1, now=5)
    assert table.next_deadline() == 35
    assert table.expire(34.999).changes == []
    ended = table.expire(35)
    assert [(d.user, d.device, d.conn) for d in ended.connections] == [("alice", "phone", 1)]
    assert ended.changes == [PresenceChange("alice", "offline", 5)]
    assert table.get("alice").status == "offline"
    assert table.get("alice").last_active_at == 5


def test_disconnect_keeps_device_alive_until_deadline() -> None:
    table: PresenceTable[int] = PresenceTable(offline_after=30)
    table.connect("alice", "phone", 1, now=0)
    table.disconnect("alice", "phone", 1)
    again = table.connect("alice", "phone", 2, now=20)
    assert again.change is None
    assert again.replaced is None  # the old connection was already gone
    assert table.expire(49).changes == []
    assert table.expire(50).changes == [PresenceChange("alice", "offline", 20)]


def test_replacement_reports_old_connection_and_no_change() -> None:
    table: PresenceTable[int] = PresenceTable(offline_after=30)
    table.connect("alice", "phone", 1, now=0)
    again = table.connect("alice", "phone", 2, now=3)
    assert again == type(again)(replaced=1, change=None)
    assert not table.activity("alice", "phone", 1, now=4)  # the replaced one is ignored
    table.disconnect("alice", "phone", 1)  # ignored too
    assert table.expire(33).connections[0].conn == 2


def test_logout_leaves_last_active_at() -> None:
    table: PresenceTable[int] = PresenceTable(offline_after=30)
    table.connect("alice", "phone", 1, now=0)
    table.connect("alice", "laptop", 2, now=1)
    table.activity("alice", "laptop", 2, now=4)
    out = table.logout("alice", "phone")
    assert [d.conn for d in out.connections] == [1] and out.changes == []
    out = table.logout("alice")
    assert [d.conn for d in out.connections] == [2]
    assert out.changes == [PresenceChange("alice", "offline", 4)]
    assert table.logout("alice").changes == []  # already offline: nothing
    assert table.online_count == 0
    assert table.next_deadline() is None


def test_unknown_user_is_offline() -> None:
    table: PresenceTable[int] = PresenceTable(offline_after=30)
    p = table.get("ghost")
    assert (p.status, p.last_active_at, p.devices) == ("offline", None, 0)


USERS = ["u1", "u2"]
DEVICES = ["d1", "d2"]

step = st.one_of(
    st.tuples(st.just("connect"), st.sampled_from(USERS), st.sampled_from(DEVICES)),
    st.tuples(st.just("activity"), st.sampled_from(USERS), st.sampled_from(DEVICES)),
    st.tuples(st.just("drop"), st.sampled_from(USERS), st.sampled_from(DEVICES)),
    st.tuples(st.just("logout"), st.sampled_from(USERS), st.sampled_from([*DEVICES, None])),
    st.tuples(st.just("wait"), st.sampled_from([0.5, 1, 5, 10, 29, 30, 31, 60]), st.none()),
)


class Model:
    """The rule, restated. ``conn`` is the open connection per (user, device), if any."""

    def __init__(self, offline_after: float) -> None:
        self.offline_after = offline_after
        self.last: dict[tuple[str, str], float] = {}  # alive devices -> last activity
        self.conn: dict[tuple[str, str], int] = {}
        self.last_active_at: dict[str, float] = {}

    def prune(self, now: float) -> None:
        for key, last in list(self.last.items()):
            if now >= last + self.offline_after:
                del self.last[key]
                self.conn.pop(key, None)  # the server closes it (4000)

    def online(self, user: str) -> bool:
        return any(u == user for u, _ in self.last)


@given(st.lists(step, max_size=40))
def test_table_follows_the_rule_and_reports_each_transition_once(
    steps: list[tuple[Any, ...]],
) -> None:
    table: PresenceTable[int] = PresenceTable(offline_after=30)
    model = Model(30)
    now = 0.0
    next_conn = 0
    status = dict.fromkeys(USERS, False)
    for op, a, b in steps:
        changes: list[PresenceChange] = []
        if op == "wait":
            now += a
            changes += table.expire(now).changes
            model.prune(now)
        elif op == "connect":
            next_conn += 1
            result = table.connect(a, b, next_conn, now)
            assert result.replaced == model.conn.get((a, b))
            model.conn[(a, b)] = next_conn
            model.last[(a, b)] = now
            model.last_active_at[a] = now
            if result.change:
                changes.append(result.change)
        elif op == "activity":
            conn = model.conn.get((a, b))
            if conn is not None:
                assert table.activity(a, b, conn, now)
                model.last[(a, b)] = now
                model.last_active_at[a] = now
        elif op == "drop":
            conn = model.conn.pop((a, b), None)
            if conn is not None:
                table.disconnect(a, b, conn)
        else:  # logout
            ended = table.logout(a, b)
            keys = [k for k in model.last if k[0] == a and (b is None or k[1] == b)]
            expected_closed = sorted(model.conn[k] for k in keys if k in model.conn)
            assert sorted(d.conn for d in ended.connections) == expected_closed
            for key in keys:
                del model.last[key]
                model.conn.pop(key, None)
            changes += ended.changes
        # exactly one change per user transition, carrying the right last_active_at
        seen: set[str] = set()
        for change in changes:
            assert change.user not in seen
            seen.add(change.user)
            assert (change.status == "online") != status[change.user]
            status[change.user] = change.status == "online"
            assert change.last_active_at == model.last_active_at.get(change.user)
        for user in USERS:
            assert status[user] == model.online(user)
            p = table.get(user)
            assert (p.status == "online") == model.online(user)
            assert p.last_active_at == model.last_active_at.get(user)
        assert table.online_count == sum(status.values())
