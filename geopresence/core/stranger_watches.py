"""The connections watching strangers, and which strangers each one shows (sans-I/O).

Kept both ways: per connection (what its view holds, to tell it what changed) and per
stranger (who shows it, to tell exactly those when it leaves, whether or not this node holds
the stranger: with several nodes it may be on another).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator

import attrs

from geopresence.core.broker import ConnId
from geopresence.core.locations import Location

Applied = tuple[tuple[float, float] | None, float]
"""What a watch's decisions are taken from: its user's coarse position (None: none) and
radius."""


@attrs.define
class Watch:
    """One watching connection."""

    conn: ConnId
    cells: frozenset[str] = frozenset()
    """The cells it is subscribed to (their channels)."""
    shown: dict[str, Location] = attrs.Factory(dict)
    """The strangers it shows, at the coarse positions it was last told (``Watches.show``)."""
    center: Location | None = None
    """The watcher's coarse position as last applied (None: it had no live location)."""
    radius: float = 0.0
    """The watcher's radius as last applied."""

    @property
    def applied(self) -> Applied:
        center = self.center
        return (None if center is None else (center.lat, center.lon)), self.radius


class Watches:
    """Every watch of this node, and the reverse index stranger -> the connections
    showing it."""

    def __init__(self) -> None:
        self._watches: dict[ConnId, Watch] = {}
        self._showing: dict[str, set[ConnId]] = {}

    def __len__(self) -> int:
        return len(self._watches)

    def __contains__(self, conn: object) -> bool:
        return conn in self._watches

    def __getitem__(self, conn: ConnId) -> Watch:
        return self._watches[conn]

    def get(self, conn: ConnId) -> Watch | None:
        return self._watches.get(conn)

    def start(self, conn: ConnId) -> Watch:
        watch = self._watches[conn] = Watch(conn)
        return watch

    def stop(self, conn: ConnId) -> Watch | None:
        """``conn`` watches no more (returned; None if it did not)."""
        watch = self._watches.pop(conn, None)
        if watch is not None:
            for user in list(watch.shown):
                self.unshow(watch, user)
        return watch

    def show(self, watch: Watch, user: str, location: Location) -> None:
        """``watch`` now shows ``user`` at ``location``."""
        watch.shown[user] = location
        self._showing.setdefault(user, set()).add(watch.conn)

    def unshow(self, watch: Watch, user: str) -> bool:
        """``watch`` no longer shows ``user``; False if it did not."""
        if watch.shown.pop(user, None) is None:
            return False
        showing = self._showing[user]
        showing.discard(watch.conn)
        if not showing:
            del self._showing[user]
        return True

    def showing(self, user: str) -> Iterator[Watch]:
        """The watches showing ``user`` (a copy: unshowing as it goes is safe)."""
        return iter([self._watches[conn] for conn in self._showing.get(user, ())])


class GoneDuringSearches:
    """Strangers that left while searches were in flight. A search's answer can come a round
    trip after Redis read it (several nodes): a stranger whose ``stranger_gone`` arrived
    meanwhile must not be shown by it, as no other ``stranger_gone`` would follow. Records
    nothing while no search is in flight (one node: never)."""

    def __init__(self) -> None:
        self._marks: Counter[int] = Counter()
        """The mark of each search in flight (how many began at it)."""
        self._count = 0
        self._gone: dict[str, int] = {}
        self._order: deque[tuple[int, str]] = deque()

    def begin(self) -> int:
        """A search starts; returns its mark (give it to ``since`` and ``end``)."""
        self._marks[self._count] += 1
        return self._count

    def end(self, mark: int) -> None:
        """The search that got ``mark`` was answered: forget what no search in flight began
        before (memory follows the searches in flight, not every user who left)."""
        self._marks[mark] -= 1
        if not self._marks[mark]:
            del self._marks[mark]
        oldest = min(self._marks, default=self._count)
        while self._order and self._order[0][0] <= oldest:
            count, user = self._order.popleft()
            if self._gone.get(user) == count:
                del self._gone[user]

    def gone(self, user: str) -> None:
        if self._marks:
            self._count += 1
            self._gone[user] = self._count
            self._order.append((self._count, user))

    def since(self, mark: int, user: str) -> bool:
        """Whether ``user`` left after the search that got ``mark`` began."""
        return self._gone.get(user, 0) > mark
