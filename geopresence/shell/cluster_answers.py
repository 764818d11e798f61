"""WebSocket answers that read Redis first (shell, several nodes only).

A node keeps the statuses of the users its connections hear transitions from
(``geopresence.cluster.covered``): a session's friends and the members of its small groups
as they were when it opened. A big group's members are not among them (their transitions
are not published to the group), nor a member added since, so a ``group_presence`` query
reads the members' statuses from Redis, then is answered as on one node with what was read
laid over the kept statuses (``Statuses.overlay``).

A node keeps no chat messages either: a ``sync`` page is read from Redis
(``chat_reads.read_sync``), below the chat horizon as on one node. A connection's first
``sync`` waits, besides, until the horizon has passed the time it asked (``Watermarks.hurry``
makes that a fraction of a second): a message committed before this node subscribed to the
user's channels never reaches it live, so the page must hold it.

A ``watch_strangers`` (on) is handled at once, but its reply waits until Redis has the
cells' subscriptions (``_watch``): once the client has it, a stranger entering reaches it live.

The answers come a Redis round trip later; the connection's other messages are handled
meanwhile, but their replies wait for the answer: each such request takes its place among
the connection's replies as it comes (``Replies.place``), and its answer fills it
(``Replies.answering``), so replies still come in the order of the requests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from typing import Final

import trio

from geopresence.cluster.chat_reads import ChatReads
from geopresence.cluster.link import ClusterLink
from geopresence.core.broker import ConnId
from geopresence.core.context import Session
from geopresence.core.hub import Hub
from geopresence.core.replies import Place
from geopresence.core.statuses import Held
from geopresence.model.chat_message import ChatMessage
from geopresence.model.snowflake import CLOCK_SKEW_S, min_id_at
from geopresence.shell.connections import Connections
from geopresence.wire.client_messages import (
    MAX_SYNC_LIMIT,
    ClientMessage,
    GroupPresenceQuery,
    Send,
    Sync,
    WatchStrangers,
)
from geopresence.wire.errors import ProtocolError

log = logging.getLogger("geopresence.server")

READ_TIMEOUT_S: Final = 5.0
"""Seconds to wait for Redis before answering with the statuses kept here."""

HORIZON_TIMEOUT_S: Final = 15.0
"""Seconds a ``sync`` waits for the chat horizon before it is answered with an error: more
than a silent node takes to count as gone (its lease)."""


class ClusterAnswers:
    """``later(conn, message)``: True if the message is answered here, later."""

    def __init__(
        self,
        hub: Hub,
        connections: Connections,
        link: ClusterLink,
        now: Callable[[], float],
    ) -> None:
        self._hub = hub
        self._connections = connections
        self._link = link
        self._now = now
        self.nursery: trio.Nursery | None = None
        """Where the answers wait for Redis (the server's connection nursery)."""
        self._first_sync: dict[ConnId, int] = {}
        """conn -> the id the horizon must pass before its ``sync`` pages are read."""
        hub.sessions.on_closed = (*hub.sessions.on_closed, self._closed)

    def _closed(self, conn: ConnId) -> None:
        self._first_sync.pop(conn, None)

    def later(self, conn: ConnId, message: ClientMessage) -> bool:
        """Take ``message`` if its answer needs what this node does not keep: its reply's
        place is kept now, and filled once answered."""
        if self.nursery is None:
            return False
        if isinstance(message, Sync):
            session = self._hub.session(conn)
            if session is None:
                return False
            # Now, while the session is open (its end drops it: ``_closed``).
            mark = self._first_sync.setdefault(conn, min_id_at(self._now() + CLOCK_SKEW_S))
            place = self._hub.replies.place(conn)
            self.nursery.start_soon(self._sync, session, message, mark, place)
            return True
        if isinstance(message, Send):
            return self._resend(conn, message)
        if isinstance(message, WatchStrangers) and message.on:
            return self._watch(conn, message)
        if not isinstance(message, GroupPresenceQuery) or self._hub.session(conn) is None:
            return False
        members = self._hub.store.group_members(message.group)
        if members is None:
            return False  # not_found, at once
        place = self._hub.replies.place(conn)
        self.nursery.start_soon(self._group_presence, conn, message, members, place)
        return True

    async def _group_presence(
        self, conn: ConnId, message: GroupPresenceQuery, members: Collection[str], place: Place
    ) -> None:
        read: Mapping[str, Held] = {}
        with trio.move_on_after(READ_TIMEOUT_S):
            try:
                read = await self._link.read_statuses(list(members))
            except Exception as exc:  # answered with the statuses kept here
                log.warning("redis: group %s's statuses were not read (%s)", message.group, exc)
        hub = self._hub
        if hub.session(conn) is None:
            return  # the session ended meanwhile
        with self._connections.batch(), hub.replies.answering(place), hub.statuses.overlay(read):
            try:
                hub.handle(conn, message, self._now())
            except Exception:
                log.exception("conn %d: internal error answering group_presence", conn)
                hub.reply_error(conn, ProtocolError("internal", "internal error", message.id))

    def _watch(self, conn: ConnId, message: WatchStrangers) -> bool:
        """Start the watch now (it subscribes to its cells), but let its reply wait until
        Redis has the subscriptions: a stranger entering a cell once the client has the
        reply reaches it live (entries are published once, at most once between nodes)."""
        hub = self._hub
        if hub.session(conn) is None or self.nursery is None:
            return False
        place = hub.replies.place(conn)  # the watch's reply, made now, waits behind it
        hub.handle(conn, message, self._now())
        self.nursery.start_soon(self._subscribed, place)
        return True

    async def _subscribed(self, place: Place) -> None:
        broker = self._link.broker
        assert broker is not None, "the link is running"
        try:
            await broker.subscribed(timeout=READ_TIMEOUT_S)
        except Exception as exc:  # the reply goes all the same: live events may be missed
            log.warning("redis: a watch's cell subscriptions were not confirmed (%s)", exc)
        with self._connections.batch():
            self._hub.replies.fill(place, None)

    def _reads(self) -> ChatReads:
        reads = self._link.chat
        assert reads is not None, "the link is running"
        return reads

    def _resend(self, conn: ConnId, message: Send) -> bool:
        """A ``send`` with a ``client_msg_id`` that its sender may not make (any more: a
        friendship ended, a group left), or that a message of its on the way to disk uses
        for another one, may be the resend of one stored before, which is answered with it
        whatever changed since: Redis says (this node keeps no message)."""
        session = self._hub.session(conn)
        chat = self._hub.chat
        if (
            session is None
            or self.nursery is None
            or message.client_msg_id is None
            or chat.decides(session.user, message)
        ):
            return False
        place = self._hub.replies.place(conn)
        self.nursery.start_soon(self._answer_resend, session, message, place)
        return True

    async def _answer_resend(self, session: Session, message: Send, place: Place) -> None:
        hub = self._hub
        stored = None
        try:
            with trio.fail_after(READ_TIMEOUT_S):
                stored = await self._reads().original_of(session.user, message)
        except Exception as exc:  # answered as if none was stored: refused
            log.warning("redis: a resend's original was not read (%s)", exc)
        if hub.session(session.conn) is not session:
            return
        with self._connections.batch(), hub.replies.answering(place):
            try:
                if stored is None:
                    hub.handle(session.conn, message, self._now())  # refused, as on one node
                else:
                    hub.chat.answer_stored(session, message, stored)
            except ProtocolError as error:
                hub.reply_error(session.conn, error)

    async def _sync(self, session: Session, message: Sync, mark: int, place: Place) -> None:
        """Answer ``message`` once the horizon passed ``mark`` (the connection's first
        sync's), from Redis."""
        hub, conn = self._hub, session.conn
        chat = hub.chat
        stable = trio.Event()
        chat.when_stable(mark, stable.set)
        if not stable.is_set():
            self._link.hurry()
        messages: list[ChatMessage] | None = None
        with trio.move_on_after(HORIZON_TIMEOUT_S):
            await stable.wait()
            below = chat.stable_below()
            assert below is not None, "several nodes: a horizon"
            limit = min(message.limit, MAX_SYNC_LIMIT)
            try:
                with trio.fail_after(READ_TIMEOUT_S):
                    messages = await self._reads().page(
                        session.user, message.after, below, limit + 1
                    )
            except Exception as exc:
                log.warning("redis: %s's messages were not read (%s)", session.user, exc)
        if hub.session(conn) is not session:
            return  # the session ended meanwhile
        with self._connections.batch(), hub.replies.answering(place):
            if messages is None:
                error = "chat history could not be read: try again"
                hub.reply_error(conn, ProtocolError("internal", error, message.id))
            else:
                chat.send_page(session, message, messages)
