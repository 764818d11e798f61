"""Which friendships a node holds (cluster): those of the users it serves, read from Redis.

With several nodes no node holds the whole friendship graph. A node holds a user's
friendships (``gp:friends:{U}``) while it *holds* the user: while a session of the user is
open here, or an HTTP request about the user is being answered here. The node's graph is
then exactly every edge with a held end: enough for everything the hub does for a held user
(its friends' channels, ``friends_presence``, the friend limit, 1:1 chat), and for a
friend's event it only delivers to the held users among the friend's friends. Memory grows
with the node's own users, not with the population.

``hold`` reads what it lacks in pipelines (``redis_load.pipelined``), once this node's own
journaled writes are in Redis (read your writes); ``release`` drops the edges no held user
needs any more. Another node's friendship change reaches every node on the feed
(``Befriended``, ``Unfriended``, ``UserForgotten``); ``admit`` lets one through only if it
touches a held user (a forget always). A read can be older than a change the node heard of:
sent before it was written, or, on a Cluster, read from a shard the change had not reached
yet when its feed entry (on another shard) was read. So every friendship change heard or
made here is also kept a few seconds (``RecentChanges``), and after a read each of them
that touches a user read is applied again to the graph, in order: an edge's last change
wins, so a stale read cannot keep an ended friendship, miss a
new one, or bring back a forgotten user. Nothing waits, and nothing but friendship edges is
applied twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import TYPE_CHECKING

import trio

from geopresence.cluster.recent_changes import InFlight, RecentChanges
from geopresence.core.replication import FeedOp
from geopresence.model.records import Befriended, Unfriended, UserForgotten

if TYPE_CHECKING:
    from geopresence.core.hub import Hub

ReadFriends = Callable[[list[str]], Awaitable[dict[str, list[str]]]]
"""Each user's friends as Redis has them (``redis_load.read_friends``)."""


def users_of(op: FeedOp) -> tuple[str, ...]:
    """The users whose friendships ``op`` changes (none: not a friendship change)."""
    if isinstance(op, Befriended | Unfriended):
        return (op.a, op.b)
    if isinstance(op, UserForgotten):
        return (op.user,)
    return ()


class FriendSlices:
    """The users whose friendships this node holds, counted by holder (sessions, requests).

    ``written`` returns once this node's journaled changes are in Redis; ``now`` is a
    monotonic clock (seconds)."""

    def __init__(
        self,
        hub: Hub,
        read: ReadFriends,
        written: Callable[[], Awaitable[None]],
        now: Callable[[], float] = trio.current_time,
    ) -> None:
        self._hub = hub
        self._read = read
        self._written = written
        self._holders: Counter[str] = Counter()
        self._held: set[str] = set()
        """Users whose every friendship is in the hub's graph."""
        self._reading: InFlight[str] = InFlight()
        """Users being read."""
        self._recent: RecentChanges[FeedOp] = RecentChanges(now)
        """Friendship changes heard or made here lately."""

    def __len__(self) -> int:
        return len(self._held)

    def holds(self, user: str) -> bool:
        """True while every friendship of ``user`` is in the hub's graph."""
        return user in self._held

    async def hold(self, users: Collection[str]) -> None:
        """Have every friendship of ``users`` here until ``release(users)``; raises (and
        holds nothing) if Redis cannot be read."""
        wanted = set(users)
        self._holders.update(wanted)
        try:
            await self._reading.until_done(
                lambda: [user for user in wanted if user not in self._held], self._read_in
            )
        except BaseException:
            self.release(wanted)
            raise

    def release(self, users: Collection[str]) -> None:
        """The end of one ``hold(users)``: a user no one holds any more keeps only the
        edges to users still held."""
        membership, held = self._hub.membership, self._held
        for user in set(users):
            self._holders[user] -= 1
            if self._holders[user] > 0:
                continue
            del self._holders[user]
            if user in held:
                held.discard(user)
                membership.unload_friends(user, keep=held.__contains__)

    def admit(self, op: FeedOp) -> bool:
        """Whether the hub should apply a feed op: a friendship change of users none of
        which is held is left out (this node needs none of it); a forget always goes
        through (the user's other state goes too)."""
        users = users_of(op)
        if not users:
            return True
        self.made_here(op)
        return isinstance(op, UserForgotten) or any(user in self._held for user in users)

    def made_here(self, op: FeedOp) -> None:
        """A friendship change this node heard of or made: kept to be applied again over
        the reads in flight (``RecentChanges``)."""
        if users_of(op):
            self._recent.add(op)

    async def _read_in(self, users: list[str]) -> None:
        with self._reading.reading(users), self._recent.reading() as recent:
            await self._written()
            found = await self._read(users)
            membership = self._hub.membership
            loaded = set()
            for user in users:
                if self._holders[user] > 0:  # else its holder gave up meanwhile
                    membership.load_friends(user, found.get(user, ()))
                    loaded.add(user)
            self._apply_recent(loaded, recent())
            self._held.update(loaded)

    def _apply_recent(self, loaded: set[str], recent: Iterable[FeedOp]) -> None:
        """Apply again to the graph, in order, the ``recent`` changes that touch ``loaded``
        (users just read, with no session here yet): silently, as the read was."""
        membership = self._hub.membership
        for op in recent:
            if isinstance(op, UserForgotten):
                if op.user in loaded:
                    membership.unload_friends(op.user, keep=lambda _friend: False)
                for user in loaded:
                    membership.unload_friendship(user, op.user)
            elif isinstance(op, Befriended) and (op.a in loaded or op.b in loaded):
                membership.load_friends(op.a, (op.b,))
            elif isinstance(op, Unfriended) and (op.a in loaded or op.b in loaded):
                membership.unload_friendship(op.a, op.b)
