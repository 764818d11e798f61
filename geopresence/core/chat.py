"""Chat (sans-I/O): send, the durable-before-ack flow, live delivery, sync, the push hook.

The design's flow for one message: the chat server takes an id from the id generator, hands
the message to the store, then delivers it to the recipients' connections, or to the push
service for recipients with none. Here:

1. ``send`` is checked (``chat_send_rules``: friends only for 1:1, members only for a group,
   text at most 4096 UTF-8 bytes) and de-duplicated by the sender's ``client_msg_id``;
2. it gets a Snowflake id and is appended to the ``Journal`` (pending: ``chat_pending``);
3. once the journal says it is durable (at once in memory; after the fsync with
   ``--fsync always``), it is stored in the ``ChatStore``, published, pushed, and acked with
   ``sent``. Commits happen in journal order, so deliveries follow id order; an ack that
   waits keeps its place among its connection's replies (``Replies``), which go out in the
   order of their requests.

Nobody sees a message before it is durable: the recipient's cursor can never point at an id
that a crash could take back.

Delivery goes through the broker: a 1:1 message is published on the recipient's and the
sender's ``inbox`` channels, a group message on the group's channel, excluding the sending
connection (it gets ``sent`` instead). Each recipient connection gets the shared frame, or,
if it belongs to the sender, a frame that also carries ``client_msg_id`` so that device can
match it with its own pending copy. Message frames are reliable: they never coalesce, and a
device whose queue overflows is closed with 4008 and catches up with ``sync``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Final

from geopresence.core.broker import ConnId, SeenOnce
from geopresence.core.chat_horizon import Horizon
from geopresence.core.chat_message_wire import (
    ChatEvent,
    PushHook,
    PushRequest,
    channels_of,
    check_same,
    reused_error,
    same_message,
)
from geopresence.core.chat_pending import Pending, PendingMessages
from geopresence.core.chat_send_rules import check_allowed, check_size
from geopresence.core.chat_store import ChatStore
from geopresence.core.chat_sync_page import SYNC_PAGE_MAX_BYTES, sync_page
from geopresence.core.context import FeatureContext, Session
from geopresence.core.replies import ReplyTo
from geopresence.model.chat_message import ChatMessage
from geopresence.model.snowflake import SnowflakeGenerator
from geopresence.wire.client_messages import Send, Sync
from geopresence.wire.errors import ProtocolError, RequestId
from geopresence.wire.outgoing import Outgoing, out
from geopresence.wire.protocol import error_message
from geopresence.wire.server_messages import Sent

__all__ = ["Chat"]

HEARD_REMEMBERED: Final = 65_536
"""Other nodes' message ids remembered to hear each once: far more than arrive while one
node retries a write."""


class Chat:
    """The chat part of the hub: handlers for ``send`` and ``sync``, and commit of messages
    once the journal made them durable."""

    def __init__(
        self,
        ctx: FeatureContext,
        *,
        ids: SnowflakeGenerator,
        store: ChatStore | None = None,
        push: PushHook | None = None,
    ) -> None:
        self.ctx = ctx
        self.ids = ids
        self.store = ChatStore() if store is None else store
        self.push = push
        self.sync_page_bytes = SYNC_PAGE_MAX_BYTES
        """Byte budget of one ``messages`` reply (see ``SYNC_PAGE_MAX_BYTES``)."""
        self._pending = PendingMessages()
        self.sent = 0
        """Messages stored and acknowledged (for metrics)."""
        self.duplicates = 0
        """Resends answered with the stored message (for metrics)."""
        self.pushes = 0
        """Push requests made for recipients without a connected device (for metrics)."""
        self.horizon: Horizon | None = None
        """With several nodes: below which id no node can still commit (``chat_horizon``);
        deliveries, acks and sync pages of ids at or above it wait."""
        self.keeps_messages = True
        """False with several nodes: messages live in Redis (``sync`` reads them there), and
        ``store`` keeps only the groups' join marks."""
        self._heard = SeenOnce(HEARD_REMEMBERED)
        """Messages heard lately, or committed here (without ``keeps_messages``): shown
        once."""
        self._forgotten: dict[str, int] = {}
        """user -> the last id issued when it was forgotten: a message involving it with an
        id at or below that was made before the forget (journaled but not yet durable, or
        another node's, arriving late) and is never stored or delivered."""

    # ---------------------------------------------------------------- forgetting

    def forgetting(self, user: str) -> None:
        """``user`` is being forgotten: messages of it or to it made until now are dropped
        when they would be stored or delivered (the stored ones go with the state)."""
        self._forgotten[user] = self.ids.mark()

    def made_before_forget(self, message: ChatMessage) -> bool:
        """True if ``message`` involves a forgotten user and was made before its forget."""
        if not self._forgotten:
            return False
        mark = self._forgotten.get(message.sender)
        if mark is None and message.to is not None:
            mark = self._forgotten.get(message.to)
        return mark is not None and message.message_id <= mark

    # ---------------------------------------------------------------- client messages

    def on_send(self, session: Session, message: Send, now: float) -> None:
        check_size(message)
        user = session.user
        # A resend is answered before the permission checks: it asks for the result of a
        # send that was already accepted (a friendship ended since must not turn a retry
        # after a network drop into an error).
        if message.client_msg_id is not None:
            pending = self._pending.of_client(user, message.client_msg_id)
            if pending is not None:
                # The original is on its way to disk: this resend is acked with it.
                check_same(pending.message, message)
                self.duplicates += 1
                pending.acks.append((self.ctx.replies.place(session.conn), message.id))
                return
            stored = self.store.find_client_msg(user, message.client_msg_id)
            if stored is not None:
                self.answer_stored(session, message, stored)
                return
        check_allowed(self.ctx.store, user, message)
        chat_message = ChatMessage(
            message_id=self.ids.next_id(now),
            sender=user,
            text=message.text,
            created_at=now,
            to=message.to,
            group=message.group,
            client_msg_id=message.client_msg_id,
        )
        seq = self.ctx.journal_append(chat_message)
        # Not durable at once: its ack keeps its place among the connection's replies.
        waits = seq > self.ctx.journal.durable_seq
        to = self.ctx.replies.place(session.conn) if waits else session.conn
        self._pending.add(Pending(seq, chat_message, session.conn, [(to, message.id)]))
        self.commit_durable()

    def answer_stored(self, session: Session, message: Send, stored: ChatMessage) -> None:
        """Answer a resend of ``stored`` (the same ``client_msg_id``) with it: ``sent``
        with ``duplicate``, once stable; an error if its content differs."""
        check_same(stored, message)
        self.duplicates += 1
        self._ack_when_stable(session.conn, message.id, stored, duplicate=True)

    def decides(self, user: str, message: Send) -> bool:
        """Whether this node decides ``message`` from what it keeps: ``user`` may send it,
        and no message of its on the way to disk has its ``client_msg_id`` for another one
        (else Redis says which was stored first, with several nodes)."""
        cmid = message.client_msg_id
        pending = None if cmid is None else self._pending.of_client(user, cmid)
        if pending is not None:
            return same_message(pending.message, message.to, message.group, message.text)
        try:
            check_allowed(self.ctx.store, user, message)
        except ProtocolError:
            return False
        return True

    def on_sync(self, session: Session, message: Sync, now: float) -> None:
        """Reply with one page of ``messages`` from this node's store."""
        user = session.user
        # Not past an id that is not stable: the device would take it as its cursor and
        # skip a lower one another node still commits; it comes live once stable.
        stable = self.stable_below()
        found = self.store.read_after(user, self.ctx.store.groups_of(user), message.after)
        if stable is not None:
            found = itertools.takewhile(lambda m: m.message_id < stable, found)
        self.send_page(session, message, found)

    def send_page(self, session: Session, message: Sync, found: Iterable[ChatMessage]) -> None:
        """Reply to ``message`` with the first page of ``found`` (the user's messages after
        its cursor, ascending by id, none at or above the horizon), built from individually
        encoded entries (``chat_sync_page``): at most ``limit`` messages and
        ``sync_page_bytes``, ``more`` if ``found`` holds more."""
        page = sync_page(session.user, message, found, self.sync_page_bytes)
        self.ctx.replies.reply(session.conn, Outgoing(page))

    # ---------------------------------------------------------------- commit and delivery

    def commit_durable(self) -> None:
        """Store, deliver and acknowledge every pending message the journal made durable,
        in journal (= id) order."""
        for pending in self._pending.pop_durable(self.ctx.journal.durable_seq):
            message = pending.message
            if pending.reused:  # refused where it was written (``stored_elsewhere``)
                for to, request_id in pending.acks:
                    error = reused_error(message.client_msg_id, request_id)
                    self.ctx.replies.answer(to, out(error_message(error)))
                continue
            if pending.stored_as is not None:
                # A resend of a message another node stored: its sender gets that one, and
                # nothing is stored or delivered twice (the origin's feed brings it here);
                # a different message under a used client_msg_id is refused, as on one node.
                self.duplicates += 1
                original = pending.stored_as
                for to, request_id in pending.acks:
                    if same_message(original, message.to, message.group, message.text):
                        self._ack_when_stable(to, request_id, original, duplicate=True)
                    else:
                        error = reused_error(message.client_msg_id, request_id)
                        self.ctx.replies.answer(to, out(error_message(error)))
                continue
            self.sent += 1
            # A group deleted, or a user forgotten, while its message was on its way to disk
            # takes the message with the others (a replay of the journal ends the same way):
            # acked, not stored.
            kept = not pending.group_deleted and (
                message.group is None or self.ctx.store.group_members(message.group) is not None
            )
            if kept and not self.made_before_forget(message):
                if self.ctx.replicator is None:
                    self.store.add(message)
                elif self.keeps_messages:
                    # Other nodes' messages arrive in between: ids are not all ascending.
                    self.store.insert(message)
                else:  # read back after a gap (``heard``), it is not shown twice
                    self._heard.first_time(message.message_id)
                self._publish(message, pending.sender_conn)
            for index, (to, request_id) in enumerate(pending.acks):
                self._ack_when_stable(to, request_id, message, duplicate=index > 0)
        self.release()

    # ---------------------------------------------------------------- the horizon

    def lowest_pending(self) -> int | None:
        """The lowest id of this node's messages not yet durable (None: none)."""
        return self._pending.lowest_id()

    def stable_below(self) -> int | None:
        """Ids below this can be shown (None: any, with one node)."""
        return None if self.horizon is None else self.horizon.stable_below(self.lowest_pending())

    def when_stable(self, message_id: int, action: Callable[[], None]) -> None:
        """Run ``action`` once ``message_id`` is stable (at once with one node)."""
        if self.horizon is None:
            action()
        else:
            self.horizon.when_stable(message_id, self.lowest_pending(), action)

    def release(self) -> None:
        """Run what waited for the horizon and may go now (call when it may have moved)."""
        if self.horizon is not None:
            self.horizon.release(self.lowest_pending())

    def _ack_when_stable(
        self, to: ReplyTo, request_id: RequestId, message: ChatMessage, *, duplicate: bool
    ) -> None:
        # The sender's device takes its own message's id as its sync cursor too. An ack
        # that may wait (several nodes) keeps its place among the connection's replies.
        place = to if self.horizon is None else self.ctx.replies.hold(to)
        self.when_stable(
            message.message_id,
            lambda: self._ack(place, request_id, message, duplicate=duplicate),
        )

    def stored_elsewhere(self, seq: int, original: ChatMessage | None) -> None:
        """The journal found the ``client_msg_id`` of the message it was writing as ``seq``
        used before: stored as ``original`` through another node (acked as it once
        durable), or in another conversation (None: refused, as on one node)."""
        pending = self._pending.at(seq)
        if pending is not None:
            pending.stored_as, pending.reused = original, original is None

    @property
    def pending_count(self) -> int:
        """Messages appended to the journal and not yet durable."""
        return len(self._pending)

    def pending_messages(self) -> list[ChatMessage]:
        """Messages appended to the journal and not yet durable, ascending by id (but those
        a forget or their group's deletion dropped: a snapshot must not bring them back)."""
        return [
            p.message
            for p in self._pending
            if not p.group_deleted and not self.made_before_forget(p.message)
        ]

    def heard(self, message: ChatMessage) -> None:
        """Another node committed ``message`` (several nodes): never issue an id at or
        below it here, keep it (unless ``keeps_messages`` is off), and publish it to this
        node's subscribers once stable (the horizon releases in id order). Idempotent: a
        message heard again (a write retried by its node) is dropped."""
        self.ids.observe(message.message_id)
        if self.made_before_forget(message):
            return
        if message.group is not None and self.ctx.store.group_members(message.group) is None:
            return  # the group was deleted meanwhile
        if self.keeps_messages:
            if not self.store.insert(message):
                return
        elif not self._heard.first_time(message.message_id):
            return
        event = ChatEvent(message)
        self.when_stable(message.message_id, lambda: self.ctx.publish(channels_of(message), event))

    def deliver(self, conn: ConnId, event: ChatEvent) -> None:
        """The broker hands ``event`` to one local subscriber."""
        message = event.message
        if self.made_before_forget(message):
            return  # from another node, sent before the forget reached it
        session = self.ctx.session(conn)
        if session is None:
            return
        if message.group is not None:
            joined = self.store.joined_after(message.group, session.user)
            if joined is None or joined >= message.message_id:
                return  # joined after the id was issued: not in its view (see chat_store)
        self.ctx.sink.send(conn, event.frame_for(session.user))

    def _publish(self, message: ChatMessage, sender_conn: ConnId) -> None:
        ctx = self.ctx
        event = ChatEvent(message)
        exclude = frozenset((sender_conn,))
        # Published once its id is stable (several nodes: ``chat_horizon``), to whoever
        # subscribes by then: a device that connects meanwhile gets it live, not never.
        self.when_stable(
            message.message_id, lambda: ctx.publish(channels_of(message), event, exclude)
        )
        if message.to is not None:
            if self.push is not None and not ctx.is_connected(message.to):
                self._push((message.to,), message)
            return
        group = message.group
        assert group is not None
        if self.push is None:
            return
        joined_after = self.store.joined_after
        offline = []
        for member in ctx.store.group_members(group) or ():
            # Cheapest test first: in a large group most members are usually connected.
            if ctx.is_connected(member) or member == message.sender:
                continue
            joined = joined_after(group, member)
            if joined is not None and joined < message.message_id:
                offline.append(member)
        if offline:
            self._push(tuple(offline), message)

    def _push(self, recipients: tuple[str, ...], message: ChatMessage) -> None:
        assert self.push is not None
        self.pushes += len(recipients)
        self.push(PushRequest(recipients, message))

    def _ack(
        self, to: ReplyTo, request_id: RequestId, message: ChatMessage, *, duplicate: bool
    ) -> None:
        sent = Sent(
            re=request_id,
            message_id=str(message.message_id),
            created_at=message.created_at,
            duplicate=True if duplicate else None,
        )
        self.ctx.replies.answer(to, out(sent))

    # ---------------------------------------------------------------- group membership

    def on_joined(self, group: str, user: str, mark: int) -> None:
        """``user`` joined ``group`` when ``mark`` was the last id issued: it reads later
        messages only. Those already shown (a large replacement joins its members in
        slices, other messages handled in between, all of them at the mark taken first)
        are sent to the user's connections now, as the members added before it got them
        live. (Several nodes: a node reads them back from Redis, ``chat_gaps``.)"""
        already = self.store.joined_after(group, user) is not None
        self.store.join(group, user, mark)
        if already or not self.keeps_messages:
            return
        connections = self.ctx.connections_of(user)
        if not connections:
            return
        for message in self.store.group_messages_after(group, mark):
            frame = ChatEvent(message).frame_for(user)
            for conn in connections:
                self.ctx.sink.send(conn, frame)

    def on_left(self, group: str, user: str) -> None:
        self.store.leave(group, user)

    def on_group_deleted(self, group: str, members: set[str]) -> None:
        self.store.delete_group(group, members)
        self._pending.group_deleted(group)
