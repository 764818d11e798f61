"""The hub without an event loop: who hears what, exactly once.

A recording sink stands in for the shell. The property test drives random sessions,
heartbeats, drops, logouts, time, friendships and group changes, and checks after every step
that each live connection received exactly one ``presence`` event per transition of each
user it should hear (friends, and co-members of groups within the fan-out limit), and none
for anyone else or for its own user.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from geopresence.core.broker import ConnId, MemoryBroker
from geopresence.core.hub import Hub, HubSettings
from geopresence.core.store import MemoryStore
from geopresence.wire.client_messages import (
    GroupPresenceQuery,
    Heartbeat,
    Hello,
    LocationUpdate,
    Logout,
    NearbyPeopleQuery,
    SettingsUpdate,
    WatchStrangers,
)
from geopresence.wire.errors import ProtocolError
from geopresence.wire.outbox import Outbox
from geopresence.wire.outgoing import Outgoing
from tests.helpers import RecordingSink


class QueueSink:
    """A sink with real bounded, coalescing outboxes (what a slow client's frames go
    through), read back with ``boxes[conn].pop_all()``."""

    def __init__(self) -> None:
        self.boxes: dict[ConnId, Outbox] = {}

    def send(self, conn: ConnId, message: Outgoing) -> None:
        self.boxes.setdefault(conn, Outbox(100)).push(message)

    def close(self, conn: ConnId, code: int, reason: str) -> None:
        pass


def make_hub(**settings: Any) -> tuple[Hub, RecordingSink]:
    sink = RecordingSink()
    hub = Hub(HubSettings(**settings), MemoryStore(), sink)
    return hub, sink


def test_session_greeting_and_replacement() -> None:
    hub, sink = make_hub()
    hub.membership.add_friendship("alice", "bob", 0)
    hub.open_session(1, "alice", "phone", now=0)
    assert [f["type"] for f in sink.take(1)] == ["welcome", "friends_presence"]
    hub.open_session(2, "bob", "phone", now=1)
    assert sink.take(1) == [
        {"type": "presence", "user": "bob", "status": "online", "last_active_at": 1}
    ]
    sink.take(2)
    hub.open_session(3, "bob", "phone", now=2)
    assert sink.closed == {2: 4002}
    assert sink.take(1) == []  # no presence change for a replacement
    hub.handle(2, Heartbeat(id=1), now=3)  # the replaced connection is forgotten
    assert sink.take(2) == []
    assert hub.statuses.user_presence("bob", 3).last_active_at == 2  # its heartbeat did not count


def test_errors_are_replies() -> None:
    hub, sink = make_hub()
    hub.open_session(1, "alice", "phone", now=0)
    sink.take(1)
    hub.handle(1, Hello(device="x", user="mallory", id=9), now=1)
    assert sink.take(1) == [
        {
            "type": "error",
            "re": 9,
            "code": "bad_request",
            "message": "already authenticated: hello only once",
        }
    ]
    hub.handle(1, GroupPresenceQuery(group="secret", id=2), now=1)
    assert sink.take(1)[0]["code"] == "forbidden"


def test_limits() -> None:
    hub, _ = make_hub(max_friends=2, max_group_size=2)
    hub.membership.add_friendship("a", "b", 0)
    hub.membership.add_friendship("a", "c", 0)
    with pytest.raises(ProtocolError) as info:
        hub.membership.add_friendship("a", "d", 0)
    assert info.value.code == "too_large"
    with pytest.raises(ProtocolError):
        hub.membership.add_friendship("a", "a", 0)
    with pytest.raises(ProtocolError):
        hub.membership.set_group("g", ["x", "y", "z"])
    hub.membership.set_group("g", ["x", "y"])
    with pytest.raises(ProtocolError):
        hub.membership.add_member("g", "z")
    with pytest.raises(ProtocolError):
        hub.membership.remove_member("nope", "x")


def test_logout_message_is_not_activity() -> None:
    hub, sink = make_hub()
    hub.open_session(1, "alice", "phone", now=0)
    hub.handle(1, Logout(), now=20)
    assert sink.closed == {1: 4001}
    assert hub.statuses.user_presence("alice", 20).last_active_at == 0


USERS = ["u1", "u2", "u3"]
LIMIT = 2  # groups of up to 2 members fan out presence

step = st.one_of(
    st.tuples(st.just("connect"), st.sampled_from(USERS), st.sampled_from(["d1", "d2"])),
    st.tuples(st.just("heartbeat"), st.integers(0, 20), st.none()),
    st.tuples(st.just("drop"), st.integers(0, 20), st.none()),
    st.tuples(st.just("logout"), st.integers(0, 20), st.none()),
    st.tuples(st.just("http_logout"), st.sampled_from(USERS), st.none()),
    st.tuples(st.just("wait"), st.sampled_from([1, 5, 29, 30, 45]), st.none()),
    st.tuples(st.just("befriend"), st.sampled_from(USERS), st.sampled_from(USERS)),
    st.tuples(st.just("unfriend"), st.sampled_from(USERS), st.sampled_from(USERS)),
    st.tuples(
        st.just("group"),
        st.sampled_from(["g1", "g2"]),
        st.lists(st.sampled_from(USERS), unique=True, max_size=3),
    ),
)


def play(
    hub: Hub, step: tuple[Any, ...], live: list[ConnId], new_conn: ConnId, now: float
) -> float:
    """Play one ``step`` (or ``moving_step``) on ``hub``: ``live`` are the connections it may
    pick from, ``new_conn`` the id a ``connect`` opens. Returns the time after the step."""
    op, a, b = step
    if op == "connect":
        hub.open_session(new_conn, a, b, now)
    elif op in ("heartbeat", "drop", "logout", "move") and live:
        conn = live[a % len(live)]
        if op == "heartbeat":
            hub.handle(conn, Heartbeat(), now)
        elif op == "drop":
            hub.close_session(conn)
        elif op == "move":
            hub.handle(conn, LocationUpdate(lat=37.5 + b * 0.01, lon=127.0), now)
        else:
            hub.handle(conn, Logout(), now)
    elif op == "http_logout":
        hub.lifecycle.logout(a)
    elif op == "wait":
        now += a
        hub.expire(now)
    elif op == "befriend" and a != b:
        hub.membership.add_friendship(a, b, now)
    elif op == "unfriend":
        hub.membership.remove_friendship(a, b)
    elif op == "group":
        hub.membership.set_group(a, b)
    return now


@given(st.lists(step, max_size=40))
def test_each_listener_hears_each_transition_exactly_once(steps: list[tuple[Any, ...]]) -> None:
    hub, sink = make_hub(presence_fanout_limit=LIMIT)
    now = 0.0
    conn_ids = 0
    for op, a, b in steps:
        before = {u: hub.statuses.user_presence(u, now).status for u in USERS}
        live_before = {c for c in range(1, conn_ids + 1) if hub.session(c) is not None}
        for conn in live_before:
            sink.take(conn)
        conn_ids += op == "connect"
        now = play(hub, (op, a, b), sorted(live_before), conn_ids, now)
        after = {u: hub.statuses.user_presence(u, now).status for u in USERS}
        changed = {u for u in USERS if before[u] != after[u]}
        for conn in live_before:
            session = hub.session(conn)
            if session is None:
                continue  # closed during the step
            me = session.user
            expected = set()
            for user in changed - {me}:
                small_groups = [
                    g
                    for g in hub.store.groups_of(user)
                    if me in (hub.store.group_members(g) or ())
                    and len(hub.store.group_members(g) or ()) <= LIMIT
                ]
                if hub.store.are_friends(me, user) or small_groups:
                    expected.add((user, after[user]))
            got = [
                (f["user"], f["status"])
                for f in sink.frames.get(conn, [])
                if f["type"] == "presence"
            ]
            assert len(got) == len(set(got)), f"duplicate presence events: {got}"
            assert set(got) == expected


def test_slow_client_never_ends_on_a_stale_status() -> None:
    """A pending presence event, then a friendship snapshot, then a newer transition: the
    newest state must be what the client sees last (the snapshot seals the pending event, so
    the newer one is queued after the snapshot)."""
    sink = QueueSink()
    boxes = sink.boxes
    hub = Hub(HubSettings(), MemoryStore(), sink)
    hub.membership.set_group("g", ["alice", "bob"])
    hub.open_session(1, "alice", "phone", now=0)
    boxes[1].pop_all()
    hub.open_session(2, "bob", "phone", now=1)  # presence bob online, queued for alice
    hub.membership.add_friendship("alice", "bob", 0)  # snapshot of bob, queued for alice
    hub.lifecycle.logout("bob")  # presence bob offline
    frames = [orjson.loads(o.text) for o in boxes[1].pop_all()]
    last = frames[-1]
    status = last["status"] if last["type"] == "presence" else last["friends"][0]["status"]
    assert status == "offline"


# ------------------------------------------------------------------ nearby friends

NEARBY_USERS = ["n1", "n2", "n3"]
# points on a line, 3 km apart: radius 5 miles reaches the next two, not three away
POINTS = [(0.0, 0.027 * i) for i in range(5)]

nearby_step = st.one_of(
    st.tuples(st.just("move"), st.sampled_from(NEARBY_USERS), st.integers(0, 4)),
    st.tuples(st.just("share"), st.sampled_from(NEARBY_USERS), st.booleans()),
    st.tuples(
        st.just("radius"), st.sampled_from(NEARBY_USERS), st.sampled_from([1000, 4000, 8000])
    ),
    st.tuples(st.just("unfriend"), st.sampled_from(NEARBY_USERS), st.sampled_from(NEARBY_USERS)),
    st.tuples(st.just("befriend"), st.sampled_from(NEARBY_USERS), st.sampled_from(NEARBY_USERS)),
    st.tuples(st.just("query"), st.sampled_from(NEARBY_USERS), st.none()),
    st.tuples(st.just("wait"), st.sampled_from([10, 200, 700]), st.none()),
    # Frames of one connection read at once (``Nearby.defer_moves``).
    # (Settings changes in one: test_a_read_of_several_frames_makes_what_one_frame_a_read_makes.)
    st.tuples(
        st.just("burst"),
        st.sampled_from(NEARBY_USERS),
        st.lists(
            st.one_of(
                st.tuples(st.just("move"), st.integers(0, 4)),
                st.tuples(st.just("query_plain"), st.none()),
            ),
            min_size=2,
            max_size=4,
        ),
    ),
)


@given(st.lists(nearby_step, max_size=30))
def test_nearby_frames_are_consistent(steps: list[tuple[Any, ...]]) -> None:
    """friend_location only for a friend sharing within the viewer's radius at that moment;
    friend_gone only for a friend the connection was shown, once."""
    from geopresence.model.geo import haversine_m, within
    from geopresence.wire.client_messages import NearbyFriendsQuery, SettingsUpdate

    hub, sink = make_hub(offline_after=10_000, location_ttl=600)
    now = 0.0
    conn_of = {user: i + 1 for i, user in enumerate(NEARBY_USERS)}
    for user, conn in conn_of.items():
        hub.open_session(conn, user, "d", now)
    for a, b in (("n1", "n2"), ("n2", "n3"), ("n1", "n3")):
        hub.membership.add_friendship(a, b, now)
    view: dict[int, set[str]] = {conn: set() for conn in conn_of.values()}
    for op, a, b in steps:
        for conn in conn_of.values():
            sink.take(conn)
            hub.handle(conn, Heartbeat(), now)  # keep everyone online
        if op in ("move", "share"):
            hub.handle(conn_of[a], burst_client_message(op, b, 0, now), now)
        elif op == "burst":
            hub.nearby.defer_moves()
            for kind, value in b:
                hub.handle(conn_of[a], burst_client_message(kind, value, 0, now), now)
            hub.nearby.show_moves()
        elif op == "radius":
            hub.handle(conn_of[a], SettingsUpdate(radius_m=float(b)), now)
        elif op == "unfriend":
            hub.membership.remove_friendship(a, b)
        elif op == "befriend" and a != b:
            hub.membership.add_friendship(a, b, now)
        elif op == "query":
            hub.handle(conn_of[a], NearbyFriendsQuery(), now)
        elif op == "wait":
            now += a
            hub.expire(now)
        for viewer, conn in conn_of.items():
            for frame in sink.frames.get(conn, []):
                if frame["type"] == "friend_location":
                    mover = frame["user"]
                    assert hub.store.are_friends(viewer, mover)
                    assert hub.store.get_settings(mover).share_location
                    me = hub.nearby.locations.get(viewer, now)
                    assert me is not None
                    d = haversine_m(me.lat, me.lon, frame["lat"], frame["lon"])
                    assert frame["distance_m"] == pytest.approx(d)
                    assert within(d, hub.nearby.radius(viewer))
                    view[conn].add(mover)
                elif frame["type"] == "friend_gone":
                    assert frame["user"] in view[conn], f"gone without being shown: {frame}"
                    view[conn].discard(frame["user"])
                elif frame["type"] == "nearby_friends":
                    view[conn] |= {f["user"] for f in frame["friends"]}


def test_moves_read_at_once_show_only_the_newest() -> None:
    from geopresence.wire.client_messages import LocationUpdate

    hub, sink = make_hub()
    hub.membership.add_friendship("alice", "bob", 0)
    hub.membership.add_friendship("alice", "carol", 0)
    for conn, user in ((1, "alice"), (2, "bob"), (3, "carol")):
        hub.open_session(conn, user, "d", 0)
    hub.handle(2, LocationUpdate(lat=0.0, lon=0.0), 1)
    hub.handle(3, LocationUpdate(lat=0.0, lon=1.0), 1)  # far from bob and alice
    hub.handle(1, LocationUpdate(lat=0.0, lon=0.01), 1)
    for conn in (1, 2, 3):
        sink.take(conn)
    hub.nearby.defer_moves()
    for lon in (0.011, 0.012, 0.013):
        hub.handle(1, LocationUpdate(lat=0.0, lon=lon), 2)
    assert sink.take(2) == []  # not shown yet
    hub.nearby.show_moves()
    assert hub.nearby.updates_accepted == 6  # each move stored
    [shown] = sink.take(2)
    assert (shown["type"], shown["user"], shown["lon"]) == ("friend_location", "alice", 0.013)
    assert sink.take(3) == []  # carol is out of range


def shown_nearby(hub: Hub, sink: RecordingSink) -> Callable[[int], list[tuple[str, Any]]]:
    """alice (conn 1) and bob (conn 2), friends 1.1 km apart, each shown the other; what a
    connection was sent since, by type and user (or ``re``)."""
    from geopresence.wire.client_messages import LocationUpdate

    hub.membership.add_friendship("alice", "bob", 0)
    hub.open_session(1, "alice", "d", 0)
    hub.open_session(2, "bob", "d", 0)
    hub.handle(2, LocationUpdate(lat=0.0, lon=0.0), 1)
    hub.handle(1, LocationUpdate(lat=0.0, lon=0.01), 1)
    hub.handle(2, LocationUpdate(lat=0.0, lon=0.0), 1)
    assert hub.nearby.views._shown == {1: {"bob"}, 2: {"alice"}}
    sink.take(1), sink.take(2)

    def seen(conn: int) -> list[tuple[str, Any]]:
        return [(f["type"], f.get("user", f.get("re"))) for f in sink.take(conn)]

    return seen


def test_moves_read_at_once_check_the_movers_view_against_the_newest() -> None:
    """A friend out of range of a position passed within a read, but in range of the newest,
    stays shown: no friend_gone, and the next move of the friend updates it."""
    from geopresence.wire.client_messages import LocationUpdate

    hub, sink = make_hub()
    seen = shown_nearby(hub, sink)
    hub.nearby.defer_moves()
    for lon in (0.2, 0.01):  # 22 km away (beyond 5 miles), then back
        hub.handle(1, LocationUpdate(lat=0.0, lon=lon), 2)
    hub.nearby.show_moves()
    assert seen(1) == []
    assert hub.nearby.views._shown[1] == {"bob"}
    assert seen(2) == [("friend_location", "alice")]
    hub.nearby.defer_moves()  # a read that ends away: bob leaves the view, once
    for lon in (0.01, 0.2):
        hub.handle(1, LocationUpdate(lat=0.0, lon=lon), 3)
    assert seen(1) == []  # checked at the read's end
    hub.nearby.show_moves()
    assert seen(1) == [("friend_gone", "bob")]
    assert seen(2) == [("friend_gone", "alice")]  # the newest only, fanned out


def test_a_bug_showing_moves_leaves_no_check_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The moves' checks run even when showing them to friends fails (a bug): none may wait
    for another connection's read."""
    from geopresence.core.nearby import Nearby
    from geopresence.wire.client_messages import LocationUpdate

    hub, sink = make_hub()
    seen = shown_nearby(hub, sink)
    hub.nearby.defer_moves()
    hub.handle(1, LocationUpdate(lat=0.0, lon=0.2), 2)

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Nearby, "_publish_move", broken)
    with pytest.raises(RuntimeError):
        hub.nearby.show_moves()
    assert seen(1) == [("friend_gone", "bob")]


@pytest.mark.parametrize("then", ["heartbeat", "bad_location", "undecodable", "rate_limited"])
def test_a_reply_within_a_read_follows_what_the_moves_before_it_did(then: str) -> None:
    """Moves read at once leave the mover's own view checked before anything is said to the
    mover: a heartbeat's reply, an error reply, one for a frame the shell could not decode,
    one for the rate limit."""
    from geopresence.wire.client_messages import LocationUpdate

    hub, sink = make_hub(rate_limit=1.0, rate_burst=1)
    seen = shown_nearby(hub, sink)
    hub.nearby.defer_moves()
    hub.handle(1, LocationUpdate(lat=0.0, lon=0.2), 50)
    if then == "heartbeat":
        hub.handle(1, Heartbeat(id=7), 50)
    elif then == "bad_location":
        hub.handle(1, LocationUpdate(lat=0.0, lon=0.01, ts=1e9, id=7), 50)
    elif then == "undecodable":
        hub.reply_error(1, ProtocolError("bad_request", "not JSON", 7))
    else:
        assert hub.admit(1, 50, 6)  # the burst's one token
        assert not hub.admit(1, 50, 7)
    assert seen(1) == [("friend_gone", "bob"), ("heartbeat" if then == "heartbeat" else "error", 7)]
    hub.nearby.show_moves()
    assert seen(1) == []
    assert seen(2) == [("friend_gone", "alice")]


BURST_USERS = ["alice", "bob", "carol", "dave", "erin"]  # dave: nobody's friend
BURST_CONNS = {1: "alice", 2: "bob", 3: "carol", 4: "dave", 5: "erin", 6: "alice"}
burst_message = st.one_of(
    st.tuples(st.just("move"), st.integers(0, 4)),
    st.tuples(st.just("move_ts"), st.tuples(st.integers(0, 4), st.integers(-5, 5))),
    st.tuples(st.just("share"), st.booleans()),
    st.tuples(st.just("radius"), st.sampled_from([1000.0, 4000.0, 8000.0])),
    st.tuples(st.just("visible"), st.booleans()),
    st.tuples(st.just("query"), st.integers(0, 4)),  # nearby_friends with a position
    st.tuples(st.just("query_plain"), st.none()),
    st.tuples(st.just("watch"), st.booleans()),
    st.tuples(st.just("people"), st.none()),
    st.tuples(st.just("group_presence"), st.none()),
    st.tuples(st.just("heartbeat"), st.none()),
    st.tuples(st.just("send"), st.sampled_from(BURST_USERS)),
    st.tuples(st.just("send_group"), st.none()),
    st.tuples(st.just("hello"), st.none()),
    st.tuples(st.just("logout"), st.none()),
)


def burst_client_message(kind: str, value: Any, i: int, now: float) -> Any:
    """The client message ``burst_message`` stands for (request id ``i``)."""
    from geopresence.wire.client_messages import (
        GroupPresenceQuery,
        Hello,
        LocationUpdate,
        Logout,
        NearbyFriendsQuery,
        NearbyPeopleQuery,
        Send,
        SettingsUpdate,
        WatchStrangers,
    )

    makers: dict[str, Callable[[], Any]] = {
        "move": lambda: LocationUpdate(lat=POINTS[value][0], lon=POINTS[value][1]),
        "move_ts": lambda: LocationUpdate(
            lat=POINTS[value[0]][0], lon=POINTS[value[0]][1], ts=now + value[1]
        ),
        "share": lambda: SettingsUpdate(share_location=value),
        "radius": lambda: SettingsUpdate(radius_m=value),
        "visible": lambda: SettingsUpdate(visible_to_strangers=value),
        "query": lambda: NearbyFriendsQuery(id=i, lat=POINTS[value][0], lon=POINTS[value][1]),
        "query_plain": lambda: NearbyFriendsQuery(id=i),
        "watch": lambda: WatchStrangers(id=i, on=value),
        "people": lambda: NearbyPeopleQuery(id=i),
        "group_presence": lambda: GroupPresenceQuery(id=i, group="g"),
        "heartbeat": lambda: Heartbeat(id=i),
        "send": lambda: Send(id=i, to=value, text="hi"),
        "send_group": lambda: Send(id=i, group="g", text="hey"),
        "hello": lambda: Hello(id=i, user="x", device="y"),
        "logout": lambda: Logout(id=i),
    }
    return makers[kind]()


@given(
    st.lists(
        st.tuples(
            st.sampled_from(sorted(BURST_CONNS)),
            st.lists(
                st.tuples(burst_message, st.sampled_from([0.0, 0.0, 1.0, 350.0])),
                min_size=1,
                max_size=6,
            ),
            st.sampled_from([0.0, 1.0, 30.0, 700.0]),  # before the read (TTL: 600 s)
        ),
        max_size=10,
    )
)
# alice is shown bob, then moves out of his range and sends a heartbeat in one read.
@example([(2, [(("move", 0), 0.0)], 0.0), (1, [(("move", 1), 0.0)], 0.0),
          (2, [(("move", 1), 0.0)], 0.0),
          (1, [(("move", 4), 0.0), (("heartbeat", None), 0.0)], 0.0)])  # fmt: skip
# ... moves out of his range and back in one read; then he moves, then she leaves.
@example([(2, [(("move", 0), 0.0)], 0.0), (1, [(("move", 1), 0.0)], 0.0),
          (2, [(("move", 0), 0.0)], 0.0), (1, [(("move", 4), 0.0), (("move", 1), 0.0)], 0.0),
          (2, [(("move", 2), 0.0)], 0.0), (1, [(("move", 4), 0.0)], 0.0)])  # fmt: skip
# ... moves out of his range and back in one read; then their locations expire.
@example([(2, [(("move", 0), 0.0)], 0.0), (1, [(("move", 1), 0.0)], 0.0),
          (2, [(("move", 0), 0.0)], 0.0), (1, [(("move", 4), 0.0), (("move", 1), 0.0)], 0.0),
          (2, [(("heartbeat", None), 0.0)], 700.0)])  # fmt: skip
# ... watching strangers, moves out of his range in a read of two moves.
@example([(1, [(("watch", True), 0.0)], 0.0), (5, [(("watch", True), 0.0)], 0.0),
          (2, [(("move", 0), 0.0)], 0.0), (1, [(("move", 1), 0.0)], 0.0),
          (5, [(("move", 3), 0.0)], 0.0), (2, [(("move", 0), 0.0)], 0.0),
          (1, [(("move", 4), 0.0), (("move", 3), 0.0)], 0.0)])  # fmt: skip
def test_a_read_of_several_frames_makes_what_one_frame_a_read_makes(
    reads: list[tuple[int, list[tuple[tuple[str, Any], float]], float]],
) -> None:
    """What every connection is sent for a connection's read of several frames, through the
    real coalescing queues, is what handling them one by one sends: deferring the moves
    (``Nearby.defer_moves``) changes the work, not the frames, but in two ways. A friend's
    move into range and out of it within the read leaves no friend_gone for a friend that
    was never shown; a friend out of range of a position the mover passed, but in range of
    its newest, stays in the mover's view (a view that may then differ from one by one's
    about that friend until either moves, holding more, never less, and only friends in
    range). Stranger frames and the mover's friend_gone may change places."""
    from geopresence.model.geo import haversine_m, within

    hubs, boxes = [], []
    for _ in range(2):
        sink = QueueSink()
        hub = Hub(HubSettings(offline_after=10_000), MemoryStore(), sink)
        for a, b in (("alice", "bob"), ("bob", "carol"), ("alice", "carol"), ("alice", "erin")):
            hub.membership.add_friendship(a, b, 0)
        hub.membership.set_group("g", BURST_USERS)
        for conn, user in BURST_CONNS.items():  # alice on two devices
            hub.open_session(conn, user, f"d{conn}", 0)
        hubs.append(hub)
        boxes.append(sink.boxes)
    at_once, one_by_one = hubs

    def views(hub: Hub) -> dict[int, set[str]]:
        return {c: set(hub.nearby.views._shown.get(c, ())) for c in BURST_CONNS}

    def sent(c: int) -> list[list[str]]:
        return [[o.text for o in box.pop_all()] if (box := b.get(c)) else [] for b in boxes]

    def comparable(texts: list[list[str]], differ: set[str]) -> list[list[str]]:
        """Both hubs' frames without those about friends their views differ on, stranger
        frames after the others."""
        kept = [
            [t for t in each if not t.startswith('{"type":"friend_')
             or not any(f'"user":"{u}"' in t for u in differ)]
            for each in texts
        ]  # fmt: skip
        return [
            [t for t in each if not t.startswith('{"type":"stranger_')]
            + [t for t in each if t.startswith('{"type":"stranger_')]
            for each in kept
        ]

    now = 0.0
    for c in BURST_CONNS:
        sent(c)
    for step, (conn, frames, wait) in enumerate(reads):
        if wait:
            now += wait
            before = views(at_once), views(one_by_one)
            for hub in hubs:
                hub.expire(now)
            for c in BURST_CONNS:
                texts = comparable(sent(c), before[0][c] ^ before[1][c])
                assert texts[0] == texts[1], f"expiry, conn {c}"
        shown_before, ref_before = views(at_once), views(one_by_one)
        at_once.nearby.defer_moves()
        for i, ((kind, value), dt) in enumerate(frames):
            if at_once.session(conn) is None:
                break  # logged out
            now += dt
            at_once.handle(conn, burst_client_message(kind, value, i, now), now)
            one_by_one.handle(conn, burst_client_message(kind, value, i, now), now)
        at_once.nearby.show_moves()
        shown_after, ref_after = views(at_once), views(one_by_one)
        for c in BURST_CONNS:  # each read's frames are written once it is handled
            texts = sent(c)
            assert ref_after[c] <= shown_after[c], f"conn {c}, read {step}"
            viewer = BURST_CONNS[c]
            me = at_once.nearby.locations.get(viewer, now)
            for friend in shown_after[c] - ref_after[c]:
                there = at_once.nearby.locations.get(friend, now)
                if me is None or there is None:
                    continue  # a TTL ended since the check: the next sweep tells it
                d = haversine_m(me.lat, me.lon, there.lat, there.lon)
                assert within(d, at_once.nearby.radius(viewer)), f"conn {c}: {friend} shown"
            differ = (shown_before[c] ^ ref_before[c]) | (shown_after[c] ^ ref_after[c])
            texts = comparable(texts, differ)
            # One by one, a friend's move into range and then out of it within the read
            # leaves a friend_gone (its friend_location replaced in the queue) for a friend
            # the connection was never shown; at once, nothing: the only difference.
            spurious = {
                orjson.dumps({"type": "friend_gone", "user": u, "reason": "out_of_range"}).decode()
                for u in BURST_USERS
                if u not in shown_before[c]
                and not any(
                    t.startswith('{"type":"friend_') and f'"user":"{u}"' in t for t in texts[0]
                )
            }
            assert texts[0] == [t for t in texts[1] if t not in spurious], f"conn {c}, read {step}"


def test_unfriend_refriend_order_survives_a_backlog() -> None:
    """A queued presence event must not be replaced by one that then arrives before a
    friend_removed / friends_presence sent after it (the client would end on a wrong list)."""
    sink = QueueSink()
    boxes = sink.boxes
    hub = Hub(HubSettings(), MemoryStore(), sink)
    hub.membership.add_friendship("alice", "bob", 0)
    hub.open_session(1, "alice", "phone", now=0)
    hub.open_session(2, "bob", "phone", now=0)
    boxes[1].pop_all()
    hub.lifecycle.logout("bob")  # presence offline queued for alice
    hub.membership.remove_friendship("alice", "bob")
    hub.membership.add_friendship("alice", "bob", 1)
    hub.open_session(3, "bob", "laptop", now=2)  # presence online
    frames = [orjson.loads(o.text) for o in boxes[1].pop_all()]
    friends: dict[str, str] = {}
    for frame in frames:
        if frame["type"] == "friends_presence":
            friends.update({f["user"]: f["status"] for f in frame["friends"]})
        elif frame["type"] == "friend_removed":
            friends.pop(frame["user"], None)
        elif frame["type"] == "presence" and frame["user"] in friends:
            friends[frame["user"]] = frame["status"]
    assert friends == {"bob": "online"}


def test_refriend_under_backlog_keeps_nearby_frames_in_order() -> None:
    from geopresence.wire.client_messages import LocationUpdate

    sink = QueueSink()
    hub = Hub(HubSettings(), MemoryStore(), sink)
    hub.membership.add_friendship("alice", "bob", 0)
    hub.open_session(1, "alice", "phone", now=0)
    hub.open_session(2, "bob", "phone", now=0)
    hub.handle(1, LocationUpdate(lat=10.0, lon=10.0), 0)
    sink.boxes[1].pop_all()
    hub.handle(2, LocationUpdate(lat=10.001, lon=10.0), 1)  # friend_location(bob) queued
    hub.membership.remove_friendship("alice", "bob")  # friend_gone(unfriended), friend_removed
    hub.membership.add_friendship("alice", "bob", 2)  # friends_presence, friend_location
    kinds = [
        (frame["type"], frame.get("reason"))
        for frame in (orjson.loads(o.text) for o in sink.boxes[1].pop_all())
        if frame["type"] in ("friend_location", "friend_gone", "friend_removed", "friends_presence")
    ]
    assert kinds == [
        ("friend_gone", "unfriended"),
        ("friend_removed", None),
        ("friends_presence", None),
        ("friend_location", None),
    ]


def test_no_friend_gone_for_friends_only_on_other_pages() -> None:
    from geopresence.wire.client_messages import LocationUpdate, NearbyFriendsQuery

    hub, sink = make_hub()
    for i in range(21):
        hub.membership.add_friendship("alice", f"f{i:02d}", 0)
        hub.open_session(10 + i, f"f{i:02d}", "d", now=0)
        hub.handle(10 + i, LocationUpdate(lat=10.0 + i * 1e-4, lon=10.0), 0)
    hub.open_session(1, "alice", "phone", now=0)
    hub.handle(1, NearbyFriendsQuery(page=0, lat=10.0, lon=10.0), 1)  # f00..f19 on page 0
    sink.take(1)
    hub.handle(30, LocationUpdate(lat=20.0, lon=10.0), 2)  # f20, never shown, walks away
    assert [f for f in sink.take(1) if f["type"] == "friend_gone"] == []
    hub.handle(10, LocationUpdate(lat=20.0, lon=10.0), 3)  # f00, shown, walks away
    assert [f["user"] for f in sink.take(1) if f["type"] == "friend_gone"] == ["f00"]


class StoredSubscriptionsBroker(MemoryBroker):
    """Keeps every user-channel subscription, as the multi-node broker does locally."""

    def derive_user_channels(self, subscribers_of: Callable[[str], Iterable[ConnId]]) -> None:
        pass


moving_step = st.one_of(step, st.tuples(st.just("move"), st.integers(0, 20), st.integers(0, 3)))


@given(st.lists(moving_step, max_size=40))
@example(  # presence and locations between two friends, then one leaves
    [("befriend", "u1", "u2"), ("connect", "u1", "d1"), ("connect", "u2", "d1"),
     ("move", 0, 0), ("move", 1, 1), ("logout", 0, None)]
)  # fmt: skip
@example(  # befriended while both are online, then unfriended, then one leaves and returns
    [("connect", "u1", "d1"), ("connect", "u2", "d1"), ("befriend", "u1", "u2"),
     ("move", 1, 1), ("move", 0, 0), ("move", 1, 2), ("unfriend", "u1", "u2"),
     ("move", 0, 1), ("move", 1, 3), ("befriend", "u1", "u2"), ("drop", 0, None),
     ("move", 0, 2), ("connect", "u1", "d2"), ("move", 1, 0), ("move", 0, 3)]
)  # fmt: skip
def test_derived_user_channels_deliver_what_stored_subscriptions_deliver(
    steps: list[tuple[Any, ...]],
) -> None:
    """On one node, ``user:U``'s subscribers are derived from the friendship graph instead of
    stored (MemoryBroker.derive_user_channels): every connection gets the same frames."""
    settings = HubSettings(presence_fanout_limit=LIMIT)
    derived_sink = RecordingSink()
    derived = Hub(settings, MemoryStore(), derived_sink), derived_sink
    stored_sink = RecordingSink()
    stored = (
        Hub(settings, MemoryStore(), stored_sink, broker_factory=StoredSubscriptionsBroker),
        stored_sink,
    )
    assert isinstance(stored[0].broker, StoredSubscriptionsBroker)
    now, conn_ids = 0.0, 0
    for op, a, b in steps:
        live = sorted(c for c in range(1, conn_ids + 1) if derived[0].session(c) is not None)
        conn_ids += op == "connect"
        play(stored[0], (op, a, b), live, conn_ids, now)
        now = play(derived[0], (op, a, b), live, conn_ids, now)
    assert derived[1].frames == stored[1].frames
    assert derived[1].closed == stored[1].closed


def test_one_node_a_shown_stranger_outside_the_watched_cells_that_goes_offline_leaves() -> None:
    """One node: a stranger shown by nearby_people outside the watch's cells (its move is
    waiting out the rate limit) that goes offline leaves the view at once (it used to stay
    until the watcher's move was applied, then leave as out_of_range)."""
    sink = RecordingSink()
    settings = HubSettings(strangers_query_interval=10.0, strangers_query_burst=3)
    hub = Hub(settings, MemoryStore(), sink)
    hub.open_session(1, "walt", "phone", now=0)
    hub.open_session(2, "sam", "phone", now=0)
    hub.handle(2, SettingsUpdate(visible_to_strangers=True, id=1), now=0)
    hub.handle(2, LocationUpdate(lat=37.5665, lon=126.978), now=0)
    hub.handle(1, SettingsUpdate(radius_m=2000, id=1), now=0)
    hub.handle(1, LocationUpdate(lat=37.8665, lon=126.978), now=0)  # ~33 km away
    hub.handle(1, WatchStrangers(on=True, id=2), now=0)
    hub.handle(1, LocationUpdate(lat=37.8765, lon=126.978), now=1)  # applied at once
    hub.handle(1, LocationUpdate(lat=37.5715, lon=126.978), now=2)  # near sam: due at 11
    hub.handle(1, NearbyPeopleQuery(id=3), now=2)
    [reply] = sink.take(1, "nearby_people")
    assert [p["user"] for p in reply["people"]] == ["sam"]
    hub.handle(2, Logout(id=9), now=3)
    assert sink.take(1, "stranger_gone") == [
        {"type": "stranger_gone", "user": "sam", "reason": "offline"}
    ]
    hub.expire(12)
    assert sink.take(1, "stranger_gone") == []
