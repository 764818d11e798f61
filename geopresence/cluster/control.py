"""A node's control channel (cluster): what one node must do, sent to that node alone.

Each node listens to ``control:<id>`` (``gp:control:{<id>}`` in Redis) from its start. It
carries the contract's 4002 across nodes: when a session of a device opens on one node
while another node's incarnation held the device (the presence script says which,
``presence_scripts.ALIVE``), the new holder tells the old one, which closes its connection
of the device. The old node asks Redis who holds the device before closing: a notice that
arrives after the device came back to it closes nothing. A notice is sent once (pub/sub):
one lost on the way leaves the older connection open until its heartbeats stop.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from geopresence.cluster.channel_events import Replaced
from geopresence.cluster.redis_keys import Keys, string

if TYPE_CHECKING:
    from collections.abc import Callable

    from geopresence.cluster.redis_broker import RedisBroker
    from geopresence.core.hub import Hub

log = logging.getLogger("geopresence.redis")


def node_channel(node_id: int | str) -> str:
    """A node's control channel (``gp:control:{3}`` in Redis)."""
    return f"control:{node_id}"


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

    def listen(self, node_id: int) -> None:
        """Listen to this node's own channel (``broker.subscribed()`` says when it is)."""
        self._broker.hold(node_channel(node_id))

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
            self._nursery.start_soon(self._close, event, conn)

    async def _close(self, event: Replaced, conn: int) -> None:
        """Close ``conn`` unless the device came back here meanwhile: Redis says who holds
        it now (a session here reports its device before its welcome)."""
        key = self._keys.of("presence", event.user)
        try:
            holder = await self._client.hget(key, f"d:{event.device}")
        except Exception as exc:
            log.warning("could not ask who holds %s's device (%s): closing it", event.user, exc)
            holder = None
        if holder is None or string(holder) != self._incarnation():
            self._hub.replaced_elsewhere(event.user, event.device, conn)
