"""What a ``send`` must satisfy (sans-I/O): its text's size, and who may write where.

The design's rules: a text of at most 4096 UTF-8 bytes; 1:1 messages between friends only,
group messages from members only. ``Chat`` checks them before a message gets an id; the
members-only rule (``check_member``) also guards ``group_presence``.
"""

from __future__ import annotations

from geopresence.core.store import Store
from geopresence.model.chat_message import MAX_TEXT_BYTES
from geopresence.model.text import utf8_len
from geopresence.wire.client_messages import Send
from geopresence.wire.errors import ProtocolError, RequestId


def check_size(message: Send) -> None:
    """``too_large`` if ``message``'s text is longer than ``MAX_TEXT_BYTES`` UTF-8 bytes."""
    text = message.text
    # Counted only when it may be too long: a character is at most 4 bytes.
    if len(text) * 4 > MAX_TEXT_BYTES and utf8_len(text) > MAX_TEXT_BYTES:
        raise ProtocolError(
            "too_large", f"text is longer than {MAX_TEXT_BYTES} UTF-8 bytes", message.id
        )


def check_allowed(store: Store, user: str, message: Send) -> None:
    """``forbidden`` unless ``user`` may send ``message``: to a friend (not to itself), or
    to a group it is a member of."""
    if message.to is not None:
        if message.to == user:
            raise ProtocolError(
                "forbidden", "1:1 messages go to a friend, not to oneself", message.id
            )
        if not store.are_friends(user, message.to):
            raise ProtocolError(
                "forbidden",
                f"{message.to!r} is not your friend: 1:1 is for friends only",
                message.id,
            )
    else:
        assert message.group is not None  # Send guarantees one of to/group
        check_member(store, user, message.group, message.id)


def check_member(store: Store, user: str, group: str, request_id: RequestId) -> None:
    """``forbidden`` unless ``user`` is a member of ``group``: the same answer whether the
    group exists or not, so an outsider learns nothing about it."""
    members = store.group_members(group)
    if members is None or user not in members:
        raise ProtocolError("forbidden", f"not a member of group {group!r}", request_id)
