"""A node's control channel (cluster): what one node must do, sent to that node alone.

Each node listens to ``control:<id>`` (``gp:control:{<id>}`` in Redis) from its start. It
carries what ends a device's connection on the node that holds it, decided elsewhere:

- ``Replaced``: a session of a device opened on another node, and the ``ALIVE`` script
  named this node's incarnation as the device's holder until then: close its connection
  here (4002);
- ``LogoutRequested``: a logout made on another node, whose ``END`` script ended a device
  this node held: close its connection here (4001).

The holder asks Redis who holds the device before closing: a notice that arrives after the
device came back to it closes nothing. A notice is sent once (pub/sub). When this node's
channel may have lost some (a gap: its Redis connection was lost, or the Cluster moved the
channel), ``recheck`` reads, for each device connected here, its holder and the tombstone a
logout leaves (``lo:<device>``, ``presence_scripts.END``): a device another node holds was
taken over; one no node holds, logged out from this node, was logged out. Nothing else
closes: a Redis that lost its data (no holder, no tombstone) closes nothing, nor does a
device held by this node's previous incarnation (a lost lease, being reported again).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from geopresence.cluster.channel_events import Replaced
from geopresence.cluster.redis_keys import Keys, string
from geopresence.cluster.redis_load import pipelined
from geopresence.core.replication import LogoutRequested

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from geopresence.cluster.redis_broker import RedisBroker
    from geopresence.core.hub import Hub

log = logging.getLogger("geopresence.redis")


def node_channel(node_id: int | str) -> str:
    """A node's control channel (``gp:control:{3}`` in Redis)."""
    return f"control:{node_id}"


async def _nothing_queued() -> None:
    return None


class Control:
    """This node's side of the control channels: it tells other nodes, and obeys."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        broker: RedisBroker,
        hub: Hub,
        incarnation: Callable[[], str | None],
        nursery: trio.Nursery,
    ) -> None:
        self._client = client
        self._keys = keys
        self._broker = broker
        self._hub = hub
        self._incarnation = incarnation
        self._nursery = nursery
        self.reported: Callable[[], Awaitable[None]] = _nothing_queued
        """Returns once this node's presence reports queued so far are in Redis."""
        self.node_id = ""
        self.channel = ""
        """This node's own channel (once it listens)."""

    def listen(self, node_id: int) -> None:
        """Listen to this node's own channel (``broker.subscribed()`` says when it is)."""
        self.node_id = str(node_id)
        self.channel = node_channel(node_id)
        self._broker.hold(self.channel)

    def logged_out(self, user: str, device: str, incarnation: str) -> None:
        """A logout made here ended ``user``'s ``device``, which ``incarnation`` held:
        its node closes its connection of it (this node's own, here, at once)."""
        node_id = incarnation.partition("/")[0]
        if node_id != self.node_id:
            self._broker.publish_remote([node_channel(node_id)], LogoutRequested(user, device))
            return
        conn = self._hub.connection_of(user, device)
        if conn is not None:
            self._hub.logged_out_elsewhere(user, device, conn)

    def on_logout(self, event: LogoutRequested) -> None:
        """Another node's logout ended a device held here: close its connection (4001)."""
        if event.device is None:  # not sent so by this version: every device of the user
            devices = self._hub.lifecycle.presence.device_names(event.user)
        else:
            devices = [event.device]
        for device in devices:
            conn = self._hub.connection_of(event.user, device)
            if conn is not None:
                self._nursery.start_soon(self._close, event.user, device, conn, True)

    def taken_over(self, user: str, device: str, incarnation: str) -> None:
        """A session here took ``user``'s ``device`` over from ``incarnation``: tell its
        node, which closes its connection of it (4002)."""
        node_id = incarnation.partition("/")[0]
        event = Replaced(user, device, incarnation)
        self._broker.publish([node_channel(node_id)], event)

    def on_replaced(self, event: Replaced) -> None:
        """Another node ended one of this node's devices: close its connection here."""
        if event.incarnation != self._incarnation():
            return  # meant for an earlier run of this node id: it holds nothing now
        conn = self._hub.connection_of(event.user, event.device)
        if conn is not None:
            self._nursery.start_soon(self._close, event.user, event.device, conn, False)

    async def _close(self, user: str, device: str, conn: int, logout: bool) -> None:
        """Close ``conn`` unless the device came back here meanwhile: Redis says who holds
        it now (a session here reports its device before its welcome)."""
        key = self._keys.of("presence", user)
        try:
            holder = await self._client.hget(key, f"d:{device}")
        except Exception as exc:
            log.warning("could not ask who holds %s's device (%s): closing it", user, exc)
            holder = None
        if holder is not None and string(holder) == self._incarnation():
            return
        if logout:
            self._hub.logged_out_elsewhere(user, device, conn)
        else:
            self._hub.replaced_elsewhere(user, device, conn)

    def recheck(self) -> None:
        """This node's channel may have lost notices: Redis says which devices connected
        here were logged out or taken over meanwhile (``_recheck``)."""
        self._nursery.start_soon(self._recheck)

    async def _recheck(self) -> None:
        hub, keys = self._hub, self._keys
        conns = {
            (user, device): conn
            for user, device, _ in hub.lifecycle.presence.alive_devices()
            if (conn := hub.connection_of(user, device)) is not None
        }
        try:
            await self.reported()  # else a device just reported would look logged out
            replies = await pipelined(
                self._client,
                list(conns),
                lambda pipe, key: pipe.hmget(
                    keys.of("presence", key[0]), [f"d:{key[1]}", f"lo:{key[1]}"]
                ),
            )
        except Exception as exc:
            log.warning("could not check this node's devices after a gap (%s)", exc)
            return
        for ((user, device), conn), (holder, tombstone) in zip(conns.items(), replies, strict=True):
            if holder is not None:
                if self._node_of(holder) != self.node_id:
                    hub.replaced_elsewhere(user, device, conn)
            elif tombstone is not None and self._node_of(tombstone) == self.node_id:
                hub.logged_out_elsewhere(user, device, conn)

    @staticmethod
    def _node_of(value: bytes | str) -> str:
        """The node id of an incarnation (``<node id>/<token>``), or of a tombstone's."""
        return string(value).partition("/")[0]
