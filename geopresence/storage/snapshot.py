"""Snapshots: the whole durable state at one journal position, versioned (sans-I/O).

A snapshot holds what the journal's records build up (``geopresence.model.records``): friendships,
groups with each member's join mark, settings, every chat message and the id generator's
high-water mark, as of ``journal_seq``: every record up to and including it is reflected, and
no later one. Recovery loads the newest readable snapshot and replays the journal records
after its ``journal_seq``.

File format: the 8-byte magic ``GPSNAP1\\n``, a 4-byte big-endian payload length, a 4-byte
CRC-32 of the payload, then the payload: one JSON object with ``"version"``, the shape
``records.converter`` (attrs + cattrs) gives a ``Snapshot``. The bulk (messages, friendships)
is encoded and decoded by hand rather than through cattrs' generic path, which costs about
three times as much per message; ``payload_chunks`` yields the payload in pieces so that a
writer never holds a second copy of the whole state (``geopresence.storage.datadir``).

Migration rule: ``SNAPSHOT_VERSION`` is bumped whenever the payload's shape changes, and
``MIGRATIONS[v]`` turns a version-v payload (a dict) into a version-(v+1) payload, so any
older snapshot is read by applying the chain. A snapshot from a newer version is refused
(``SnapshotError``) rather than guessed at; the server then falls back to an older one.

``capture`` takes a snapshot of a ``DurableState`` (``geopresence.core.state``); ``restore``
loads one into a fresh state.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

import attrs
import cattrs
import orjson

from geopresence.core.state import DurableState, settings_record
from geopresence.model.chat_message import ChatMessage
from geopresence.model.records import SettingsChanged, converter

SNAPSHOT_MAGIC: Final = b"GPSNAP1\n"
SNAPSHOT_VERSION: Final = 1
_HEADER: Final = struct.Struct(">II")
HEADER_SIZE: Final = len(SNAPSHOT_MAGIC) + _HEADER.size
"""Bytes before the payload: the magic, then the payload's length (modulo 2**32) and CRC-32."""
_LENGTH_MASK: Final = 0xFFFF_FFFF
"""The header's length field keeps the low 32 bits: a payload over 4 GiB (about 32 million
messages) is still written, and the format every version reads stays the same. Truncation
is still caught: a cut of exactly a multiple of 4 GiB would also fail the CRC."""
MESSAGES_PER_CHUNK: Final = 20_000
"""Messages encoded per piece of ``payload_chunks`` (about 2 MB)."""

MIGRATIONS: Final[dict[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {}
"""version v -> function upgrading a version-v payload to version v+1 (none yet)."""


class SnapshotError(Exception):
    """A snapshot that cannot be read (corrupt, truncated, or from a newer version)."""


class NewerSnapshot(SnapshotError):
    """A snapshot written by a newer geopresence: sound, but not for this version to read
    (a downgrade). Never repaired away: the newer version reads it."""


@attrs.frozen(kw_only=True)
class Snapshot:
    """The durable state as of ``journal_seq``. ``created_at`` is Unix epoch seconds."""

    version: int = SNAPSHOT_VERSION
    created_at: float
    journal_seq: int
    last_message_id: int
    """The id generator's high-water mark: no id at or below it is ever issued again."""
    friendships: list[tuple[str, str]] = attrs.Factory(list)
    groups: dict[str, dict[str, int]] = attrs.Factory(dict)
    """group -> {member: join mark (the last message id issued when it joined)}."""
    settings: list[SettingsChanged] = attrs.Factory(list)
    messages: list[ChatMessage] = attrs.Factory(list)
    """Every stored message, ascending by id."""

    def counts(self) -> dict[str, int]:
        """Sizes for ``geopresence inspect`` and logs."""
        users = {u for pair in self.friendships for u in pair}
        return {
            "friendships": len(self.friendships),
            "users_with_friends": len(users),
            "groups": len(self.groups),
            "memberships": sum(len(m) for m in self.groups.values()),
            "users_with_settings": len(self.settings),
            "messages": len(self.messages),
        }


def header(length: int, crc: int) -> bytes:
    """The ``HEADER_SIZE`` bytes before a payload of ``length`` bytes whose CRC-32 is ``crc``."""
    return SNAPSHOT_MAGIC + _HEADER.pack(length & _LENGTH_MASK, crc)


def payload_chunks(snapshot: Snapshot) -> Iterator[bytes]:
    """The payload's JSON in pieces of at most ``MESSAGES_PER_CHUNK`` messages; joined, they
    are the JSON of ``converter.unstructure(snapshot)`` (same keys, same order)."""
    head = orjson.dumps(
        {
            "version": snapshot.version,
            "created_at": snapshot.created_at,
            "journal_seq": snapshot.journal_seq,
            "last_message_id": snapshot.last_message_id,
            "friendships": snapshot.friendships,  # tuples are JSON arrays to orjson
            "groups": snapshot.groups,
            "settings": [converter.unstructure(record) for record in snapshot.settings],
        }
    )
    yield head[:-1] + b',"messages":['
    messages = snapshot.messages
    for start in range(0, len(messages), MESSAGES_PER_CHUNK):
        # The record's array, field order as in ``records`` (part of the format).
        rows = orjson.dumps(
            [
                (m.message_id, m.sender, m.text, m.created_at, m.to, m.group, m.client_msg_id)
                for m in messages[start : start + MESSAGES_PER_CHUNK]
            ]
        )
        yield (b"," if start else b"") + rows[1:-1]
    yield b"]}"


def encode_snapshot(snapshot: Snapshot) -> bytes:
    """The bytes of a snapshot file (in memory; writers stream ``payload_chunks``)."""
    payload = b"".join(payload_chunks(snapshot))
    return header(len(payload), zlib.crc32(payload)) + payload


def decode_snapshot(data: bytes) -> Snapshot:
    """Parse a snapshot file; ``SnapshotError`` says what is wrong with a bad one."""
    if not data.startswith(SNAPSHOT_MAGIC):
        raise SnapshotError("not a geopresence snapshot (bad magic)")
    start = len(SNAPSHOT_MAGIC) + _HEADER.size
    if len(data) < start:
        raise SnapshotError("truncated snapshot header")
    length, checksum = _HEADER.unpack_from(data, len(SNAPSHOT_MAGIC))
    payload = data[start:]
    if len(payload) & _LENGTH_MASK != length:
        raise SnapshotError(
            f"truncated snapshot: {len(payload)} payload bytes, the header says {length}"
            + (" (modulo 2**32)" if len(payload) > _LENGTH_MASK else "")
        )
    if zlib.crc32(payload) != checksum:
        raise SnapshotError("snapshot checksum mismatch (corrupt file)")
    try:
        raw = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise SnapshotError(f"snapshot is not JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("version"), int):
        raise SnapshotError("snapshot has no version")
    version = raw["version"]
    if version > SNAPSHOT_VERSION:
        raise NewerSnapshot(
            f"snapshot version {version} is newer than this geopresence reads "
            f"({SNAPSHOT_VERSION}): upgrade geopresence"
        )
    while version < SNAPSHOT_VERSION:
        migrate = MIGRATIONS.get(version)
        if migrate is None:
            raise SnapshotError(f"no migration from snapshot version {version}")
        try:
            raw = migrate(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"migrating from version {version} failed: {exc}") from None
        version += 1
        raw["version"] = version
    try:
        return _structure(raw)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise SnapshotError(f"snapshot does not match version {version}: {exc}") from None


def _structure(raw: dict[str, Any]) -> Snapshot:
    """The ``Snapshot`` of a current-version payload, checked as ``converter.structure``
    would check it but without its per-value dispatch (a restart's main cost)."""
    return Snapshot(
        version=_integer(raw["version"], "version"),
        created_at=float(raw["created_at"]),
        journal_seq=_integer(raw["journal_seq"], "journal_seq"),
        last_message_id=_integer(raw["last_message_id"], "last_message_id"),
        friendships=_friendships(raw.get("friendships", [])),
        groups=_groups(raw.get("groups", {})),
        settings=[converter.structure(s, SettingsChanged) for s in raw.get("settings", [])],
        messages=_messages(raw.get("messages", [])),
    )


def _integer(value: Any, name: str) -> int:
    if type(value) is not int:  # not bool either
        raise ValueError(f"{name} is not an integer: {value!r}")
    return value


def _friendships(values: Any) -> list[tuple[str, str]]:
    if type(values) is not list:
        raise ValueError("friendships is not an array")
    pairs = []
    for pair in values:
        if type(pair) is not list or len(pair) != 2:
            raise ValueError(f"a friendship is a pair of users, not {pair!r}")
        a, b = pair
        if type(a) is not str or type(b) is not str:
            raise ValueError(f"a friendship is a pair of users, not {pair!r}")
        pairs.append((a, b))
    return pairs


def _groups(values: Any) -> dict[str, dict[str, int]]:
    if type(values) is not dict:
        raise ValueError("groups is not an object")
    for members in values.values():
        if type(members) is not dict or any(type(mark) is not int for mark in members.values()):
            raise ValueError("a group is an object of members and their join marks")
    return values


def _messages(values: Any) -> list[ChatMessage]:
    """The ``ChatMessage`` of each record array, checked like ``records`` checks one."""
    if type(values) is not list:
        raise ValueError("messages is not an array")
    messages: list[ChatMessage] = []
    append = messages.append
    for value in values:
        if type(value) is not list or len(value) != 7:
            raise ValueError("a stored message is an array of 7 values")
        message_id, sender, text, created_at, to, group, client_msg_id = value
        if type(message_id) is not int or type(sender) is not str or type(text) is not str:
            raise ValueError("a stored message needs an integer id, a sender and a text")
        append(ChatMessage(message_id, sender, text, float(created_at), to, group, client_msg_id))
    return messages


def capture(
    state: DurableState, journal_seq: int, now: float, pending: Iterable[ChatMessage] = ()
) -> Snapshot:
    """``state`` as of ``journal_seq`` (the last record the journal was given), at one
    instant (it copies references, it does not serialize).

    ``pending``: messages journaled but not yet durable, hence not yet in ``state.chat``
    (``Chat.pending_messages``), ascending: their records are at or below ``journal_seq``,
    which the journal may be truncated to once this snapshot is on disk.
    """
    users, chat = state.users, state.chat
    memberships = chat.memberships()
    messages = chat.messages()
    messages.extend(pending)
    return Snapshot(
        created_at=now,
        journal_seq=journal_seq,
        last_message_id=state.ids.last_id,
        friendships=list(users.friendships()),
        groups={
            group: {user: memberships.get((group, user), 0) for user in members}
            for group, members in users.groups()
        },
        settings=[settings_record(user, s) for user, s in users.settings_items()],
        messages=messages,
    )


def restore(state: DurableState, snapshot: Snapshot) -> None:
    """Load ``snapshot`` into a fresh (empty) state."""
    state.load(
        friendships=snapshot.friendships,
        groups=snapshot.groups,
        settings=snapshot.settings,
        messages=snapshot.messages,
        last_message_id=snapshot.last_message_id,
    )
