"""A chat message on the wire and on channels (sans-I/O): its frames, where it is published,
push requests, and what makes a resend the same message (``Chat`` uses them).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from geopresence.core.broker import group_channel, inbox_channel
from geopresence.model.chat_message import ChatMessage
from geopresence.wire.client_messages import Send
from geopresence.wire.errors import ProtocolError, RequestId
from geopresence.wire.outgoing import Outgoing, out
from geopresence.wire.server_messages import ChatMessageOut


@attrs.frozen(slots=True)
class PushRequest:
    """``recipients`` (one or more) have no connected device to receive ``message``."""

    recipients: tuple[str, ...]
    message: ChatMessage


PushHook = Callable[[PushRequest], None]
"""Receives push requests; must not block (the shell queues them for a webhook worker)."""


def message_frame(message: ChatMessage, *, own: bool) -> ChatMessageOut:
    """The wire form of ``message``; ``own`` for the sender's devices (with client_msg_id)."""
    return ChatMessageOut(
        message_id=str(message.message_id),
        sender=message.sender,
        to=message.to,
        group=message.group,
        text=message.text,
        created_at=message.created_at,
        client_msg_id=message.client_msg_id if own else None,
    )


@attrs.define(slots=True, eq=False)
class ChatEvent:
    """Published on inbox and group channels: one message, encoded lazily at most twice."""

    message: ChatMessage
    _shared: Outgoing | None = None
    _own: Outgoing | None = None

    def frame_for(self, user: str) -> Outgoing:
        if user == self.message.sender and self.message.client_msg_id is not None:
            if self._own is None:
                self._own = out(message_frame(self.message, own=True))
            return self._own
        if self._shared is None:
            self._shared = out(message_frame(self.message, own=False))
        return self._shared


def channels_of(message: ChatMessage) -> list[str]:
    """Where a message is published: both parties' inboxes, or its group's channel."""
    if message.to is not None:
        return [inbox_channel(message.to), inbox_channel(message.sender)]
    assert message.group is not None
    return [group_channel(message.group)]


def same_message(original: ChatMessage, to: str | None, group: str | None, text: str) -> bool:
    return (original.to, original.group, original.text) == (to, group, text)


def reused_error(client_msg_id: str | None, request_id: RequestId) -> ProtocolError:
    return ProtocolError(
        "bad_request",
        f"client_msg_id {client_msg_id!r} was already used for a different message",
        request_id,
    )


def check_same(original: ChatMessage, resend: Send) -> None:
    """A resend must be the same message: a reused key must not swallow a new one."""
    if not same_message(original, resend.to, resend.group, resend.text):
        raise reused_error(resend.client_msg_id, resend.id)
