"""A node's control channel (cluster): what one node must do, sent to that node alone.

Each node listens to ``control:<id>`` (``gp:control:{<id>}`` in Redis) from its start. It
carries what ends a device on the node that holds it, decided elsewhere:

- ``Replaced``: a session of a device opened on another node, and the ``ALIVE`` script
  named this node's incarnation as the device's holder until then: close its connection
  here (4002), unless Redis says the device came back here meanwhile;
- ``LoggedOut``: a logout made on another node ended a device this node held (the ``END``
  script names each device's holder): end it here (4001), unless its connection here opened
  after the logout.

A notice is published until Redis takes it (a few tries), then once: pub/sub loses what
is sent while the receiving node's connection is down. Redis keeps what a lost notice said:
the device's holder, and a logout's tombstone with its time (``presence_scripts.END``). So
when this node's channel may have lost some (a gap: its Redis connection was lost, or the
Cluster moved the channel), ``recheck`` reads them for each device alive here: one another
node holds was taken over; one no node holds, logged out after its connection here opened,
was logged out. Nothing else ends: a Redis that lost its data (no holder, no tombstone)
ends nothing, nor does a device held by this node's previous incarnation (a lost lease).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Final

import trio

from geopresence.cluster.channel_events import LoggedOut, Replaced
from geopresence.cluster.redis_keys import Keys, string
from geopresence.cluster.redis_load import pipelined
from geopresence.cluster.redis_state import send_publications

if TYPE_CHECKING:
    from collections.abc import Callable

    from geopresence.cluster.redis_broker import RedisBroker
    from geopresence.cluster.redis_presence import RedisPresence
    from geopresence.core.hub import Hub

log = logging.getLogger("geopresence.redis")

TRIES: Final = 5
"""Publishes of a notice before it is given up (a second more between each)."""

EARLY_FOR: Final = 60.0
"""Seconds a logout notice is kept for a session still opening here (``opened``)."""


def node_channel(node_id: int | str) -> str:
    """A node's control channel (``gp:control:{3}`` in Redis)."""
    return f"control:{node_id}"


def node_of(incarnation: str | bytes) -> str:
    """The node id of an incarnation (``<node id>/<token>``), or of a holder's."""
    return string(incarnation).partition("/")[0]


def holder_of(value: str | bytes) -> str:
    """The incarnation in a device's ``d:`` field (``"<incarnation> <since ms>"``)."""
    return string(value).partition(" ")[0]


def logged_out_at(tombstone: str | bytes | None) -> float:
    """A tombstone's time in epoch seconds (``"<holder> <ms>"``; -1 for none, or one not
    written so, as the scripts read it)."""
    found = None if tombstone is None else _TOMBSTONE.search(string(tombstone))
    return -1.0 if found is None else int(found[1]) / 1000


_TOMBSTONE: Final = re.compile(r" (\d+)$")


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
        self.reporting: Callable[[str, str], bool] = lambda user, device: False
        """True while a report of (user, device) from this node is on its way to Redis."""
        self.node_id = ""
        self.channel = ""
        """This node's own channel (once it listens)."""
        self._heard: dict[tuple[str, str], tuple[float, float]] = {}
        """Logout notices of the last ``EARLY_FOR`` seconds: (user, device) -> (the logout's
        time, trio time heard), for sessions that were opening when they came."""

    def attach(self, presence: RedisPresence) -> None:
        """Hear from ``presence`` what other nodes must be told, and what ends here."""
        presence.batches.on_taken_over = self.taken_over
        presence.batches.on_logged_out = self.logged_out
        presence.batches.on_superseded = self.superseded
        presence.on_opened = self.opened
        self.reporting = presence.reporting

    def listen(self, node_id: int) -> None:
        """Listen to this node's own channel (``broker.subscribed()`` says when it is)."""
        self.node_id = str(node_id)
        self.channel = node_channel(node_id)
        self._broker.hold(self.channel)

    # ---------------------------------------------------------------- telling

    def taken_over(self, user: str, device: str, incarnation: str, since: float) -> None:
        """A session here, open since ``since``, took ``user``'s ``device`` over from
        ``incarnation``: tell its node, which closes its older connection of it (4002)."""
        self._tell(node_of(incarnation), Replaced(user, device, incarnation, since))

    def logged_out(self, user: str, device: str, incarnation: str, at: float) -> None:
        """A logout made at ``at`` ended ``user``'s ``device``, which ``incarnation`` held:
        its node ends it (this node's own, here, at once)."""
        node_id = node_of(incarnation)
        if node_id == self.node_id:
            self._remember(user, device, at)  # a session of it may be opening here
            self._hub.logged_out_elsewhere(user, device, at)
        else:
            self._tell(node_id, LoggedOut(user, device, at))

    def _tell(self, node_id: str, event: Replaced | LoggedOut) -> None:
        publications = self._broker.publications([node_channel(node_id)], event)
        self._nursery.start_soon(self._publish, publications, event.user)

    async def _publish(self, publications: list[tuple[str, str, bytes]], user: str) -> None:
        for attempt in range(TRIES):
            try:
                await send_publications(self._client, publications)
                return
            except Exception as exc:
                log.warning("a control notice about %s was not published (%s)", user, exc)
                await trio.sleep(1.0 + attempt)
        log.error("a control notice about %s was given up: its node finds it after a gap", user)

    # ---------------------------------------------------------------- obeying

    def on_replaced(self, event: Replaced) -> None:
        """Another node ended one of this node's devices: close its connection here."""
        if event.incarnation != self._incarnation():
            return  # meant for an earlier run of this node id: it holds nothing now
        conn = self._hub.connection_of(event.user, event.device)
        if conn is not None:
            self._nursery.start_soon(self._close_replaced, event, conn)

    async def _close_replaced(self, event: Replaced, conn: int) -> None:
        """Close ``conn`` unless the device came back here meanwhile: its connection here
        opened after the other (its report, on its way, is judged in Redis), or Redis says
        it holds it here."""
        since = self._hub.lifecycle.presence.since(event.user, event.device)
        if since is not None and since > event.since:
            return
        if not await self._held_here(event.user, event.device):
            self._hub.replaced_elsewhere(event.user, event.device, conn)

    def on_logout(self, event: LoggedOut) -> None:
        """Another node's logout ended a device held here: end it (4001) unless its
        connection here opened after the logout (``Hub.logged_out_elsewhere``); kept a
        while for a session of the device still opening (``opened``)."""
        self._remember(event.user, event.device, event.at)
        if self._hub.lifecycle.presence.since(event.user, event.device) is not None:
            self._nursery.start_soon(self._end_logged_out, event)

    def _remember(self, user: str, device: str, at: float) -> None:
        key, now = (user, device), trio.current_time()
        self._heard.pop(key, None)
        self._heard[key] = (at, now)
        for old, (_, heard) in list(self._heard.items()):  # oldest first
            if heard > now - EARLY_FOR:
                break
            del self._heard[old]

    def opened(self, user: str, device: str) -> None:
        """A session of ``user``'s ``device`` opened here; Redis had it held here, but a
        logout may have dropped it meanwhile, its notice heard before the session existed:
        judged now, by when the session's connection opened."""
        heard = self._heard.pop((user, device), None)
        if heard is not None:
            self._nursery.start_soon(self._end_logged_out, LoggedOut(user, device, heard[0]))

    def superseded(self, user: str, device: str, since: float) -> None:
        """A report of ``user``'s ``device``, open here since ``since``, reached Redis after
        a newer connection of it elsewhere: close it here (4002), unless it reopened here
        since."""
        conn = self._hub.connection_of(user, device)
        opened = self._hub.lifecycle.presence.since(user, device)
        if conn is not None and opened is not None and opened <= since:
            self._hub.replaced_elsewhere(user, device, conn)

    async def _end_logged_out(self, event: LoggedOut) -> None:
        # Clocks differ a little between nodes: a session that reconnected here right
        # after the logout is held here in Redis, and stays.
        if not await self._held_here(event.user, event.device):
            self._hub.logged_out_elsewhere(event.user, event.device, event.at)

    async def _held_here(self, user: str, device: str) -> bool:
        key = self._keys.of("presence", user)
        try:
            holder = await self._client.hget(key, f"d:{device}")
        except Exception as exc:
            log.warning("could not ask who holds %s's device (%s): ending it", user, exc)
            return False
        return holder is not None and holder_of(holder) == self._incarnation()

    # ---------------------------------------------------------------- after a gap

    def recheck(self) -> None:
        """This node's channel may have lost notices: Redis says which devices alive here
        were logged out or taken over meanwhile (``_recheck``)."""
        self._nursery.start_soon(self._recheck)

    async def _recheck(self) -> None:
        hub, keys = self._hub, self._keys
        # A device with a report on its way is judged by Redis on its arrival.
        presence = hub.lifecycle.presence
        devices = [
            (user, device, since)
            for user, device, _, since in presence.alive_devices()
            if not self.reporting(user, device)
        ]
        try:
            replies = await pipelined(
                self._client,
                devices,
                lambda pipe, alive: pipe.hmget(
                    keys.of("presence", alive[0]), [f"d:{alive[1]}", f"lo:{alive[1]}", "lo:*"]
                ),
            )
        except Exception as exc:
            log.warning("could not check this node's devices after a gap (%s)", exc)
            return
        for (user, device, since), (holder, tombstone, everyone) in zip(
            devices, replies, strict=True
        ):
            if presence.since(user, device) != since:
                continue  # reconnected here meanwhile: judged by its own report
            if holder is not None:
                conn = hub.connection_of(user, device)
                if node_of(holder) != self.node_id and conn is not None:
                    hub.replaced_elsewhere(user, device, conn)
                continue
            at = max(logged_out_at(tombstone), logged_out_at(everyone))
            if at >= 0:
                hub.logged_out_elsewhere(user, device, at)  # if after its connection opened
