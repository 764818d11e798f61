"""Nearby friends (sans-I/O): the location cache, radius fan-out and the nearby list.

The design: each user U has a channel ``user:U`` that every live connection of each of U's
friends subscribes to. When U moves, U's location is published there; the handler of each
subscribed connection computes the distance between U and ITS OWN user's latest location and
forwards ``friend_location`` only when U is within that user's radius. Here the "handler" is
``Nearby.deliver``, called synchronously by the broker for each local subscriber, so a mover
with 5,000 friends costs 5,000 plain function calls and queue pushes, never an await.

Every connection remembers which friends it has been shown nearby (``nearby_views``); that is
what makes ``friend_gone`` exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

import attrs

from geopresence.core.broker import ConnId, user_channel
from geopresence.core.context import NO_LISTENER, FeatureContext, LocationListener, Session
from geopresence.core.locations import Location, LocationCache
from geopresence.core.nearby_views import NEARBY_TAG, FriendViews
from geopresence.core.replication import LocationSet
from geopresence.core.store import UserSettings
from geopresence.model.geo import distance_within
from geopresence.model.records import SettingsChanged
from geopresence.wire.client_messages import LocationUpdate, NearbyFriendsQuery, SettingsUpdate
from geopresence.wire.errors import ProtocolError, RequestId
from geopresence.wire.outgoing import out
from geopresence.wire.server_messages import (
    PAGE_SIZE,
    GoneReason,
    NearbyFriend,
    NearbyFriendsReply,
    SettingsReply,
)

MAX_FUTURE_S: Final = 60.0
"""A location ``ts`` further than this ahead of the server's clock is refused."""

HistoryRecorder = Callable[[str, Location], None]
"""Receives every accepted location update (user, location), e.g. to append it to disk."""


@attrs.frozen(slots=True)
class LocationEvent:
    """Published on ``user:U`` when U's location changes (or becomes visible again)."""

    user: str
    location: Location
    now: float


@attrs.frozen(slots=True)
class LocationKept(LocationEvent):
    """With several nodes, published on ``user:U`` when U, who does not share its location,
    moves: no connection is shown it, but the nodes holding U's location (where U has
    sessions too) keep it current."""


@attrs.frozen(slots=True)
class GoneEvent:
    """Published on ``user:U`` when U's location stops being visible to friends."""

    user: str
    reason: GoneReason


class Nearby:
    """The nearby-friends part of the hub. All methods take ``now`` when time matters."""

    def __init__(
        self,
        ctx: FeatureContext,
        *,
        location_ttl: float,
        default_radius: float,
        max_radius: float,
        history: HistoryRecorder | None = None,
    ) -> None:
        self.ctx = ctx
        self.listener: LocationListener = NO_LISTENER
        """Told of accepted locations and settings (the hub plugs strangers in here)."""
        self.locations = LocationCache(location_ttl)
        self.default_radius = default_radius
        self.max_radius = max_radius
        self.history = history
        self.views = FriendViews(ctx, self.locations, self.radius)
        """Which friends each connection shows."""
        self.updates_accepted = 0
        self.updates_ignored = 0
        self._moved: dict[str, float] | None = None
        """While ``defer_moves``: the users whose moves wait, with their newest's ``now``."""
        self._unchecked: dict[str, float] = {}
        """While ``defer_moves``: the users whose own views wait for ``check_views``."""

    # ------------------------------------------------------------------ settings

    def settings(self, user: str) -> UserSettings:
        return self.ctx.store.get_settings(user)

    def radius(self, user: str) -> float:
        """``user``'s radius in metres: its ``radius_m``, else the server's default; never
        above ``max_radius`` (a value kept from a server started with a larger one)."""
        radius = self.settings(user).radius_m
        return self.default_radius if radius is None else min(radius, self.max_radius)

    # ------------------------------------------------------------------ client messages

    def location_of(self, user: str, now: float) -> Location | None:
        """``user``'s cached location unless expired at ``now`` (``LocationView``)."""
        return self.locations.get(user, now)

    def expires_at(self, user: str) -> float | None:
        """When ``user``'s cached location expires unless renewed (``LocationView``)."""
        return self.locations.deadline(user)

    def on_location(self, session: Session, message: LocationUpdate, now: float) -> None:
        self.apply(
            session.user, message.lat, message.lon, message.ts, now, message.id, check_later=True
        )

    def apply(
        self,
        user: str,
        lat: float,
        lon: float,
        ts: float | None,
        now: float,
        request_id: RequestId = None,
        *,
        check_later: bool = False,
    ) -> bool:
        """Store a location update and fan it out; False if it was older than the stored one
        (ignored). ``ts`` None means ``now``; more than 60 s ahead is a bad_request. With
        ``check_later`` (a ``location`` message) and moves deferred, the mover's own view is
        checked at ``check_views`` instead of at once."""
        if ts is None:
            ts = now
        elif ts < 0:
            raise ProtocolError(
                "bad_request", "ts must be epoch seconds (not negative)", request_id
            )
        elif ts > now + MAX_FUTURE_S:
            raise ProtocolError(
                "bad_request",
                # .6g: a ts of 1e308 must not print a 300-digit number.
                f"ts is {ts - now:.6g} s ahead of the server's clock (at most {MAX_FUTURE_S:g})",
                request_id,
            )
        location = Location(lat, lon, ts)
        if not self.locations.update(user, location, now):
            self.updates_ignored += 1
            return False
        self.updates_accepted += 1
        ctx = self.ctx
        if not ctx.replaying:  # another node's update: its origin recorded and replicated it
            if self.history is not None:
                self.history(user, location)
            if ctx.replicator is not None:
                ctx.replicator.replicate(LocationSet(user, lat, lon, location.ts, now))
        if self._moved is None:
            self._publish_move(user, location, now)
            self.views.recheck(user, now)
        else:
            self._moved[user] = now  # shown by ``show_moves``, if still the newest
            if check_later:
                self._unchecked[user] = now  # checked by ``check_views``, against the newest
            else:
                self.views.recheck(user, now)
        self.listener.on_location(user, location, now)
        return True

    def _publish_move(self, user: str, location: Location, now: float) -> None:
        if self.settings(user).share_location:
            self.ctx.publish([user_channel(user)], LocationEvent(user, location, now))
        elif self.ctx.replicator is not None:
            self.ctx.publish([user_channel(user)], LocationKept(user, location, now))

    def defer_moves(self) -> None:
        """From now until ``show_moves``, accepted moves are stored, recorded and replicated
        at once, but reach the mover's friends only at ``show_moves``, and only a user's
        newest: the older would be replaced unseen in every friend's queue (latest-wins)
        before it is written. The mover's own view is checked against its newest position
        too, at ``check_views``, which must run before any reply to the mover
        (``Hub.settle``, ``Sessions.before_error``): a friend out of range of a position
        passed on the way but in range of the newest stays shown. For consecutive moves of
        a connection read at once: one a read at the design's load, several under overload,
        when fanning out and checking each would be the server's largest cost, spent on
        nothing."""
        if self._moved is None:
            self._moved = {}

    @property
    def moves_deferred(self) -> bool:
        """True if moves wait for ``show_moves``."""
        return bool(self._moved)

    def show_moves(self, *, keep_deferring: bool = False) -> None:
        """Tell friends of each user's newest deferred move (unless gone since: offline,
        forgotten), then ``check_views``; with ``keep_deferring``, later moves are deferred
        again."""
        moved = self._moved
        self._moved = {} if keep_deferring else None
        try:
            for user, now in (moved or {}).items():
                location = self.locations.get(user, now)
                if location is not None:
                    self._publish_move(user, location, now)
        finally:  # even after a bug: no check may wait for another connection's read
            self.check_views()

    def check_views(self) -> None:
        """Check the views of each user whose deferred moves have not been checked yet
        against the newest (friends now out of range leave them: ``friend_gone``)."""
        unchecked = self._unchecked
        if unchecked:
            self._unchecked = {}  # first: a failing check is not run again by the error reply
            for user, now in unchecked.items():
                self.views.recheck(user, now)

    def on_query(self, session: Session, query: NearbyFriendsQuery, now: float) -> None:
        user = session.user
        if query.lat is not None and query.lon is not None:
            self.apply(user, query.lat, query.lon, query.ts, now, query.id)
        entries = self.nearby(user, now, query.id)
        start = query.page * PAGE_SIZE
        page = entries[start : start + PAGE_SIZE]
        self.views.show_page(session.conn, entries, page)
        reply = NearbyFriendsReply(
            re=query.id, page=query.page, page_size=PAGE_SIZE, total=len(entries), friends=page
        )
        self.ctx.replies.reply(session.conn, out(reply, seals=((NEARBY_TAG,),)))

    def nearby(self, user: str, now: float, request_id: RequestId = None) -> list[NearbyFriend]:
        """Friends sharing a live location within ``user``'s radius, nearest first (ties by
        user id). ``no_location`` if ``user`` has no live location."""
        me = self.locations.get(user, now)
        if me is None:
            raise ProtocolError(
                "no_location",
                "no known location for you: send a location (or lat/lon with this query)",
                request_id,
            )
        radius = self.radius(user)
        found: list[tuple[float, str, Location]] = []
        for friend in self.ctx.store.friends_of(user):
            location = self._visible_location(friend, now)
            if location is None:
                continue
            distance = distance_within(me, location, radius)
            if distance is not None:
                found.append((distance, friend, location))
        found.sort(key=lambda entry: (entry[0], entry[1]))
        return [
            NearbyFriend(user=f, lat=loc.lat, lon=loc.lon, ts=loc.ts, distance_m=d)
            for d, f, loc in found
        ]

    def on_settings(self, session: Session, message: SettingsUpdate, now: float) -> None:
        user = session.user
        if message.radius_m is not None and message.radius_m > self.max_radius:
            raise ProtocolError(
                "bad_request",
                f"radius_m must be at most {self.max_radius:g} m on this server",
                message.id,
            )
        changes = {
            name: value
            for name in ("share_location", "radius_m", "visible_to_strangers")
            if (value := getattr(message, name)) is not None
        }
        after = attrs.evolve(self.settings(user), **changes)
        self.change_settings(user, after, now)
        reply = SettingsReply(
            re=message.id,
            share_location=after.share_location,
            radius_m=self.radius(user),
            visible_to_strangers=after.visible_to_strangers,
        )
        self.ctx.reply_when_durable(session.conn, out(reply))

    def change_settings(self, user: str, after: UserSettings, now: float) -> None:
        """Store ``user``'s new settings and bring every view they affect up to date."""
        before = self.settings(user)
        if after == before:
            return
        radius_before = self.radius(user)
        self.ctx.store.put_settings(user, after)
        self.ctx.journal_append(
            SettingsChanged(user, after.share_location, after.radius_m, after.visible_to_strangers)
        )
        if after.share_location != before.share_location:
            self.tell_sharing(user, now)
        if self.radius(user) != radius_before:
            for conn in self.ctx.connections_of(user):
                self._refresh(conn, user, self.ctx.store.friends_of(user), now)
            self.listener.on_radius_changed(user, now)
        if after.visible_to_strangers != before.visible_to_strangers:
            self.listener.on_visibility(user, after.visible_to_strangers, now)

    def tell_sharing(self, user: str, now: float) -> None:
        """Tell ``user``'s friends what its settings share now: its live location (if any),
        or that it is gone, ``hidden``."""
        if self.settings(user).share_location:
            location = self.locations.get(user, now)
            if location is not None:
                self.ctx.publish([user_channel(user)], LocationEvent(user, location, now))
        else:
            self._gone(user, "hidden")

    # ------------------------------------------------------------------ hub events

    def deliver(self, conn: ConnId, event: LocationEvent | GoneEvent) -> None:
        """A channel event reached one subscribed connection (the design's handler)."""
        if isinstance(event, GoneEvent):
            self.deliver_gone(conn, event)
        else:
            self.deliver_location(conn, event)

    def deliver_location(self, conn: ConnId, event: LocationEvent) -> None:
        """``deliver`` for a move: the hot path (one call per friend in range per move)."""
        session = self.ctx.session(conn)
        if session is not None:
            self.views.show(conn, session.user, event.user, event.location, event.now)

    def deliver_gone(self, conn: ConnId, event: GoneEvent) -> None:
        """``deliver`` for a friend's location gone."""
        self.views.hide(conn, event.user, event.reason)

    def on_offline(self, user: str) -> None:
        """The user went offline: its location is dropped and friends shown it are told."""
        if self.locations.remove(user):
            self._gone(user, "offline")
        self.listener.on_location_gone(user, "offline")

    def forget(self, user: str) -> bool:
        """Drop ``user``'s cached location (a forget; its friends were told by the
        unfriending); True if there was one. Strangers who were shown it are told it left."""
        had = self.locations.remove(user)
        self.views.drop_head(user)
        self.listener.on_location_gone(user, "offline")
        return had

    def drop_cached(self, user: str) -> None:
        """Forget ``user``'s cached location without telling anyone: a node of several that
        no longer listens to the user's channel (none of its sessions needs it) would
        otherwise keep a position that no longer changes."""
        held = self.locations.pop(user)
        if held is not None:
            self.listener.on_location_dropped(user, *held)
        self.views.drop_head(user)

    def on_friendship_added(self, a: str, b: str, now: float) -> None:
        for viewer, friend in ((a, b), (b, a)):
            for conn in self.ctx.connections_of(viewer):
                self._refresh(conn, viewer, (friend,), now)

    def on_friendship_removed(self, a: str, b: str) -> None:
        for viewer, friend in ((a, b), (b, a)):
            for conn in self.ctx.connections_of(viewer):
                self.views.hide(conn, friend, "unfriended")

    def on_session_closed(self, conn: ConnId) -> None:
        self.views.closed(conn)

    def expire(self, now: float) -> None:
        for user in self.locations.expire(now):
            self._gone(user, "expired")
            self.listener.on_location_gone(user, "expired")
        self.listener.tick(now)  # watchers' rate-limited moves and radius changes

    def next_deadline(self) -> float | None:
        deadlines = (self.locations.next_deadline(), self.listener.next_deadline())
        return min((d for d in deadlines if d is not None), default=None)

    # ------------------------------------------------------------------ internals

    def _visible_location(self, user: str, now: float) -> Location | None:
        if not self.settings(user).share_location:
            return None
        return self.locations.get(user, now)

    def _refresh(self, conn: ConnId, viewer: str, friends: Iterable[str], now: float) -> None:
        """Bring ``conn``'s view of ``friends`` up to date, sending only the differences."""
        for friend in friends:
            location = self._visible_location(friend, now)
            if location is not None:
                self.views.show(conn, viewer, friend, location, now, again=False)

    def _gone(self, user: str, reason: GoneReason) -> None:
        self.ctx.publish([user_channel(user)], GoneEvent(user, reason))
