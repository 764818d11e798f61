"""Nearby strangers (sans-I/O): geohash-cell channels, watchers and the nearby-people query.

The design's extension (end of seeds/nearby-friends-design.md): users who opt in
(``visible_to_strangers``) publish their moves into the channels of their geohash cells; a
watcher's connection subscribes to the cells that cover its radius (``geocells.cover``: exact,
never the 3x3 block that misses people) and is re-subscribed as it moves, touching only the
cells that changed. A stranger is published to the channels of every prefix of its cell (one
per precision), so watchers of any cover precision hear it, and a move between cells is
published to the old cells' channels as well so that watchers there see it leave.

Privacy: strangers never receive coordinates, only distances rounded to the nearest 100 m;
friends are never reported as strangers; users who did not opt in are never reported; the
nearby-people query is rate limited per connection so the rounding cannot be undone by many
queries from many positions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import attrs

from geopresence.broker import ConnId
from geopresence.geo import distance_within
from geopresence.geocells import MAX_PRECISION, cover
from geopresence.grid import StrangerGrid
from geopresence.locations import Location
from geopresence.outbox import Outgoing
from geopresence.protocol import (
    NearbyPeopleQuery,
    NearbyPeopleReply,
    Person,
    ProtocolError,
    StrangerGone,
    StrangerGoneReason,
    StrangerNearby,
    WatchStrangers,
    WatchStrangersReply,
    encode,
)

if TYPE_CHECKING:
    from geopresence.hub import Hub, Session

PAGE_SIZE: Final = 20
ROUND_TO_M: Final = 100
STRANGER_TAG: Final = "stranger"


def cell_channel(cell: str) -> str:
    """The channel of one geohash cell."""
    return f"cell:{cell}"


def rounded(distance_m: float) -> int:
    """A distance as strangers see it: the nearest multiple of 100 m."""
    return round(distance_m / ROUND_TO_M) * ROUND_TO_M


def _channels(*codes: str | None) -> set[str]:
    """The channels of every prefix (precision 1..MAX_PRECISION) of the given cells."""
    return {cell_channel(code[:p]) for code in codes if code for p in range(1, MAX_PRECISION + 1)}


@attrs.frozen(slots=True)
class StrangerEvent:
    """Published on cell channels when a visible user moves."""

    user: str
    location: Location
    now: float


@attrs.frozen(slots=True)
class StrangerGoneEvent:
    """Published on cell channels when a visible user stops being visible."""

    user: str
    reason: StrangerGoneReason


@attrs.define
class TokenBucket:
    """``capacity`` requests at once, refilled at one per ``interval`` seconds."""

    capacity: float
    interval: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """0 if a request may go now (and counts it), else seconds until one may."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) / self.interval)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) * self.interval


@attrs.define
class _Watch:
    cells: frozenset[str] = frozenset()
    shown: set[str] = attrs.Factory(set)


def _stranger_key(user: str) -> tuple[str, str]:
    return (STRANGER_TAG, user)


class Strangers:
    """The strangers part of the hub."""

    def __init__(self, hub: Hub, *, query_burst: int, query_interval: float) -> None:
        self.hub = hub
        self.grid = StrangerGrid()
        self.query_burst = query_burst
        self.query_interval = query_interval
        self._watches: dict[ConnId, _Watch] = {}
        # Per USER, not per connection: reconnecting or using another device must not
        # bring a fresh bucket (the limit protects strangers' rounded distances).
        self._buckets: dict[str, TokenBucket] = {}
        self.rate_limited = 0

    @property
    def watcher_count(self) -> int:
        return len(self._watches)

    # ------------------------------------------------------------------ client messages

    def on_watch(self, session: Session, message: WatchStrangers, now: float) -> None:
        conn = session.conn
        if message.on:
            if conn not in self._watches:
                self._watches[conn] = _Watch()
                self._recover(conn, session.user, now)
        else:
            watch = self._watches.pop(conn, None)
            if watch is not None:
                for cell in watch.cells:
                    self.hub.broker.unsubscribe(cell_channel(cell), conn)
        reply = WatchStrangersReply(re=message.id, on=message.on)
        self.hub.sink.send(conn, Outgoing(encode(reply)))

    def on_query(self, session: Session, query: NearbyPeopleQuery, now: float) -> None:
        conn = session.conn
        bucket = self._buckets.get(session.user)
        if bucket is None:
            self._forget_full_buckets(now)
            bucket = self._buckets[session.user] = TokenBucket(
                self.query_burst, self.query_interval, self.query_burst, now
            )
        wait = bucket.take(now)
        if wait:
            self.rate_limited += 1
            raise ProtocolError(
                "rate_limited",
                f"nearby_people is limited to {self.query_burst} queries at once and one per "
                f"{self.query_interval:g} s; retry in {wait:.1f} s",
                query.id,
            )
        user = session.user
        me = self.hub.nearby.locations.get(user, now)
        if me is None:
            raise ProtocolError(
                "no_location", "no known location for you: send a location first", query.id
            )
        excluded = {user, *self.hub.store.friends_of(user)}
        need = (query.page + 1) * PAGE_SIZE
        total, found = self.grid.query(me, self.hub.nearby.radius(user), excluded, need)
        start = query.page * PAGE_SIZE
        people = [
            Person(user=u, distance_m=rounded(d), ts=loc.ts)
            for d, u, loc in found[start : start + PAGE_SIZE]
        ]
        reply = NearbyPeopleReply(
            re=query.id, page=query.page, page_size=PAGE_SIZE, total=total, people=people
        )
        self.hub.sink.send(conn, Outgoing(encode(reply), seals=((STRANGER_TAG,),)))
        watch = self._watches.get(conn)
        if watch is not None:
            # Later stranger_gone refers to everything shown: earlier events and this page.
            watch.shown.update(person.user for person in people)

    # ------------------------------------------------------------------ hub events

    def on_location(self, user: str, location: Location, now: float) -> None:
        """An accepted location update of ``user`` (called by the nearby part)."""
        if self.hub.store.get_settings(user).visible_to_strangers:
            previous = self.grid.place(user, location)
            current = self.grid.cell(user)
            self.hub.publish(_channels(previous, current), StrangerEvent(user, location, now))
        for conn in self.hub.connections_of(user):
            if conn in self._watches:
                self._recover(conn, user, now)

    def on_visibility(self, user: str, visible: bool, now: float) -> None:
        if visible:
            location = self.hub.nearby.locations.get(user, now)
            if location is not None:
                self.grid.place(user, location)
                self.hub.publish(
                    _channels(self.grid.cell(user)), StrangerEvent(user, location, now)
                )
        else:
            self._gone(user, "hidden")

    def on_radius_changed(self, user: str, now: float) -> None:
        for conn in self.hub.connections_of(user):
            if conn in self._watches:
                self._recover(conn, user, now)

    def on_location_gone(self, user: str, reason: StrangerGoneReason) -> None:
        """The user's location expired or it went offline."""
        self._gone(user, reason)

    def on_friendship_added(self, a: str, b: str) -> None:
        for watcher, other in ((a, b), (b, a)):
            for conn in self.hub.connections_of(watcher):
                watch = self._watches.get(conn)
                if watch is not None and other in watch.shown:
                    watch.shown.discard(other)
                    self._send_gone(conn, other, "friend")

    def on_session_closed(self, conn: ConnId) -> None:
        self._watches.pop(conn, None)  # the broker drops its subscriptions

    def _forget_full_buckets(self, now: float) -> None:
        """Drop buckets that have refilled completely (they equal a new one), so memory
        follows the users querying recently, not every user who ever queried."""
        if len(self._buckets) < 1024:
            return
        refill = self.query_burst * self.query_interval
        for user in [u for u, b in self._buckets.items() if now - b.updated >= refill]:
            del self._buckets[user]

    def deliver(self, conn: ConnId, event: StrangerEvent | StrangerGoneEvent) -> None:
        """A cell-channel event reached one watching connection."""
        watch = self._watches.get(conn)
        if watch is None:
            return
        if isinstance(event, StrangerGoneEvent):
            if event.user in watch.shown:
                watch.shown.discard(event.user)
                self._send_gone(conn, event.user, event.reason)
            return
        session = self.hub.session(conn)
        if session is None:
            return
        watcher, other = session.user, event.user
        if other == watcher or self.hub.store.are_friends(watcher, other):
            return
        mine = self.hub.nearby.locations.get(watcher, event.now)
        distance = None
        if mine is not None:
            distance = distance_within(mine, event.location, self.hub.nearby.radius(watcher))
        if distance is not None:
            watch.shown.add(other)
            frame = StrangerNearby(user=other, distance_m=rounded(distance), ts=event.location.ts)
            self.hub.sink.send(conn, Outgoing(encode(frame), _stranger_key(other)))
        elif other in watch.shown:
            watch.shown.discard(other)
            self._send_gone(conn, other, "out_of_range")

    # ------------------------------------------------------------------ internals

    def _recover(self, conn: ConnId, user: str, now: float) -> None:
        """Subscribe ``conn`` to the cells covering its user's radius, touching only the
        cells that changed, and drop shown strangers now out of range."""
        watch = self._watches[conn]
        mine = self.hub.nearby.locations.get(user, now)
        radius = self.hub.nearby.radius(user)
        cells = frozenset() if mine is None else cover(mine.lat, mine.lon, radius)[1]
        if cells != watch.cells:
            for cell in watch.cells - cells:
                self.hub.broker.unsubscribe(cell_channel(cell), conn)
            for cell in cells - watch.cells:
                self.hub.broker.subscribe(cell_channel(cell), conn)
            watch.cells = cells
        for other in list(watch.shown):
            location = self.grid.get(other)
            if mine is None or location is None or distance_within(mine, location, radius) is None:
                watch.shown.discard(other)
                self._send_gone(conn, other, "out_of_range")

    def _gone(self, user: str, reason: StrangerGoneReason) -> None:
        code = self.grid.remove(user)
        if code is not None:
            self.hub.publish(_channels(code), StrangerGoneEvent(user, reason))

    def _send_gone(self, conn: ConnId, user: str, reason: StrangerGoneReason) -> None:
        frame = StrangerGone(user=user, reason=reason)
        self.hub.sink.send(conn, Outgoing(encode(frame), _stranger_key(user)))
