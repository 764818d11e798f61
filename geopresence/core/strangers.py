"""Nearby strangers (sans-I/O): geohash-cell channels, watchers and the nearby-people query.

The design's extension: users who opt in
(``visible_to_strangers``) publish their moves into the channels of their geohash cells; a
watcher's connection subscribes to the cells that cover its radius (``geocells.cover``: exact,
never the 3x3 block that misses people) and is re-subscribed as it moves, touching only the
cells that changed. A stranger is published to the channels of every prefix of its cell (one
per precision), so watchers of any cover precision hear it, and a move between cells is
published to the old cells' channels as well so that watchers there see it leave
(``core.stranger_events``).

Privacy: strangers never receive coordinates, only distances rounded to the nearest 100 m;
friends are never reported as strangers; users who did not opt in are never reported.
Rounding alone is not enough (the moment a stranger leaves a radius reveals the exact
distance), so **nothing a stranger observes depends on more than a coarse position**:

- every stranger-facing decision (in range or not, the distance shown, the order) is taken
  between **coarse positions of both parties**: each snapped to the centre of its ~100 m cell
  of ``geocells.coarse_cell``. Two positions in one cell give identical observations;
- a visible user is published (and its shown ``ts`` changes) only when its coarse cell
  changes: moves inside a cell are not seen, not even their timing, so strangers stop
  seeing a user on a deadline of their own (``core.stranger_expiry``), not when its
  location expires;
- a watcher's own moves and radius changes are applied to its strangers view at most once
  per ``apply_interval``, per user (leading and trailing edge: the first change at once,
  later ones together at the end of the interval, so the final state is always applied;
  a watch started within the interval takes what was applied: ``core.stranger_pacing``);
- ``nearby_people`` is rate limited per user.
"""

from __future__ import annotations

from functools import partial

from geopresence.core.broker import ConnId
from geopresence.core.context import FeatureContext, LocationView, Session
from geopresence.core.grid import StrangerGrid
from geopresence.core.locations import Location
from geopresence.core.stranger_events import (
    StrangerEvent,
    StrangerGoneEvent,
    cell_channel,
    cell_channels,
)
from geopresence.core.stranger_expiry import StrangerExpiry
from geopresence.core.stranger_index import GridIndex, StrangerIndex
from geopresence.core.stranger_pacing import Pacing
from geopresence.core.stranger_queries import STRANGER_TAG, PeopleQueries, rounded, snap
from geopresence.core.stranger_watches import Watches
from geopresence.model.geo import distance_within
from geopresence.model.geocells import INDEX_PRECISION, cell_of, cover
from geopresence.wire.client_messages import WatchStrangers
from geopresence.wire.outgoing import out
from geopresence.wire.server_messages import (
    StrangerGone,
    StrangerGoneReason,
    StrangerNearby,
    WatchStrangersReply,
)


def _stranger_key(user: str) -> tuple[str, str]:
    return (STRANGER_TAG, user)


class Strangers:
    """The strangers part of the hub."""

    def __init__(
        self,
        ctx: FeatureContext,
        view: LocationView,
        *,
        location_ttl: float,
        query_burst: int,
        query_interval: float,
        apply_interval: float | None = None,
        index: StrangerIndex | None = None,
    ) -> None:
        self.ctx = ctx
        self.view = view
        self.grid = StrangerGrid()
        """Visible users at their COARSE positions (cell centres), with the ``ts`` of the
        update that brought each into its cell: every one on a single node; with several,
        those whose location this node holds (its own users' and their friends')."""
        self.index: StrangerIndex = GridIndex(self.grid) if index is None else index
        """What ``nearby_people`` searches, told of the moves this node handles."""
        self.apply_interval = query_interval if apply_interval is None else apply_interval
        """A watcher's moves and radius changes reach its strangers view at most once per
        this many seconds (by default the nearby_people interval: one probe per interval,
        whichever way it is made)."""
        self._watches = Watches()
        self.queries = PeopleQueries(
            ctx,
            view,
            self.index,
            self._watches,
            query_burst=query_burst,
            query_interval=query_interval,
            before_search=self._catch_up,
        )
        self.on_query = self.queries.on_query
        """``nearby_people`` (``PeopleQueries.on_query``)."""
        self.pacing = Pacing(self.apply_interval)
        """Each user's last application to its watches, and the changes waiting."""
        self.expiry = StrangerExpiry(location_ttl)
        """When strangers stop seeing each user of the grid (``location_ttl``: seconds)."""

    # ------------------------------------------------------------------ client messages

    def on_watch(self, session: Session, message: WatchStrangers, now: float) -> None:
        conn = session.conn
        if message.on:
            if conn not in self._watches:
                self._watches.start(conn)
                self._watch_started(conn, session.user, now)
        else:
            watch = self._watches.stop(conn)
            if watch is not None:
                for cell in watch.cells:
                    self.ctx.broker.unsubscribe(cell_channel(cell), conn)
        reply = WatchStrangersReply(re=message.id, on=message.on)
        self.ctx.replies.reply(conn, out(reply))

    # ------------------------------------------------------------------ hub events

    def on_location(self, user: str, location: Location, now: float) -> None:
        """An accepted location update of ``user`` (called by the nearby part; ``now``: when
        it was accepted, by its origin if another node's)."""
        if self.ctx.store.get_settings(user).visible_to_strangers and self._handled(user):
            spot = snap(location)
            held = self.grid.get(user)
            # Another node's move with the user nowhere here: this node starts keeping it
            # current, without knowing when it entered its cell (it may have long before).
            seen_enter = held is not None or not self.ctx.replaying
            if held is not None and self.expiry.ended(user, now):
                self._gone(user, "expired")  # its deadline came before this update
                held = None
            # A move inside the coarse cell changes nothing a stranger may see: not published.
            if held is None or (held.lat, held.lon) != (spot.lat, spot.lon):
                if seen_enter:
                    until = self.expiry.entered(user, now + self.expiry.ttl)
                else:
                    until = self.expiry.joined(user, now)
                self._enter(user, spot, now, until)
            else:
                until = self.expiry.renewed(user, now)
                if not self.ctx.replaying:  # another node's move: its origin did this
                    self.index.stayed(user, held, until)
        self._watcher_changed(user, now)

    def on_visibility(self, user: str, visible: bool, now: float) -> None:
        if visible:
            location = self.view.location_of(user, now)
            until = self.view.expires_at(user)
            if location is not None and until is not None and self._handled(user):
                # Shown with its latest update: the view lasts as long as that location.
                self._enter(user, snap(location), now, self.expiry.entered(user, until))
        else:
            self._gone(user, "hidden")

    def _enter(self, user: str, spot: Location, now: float, until: float) -> None:
        """Publish ``user`` (visible, handled here) at ``spot``, a cell's centre with the
        ``ts`` strangers see, which strangers see until ``until`` unless renewed."""
        self.expiry.unlapse(user)
        previous = self.grid.place(user, spot)
        if not self.ctx.replaying:  # another node's move: its origin did this
            self.index.entered(user, spot, previous, until)
        current = self.grid.cell(user)
        self.ctx.publish(cell_channels(previous, current), StrangerEvent(user, spot, now))

    def on_radius_changed(self, user: str, now: float) -> None:
        self._watcher_changed(user, now)

    def tick(self, now: float) -> None:
        """Time has reached ``now``: apply the moves and radius changes whose interval ended,
        end the views of users whose strangers' deadline came, ask about lapses (the hub's
        expiry calls this through ``Nearby.expire``)."""
        for user in self.pacing.pop_due(now):
            watching = self._watching(user)
            if watching:
                self._apply(user, watching, now)
        expired, lapsed = self.expiry.pop_due(now)
        for user in expired:
            self._gone(user, "expired")
        for user, code, ts in lapsed:
            self.index.lapsed(user, ts, partial(self._lapsed, user, code))

    def next_deadline(self) -> float | None:
        """When ``tick`` has work next (None: nothing pending)."""
        deadlines = (self.pacing.next_deadline(), self.expiry.next_deadline())
        return min((d for d in deadlines if d is not None), default=None)

    def on_location_gone(self, user: str, reason: StrangerGoneReason) -> None:
        """The user's location expired or it went offline (expired: strangers' deadline,
        never later, ended their view already)."""
        self._gone(user, reason)

    def went_offline_at(self, user: str, location: Location) -> None:
        """Several nodes: ``user``, last at ``location``, went offline, decided on this node
        (its own, or the one that ended a dead node's devices), and its cell listed it
        (the index says so: this node may not keep its settings): tell the watchers of its
        cells on every node, which keep no status of strangers."""
        spot = snap(location)
        code = cell_of(spot.lat, spot.lon, INDEX_PRECISION)
        self.ctx.publish_everywhere(cell_channels(code), StrangerGoneEvent(user, "offline"))

    def on_location_dropped(self, user: str, last: Location, until: float) -> None:
        """This node no longer keeps the user's location current: out of the grid, silently
        (the index and the other nodes' watchers hear from the node handling it). If no
        node handles it (the user went away: its last session ended here), nobody would
        tell the watchers it expired: at its strangers' deadline (``until`` at the latest)
        this node asks the index whether a node renewed it since, and tells them if none did
        (``_lapsed``)."""
        code = self.grid.remove(user)
        if code is not None:
            deadline = self.expiry.discard(user)
            self.expiry.lapse(user, code, last.ts, until if deadline is None else deadline)

    def _lapsed(self, user: str, code: str) -> None:
        """A location this node dropped expired, renewed by no node: the watchers of its
        cells, on every node, are told (those showing the user only)."""
        self.ctx.publish_everywhere(cell_channels(code), StrangerGoneEvent(user, "expired"))

    def on_friendship_added(self, a: str, b: str) -> None:
        for watcher, other in ((a, b), (b, a)):
            for conn in self.ctx.connections_of(watcher):
                watch = self._watches.get(conn)
                if watch is not None and self._watches.unshow(watch, other):
                    self._send_gone(conn, other, "friend")

    def on_session_closed(self, conn: ConnId) -> None:
        self._watches.stop(conn)  # the broker drops its subscriptions

    def forget(self, user: str) -> None:
        """Drop ``user``'s query bucket and pending watch update (a forget: its sessions
        are closed and its location gone)."""
        self.queries.forget(user)
        self.pacing.forget(user)
        self.expiry.unlapse(user)

    def deliver(self, conn: ConnId, event: StrangerEvent | StrangerGoneEvent) -> None:
        """A cell-channel event reached one watching connection."""
        watch = self._watches.get(conn)
        if watch is None:
            return
        if isinstance(event, StrangerGoneEvent):
            self.queries.gone_during.gone(event.user)
            if self._watches.unshow(watch, event.user):
                self._send_gone(conn, event.user, event.reason)
            return
        session = self.ctx.session(conn)
        if session is None:
            return
        watcher, other = session.user, event.user
        if other == watcher or self.ctx.store.are_friends(watcher, other):
            return
        # The watch's applied coarse position and radius (both rate limited), while the
        # watcher has a live location; the event carries the stranger's cell centre.
        distance = None
        mine = watch.center
        if mine is not None and self.view.location_of(watcher, event.now) is not None:
            distance = distance_within(mine, event.location, watch.radius)
        if distance is not None:
            self._watches.show(watch, other, event.location)
            frame = StrangerNearby(user=other, distance_m=rounded(distance), ts=event.location.ts)
            self.ctx.sink.send(conn, out(frame, _stranger_key(other)))
        elif self._watches.unshow(watch, other):
            self._send_gone(conn, other, "out_of_range")

    # ------------------------------------------------------------------ internals

    def _catch_up(self, user: str, now: float) -> None:
        """A ``nearby_people`` query is a probe of its own: the user's watches take the
        position and radius it searches with at once (a pending move is applied now), so
        every stranger its page shows is in their cells, whose channels say when it leaves
        (with several nodes, nothing else would)."""
        watching = self._watching(user)
        if watching:
            self._apply(user, watching, now)

    def _handled(self, user: str) -> bool:
        """Whether this node places ``user`` in its grid: every user on one node; with
        several, a move of another node's user only if the user has sessions here too, or
        is there already (its position is kept current here: the user's channel)."""
        return not self.ctx.replaying or user in self.grid or bool(self.ctx.connections_of(user))

    def _watching(self, user: str) -> list[ConnId]:
        return [conn for conn in self.ctx.connections_of(user) if conn in self._watches]

    def _target(self, user: str, now: float) -> tuple[Location | None, float]:
        """``user``'s coarse position (None: no live location) and radius now."""
        mine = self.view.location_of(user, now)
        return (None if mine is None else snap(mine, 0.0)), self.view.radius(user)

    def _watch_started(self, conn: ConnId, user: str, now: float) -> None:
        """A new watch of ``user`` (re-watching, another connection, a reconnect): if the
        user's watches took its position and radius less than ``apply_interval`` ago, it
        takes what they took, and a change since is applied as it would have been for them
        (at the interval's end); else it takes the current ones at once (its view is empty:
        nothing is judged on them yet), not counted (the first change after is at once)."""
        last = self.pacing.recent(user, now)
        if last is None:
            self._apply(user, self._watching(user), now, counted=False)
        else:
            self._recover(conn, last.center, last.radius)
            self._watcher_changed(user, now)

    def _watcher_changed(self, user: str, now: float) -> None:
        """``user`` moved or changed its radius: bring its watches up to date, at once if
        the last time was at least ``apply_interval`` ago, else at the end of the interval.
        A move inside its coarse cell changes nothing and uses up nothing; nor does any
        change while it does not watch (a watch started later takes it: ``_watch_started``)."""
        watching = self._watching(user)
        if not watching or self.pacing.waiting(user):
            return
        center, radius = self._target(user, now)
        target = (None if center is None else (center.lat, center.lon)), radius
        if all(self._watches[conn].applied == target for conn in watching):
            return
        last = self.pacing.recent(user, now)
        if last is not None and last.counted:
            self.pacing.wait(user, last)
        else:
            self._apply(user, watching, now)

    def _apply(
        self, user: str, watching: list[ConnId], now: float, *, counted: bool = True
    ) -> None:
        """Bring ``user``'s watches to its current coarse position and radius (recorded;
        ``counted``: the next change waits ``apply_interval``)."""
        center, radius = self._target(user, now)
        self.pacing.record(user, center, radius, now, counted=counted)
        for conn in watching:
            self._recover(conn, center, radius)

    def _recover(self, conn: ConnId, mine: Location | None, radius: float) -> None:
        """Take ``mine`` (the watcher's coarse position, None: none) and ``radius`` (metres)
        as the watch's: subscribe ``conn`` to the cells covering that circle, touching only
        the cells that changed, and drop shown strangers now out of range."""
        watch = self._watches[conn]
        watch.center, watch.radius = mine, radius
        cells = frozenset() if mine is None else cover(mine.lat, mine.lon, radius)[1]
        if cells != watch.cells:
            for cell in watch.cells - cells:
                self.ctx.broker.unsubscribe(cell_channel(cell), conn)
            for cell in cells - watch.cells:
                self.ctx.broker.subscribe(cell_channel(cell), conn)
            watch.cells = cells
        for other, told in list(watch.shown.items()):
            # Where the stranger is: this node's grid if it holds it (with several nodes, it
            # may not), else where the cells' channels last said it was.
            location = self.grid.get(other) or told
            if mine is None or distance_within(mine, location, radius) is None:
                self._watches.unshow(watch, other)
                self._send_gone(conn, other, "out_of_range")

    def _gone(self, user: str, reason: StrangerGoneReason) -> None:
        self.queries.gone_during.gone(user)
        code = self.grid.remove(user)
        if code is not None:
            self.expiry.discard(user)
            # Also when applying another node's change (which took the user out there):
            # this node may have listed the user itself (its moves here) before it heard.
            # Taking out one already out changes nothing.
            self.index.left(user, code)
            event = StrangerGoneEvent(user, reason)
            if reason == "expired":
                # Other nodes' watchers hold no stranger's location, so cannot see it
                # expire: a node whose grid holds the user (it handles its moves) tells them.
                self.ctx.publish_everywhere(cell_channels(code), event)
            else:
                self.ctx.publish(cell_channels(code), event)
        # Watchers still showing the user that no cell channel reached: with several nodes
        # this node may not hold the user (it goes offline or hides on the replicated state).
        for watch in self._watches.showing(user):
            self._watches.unshow(watch, user)
            self._send_gone(watch.conn, user, reason)

    def _send_gone(self, conn: ConnId, user: str, reason: StrangerGoneReason) -> None:
        frame = StrangerGone(user=user, reason=reason)
        self.ctx.sink.send(conn, out(frame, _stranger_key(user)))
