"""A presence transition decided on this node, told wherever it must go (cluster).

The node that decides a transition (its own device ended, or the sweeper ended a dead node's)
tells its own connections and publishes it on the user's channel (its friends) and on the
channels of the user's groups of at most ``presence_fanout_limit`` members (co-members). The
groups it holds say which: ``Lifecycle.presence_channels``. But an offline transition is
often decided after the user's last session here ended, when this node no longer holds the
user's groups, or by a sweeper that never held them: then its groups are read from Redis
(``gp:groups_of:{U}``, and each group's size), and the small ones not told yet carry it too.
A node that hears a transition twice applies it once (transitions are versioned).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import trio

from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.redis_load import pipelined, read_groups_of
from geopresence.core.broker import group_channel
from geopresence.core.replication import PresenceSet

if TYPE_CHECKING:
    from geopresence.cluster.redis_broker import RedisBroker
    from geopresence.core.hub import Hub

log = logging.getLogger("geopresence.redis")


class Announcer:
    """``__call__`` is ``RedisPresence``'s announce; ``held(user)`` says whether this node
    holds the user's groups (``GroupSlices.holds_user``); ``announced`` is told each
    transition after it is published (``Covered.announced``)."""

    def __init__(
        self,
        hub: Hub,
        broker: RedisBroker,
        client: Any,
        keys: Keys,
        held: Callable[[str], bool],
        announced: Callable[[PresenceSet], None],
    ) -> None:
        self._hub = hub
        self._broker = broker
        self._client = client
        self._keys = keys
        self._held = held
        self._announced = announced
        self.nursery: trio.Nursery | None = None
        """Where the reads of groups not held run (set once the node runs)."""

    def __call__(self, transition: PresenceSet) -> None:
        hub = self._hub
        hub.announce_presence(transition)
        channels = hub.lifecycle.presence_channels(transition.user)
        self._broker.publish_remote(channels, transition)
        self._announced(transition)
        if self.nursery is not None and not self._held(transition.user):
            self.nursery.start_soon(self._to_groups_not_held, transition, set(channels))

    async def _to_groups_not_held(self, transition: PresenceSet, told: Collection[str]) -> None:
        client, keys, user = self._client, self._keys, transition.user
        try:
            found = (await read_groups_of(client, keys, [user]))[user]
            groups = [g for g in found if group_channel(g) not in told]
            sizes = await pipelined(client, groups, lambda pipe, g: pipe.hlen(keys.of("group", g)))
        except Exception as exc:  # its co-members elsewhere see it in group_presence
            log.warning("could not read %s's groups to tell its transition (%s)", user, exc)
            return
        limit = self._hub.settings.presence_fanout_limit
        small = [group_channel(g) for g, size in zip(groups, sizes, strict=True) if size <= limit]
        if small:
            self._broker.publish_remote(small, transition)
