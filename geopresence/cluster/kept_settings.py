"""Whose settings a node keeps (cluster): its sessions' users and their friends.

A node keeps a user's settings (the hub's store, built with ``partial_settings``) while it
listens to the user's own channel: a session here is the user's, or a friend's. Those are
the settings it decides with: its own users' radius, sharing and visibility, and whether a
friend's location may be shown. Any other user's answer ``PRIVATE_SETTINGS``: a missing
entry never means sharing.

The settings are read from Redis (``gp:settings:{U}``) once the channel is listened to
(``own`` before a session opens, ``read_missing`` as ``Covered`` reads its friends' statuses
and when friendships are made). A change is stored with a version that Redis assigns
(``settings_writes.SET_SETTINGS``) and published on the user's channel once stored
(``RedisJournal.on_written``): a node that read before the write hears it after, and
whatever arrives first, only a newer version replaces what is kept. When a pub/sub gap may
have lost changes, those users' settings are read again (``reread``).

While a change made here is not stored yet, a change heard about the same user waits:
once Redis gave this one its version, the newer of the two is kept (``changing``,
``wrote``). A friend who stops sharing leaves the live views and the queries here at once:
its node's ``gone`` ``hidden`` drops its position, and until the change is stored and heard
a move kept from view does not bring one back (``Arrivals.on_remote``); if a session of the
user is here, whose position this node keeps, its settings are taken as hidden (``hidden``).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from geopresence.cluster.channel_events import SettingsHeard
from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.redis_load import Versioned, read_kept
from geopresence.core.broker import user_channel
from geopresence.core.state import settings_from, settings_record
from geopresence.model.records import SettingsChanged

if TYPE_CHECKING:
    from geopresence.cluster.redis_broker import RedisBroker
    from geopresence.core.hub import Hub


class KeptSettings:
    """The settings this node keeps, read and dropped as users' channels come and go."""

    def __init__(
        self, client: Any, keys: Keys, broker: RedisBroker, hub: Hub, now: Callable[[], float]
    ) -> None:
        self._client = client
        self._keys = keys
        self._broker = broker
        self._hub = hub
        self._now = now
        self._versions: dict[str, int] = {}
        """The version of each user's settings kept here (those kept, and only those)."""
        self._pending: Counter[str] = Counter()
        """Changes made here not stored yet, per user."""
        self._reading: Counter[str] = Counter()
        """Reads in flight, per user."""
        self._heard_pending: dict[str, SettingsHeard] = {}
        """Per user with a change made here pending: the newest change heard meanwhile."""
        self._let_go: set[str] = set()
        """Users let go while a read of theirs was in flight: that read is not kept."""

    def needed(self, user: str) -> bool:
        """True if this node listens to ``user``'s own channel (it must keep its settings)."""
        return bool(self._broker.subscribers(user_channel(user)))

    def missing(self, users: Collection[str]) -> list[str]:
        """Those of ``users`` whose settings this node needs and does not keep, sorted."""
        kept = self._hub.store.settings_kept
        return sorted(u for u in users if self.needed(u) and not kept(u))

    async def own(self, user: str) -> None:
        """A session of ``user`` is opening here: listen to its own channel until
        ``ClusterLink.close_view`` (call it even if this raises), and keep its settings,
        read from Redis once the subscription is in place unless kept already."""
        self._broker.hold(user_channel(user))
        if not self._hub.store.settings_kept(user):
            await self._broker.subscribed()
            await self.read_missing([user])

    async def read_missing(self, users: Collection[str]) -> None:
        """Read and keep the settings of those of ``users`` this node needs and does not
        keep yet (their channels are listened to already: the caller waited for
        ``subscribed``). Nothing is told: nothing was shown with settings not kept."""
        missing = self.missing(users)
        if missing:
            with self.reading(missing):
                read = (await read_kept(self._client, self._keys, (), missing))[1]
                self.keep(read)

    @contextlib.contextmanager
    def reading(self, users: Collection[str]) -> Iterator[None]:
        """Around a read of ``users``' settings and its ``keep``: one let go meanwhile is
        not kept (a change published while nobody here listened would be missing)."""
        self._reading.update(users)
        try:
            yield
        finally:
            self._reading.subtract(users)
            for user in users:
                if self._reading[user] <= 0:
                    del self._reading[user]
                    self._let_go.discard(user)

    def keep(self, read: Mapping[str, Versioned]) -> None:
        """Keep the settings ``read`` (inside ``reading``) of those still needed and not let
        go meanwhile, unless a newer version was heard meanwhile."""
        store = self._hub.store
        for user, (settings, version) in read.items():
            if user in self._let_go or not self.needed(user):
                continue
            if self._versions.get(user, -1) >= version:
                continue
            if store.settings_kept(user) and self._pending[user]:
                continue  # the change made here is newer, and kept
            # Not kept: even with a change made here pending (``wrote`` brings it).
            self._apply(settings_record(user, settings), version)

    async def reread(self, users: Collection[str]) -> None:
        """Read again the settings kept of ``users`` (their changes may have been lost): a
        newer version is applied as if heard, and told to this node's connections."""
        store = self._hub.store
        wanted = sorted(u for u in users if self.needed(u) and store.settings_kept(u))
        if not wanted:
            return
        read = (await read_kept(self._client, self._keys, (), wanted))[1]
        now = self._now()
        for user, (settings, version) in read.items():
            kept = store.settings_kept(user) and self.needed(user) and not self._pending[user]
            if kept and version > self._versions.get(user, -1):
                self._versions[user] = version
                if store.get_settings(user) != settings:
                    self._hub.remote.settings_read(settings_record(user, settings), now)

    def heard(self, heard: SettingsHeard) -> None:
        """Another node's settings change, heard on its user's channel: kept if newer."""
        change, version = heard.change, heard.version
        user = change.user
        if not self.needed(user) or self._versions.get(user, -1) >= version:
            return  # not kept here, or older than what is
        if self._pending[user]:
            # Stored before the change made here, or after it: ``wrote`` tells which.
            newest = self._heard_pending.get(user)
            if newest is None or newest.version < version:
                self._heard_pending[user] = heard
            return
        self._apply(change, version)

    def _apply(self, change: SettingsChanged, version: int) -> None:
        """Keep ``change`` at ``version``: as a change if kept, else as read."""
        self._versions[change.user] = version
        store = self._hub.store
        if store.settings_kept(change.user):
            self._hub.apply_feed(change, self._now())
        else:  # nothing was shown without them (a read in flight loses to this)
            store.put_settings(change.user, settings_from(change))

    def changing(self, change: SettingsChanged) -> None:
        """A change made here, journaled: not stored yet (``wrote`` follows)."""
        self._pending[change.user] += 1

    def wrote(self, change: SettingsChanged, version: int) -> None:
        """Redis stored a change made here at ``version``: kept, unless a change heard
        meanwhile was stored after it (a newer version), or a later one made here waits."""
        user = change.user
        self._pending[user] -= 1
        later = self._pending[user] > 0
        if not later:
            del self._pending[user]
        heard = None if later else self._heard_pending.pop(user, None)
        if not (self.needed(user) and self._hub.store.settings_kept(user)):
            return
        if heard is not None and heard.version > version:
            self._apply(heard.change, heard.version)
            return
        if version <= self._versions.get(user, -1):
            return
        self._versions[user] = version
        if not later and self._hub.store.get_settings(user) != settings_from(change):
            self._hub.apply_feed(change, self._now())  # read while let go, older than this

    def hidden(self, user: str) -> None:
        """``user``'s node says it stopped sharing its location (its change follows once
        stored), and a session of the user is here, whose own position this node keeps:
        no friend may see it, nor the moves of that session, from now on. Not over a
        change made here not stored yet (newer); a newer version replaces it."""
        store = self._hub.store
        if not self.needed(user) or not store.settings_kept(user) or self._pending[user]:
            return
        settings = store.get_settings(user)
        if settings.share_location:
            hidden = attrs.evolve(settings, share_location=False)
            self._hub.apply_feed(settings_record(user, hidden), self._now())

    def released(self, user: str) -> None:
        """No connection here listens to ``user``'s channel any more: its settings are not
        kept current here, so not kept."""
        self._hub.store.drop_settings(user)
        self._versions.pop(user, None)
        self._heard_pending.pop(user, None)
        if user in self._reading:
            self._let_go.add(user)
