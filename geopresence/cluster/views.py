"""What a node holds for its own sessions (cluster): the locations they need.

Locations are not replicated to every node. A node reads the location of a user and of its
online friends as the user's session opens (``open``; moves arrive on the users' channels
from then on), forgets one when no session here listens to its channel any more
(``released``), and reads a new friend's when a friendship is made, here or on another node
(``befriended``), so that the friend shows at once rather than at its next move; a new
friend whose status no session here needed has its ``friends_presence`` sent once that
status is read (``geopresence.cluster.covered``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

import trio

from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.redis_load import load_locations
from geopresence.core.broker import user_channel, user_of_channel
from geopresence.core.replication import LocationSet
from geopresence.model.records import Befriended, Record

if TYPE_CHECKING:
    from geopresence.cluster.redis_broker import RedisBroker
    from geopresence.core.hub import Hub

log = logging.getLogger("geopresence.redis")


class Views:
    """The locations this node's sessions need, kept current."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        broker: RedisBroker,
        hub: Hub,
        now: Callable[[], float],
        read_statuses: Callable[[Collection[str]], Awaitable[None]],
    ) -> None:
        self._read_statuses = read_statuses
        """Read the statuses and settings not kept here yet of users whose channels are
        listened to (``Covered.read_missing``)."""
        self._client = client
        self._keys = keys
        self._broker = broker
        self._hub = hub
        self._now = now
        self._new_friendships: list[tuple[str, str]] = []
        self._new_friendships_queued = trio.Event()

    async def open(self, user: str) -> int:
        """A session of ``user`` just opened here (its connection subscribed to its friends'
        channels, the node to the user's own: ``Covered.covering``): wait until Redis has
        every subscription, then read the live locations of the user and of its online
        friends. Events from then on keep them current. Returns how many were read."""
        hub = self._hub
        await self._broker.subscribed()
        wanted = [user, *(f for f in hub.store.friends_of(user) if hub.statuses.is_online(f))]
        found = await load_locations(self._client, self._keys, wanted)
        return self._apply(found)

    def _apply(self, found: list[LocationSet]) -> int:
        """Cache the locations read, those of users whose channel this node still listens
        to (one released meanwhile would stay here, stale); returns how many."""
        hub, now, kept = self._hub, self._now(), 0
        for location in found:
            if self._broker.subscribers(user_channel(location.user)):
                hub.apply_feed(location, now)
                kept += 1
        return kept

    def close(self, user: str) -> None:
        """A session of ``user`` here ended: its own channel is let go (one ``close`` per
        ``KeptSettings.own``, whose hold this releases)."""
        self._broker.release(user_channel(user))

    def released(self, channel: str) -> None:
        """No connection here needs ``channel`` any more: a user's location, no longer
        kept current here, is dropped (read again when a session needs it)."""
        user = user_of_channel(channel)
        if user is not None:
            self._hub.nearby.drop_cached(user)

    def on_record(self, record: Record) -> None:
        """A record this node journals: a friendship made here."""
        if isinstance(record, Befriended):
            self.befriended(record.a, record.b)

    def befriended(self, a: str, b: str) -> None:
        """A friendship made here or on another node: a side with a session here sees the
        other's live location now (read from Redis), not at its next move."""
        self._new_friendships.append((a, b))
        self._new_friendships_queued.set()

    async def run(self) -> None:
        """Read the live locations new friendships need, a batch per round trip, then show
        those in range to the sessions here (``Nearby.on_friendship_added`` again: it sends
        only what a connection does not show yet)."""
        hub = self._hub
        while True:
            await self._new_friendships_queued.wait()
            self._new_friendships_queued = trio.Event()
            pairs, self._new_friendships = self._new_friendships, []
            await self._broker.subscribed()  # moves and transitions from now on reach here
            # New friends whose status this node did not keep: their friends_presence waits
            # for it (``Membership.unshown_friends``), read here, then goes out. The new
            # friends' settings are read too: a location is shown only with them.
            membership = hub.membership
            unshown = list(membership.unshown_friends)
            try:
                await self._read_statuses(
                    {friend for _, friend in unshown} | {u for pair in pairs for u in pair}
                )
            except Exception as exc:  # Redis unreachable: the snapshots wait, read again
                log.warning("could not read %d new friends' statuses: %s", len(unshown), exc)
                self._new_friendships[:0] = pairs
                self._new_friendships_queued.set()
                await trio.sleep(1.0)
                continue
            # Those a transition did not tell meanwhile (``Membership.tell_waiting``).
            now = self._now()
            membership.tell_unshown(unshown, now)
            wanted = {
                friend
                for a, b in pairs
                for viewer, friend in ((a, b), (b, a))
                if hub.sessions.has_connections(viewer)
                and hub.statuses.is_online(friend)
                and hub.nearby.location_of(friend, now) is None
            }
            if not wanted:
                continue
            try:
                found = await load_locations(self._client, self._keys, sorted(wanted))
            except Exception as exc:  # Redis unreachable: shown at the friend's next move
                log.warning("could not read %d new friends' locations: %s", len(wanted), exc)
                continue
            self._apply(found)
            now = self._now()
            for a, b in pairs:
                # Not for a friendship ended (or a user forgotten) during the reads above.
                if hub.store.are_friends(a, b):
                    hub.nearby.on_friendship_added(a, b, now)
