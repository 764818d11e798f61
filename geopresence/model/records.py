"""Durable changes: what the journal records and a restart replays (sans-I/O).

Each record is one change to the state that must survive a crash: the user DB (friendships,
groups and their members, settings) and chat messages. Presence and locations are not here:
they are live state that clients rebuild by reconnecting (docs/durability.md says why).

A record is encoded as a JSON object whose ``"t"`` names its kind (``TAGS``); the journal
frames it with a length and a checksum (``geopresence.storage.journal_format``).
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import cattrs

from geopresence.model.chat_message import ChatMessage


@attrs.frozen
class Befriended:
    """a and b became friends."""

    a: str
    b: str


@attrs.frozen
class Unfriended:
    """a and b are no longer friends."""

    a: str
    b: str


@attrs.frozen
class GroupSet:
    """``group``'s membership was replaced by ``members``; members new to it joined when
    ``joined_after`` was the last message id issued (they read later messages only)."""

    group: str
    members: list[str]
    joined_after: int


@attrs.frozen
class GroupDeleted:
    """``group`` and its messages were deleted."""

    group: str


@attrs.frozen
class MemberAdded:
    """``user`` joined ``group`` when ``joined_after`` was the last message id issued."""

    group: str
    user: str
    joined_after: int


@attrs.frozen
class MemberRemoved:
    group: str
    user: str


@attrs.frozen
class SettingsChanged:
    """``user``'s nearby settings are now these (``radius_m`` None: the server default)."""

    user: str
    share_location: bool
    radius_m: float | None
    visible_to_strangers: bool


@attrs.frozen
class UserForgotten:
    """Everything held about ``user`` was deleted: its friendships, group memberships,
    settings and the chat messages it sent or received 1:1, and its group messages. Records
    after this one are new facts (a later ``befriended`` makes it a user again)."""

    user: str


Record = (
    Befriended
    | Unfriended
    | GroupSet
    | GroupDeleted
    | MemberAdded
    | MemberRemoved
    | SettingsChanged
    | ChatMessage
    | UserForgotten
)

TAGS: Final[dict[type[Any], str]] = {
    Befriended: "befriended",
    Unfriended: "unfriended",
    GroupSet: "group_set",
    GroupDeleted: "group_deleted",
    MemberAdded: "member_added",
    MemberRemoved: "member_removed",
    SettingsChanged: "settings",
    ChatMessage: "message",
    UserForgotten: "user_forgotten",
}
"""Record class -> its ``"t"`` in the encoding. Tags are part of the on-disk format: never
rename one (add new kinds instead)."""

_BY_TAG: Final = {tag: cls for cls, tag in TAGS.items()}

converter = cattrs.Converter(forbid_extra_keys=False)
"""Structures and unstructures records and snapshots (the on-disk formats)."""

# A message is the bulk of any data dir: an array instead of an object keeps the files about
# half as large. Field order is part of the format.
_MESSAGE_FIELDS: Final = (
    "message_id",
    "sender",
    "text",
    "created_at",
    "to",
    "group",
    "client_msg_id",
)


def _unstructure_message(message: ChatMessage) -> list[Any]:
    return [getattr(message, name) for name in _MESSAGE_FIELDS]


def _structure_message(value: Any, _type: Any) -> ChatMessage:
    if not isinstance(value, list) or len(value) != len(_MESSAGE_FIELDS):
        raise ValueError(f"a stored message is an array of {len(_MESSAGE_FIELDS)} values")
    message_id, sender, text, created_at, to, group, client_msg_id = value
    if not (isinstance(message_id, int) and isinstance(sender, str) and isinstance(text, str)):
        raise ValueError("a stored message needs an integer id, a sender and a text")
    return ChatMessage(
        message_id=message_id,
        sender=sender,
        text=text,
        created_at=float(created_at),
        to=to,
        group=group,
        client_msg_id=client_msg_id,
    )


converter.register_unstructure_hook(ChatMessage, _unstructure_message)
converter.register_structure_hook(ChatMessage, _structure_message)


def record_to_json(record: Record) -> dict[str, Any]:
    """The JSON object of ``record`` (``"t"`` first)."""
    if isinstance(record, ChatMessage):
        return {"t": "message", "m": _unstructure_message(record)}
    body: dict[str, Any] = converter.unstructure(record)
    return {"t": TAGS[type(record)], **body}


def record_from_json(data: Any) -> Record:
    """Inverse of ``record_to_json``; ValueError for anything that is not a record."""
    if not isinstance(data, dict):
        raise ValueError("a record is a JSON object")
    tag = data.get("t")
    cls = _BY_TAG.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise ValueError(f"unknown record kind {tag!r}")
    if cls is ChatMessage:
        return _structure_message(data.get("m"), ChatMessage)
    fields = {key: value for key, value in data.items() if key != "t"}
    try:
        record: Record = converter.structure(fields, cls)
    except (cattrs.BaseValidationError, KeyError, TypeError) as exc:
        raise ValueError(f"invalid {tag} record: {exc}") from None
    return record
