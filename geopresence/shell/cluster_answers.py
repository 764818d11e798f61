"""WebSocket answers that read Redis first (shell, several nodes only).

A node keeps the statuses of the users its connections hear transitions from
(``geopresence.cluster.covered``): a session's friends and the members of its small groups
as they were when it opened. A big group's members are not among them (their transitions
are not published to the group), nor a member added since, so a ``group_presence`` query
reads the members' statuses from Redis, then is answered as on one node with what was read
laid over the kept statuses (``Statuses.overlay``). The answer comes a Redis round trip
later; the connection's other messages are handled meanwhile (answers carry their
request's ``re``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Final

import trio

from geopresence.core.broker import ConnId
from geopresence.core.hub import Hub
from geopresence.core.statuses import Held
from geopresence.shell.connections import Connections
from geopresence.wire.client_messages import ClientMessage, GroupPresenceQuery
from geopresence.wire.errors import ProtocolError

log = logging.getLogger("geopresence.server")

READ_TIMEOUT_S: Final = 5.0
"""Seconds to wait for Redis before answering with the statuses kept here."""


class ClusterAnswers:
    """``later(conn, message)``: True if the message is answered here, later."""

    def __init__(
        self,
        hub: Hub,
        connections: Connections,
        read_statuses: Callable[[Collection[str]], Awaitable[Mapping[str, Held]]],
        now: Callable[[], float],
    ) -> None:
        self._hub = hub
        self._connections = connections
        self._read = read_statuses
        self._now = now
        self.nursery: trio.Nursery | None = None
        """Where the answers wait for Redis (the server's connection nursery)."""

    def later(self, conn: ConnId, message: ClientMessage) -> bool:
        """Take ``message`` if its answer needs statuses this node does not keep."""
        if not isinstance(message, GroupPresenceQuery) or self.nursery is None:
            return False
        members = self._hub.store.group_members(message.group)
        if members is None:
            return False  # not_found, at once
        self.nursery.start_soon(self._group_presence, conn, message, members)
        return True

    async def _group_presence(
        self, conn: ConnId, message: GroupPresenceQuery, members: Collection[str]
    ) -> None:
        read: Mapping[str, Held] = {}
        with trio.move_on_after(READ_TIMEOUT_S):
            try:
                read = await self._read(list(members))
            except Exception as exc:  # answered with the statuses kept here
                log.warning("redis: group %s's statuses were not read (%s)", message.group, exc)
        hub = self._hub
        if hub.session(conn) is None:
            return  # the session ended meanwhile
        with self._connections.batch(), hub.statuses.overlay(read):
            try:
                hub.handle(conn, message, self._now())
            except Exception:
                log.exception("conn %d: internal error answering group_presence", conn)
                hub.reply_error(conn, ProtocolError("internal", "internal error", message.id))
