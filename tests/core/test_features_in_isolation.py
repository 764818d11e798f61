"""Nearby friends and nearby strangers on a fake ``FeatureContext``: no hub, no event loop.

The features see only the seams of ``geopresence.core.context``; these tests prove it by
driving each one with a hand-made context, view and listener."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Set
from typing import Any

import attrs

from geopresence.core.broker import ConnId, MemoryBroker
from geopresence.core.context import Session
from geopresence.core.journal import MemoryJournal
from geopresence.core.locations import Location
from geopresence.core.nearby import LocationEvent, Nearby
from geopresence.core.replication import Replicator
from geopresence.core.replies import Replies
from geopresence.core.store import MemoryStore, UserSettings
from geopresence.core.stranger_events import StrangerGoneEvent, cell_channels
from geopresence.core.stranger_index import Answer
from geopresence.core.stranger_queries import snap
from geopresence.core.stranger_watches import GoneDuringSearches
from geopresence.core.strangers import Strangers
from geopresence.model.geocells import INDEX_PRECISION, cell_of
from geopresence.model.records import Record
from geopresence.wire.client_messages import (
    LocationUpdate,
    NearbyPeopleQuery,
    WatchStrangers,
)
from geopresence.wire.errors import ProtocolError
from geopresence.wire.outgoing import Outgoing
from geopresence.wire.protocol import encode, error_message
from tests.helpers import RecordingSink


class FakeContext:
    """A ``FeatureContext`` with sessions in a dict; published events go to ``deliver``."""

    def __init__(self) -> None:
        self.sink = RecordingSink()
        self.replies = Replies(self.sink, max_frames=1024, max_chars=1 << 22)
        self.store = MemoryStore()
        self.journal = MemoryJournal()
        self.replicator: Replicator | None = None
        self.replaying = False
        self.sessions: dict[ConnId, Session] = {}
        self.published: list[tuple[list[str], object]] = []
        self.journaled: list[Record] = []
        self.deliver: Any = None
        self.broker = MemoryBroker(lambda conn, event: self.deliver(conn, event))

    def session(self, conn: ConnId) -> Session | None:
        return self.sessions.get(conn)

    def connections_of(self, user: str) -> Set[ConnId]:
        return frozenset(c for c, s in self.sessions.items() if s.user == user)

    def is_connected(self, user: str) -> bool:
        return bool(self.connections_of(user))

    def publish(
        self, channels: Iterable[str], event: object, exclude: Set[ConnId] = frozenset()
    ) -> None:
        channels = list(channels)
        self.published.append((channels, event))
        self.broker.publish(channels, event, exclude)

    def publish_everywhere(self, channels: Iterable[str], event: object) -> None:
        self.publish(channels, event)

    def reply_error(self, conn: ConnId, error: ProtocolError) -> None:
        self.sink.send(conn, Outgoing(encode(error_message(error))))

    def journal_append(self, record: Record) -> int:
        self.journaled.append(record)
        return self.journal.append(record)

    def reply_when_durable(self, conn: ConnId, message: Outgoing) -> None:
        self.sink.send(conn, message)


@attrs.define
class FakeView:
    """A ``LocationView`` over a dict."""

    locations: dict[str, Location] = attrs.Factory(dict)
    radius_m: float = 2_000.0

    def location_of(self, user: str, now: float) -> Location | None:
        return self.locations.get(user)

    def expires_at(self, user: str) -> float | None:
        return None if user not in self.locations else math.inf  # never, here

    def radius(self, user: str) -> float:
        return self.radius_m


class RecordingListener:
    """A ``LocationListener`` that remembers what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def on_location(self, user: str, location: Location, now: float) -> None:
        self.calls.append(("location", user, location.lat, location.lon))

    def on_location_gone(self, user: str, reason: str) -> None:
        self.calls.append(("gone", user, reason))

    def on_location_dropped(self, user: str, last: Location, until: float) -> None:
        self.calls.append(("dropped", user))

    def on_visibility(self, user: str, visible: bool, now: float) -> None:
        self.calls.append(("visibility", user, visible))

    def on_radius_changed(self, user: str, now: float) -> None:
        self.calls.append(("radius", user))

    def tick(self, now: float) -> None:
        pass

    def next_deadline(self) -> float | None:
        return None


def frames(sink: RecordingSink, conn: ConnId) -> list[dict[str, Any]]:
    return sink.take(conn)


def test_strangers_on_a_fake_context_see_rounded_cell_distances() -> None:
    ctx = FakeContext()
    view = FakeView({"carol": Location(48.8566, 2.3522, 0.0)})
    strangers = Strangers(ctx, view, location_ttl=300.0, query_burst=3, query_interval=10.0)
    ctx.deliver = strangers.deliver
    ctx.store.put_settings("alice", UserSettings(visible_to_strangers=True))
    ctx.sessions[1] = Session(1, "carol", "phone")
    strangers.on_watch(ctx.sessions[1], WatchStrangers(on=True, id=7), now=0.0)
    assert frames(ctx.sink, 1) == [{"type": "watch_strangers", "re": 7, "on": True}]

    alice = Location(48.8566 + 0.009, 2.3522, 1.0)  # ~1 km north of carol
    view.locations["alice"] = alice
    strangers.on_location("alice", alice, now=1.0)
    [seen] = frames(ctx.sink, 1)
    assert seen["type"] == "stranger_nearby" and seen["user"] == "alice"
    assert seen["distance_m"] % 100 == 0 and 900 <= seen["distance_m"] <= 1100
    assert "lat" not in seen and "lon" not in seen

    ctx.store.add_friendship("alice", "carol")  # friends are never strangers
    strangers.on_friendship_added("alice", "carol")
    assert frames(ctx.sink, 1) == [{"type": "stranger_gone", "user": "alice", "reason": "friend"}]


class DeferredIndex:
    """A ``StrangerIndex`` that answers when told (as Redis does, a round trip later) and
    records what it is told."""

    def __init__(self) -> None:
        self.told: list[tuple[str, str]] = []
        self.pending: list[Answer] = []
        self.lapses: list[tuple[str, float, Callable[[], None]]] = []

    def entered(self, user: str, spot: Location, left: str | None, until: float) -> None:
        self.told.append(("entered", user))

    def stayed(self, user: str, spot: Location, until: float) -> None:
        self.told.append(("stayed", user))

    def left(self, user: str, cell: str) -> None:
        self.told.append(("left", user))

    def lapsed(self, user: str, ts: float, then: Callable[[], None]) -> None:
        self.lapses.append((user, ts, then))

    def search(
        self, center: Location, radius_m: float, excluded: Set[str], need: int, answer: Answer
    ) -> None:
        self.pending.append(answer)


def carol_watching_and_searching() -> tuple[FakeContext, Strangers, DeferredIndex]:
    """carol (connection 1, in Paris) watches strangers and sends a ``nearby_people`` (id 2)
    whose search waits in the index's ``pending``."""
    ctx = FakeContext()
    view = FakeView({"carol": Location(48.8566, 2.3522, 0.0)})
    index = DeferredIndex()
    strangers = Strangers(
        ctx, view, location_ttl=10.0, query_burst=5, query_interval=1.0, index=index
    )
    ctx.deliver = strangers.deliver
    ctx.sessions[1] = Session(1, "carol", "phone")
    strangers.on_watch(ctx.sessions[1], WatchStrangers(on=True, id=1), now=0.0)
    strangers.on_query(ctx.sessions[1], NearbyPeopleQuery(id=2), now=0.0)
    return ctx, strangers, index


def test_strangers_with_a_shared_index_answer_later_and_tell_what_they_do() -> None:
    """With several nodes: the search's answer comes later (to a connection still open;
    None: an ``internal`` error), and a stranger this node does not hold (it is on another
    node) that goes offline leaves the view of the watchers showing it."""
    ctx, strangers, index = carol_watching_and_searching()
    strangers.on_query(ctx.sessions[1], NearbyPeopleQuery(id=3), now=0.0)
    frames(ctx.sink, 1)
    assert len(index.pending) == 2
    sam = snap(Location(48.8566 + 0.002, 2.3522, 0.0))
    index.pending[0]((1, [(200.0, "sam", sam)]))
    [reply] = frames(ctx.sink, 1)
    assert reply["re"] == 2 and [p["user"] for p in reply["people"]] == ["sam"]
    index.pending[1](None)
    [error] = frames(ctx.sink, 1)
    assert (error["type"], error["re"], error["code"]) == ("error", 3, "internal")
    # sam is on another node: this one holds neither his location nor his grid entry.
    assert strangers.grid.get("sam") is None
    strangers.on_location_gone("sam", "offline")
    assert frames(ctx.sink, 1) == [{"type": "stranger_gone", "user": "sam", "reason": "offline"}]
    strangers.on_location_gone("sam", "offline")  # told once
    assert frames(ctx.sink, 1) == []
    # A connection closed before the answer gets nothing.
    strangers.on_query(ctx.sessions[1], NearbyPeopleQuery(id=4), now=5.0)
    del ctx.sessions[1]
    strangers.on_session_closed(1)
    index.pending[2]((0, []))
    assert frames(ctx.sink, 1) == []
    # A visible user handled here: the index hears each move, once per coarse cell.
    ctx.store.put_settings("dan", UserSettings(visible_to_strangers=True))
    here = Location(48.85, 2.35, 6.0)
    strangers.on_location("dan", here, now=6.0)
    strangers.on_location("dan", Location(48.85, 2.35 + 0.00001, 7.0), now=7.0)
    strangers.on_location_gone("dan", "expired")
    assert index.told == [("entered", "dan"), ("stayed", "dan"), ("left", "dan")]
    # dan hides through another node: this node may have listed him itself (his moves
    # here, before it heard), so it takes him out too.
    strangers.on_location("dan", here, now=8.0)
    ctx.replaying = True
    strangers.on_visibility("dan", False, now=9.0)
    ctx.replaying = False
    assert index.told[-2:] == [("entered", "dan"), ("left", "dan")]


def test_a_location_dropped_here_that_nobody_renews_is_told_expired() -> None:
    """dan's last session here ended: this node drops his location silently (another node
    may keep it current). When it would have expired, the index says whether a node renewed
    it; if none did, the watchers of his cells, on every node, are told it expired."""
    ctx, strangers, index = carol_watching_and_searching()
    ctx.store.put_settings("dan", UserSettings(visible_to_strangers=True))
    near = Location(48.8566 + 0.002, 2.3522, 3.0)
    strangers.on_location("dan", near, now=3.0)
    frames(ctx.sink, 1)
    strangers.on_location_dropped("dan", near, until=13.0)
    assert frames(ctx.sink, 1) == [] and strangers.next_deadline() == 13.0
    strangers.tick(12.9)
    assert index.lapses == []
    strangers.tick(13.0)
    [(user, ts, then)] = index.lapses
    assert (user, ts) == ("dan", 3.0)
    then()  # nobody renewed it
    assert frames(ctx.sink, 1) == [{"type": "stranger_gone", "user": "dan", "reason": "expired"}]
    [(channels, event)] = [p for p in ctx.published if isinstance(p[1], StrangerGoneEvent)]
    assert event == StrangerGoneEvent("dan", "expired") and channels
    # Back in this node's grid (a session here again) before then: no lapse is asked about.
    strangers.on_location("dan", near, now=14.0)
    strangers.on_location_dropped("dan", near, until=24.0)
    strangers.on_location("dan", near, now=20.0)
    strangers.tick(30.0)
    assert len(index.lapses) == 1


def test_nearby_on_a_fake_context_tells_its_listener_and_publishes() -> None:
    ctx = FakeContext()
    nearby = Nearby(ctx, location_ttl=300.0, default_radius=8_000.0, max_radius=50_000.0)
    listener = RecordingListener()
    nearby.listener = listener
    ctx.deliver = nearby.deliver
    ctx.store.add_friendship("alice", "bob")
    ctx.sessions[1] = Session(1, "alice", "phone")
    ctx.sessions[2] = Session(2, "bob", "phone")

    nearby.on_location(ctx.sessions[2], LocationUpdate(lat=48.85, lon=2.35), now=5.0)
    assert listener.calls == [("location", "bob", 48.85, 2.35)]
    [(channels, event)] = ctx.published
    assert channels == ["user:bob"]
    assert isinstance(event, LocationEvent) and event.user == "bob"
    assert nearby.location_of("bob", 5.0) == Location(48.85, 2.35, 5.0)
    assert nearby.location_of("bob", 5.0 + 301) is None  # the cache's TTL

    nearby.expire(5.0 + 301)
    assert ("gone", "bob", "expired") in listener.calls


def test_a_stranger_gone_while_a_search_is_in_flight_is_not_shown_by_its_answer() -> None:
    """Redis read sam, then sam's node expired him (stranger_gone on his cells) before the
    answer was handled: the answer leaves him out, as no other stranger_gone would come."""
    ctx, strangers, index = carol_watching_and_searching()
    frames(ctx.sink, 1)
    sam = snap(Location(48.8566 + 0.002, 2.3522, 0.0))
    ann = snap(Location(48.8566 + 0.004, 2.3522, 0.0))
    code = cell_of(sam.lat, sam.lon, INDEX_PRECISION)
    ctx.broker.publish(list(cell_channels(code)), StrangerGoneEvent("sam", "expired"))
    index.pending[0]((2, [(200.0, "sam", sam), (400.0, "ann", ann)]))
    [reply] = frames(ctx.sink, 1)
    assert [p["user"] for p in reply["people"]] == ["ann"] and reply["total"] == 1
    assert list(strangers._watches[1].shown) == ["ann"]
    # With no search in flight, nothing is kept of who left.
    assert not strangers.queries.gone_during._gone


def test_a_friend_made_while_a_search_is_in_flight_is_not_shown_as_a_stranger() -> None:
    ctx, strangers, index = carol_watching_and_searching()
    frames(ctx.sink, 1)
    ctx.store.add_friendship("carol", "sam")  # here, or applied from another node
    strangers.on_friendship_added("carol", "sam")
    index.pending[0]((1, [(200.0, "sam", snap(Location(48.8586, 2.3522, 0.0)))]))
    [reply] = frames(ctx.sink, 1)
    assert (reply["people"], reply["total"]) == ([], 0)
    assert "sam" not in strangers._watches[1].shown


def test_gone_during_searches_keeps_only_what_a_search_in_flight_needs() -> None:
    gone = GoneDuringSearches()
    gone.gone("x")  # no search in flight: nothing kept
    first = gone.begin()
    gone.gone("a")
    second = gone.begin()
    gone.gone("b")
    assert gone.since(first, "a") and gone.since(first, "b") and gone.since(second, "b")
    assert not gone.since(second, "a") and not gone.since(first, "x")
    gone.end(first)
    assert set(gone._gone) == {"b"}
    gone.end(second)
    assert gone._gone == {}
