"""Snapshots: the whole durable state at one journal position, versioned (sans-I/O).

A snapshot holds what the journal's records build up (``geopresence.model.records``): friendships,
groups with each member's join mark, settings, every chat message and the id generator's
high-water mark, as of ``journal_seq``: every record up to and including it is reflected, and
no later one. Recovery loads the newest readable snapshot and replays the journal records
after its ``journal_seq``.

File format: the 8-byte magic ``GPSNAP1\\n``, a 4-byte big-endian payload length, a 4-byte
CRC-32 of the payload, then the payload: one JSON object written through ``records.converter``
(attrs + cattrs) with ``"version"``.

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
from collections.abc import Callable, Iterable
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

MIGRATIONS: Final[dict[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {}
"""version v -> function upgrading a version-v payload to version v+1 (none yet)."""


class SnapshotError(Exception):
    """A snapshot that cannot be read (corrupt, truncated, or from a newer version)."""


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


def encode_snapshot(snapshot: Snapshot) -> bytes:
    """The bytes of a snapshot file."""
    payload = orjson.dumps(converter.unstructure(snapshot))
    return SNAPSHOT_MAGIC + _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode_snapshot(data: bytes) -> Snapshot:
    """Parse a snapshot file; ``SnapshotError`` says what is wrong with a bad one."""
    if not data.startswith(SNAPSHOT_MAGIC):
        raise SnapshotError("not a geopresence snapshot (bad magic)")
    start = len(SNAPSHOT_MAGIC) + _HEADER.size
    if len(data) < start:
        raise SnapshotError("truncated snapshot header")
    length, checksum = _HEADER.unpack_from(data, len(SNAPSHOT_MAGIC))
    payload = data[start:]
    if len(payload) != length:
        raise SnapshotError(f"truncated snapshot: {len(payload)} of {length} payload bytes")
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
        raise SnapshotError(
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
        return converter.structure(raw, Snapshot)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise SnapshotError(f"snapshot does not match version {version}: {exc}") from None


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
