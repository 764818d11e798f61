"""A node's control channel (cluster): what one node must do, sent to that node alone.

Each node listens to ``control:<id>`` (``gp:control:{<id>}`` in Redis) from its start. It
carries:

- the contract's 4002 across nodes (``Replaced``): when a session of a device opens on one
  node while another node's incarnation held the device (the presence script says which,
  ``presence_scripts.ALIVE``), the new holder tells the old one, which closes its
  connection of the device. The old node asks Redis who holds the device before closing: a
  notice that arrives after the device came back to it closes nothing;
- a logout made through the HTTP API of another node (``LogoutRequested``): sent to every
  live node (``gp:nodes``), each of which ends the device (or every device of the user) if
  it holds it.

A notice is sent once (pub/sub). When this node's channel may have lost one (a gap: its
Redis connection was lost), it asks Redis who holds each device it holds, once its own
reports are written (``recheck``): a device no node holds any more was logged out, one
another node holds was taken over; either ends here as the lost notice would have ended it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from geopresence.cluster.channel_events import Replaced
from geopresence.cluster.redis_keys import Keys, string
from geopresence.cluster.redis_load import pipelined
from geopresence.cluster.redis_nodes import read_registry
from geopresence.core.replication import LogoutRequested

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from geopresence.cluster.redis_broker import RedisBroker
    from geopresence.core.hub import Hub

log = logging.getLogger("geopresence.redis")

LOGOUT_ATTEMPTS = 5
"""Tries to list the live nodes a logout is sent to (a second more between each)."""


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
        reported: Callable[[], Awaitable[None]],
        now: Callable[[], float],
    ) -> None:
        self._client = client
        self._keys = keys
        self._broker = broker
        self._hub = hub
        self._incarnation = incarnation
        self._nursery = nursery
        self._reported = reported
        """Returns once this node's presence reports queued so far are in Redis."""
        self._now = now
        self.channel = ""
        """This node's own channel (once it listens)."""

    def listen(self, node_id: int) -> None:
        """Listen to this node's own channel (``broker.subscribed()`` says when it is)."""
        self.channel = node_channel(node_id)
        self._broker.hold(self.channel)

    def logout(self, user: str, device: str | None) -> None:
        """A logout made here: every other live node ends ``user``'s ``device`` (every
        device when None) if it holds it."""
        self._nursery.start_soon(self._tell_logout, LogoutRequested(user, device))

    async def _tell_logout(self, op: LogoutRequested) -> None:
        for attempt in range(LOGOUT_ATTEMPTS):
            try:
                live, _ = await read_registry(self._client, self._keys)
                break
            except Exception as exc:
                log.warning("could not list the live nodes for a logout (%s): retrying", exc)
                await trio.sleep(1.0 + attempt)
        else:
            log.error("%s's logout reached no other node (Redis unreachable)", op.user)
            return
        channels = [node_channel(node.node_id) for node in live]
        self._broker.publish_remote([c for c in channels if c != self.channel], op)

    def on_logout(self, op: LogoutRequested) -> None:
        """Another node logged ``op.user`` out: the devices held here end (4001)."""
        self._hub.apply_feed(op, self._now())

    def recheck(self) -> None:
        """This node's channel may have lost notices: Redis says which devices held here
        were logged out or taken over meanwhile (``_recheck``)."""
        self._nursery.start_soon(self._recheck)

    async def _recheck(self) -> None:
        hub = self._hub
        conns = {
            (user, device): conn
            for user, device, _ in hub.lifecycle.presence.alive_devices()
            if (conn := hub.connection_of(user, device)) is not None
        }
        try:
            await self._reported()  # else a device just reported would look logged out
            holders = await pipelined(
                self._client,
                list(conns),
                lambda pipe, key: pipe.hget(self._keys.of("presence", key[0]), f"d:{key[1]}"),
            )
        except Exception as exc:
            log.warning("could not check this node's devices after a gap (%s)", exc)
            return
        mine = self._incarnation()
        for ((user, device), conn), holder in zip(conns.items(), holders, strict=True):
            if hub.connection_of(user, device) != conn:
                continue  # ended or reopened meanwhile: judged by what came later
            if holder is None:
                self.on_logout(LogoutRequested(user, device))
            elif string(holder) != mine:
                hub.replaced_elsewhere(user, device, conn)

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
