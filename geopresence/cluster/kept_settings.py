"""Whose settings a node keeps (cluster): its sessions' users and their friends.

A node keeps a user's settings (the hub's store, built with ``partial_settings``) while it
listens to the user's own channel: a session here is the user's, or a friend's. Those are
the settings it decides with: its own users' radius, sharing and visibility, and whether a
friend's location may be shown. Any other user's answer ``PRIVATE_SETTINGS``: a missing
entry never means sharing.

The settings are read from Redis (``gp:settings:{U}``) once the channel is listened to
(``own`` before a session opens, ``read_missing`` as ``Covered`` reads its friends' statuses
and when friendships are made). A change is stored with a version that Redis assigns
(``redis_state.SET_SETTINGS``) and published on the user's channel once stored
(``RedisJournal.on_written``): a node that read before the write hears it after, and
whatever arrives first, only a newer version replaces what is kept. When a pub/sub gap may
have lost changes, those users' settings are read again (``reread``).

A friend's hide takes effect here as soon as its node says so (its ``gone`` ``hidden`` on
its channel), ahead of the settings' own publish, which waits for Redis: ``hidden``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
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
        self._hide: set[str] = set()
        """Users whose node said they hide while their settings were being read."""

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
            self.keep((await read_kept(self._client, self._keys, (), missing))[1])

    def keep(self, read: Mapping[str, Versioned]) -> None:
        """Keep the settings ``read`` (for ``missing`` users) of those still needed, unless
        a newer version was heard meanwhile; a hide heard meanwhile stays."""
        store = self._hub.store
        for user, (settings, version) in read.items():
            hide = user in self._hide
            self._hide.discard(user)
            if not self.needed(user) or self._versions.get(user, -1) >= version:
                continue
            if hide:
                settings = attrs.evolve(settings, share_location=False)
            if store.settings_kept(user):  # heard meanwhile, older: as a change
                self._hub.apply_feed(settings_record(user, settings), self._now())
            else:
                store.put_settings(user, settings)
            self._versions[user] = version

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
            kept = store.settings_kept(user) and self.needed(user)
            if kept and version > self._versions.get(user, -1):
                self._versions[user] = version
                if store.get_settings(user) != settings:
                    self._hub.replica.settings_read(settings_record(user, settings), now)

    def heard(self, heard: SettingsHeard) -> None:
        """Another node's settings change, heard on its user's channel: kept if newer."""
        change, version = heard.change, heard.version
        user = change.user
        if not self.needed(user) or self._versions.get(user, -1) >= version:
            return  # not kept here, or older than what is
        self._versions[user] = version
        self._hide.discard(user)
        store = self._hub.store
        if store.settings_kept(user):
            self._hub.apply_feed(change, self._now())
        else:  # its read is in flight (and loses to this): nothing was shown without it
            store.put_settings(user, settings_from(change))

    def wrote(self, change: SettingsChanged, version: int) -> None:
        """Redis stored a change made here at ``version``: kept as such (another node's
        older change heard meanwhile gives way to it)."""
        user = change.user
        if not self.needed(user) or self._versions.get(user, -1) >= version:
            return
        self._versions[user] = version
        if self._hub.store.get_settings(user) != settings_from(change):
            self._hub.apply_feed(change, self._now())

    def hidden(self, user: str) -> None:
        """``user``'s node published that it stopped sharing its location (its settings'
        change follows once Redis has it): keep it hidden here from now on, also over a
        read in flight. A later version replaces this, like any change."""
        store = self._hub.store
        if not self.needed(user):
            return
        if not store.settings_kept(user):
            self._hide.add(user)  # for ``keep``
            return
        settings = store.get_settings(user)
        if settings.share_location:
            store.put_settings(user, attrs.evolve(settings, share_location=False))

    def released(self, user: str) -> None:
        """No connection here listens to ``user``'s channel any more: its settings are not
        kept current here, so not kept."""
        self._hub.store.drop_settings(user)
        self._versions.pop(user, None)
        self._hide.discard(user)
