"""Which friends each connection shows nearby, and the frames that change it (sans-I/O).

Every connection remembers which friends it has been shown nearby (its view); that is what
makes ``friend_gone`` exact: sent once, only to connections that were shown the friend, with the
reason the friend left (out_of_range, expired, offline, hidden, unfriended). ``Nearby`` decides
when a view changes; ``FriendViews`` keeps the views and sends the frames.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from geopresence.core.broker import ConnId
from geopresence.core.context import FeatureContext
from geopresence.core.locations import Location, LocationCache
from geopresence.model.geo import distance_within
from geopresence.wire.hot_encode import friend_location_head, friend_location_text
from geopresence.wire.outgoing import Outgoing, out
from geopresence.wire.server_messages import FriendGone, GoneReason, NearbyFriend

NEARBY_TAG: Final = "nearby"


def _nearby_key(user: str) -> tuple[str, str]:
    # friend_location and friend_gone about one friend share a slot: the newest state wins.
    return (NEARBY_TAG, user)


class FriendViews:
    """The nearby friends each connection shows; ``radius`` gives a viewer's radius in
    metres."""

    def __init__(
        self, ctx: FeatureContext, locations: LocationCache, radius: Callable[[str], float]
    ) -> None:
        self.ctx = ctx
        self.locations = locations
        self.radius = radius
        self._shown: dict[ConnId, set[str]] = {}
        self._head_location: Location | None = None
        self._head_user = ""
        self._head_bytes = b""

    def show(
        self,
        conn: ConnId,
        viewer: str,
        mover: str,
        location: Location,
        now: float,
        *,
        again: bool = True,
    ) -> None:
        """Forward ``mover``'s location to ``conn`` if within its user's radius (with
        ``again`` False, not if ``conn`` is already showing it); otherwise, if ``conn`` was
        shown ``mover``, tell it the friend is out of range."""
        mine = self.locations.get(viewer, now)
        if mine is not None:
            distance = distance_within(mine, location, self.radius(viewer))
            if distance is not None:
                shown = self._shown.get(conn)
                if shown is None:  # not ``setdefault``: it would build a set per delivery
                    shown = self._shown[conn] = set()
                if not again and mover in shown:
                    return  # already shown; its next move updates it
                shown.add(mover)
                text = friend_location_text(self._head(mover, location), distance)
                self.ctx.sink.send(conn, Outgoing(text, _nearby_key(mover)))
                return
        self.hide(conn, mover, "out_of_range")

    def hide(self, conn: ConnId, friend: str, reason: GoneReason) -> None:
        """If ``conn`` shows ``friend``, the friend leaves its view: ``friend_gone``."""
        shown = self._shown.get(conn)
        if shown is not None and friend in shown:
            shown.discard(friend)
            self._send_gone(conn, friend, reason)

    def show_page(
        self, conn: ConnId, entries: list[NearbyFriend], page: list[NearbyFriend]
    ) -> None:
        """A ``nearby_friends`` reply shows ``page`` of ``entries`` (every friend nearby now):
        the view is the friends shown before that are still nearby, plus this page. Shown
        friends that are no longer nearby leave it now (before the reply)."""
        nearby_now = {friend.user for friend in entries}
        shown = self._shown.setdefault(conn, set())
        for friend in sorted(shown - nearby_now):
            shown.discard(friend)
            self._send_gone(conn, friend, "out_of_range")
        shown.update(friend.user for friend in page)

    def recheck(self, viewer: str, now: float) -> None:
        """The viewer moved: friends it was shown that are now beyond its radius leave its
        view at once (checking only the shown ones keeps this O(shown), not O(friends);
        friends coming into range appear with their own next update, as in the design)."""
        radius = self.radius(viewer)
        mine = self.locations.get(viewer, now)
        if mine is None:
            return
        for conn in self.ctx.connections_of(viewer):
            shown = self._shown.get(conn)
            if not shown:
                continue
            for friend in list(shown):
                location = self.locations.get(friend, now)
                if location is None or distance_within(mine, location, radius) is None:
                    shown.discard(friend)
                    self._send_gone(conn, friend, "out_of_range")

    def closed(self, conn: ConnId) -> None:
        """``conn`` is closed: its view goes."""
        self._shown.pop(conn, None)

    def drop_head(self, user: str) -> None:
        """``user``'s location was dropped: the ``friend_location`` made of it goes too."""
        if self._head_user == user:
            self._head_location, self._head_user, self._head_bytes = None, "", b""

    def _head(self, mover: str, location: Location) -> bytes:
        """The ``friend_location`` JSON of ``mover`` at ``location`` up to its distance, made
        once per move: a move is shown to each friend in range, one after the other."""
        if location is not self._head_location or mover != self._head_user:
            self._head_location, self._head_user = location, mover
            self._head_bytes = friend_location_head(mover, location.lat, location.lon, location.ts)
        return self._head_bytes

    def _send_gone(self, conn: ConnId, user: str, reason: GoneReason) -> None:
        frame = FriendGone(user=user, reason=reason)
        self.ctx.sink.send(conn, out(frame, _nearby_key(user)))
