"""``nearby_people`` (sans-I/O): the per-user rate limit, the search, the answer.

The search goes to the ``StrangerIndex`` (``core.stranger_index``), whose answer may come a
round trip later (several nodes): the reply then goes only to a connection still open, in
the place its query took among the connection's replies (``Replies``), and without the
strangers that left meanwhile (``GoneDuringSearches``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from geopresence.core.context import FeatureContext, LocationView, Session
from geopresence.core.locations import Location
from geopresence.core.sessions import TokenBucket
from geopresence.core.stranger_index import Found, StrangerIndex
from geopresence.core.stranger_watches import GoneDuringSearches, Watches
from geopresence.model.geocells import coarse
from geopresence.wire.client_messages import NearbyPeopleQuery
from geopresence.wire.errors import ProtocolError
from geopresence.wire.outgoing import out
from geopresence.wire.server_messages import PAGE_SIZE, NearbyPeopleReply, Person

ROUND_TO_M: Final = 100
STRANGER_TAG: Final = "stranger"


def rounded(distance_m: float) -> int:
    """A distance as strangers see it: the nearest multiple of 100 m."""
    return round(distance_m / ROUND_TO_M) * ROUND_TO_M


def snap(location: Location, ts: float | None = None) -> Location:
    """``location`` as strangers are allowed to know it: moved to the centre of its coarse
    cell (``ts`` kept unless given)."""
    lat, lon = coarse(location.lat, location.lon)
    return Location(lat, lon, location.ts if ts is None else ts)


class PeopleQueries:
    """The ``nearby_people`` part of strangers."""

    def __init__(
        self,
        ctx: FeatureContext,
        view: LocationView,
        index: StrangerIndex,
        watches: Watches,
        *,
        query_burst: int,
        query_interval: float,
        before_search: Callable[[str, float], None] = lambda user, now: None,
    ) -> None:
        self.ctx = ctx
        self.view = view
        self.index = index
        self.watches = watches
        self.gone_during = GoneDuringSearches()
        self.query_burst = query_burst
        self.query_interval = query_interval
        self.before_search = before_search
        """Called with (user, now) as an accepted query is about to search."""
        # Per USER, not per connection: reconnecting or using another device must not
        # bring a fresh bucket (the limit protects strangers' rounded distances).
        self._buckets: dict[str, TokenBucket] = {}
        self.rate_limited = 0

    def on_query(self, session: Session, query: NearbyPeopleQuery, now: float) -> None:
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
        me = self.view.location_of(user, now)
        if me is None:
            raise ProtocolError(
                "no_location", "no known location for you: send a location first", query.id
            )
        excluded = {user, *self.ctx.store.friends_of(user)}
        need = (query.page + 1) * PAGE_SIZE
        self.before_search(user, now)
        mark = self.gone_during.begin()
        replies = self.ctx.replies
        place = replies.place(session.conn)

        def answer(result: tuple[int, Found] | None) -> None:
            try:
                with replies.answering(place):
                    self._answer(session, query, result, mark)
            finally:
                self.gone_during.end(mark)

        try:
            # Coarse to coarse: the index holds cell centres, and so is the asker's position.
            self.index.search(snap(me), self.view.radius(user), excluded, need, answer)
        except BaseException:
            replies.fill(place, None)  # the error replied for the query comes in its place
            raise

    def _answer(
        self,
        session: Session,
        query: NearbyPeopleQuery,
        result: tuple[int, Found] | None,
        mark: int,
    ) -> None:
        """Reply to ``query`` with the search's ``result`` (it may come a round trip later:
        a connection closed meanwhile gets nothing, and strangers that left meanwhile and
        did not come back, or became friends, are not shown)."""
        conn = session.conn
        if self.ctx.session(conn) is None:
            return
        if result is None:
            message = "nearby_people could not be searched (the shared store did not answer)"
            self.ctx.reply_error(conn, ProtocolError("internal", message, query.id))
            return
        total, found = result
        watch = self.watches.get(conn)
        are_friends = self.ctx.store.are_friends
        late = [
            entry
            for entry in found
            if (
                self.gone_during.since(mark, entry[1])
                and (watch is None or entry[1] not in watch.shown)
            )
            or are_friends(session.user, entry[1])
        ]
        if late:
            total -= len(late)
            found = [entry for entry in found if entry not in late]
        start = query.page * PAGE_SIZE
        page = found[start : start + PAGE_SIZE]
        people = [Person(user=u, distance_m=rounded(d), ts=loc.ts) for d, u, loc in page]
        reply = NearbyPeopleReply(
            re=query.id, page=query.page, page_size=PAGE_SIZE, total=total, people=people
        )
        self.ctx.replies.reply(conn, out(reply, seals=((STRANGER_TAG,),)))
        if watch is not None:
            # Later stranger_gone refers to everything shown: earlier events and this page.
            for _, other, location in page:
                self.watches.show(watch, other, location)

    def forget(self, user: str) -> None:
        """Drop ``user``'s query bucket (a forget)."""
        self._buckets.pop(user, None)

    def _forget_full_buckets(self, now: float) -> None:
        """Drop buckets that have refilled completely (they equal a new one), so memory
        follows the users querying recently, not every user who ever queried."""
        if len(self._buckets) < 1024:
            return
        refill = self.query_burst * self.query_interval
        for user in [u for u, b in self._buckets.items() if now - b.updated >= refill]:
            del self._buckets[user]
