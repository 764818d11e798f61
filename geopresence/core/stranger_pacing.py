"""How often a watcher's own moves and radius changes reach its strangers view (sans-I/O).

Per **user**, not per connection or per watch: at most once per ``interval`` seconds a
change of the user's coarse position or radius reaches its watches (an *application*: the
first at once, a later one at the end of the interval). A watch started with nothing applied
in the interval takes the current ones at once (its view is empty), and the first change
after it is applied at once too. What was applied last, and when, outlives every watch for
the interval: a watch started within it (a re-watch, another connection, a reconnect) takes
what was applied, and a change made meanwhile waits as it would have, so turning
``watch_strangers`` off and on is no new probe. ``Strangers`` decides what to apply; this
records it and says when the next may come.
"""

from __future__ import annotations

from collections import deque

import attrs

from geopresence.core.deadlines import DeadlineIndex
from geopresence.core.locations import Location


@attrs.frozen(slots=True)
class Applied:
    """What a user's watches were brought to at ``at`` (server seconds): its coarse position
    (None: it had no live location) and its radius (metres). ``counted``: a change applied,
    which the next waits ``interval`` for; not a watch's start (its view was empty), after
    which the first change is applied at once."""

    at: float
    center: Location | None
    radius: float
    counted: bool = True


class Pacing:
    """Each user's last application (kept for one ``interval``) and the users whose change
    waits for the end of theirs."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        """Seconds between two applications of one user, at least."""
        self._applied: dict[str, Applied] = {}
        """The last application of each user (recent ones only: see ``record``)."""
        self._order: deque[tuple[float, str]] = deque()
        self._due: DeadlineIndex[str] = DeadlineIndex()

    def __len__(self) -> int:
        """How many users' last applications are kept."""
        return len(self._applied)

    def recent(self, user: str, now: float) -> Applied | None:
        """``user``'s last application if it was less than ``interval`` before ``now`` (a
        new watch takes it; if ``counted``, a change waits), else None."""
        applied = self._applied.get(user)
        if applied is None or now >= applied.at + self.interval:
            return None
        return applied

    def record(
        self, user: str, center: Location | None, radius: float, now: float, *, counted: bool
    ) -> None:
        """``user``'s watches take ``center`` and ``radius`` at ``now`` (``counted``: see
        ``Applied``); nothing waits. One without a position (``center`` None) is no probe
        (the watches cover no cell and show nobody): it limits nothing. Forgets the
        applications that no longer limit anything (oldest first, O(1) amortized), so memory
        follows the users who changed something recently."""
        self._due.discard(user)
        if center is None:
            return
        order = self._order
        while order and now - order[0][0] >= self.interval:
            then, old = order.popleft()
            applied = self._applied.get(old)
            if applied is not None and applied.at == then:
                del self._applied[old]
        self._applied[user] = Applied(now, center, radius, counted)
        order.append((now, user))

    def wait(self, user: str, last: Applied) -> None:
        """``user`` changed within the interval of its application ``last``: the next is due
        at the interval's end."""
        self._due.set(user, last.at + self.interval)

    def waiting(self, user: str) -> bool:
        """Whether a change of ``user`` waits for the end of its interval."""
        return user in self._due

    def pop_due(self, now: float) -> list[str]:
        """The users whose waiting change is due by ``now`` (no longer waiting)."""
        return self._due.pop_due(now)

    def next_deadline(self) -> float | None:
        """When the next waiting change is due (None: none waits)."""
        return self._due.next_deadline()

    def forget(self, user: str) -> None:
        """Drop ``user``'s application and waiting change (a forget)."""
        self._applied.pop(user, None)
        self._due.discard(user)
