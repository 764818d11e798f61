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

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from typing import TYPE_CHECKING

import trio

from geopresence.cluster.recent_changes import RECENT_S, RecentChanges
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


async def _nothing(users: list[str]) -> None:
    return None


async def _settled() -> None:
    return None


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
        self._reading: dict[str, trio.Event] = {}
        """Users being read, with the event set once the read is in (or failed)."""
        self._recent: RecentChanges[FeedOp] = RecentChanges(
            now, lambda op: isinstance(op, UserForgotten)
        )
        """Friendship changes heard or made here lately."""
        self.listen: Callable[[list[str]], Awaitable[None]] = _nothing
        """Subscribe to the users' own channels and return once Redis has the
        subscriptions: a friendship change is published there once written."""
        self.unlisten: Callable[[str], None] = lambda user: None
        """The end of one ``listen`` of a user."""
        self.subscribed: Callable[[], Awaitable[None]] = _settled
        """Return once every subscription asked for is in place in Redis."""
        self._now = now
        self._forgotten_at: dict[str, float] = {}
        """Users forgotten lately, with when (a friendship heard then is checked)."""
        self._unsure: list[Befriended] = []
        """Friendships of users forgotten lately, to check in Redis (``run``)."""
        self._checked: set[Befriended] = set()
        """... found there, to be let through once."""
        self._gaps: set[str] = set()
        self._gap_found = trio.Event()

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
                self.unlisten(user)

    @contextlib.asynccontextmanager
    async def holding(self, users: Collection[str]) -> AsyncIterator[None]:
        """``hold(users)`` for the block."""
        await self.hold(users)
        try:
            yield
        finally:
            self.release(users)

    def admit(self, op: FeedOp) -> bool:
        """Whether the hub should apply a change heard (the feed, a user's channel): a
        friendship change of users none of which is held is left out (this node needs none
        of it), and so is a friendship of a user forgotten lately (heard after the forget:
        the two travel different ways); a forget always goes through (the user's other
        state goes too)."""
        users = users_of(op)
        if not users:
            return True
        if isinstance(op, Befriended):
            if op in self._checked:
                self._checked.discard(op)
            elif any(map(self._forgotten_lately, users)):
                # Made before the forget or after it? Redis says (``run``).
                self._unsure.append(op)
                self._gap_found.set()
                return False
        self.made_here(op)
        return isinstance(op, UserForgotten) or any(user in self._held for user in users)

    def _forgotten_lately(self, user: str) -> bool:
        at = self._forgotten_at.get(user)
        if at is not None and at < self._now() - RECENT_S:
            del self._forgotten_at[user]
            at = None
        return at is not None

    def made_here(self, op: FeedOp) -> None:
        """A friendship change this node heard of or made: kept to be applied again over
        the reads in flight (``RecentChanges``)."""
        if users_of(op):
            self._recent.add(op)
        if isinstance(op, UserForgotten):
            now = self._now()
            for user, at in list(self._forgotten_at.items()):
                if at < now - RECENT_S:
                    del self._forgotten_at[user]
            self._forgotten_at[op.user] = now

    async def _read_in(self, users: list[str]) -> None:
        done = trio.Event()
        for user in users:
            self._reading[user] = done
        loaded: set[str] = set()
        listening = False
        try:
            with self._recent.reading() as recent:
                # Subscribed first: a change written after the read reaches this node.
                await self.listen(users)
                listening = True
                recent.mark()
                await self._written()
                found = await self._read(users)
                membership = self._hub.membership
                for user in users:
                    if self._holders[user] > 0:  # else its holder gave up meanwhile
                        membership.load_friends(user, found.get(user, ()))
                        loaded.add(user)
                self._apply_recent(loaded, recent())
            self._held.update(loaded)
        finally:
            if listening:
                for user in set(users) - loaded:
                    self.unlisten(user)
            for user in users:
                del self._reading[user]
            done.set()

    # ---------------------------------------------------------------- gaps

    def gap(self, users: Collection[str]) -> None:
        """The channels of ``users`` may have missed changes (a pub/sub gap): the held ones,
        and those being read, are read again (``run``)."""
        held = [user for user in users if user in self._held or user in self._reading]
        if held:
            self._gaps.update(held)
            self._gap_found.set()

    async def run(self, apply: Callable[[FeedOp], None]) -> None:
        """Read again the friends of held users whose channels had a gap, and ``apply``
        the changes that make the graph match (live, as if heard); a failed read is tried
        again a second later."""
        while True:
            await self._gap_found.wait()
            self._gap_found = trio.Event()
            await self._check(apply)
            users, self._gaps = sorted(self._gaps), set()
            if not users:
                continue
            try:
                for user in users:  # a first read in flight: after it
                    if user in self._reading:
                        await self._reading[user].wait()
                with self._recent.reading() as recent:
                    # As a first read: the subscriptions in place again, this node's own
                    # changes in Redis.
                    await self.subscribed()
                    recent.mark()
                    await self._written()
                    found = await self._read(users)
                    for op in self._differences(users, found, list(recent())):
                        apply(op)
            except Exception:
                self._gaps.update(users)
                await trio.sleep(1.0)
                self._gap_found.set()

    async def _check(self, apply: Callable[[FeedOp], None]) -> None:
        """Apply each unsure friendship that Redis has (made after the forget), once this
        node's own writes are in; a failed read leaves the rest for the next round."""
        unsure, self._unsure = self._unsure, []
        try:
            while unsure:
                op = unsure[0]
                await self._written()
                found = await self._read([op.a])
                if op.b in found.get(op.a, ()):
                    self._checked.add(op)
                    apply(op)
                unsure.pop(0)
        except Exception:
            self._unsure[:0] = unsure
            self._gap_found.set()
            await trio.sleep(1.0)

    def _differences(
        self, users: list[str], found: dict[str, list[str]], recent: list[FeedOp]
    ) -> list[FeedOp]:
        """The changes that take the graph's edges of the still held ``users`` to what was
        ``found`` (with the ``recent`` changes applied over the read)."""
        store = self._hub.store
        changes: list[FeedOp] = []
        for user in users:
            if user not in self._held:
                continue
            friends = set(found.get(user, ()))
            for op in recent:
                if isinstance(op, UserForgotten):
                    friends = set() if op.user == user else friends - {op.user}
                elif isinstance(op, Befriended | Unfriended) and user in (op.a, op.b):
                    other = op.b if op.a == user else op.a
                    (friends.add if isinstance(op, Befriended) else friends.discard)(other)
            have = set(store.friends_of(user))
            changes += [Befriended(user, friend) for friend in sorted(friends - have)]
            changes += [Unfriended(user, friend) for friend in sorted(have - friends)]
        return changes

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
