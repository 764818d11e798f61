"""Which friendships a node holds (cluster): those of the users it serves, read from Redis
and read again whenever they change.

With several nodes no node holds the whole friendship graph. A node holds a user's
friendships (``gp:friends:{U}``) while it *holds* the user: while a session of the user is
open here, or an HTTP request about the user is being answered here. The node's graph is
then exactly every edge with a held end: enough for everything the hub does for a held user
(its friends' channels, ``friends_presence``, the friend limit, 1:1 chat), and for a
friend's event it only delivers to the held users among the friend's friends. Memory grows
with the node's own users, not with the population; no node hears of friendships it does not
hold.

Holding U listens to ``inbox:U`` (for the node itself, ``Listener``) before U is first read,
once this node's own journaled writes are in Redis (read your writes). The node that writes
a friendship publishes a ``Reread`` notice on both users' inbox channels once Redis has it
(``RedisJournal.notices``), so every change written after a read began is announced to the
node that read. A notice (or a gap on the channel) marks the user *stale*: ``run`` reads its
friends again and applies the difference to the hub as ``Befriended`` and ``Unfriended``
(``apply``: events for the sessions here, as if the change had been made here). A read of a
user touched while it ran (a notice, a change made here, a forget, another read that
changed its friendships here) is dropped, since it may be older than the change: the user
is read again (after ``MAX_TOUCHED_READS`` in a row, applied and then read again). Nothing
is replayed, and the last read always has what Redis had after every change heard. A first
read that finds a friendship with a user held here tells that user's sessions.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING

import trio

from geopresence.cluster.in_flight import InFlight, Listener, Retries, Touches
from geopresence.core.broker import inbox_channel
from geopresence.core.replication import FeedOp
from geopresence.model.records import Befriended, Unfriended, UserForgotten

if TYPE_CHECKING:
    from geopresence.core.hub import Hub

log = logging.getLogger("geopresence.redis")

ReadFriends = Callable[[list[str]], Awaitable[dict[str, list[str]]]]
"""Each user's friends as Redis has them (``redis_load.read_friends``)."""

RETRY_S = 1.0
"""Seconds before a failed read again of stale users is tried again."""


def users_of(op: FeedOp) -> tuple[str, ...]:
    """The users whose friendships ``op`` changes (none: not a friendship change)."""
    if isinstance(op, Befriended | Unfriended):
        return (op.a, op.b)
    if isinstance(op, UserForgotten):
        return (op.user,)
    return ()


class FriendSlices:
    """The users whose friendships this node holds, counted by holder (sessions, requests).

    ``written`` returns once this node's journaled changes are in Redis; ``apply`` applies a
    change found by a read again to the hub (``Arrivals.change``)."""

    def __init__(
        self,
        hub: Hub,
        read: ReadFriends,
        written: Callable[[], Awaitable[None]],
        listener: Listener,
        apply: Callable[[FeedOp], None],
    ) -> None:
        self._hub = hub
        self._read = read
        self._written = written
        self._listener = listener
        self._apply = apply
        self._holders: Counter[str] = Counter()
        self._held: set[str] = set()
        """Users whose every friendship is in the hub's graph."""
        self._reading: InFlight[str] = InFlight()
        """Users being read."""
        self._touches: Touches[str] = Touches()
        self._retries: Retries[str] = Retries()
        self._stale: set[str] = set()
        """Held users to read again (``run``)."""
        self._wakeup = trio.Event()
        self.rereads = 0
        """Users read again after a notice (for tests and metrics)."""

    def __len__(self) -> int:
        return len(self._held)

    def holds(self, user: str) -> bool:
        """True while every friendship of ``user`` is in the hub's graph."""
        return user in self._held

    async def hold(self, users: Collection[str]) -> None:
        """Have every friendship of ``users`` here until ``release(users)``; raises (and
        holds nothing) if Redis cannot be read."""
        wanted = set(users)
        for user in wanted:
            if not self._holders[user]:
                self._listener.hold(inbox_channel(user))
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
            self._listener.release(inbox_channel(user))
            self._stale.discard(user)
            self._retries.done(user)
            if user in held:
                held.discard(user)
                membership.unload_friends(user, keep=held.__contains__)

    # ---------------------------------------------------------------- changes

    def touched(self, users: Collection[str]) -> None:
        """A change of ``users``' friendships made (or applied) here: a read of them in
        flight may be older, so it is not applied (they are read again)."""
        self._touches.touch(users)

    def stale(self, users: Collection[str]) -> None:
        """``users``' friendships changed in Redis (a notice, a gap on their channel): the
        held ones are read again, and reads in flight are not applied."""
        self._touches.touch(users)
        found = [user for user in users if user in self._held]
        if found:
            self._stale.update(found)
            self._wakeup.set()

    def held_friends(self, user: str) -> list[str]:
        """``user``'s friends whose friendships are held here."""
        return sorted(f for f in self._hub.store.friends_of(user) if f in self._held)

    def forgotten(self) -> None:
        """A user was forgotten (the feed): any read in flight may still name it."""
        self._touches.touch_everything()

    async def run(self) -> None:
        """Read the stale users again and apply what changed, until cancelled; a failed
        read is tried again ``RETRY_S`` later."""
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            users = sorted(self._stale & self._held)
            self._stale.clear()
            if not users:
                continue
            try:
                await self._read_again(users)
            except Exception as exc:
                log.warning("reading friends again failed (%s): retrying", exc)
                self._stale.update(user for user in users if user in self._held)
                await trio.sleep(RETRY_S)
                self._wakeup.set()

    # ---------------------------------------------------------------- reading

    async def _read_in(self, users: list[str]) -> None:
        """The first read of ``users``: loaded silently (no session of theirs yet)."""
        with self._reading.reading(users), self._touches.reading(users) as untouched:
            await self._listener.subscribed()  # changes from now on are announced here
            await self._written()
            found = await self._read(users)
            membership, store = self._hub.membership, self._hub.store
            for user in users:
                if self._holders[user] <= 0:
                    self._retries.done(user)
                    continue  # its holder gave up meanwhile
                touched = not untouched(user)
                if touched and self._retries.retry(user):
                    continue  # may be older than a change: read again
                friends = found.get(user, ())
                # A held friend's sessions are told of a friendship new to this node, as
                # if its notice had come first; the rest is loaded silently.
                had = set(store.friends_of(user))
                told = [f for f in friends if f in self._held and f not in had]
                membership.load_friends(user, [f for f in friends if f not in told])
                self._held.add(user)
                # Reads in flight of its friends may be older than the edges just loaded.
                self._touches.touch(set(friends) - had)
                for friend in told:
                    self._apply(Befriended(user, friend))
                self._settled(user, touched)

    async def _read_again(self, users: list[str]) -> None:
        """A read of held ``users`` after a notice: the difference applied, with events."""
        self.rereads += len(users)
        with self._reading.reading(users), self._touches.reading(users) as untouched:
            await self._written()
            found = await self._read(users)
            for user in users:
                if user not in self._held:
                    continue  # let go meanwhile
                touched = not untouched(user)
                if touched and self._retries.retry(user):
                    self._stale.add(user)
                    self._wakeup.set()
                    continue
                now = set(found.get(user, ()))
                had = set(self._hub.store.friends_of(user))
                for friend in sorted(now - had):
                    self._apply(Befriended(user, friend))
                for friend in sorted(had - now):
                    self._apply(Unfriended(user, friend))
                self._touches.touch(now ^ had)  # their reads in flight may be older
                self._settled(user, touched)

    def _settled(self, user: str, touched: bool) -> None:
        """A read of ``user`` was applied: if a change touched it (``MAX_TOUCHED_READS`` in
        a row), it is read again to correct what it may have missed."""
        if touched:
            self.stale([user])
        else:
            self._retries.done(user)
