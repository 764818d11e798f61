"""Which friendships a node holds (cluster): those of the users it serves, read from Redis.

With several nodes no node holds the whole friendship graph. A node holds a user's
friendships (``gp:friends:{U}``) while it *holds* the user: while a session of the user is
open here, or an HTTP request about the user is being answered here. The node's graph is
then exactly every edge with a held end: enough for everything the hub does for a held user
(its friends' channels, ``friends_presence``, the friend limit, 1:1 chat), and for a
friend's event it only delivers to the held users among the friend's friends. Memory grows
with the node's own users, not with the population.

``hold`` reads what it lacks in one pipeline, once this node's own journaled writes are in
Redis (read your writes); ``release`` drops the edges no held user needs any more. Another
node's friendship change reaches every node on the feed (``Befriended``, ``Unfriended``,
``UserForgotten``); ``admit`` lets one through only if it touches a held user. One that
touches a user being read is held back and applied once the read is in: Redis was written
before the change was put on the feed, so the read either saw it (applying it again changes
nothing) or did not (it is applied after), and a read older than an unfriending cannot
bring the friendship back.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import TYPE_CHECKING

import trio

from geopresence.core.replication import FeedOp
from geopresence.model.records import Befriended, Unfriended, UserForgotten

if TYPE_CHECKING:
    from geopresence.core.hub import Hub

log = logging.getLogger("geopresence.redis")

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

    ``apply`` is how a feed op reaches the hub (the link's own path, called again for an op
    held back). ``written`` returns once this node's journaled changes are in Redis."""

    def __init__(
        self,
        hub: Hub,
        read: ReadFriends,
        written: Callable[[], Awaitable[None]],
        apply: Callable[[FeedOp], None],
    ) -> None:
        self._hub = hub
        self._read = read
        self._written = written
        self._apply = apply
        self._holders: Counter[str] = Counter()
        self._held: set[str] = set()
        """Users whose every friendship is in the hub's graph."""
        self._reading: dict[str, trio.Event] = {}
        """Users being read, with the event set once the read is in (or failed)."""
        self._held_back: list[FeedOp] = []
        """Friendship changes that touch a user being read, in feed order."""

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
            while missing := [user for user in wanted if user not in self._held]:
                reading = [self._reading[user] for user in missing if user in self._reading]
                if reading:  # another holder is reading them: wait for its read
                    for event in reading:
                        await event.wait()
                    continue
                await self._read_in(missing)
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

    @contextlib.asynccontextmanager
    async def holding(self, users: Collection[str]) -> AsyncIterator[None]:
        """``hold(users)`` for the block."""
        await self.hold(users)
        try:
            yield
        finally:
            self.release(users)

    def admit(self, op: FeedOp) -> bool:
        """Whether the hub should apply a feed op now. A friendship change of users none
        of which is held is left out (this node needs none of it). One that touches a user
        being read, or comes after one held back, waits (``apply`` is called with it once
        the reads it waits for are in): friendship changes keep their feed order."""
        users = users_of(op)
        if not users:
            return True
        if self._held_back or any(user in self._reading for user in users):
            self._held_back.append(op)
            return False
        return isinstance(op, UserForgotten) or any(user in self._held for user in users)

    async def _read_in(self, users: list[str]) -> None:
        done = trio.Event()
        for user in users:
            self._reading[user] = done
        try:
            await self._written()
            found = await self._read(users)
        except BaseException:
            self._read_done(users, done)
            raise
        membership = self._hub.membership
        for user in users:
            if self._holders[user] > 0:  # else its holder gave up meanwhile
                membership.load_friends(user, found.get(user, ()))
                self._held.add(user)
        self._read_done(users, done)

    def _read_done(self, users: list[str], done: trio.Event) -> None:
        """The read of ``users`` is in (or failed): apply, in feed order, the changes held
        back that wait for no read any more."""
        for user in users:
            del self._reading[user]
        done.set()
        waiting, self._held_back = self._held_back, []
        for op in waiting:
            if self.admit(op):
                self._apply(op)
