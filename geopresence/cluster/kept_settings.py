"""Whose settings a node keeps (cluster): its sessions' users and their friends.

A node keeps a user's settings (the hub's store, built with ``partial_settings``) while it
listens to the user's own channel: a session here is the user's, or a friend's. Those are
the settings it decides with: its own users' radius, sharing and visibility, and whether a
friend's location may be shown. Any other user's answer ``PRIVATE_SETTINGS``: a missing
entry never means sharing.

The settings are read from Redis (``gp:settings:{U}``) once the channel is listened to
(``own`` before a session opens, ``read_missing`` as ``Covered`` reads its friends' statuses
and when friendships are made).
A change is published on the user's channel once Redis has it (``RedisJournal.on_written``),
so a node that read before the write hears the change after. A change heard while a read is
in flight wins over the read (it is at least as new). When a pub/sub gap may have lost
changes, those users' settings are read again (``reread``).

A friend's hide takes effect here as soon as its node says so: a ``gone`` ``hidden`` or a
move kept from view (``LocationKept``) on its channel, ahead of the settings' own publish
(which waits for Redis): ``hidden``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.redis_load import read_settings
from geopresence.core.broker import user_channel
from geopresence.core.state import settings_from, settings_record
from geopresence.core.store import UserSettings
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
        self._heard: set[str] | None = None
        """While ``reread`` reads: the users whose change was heard meanwhile."""

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
            self.keep(await read_settings(self._client, self._keys, missing))

    def keep(self, read: Mapping[str, UserSettings]) -> None:
        """Keep the settings ``read`` (for ``missing`` users) of those still needed and
        still not kept (a change heard meanwhile is newer)."""
        store = self._hub.store
        for user, settings in read.items():
            if self.needed(user) and not store.settings_kept(user):
                store.put_settings(user, settings)

    async def reread(self, users: Collection[str]) -> None:
        """Read again the settings kept of ``users`` (their changes may have been lost): a
        change is applied as if heard, and told to this node's connections."""
        store = self._hub.store
        wanted = sorted(u for u in users if self.needed(u) and store.settings_kept(u))
        if not wanted:
            return
        self._heard = set()
        try:
            read = await read_settings(self._client, self._keys, wanted)
        finally:
            heard, self._heard = self._heard, None
        now = self._now()
        for user in wanted:
            if user in heard or not (self.needed(user) and store.settings_kept(user)):
                continue
            if store.get_settings(user) != read[user]:
                self._hub.replica.settings_read(settings_record(user, read[user]), now)

    def heard(self, change: SettingsChanged) -> None:
        """Another node's settings change, heard on its user's channel."""
        user = change.user
        if not self.needed(user):
            return  # let go meanwhile: not kept
        if self._heard is not None:
            self._heard.add(user)
        store = self._hub.store
        if store.settings_kept(user):
            self._hub.apply_feed(change, self._now())
        else:  # its read is in flight (and loses to this): nothing was shown without it
            store.put_settings(user, settings_from(change))

    def hidden(self, user: str) -> None:
        """``user``'s node published that it does not share its location (before its
        settings' change is written and published): keep it hidden here from now on."""
        store = self._hub.store
        if store.settings_kept(user):
            settings = store.get_settings(user)
            if settings.share_location:
                store.put_settings(user, attrs.evolve(settings, share_location=False))

    def released(self, user: str) -> None:
        """No connection here listens to ``user``'s channel any more: its settings are not
        kept current here, so not kept."""
        self._hub.store.drop_settings(user)
