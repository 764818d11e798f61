"""Capture the hub's durable state as a snapshot, and rebuild it from one plus the journal
(sans-I/O).

``capture`` runs in the event loop at one instant (it copies references, it does not
serialize); ``restore`` and ``apply`` run at start-up before any connection exists, so they
change the stores directly and send nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geopresence.chat_message import ChatMessage
from geopresence.records import (
    Befriended,
    GroupDeleted,
    GroupSet,
    MemberAdded,
    MemberRemoved,
    Record,
    SettingsChanged,
    Unfriended,
)
from geopresence.snapshot import Snapshot
from geopresence.store import UserSettings

if TYPE_CHECKING:
    from geopresence.hub import Hub


def capture(hub: Hub, journal_seq: int, now: float) -> Snapshot:
    """The durable state as of ``journal_seq`` (the last record the journal was given).

    Messages still waiting for the journal are included: their records are at or below
    ``journal_seq``, which the journal may be truncated to once this snapshot is on disk.
    """
    chat = hub.chat
    memberships = chat.store.memberships()
    groups = {
        group: {user: memberships.get((group, user), 0) for user in members}
        for group, members in hub.store.groups()
    }
    settings = [
        SettingsChanged(user, s.share_location, s.radius_m, s.visible_to_strangers)
        for user, s in hub.store.settings_items()
    ]
    messages = chat.store.messages()
    messages.extend(chat.pending_messages())
    return Snapshot(
        created_at=now,
        journal_seq=journal_seq,
        last_message_id=chat.ids.last_id,
        friendships=list(hub.store.friendships()),
        groups=groups,
        settings=settings,
        messages=messages,
    )


def restore(hub: Hub, snapshot: Snapshot) -> None:
    """Load ``snapshot`` into a fresh hub (no sessions, empty stores)."""
    store = hub.store
    chat_store = hub.chat.store
    for a, b in snapshot.friendships:
        store.add_friendship(a, b)
    for group, members in snapshot.groups.items():
        store.set_group(group, members)
        for user, mark in members.items():
            chat_store.join(group, user, mark)
    for s in snapshot.settings:
        store.put_settings(s.user, _settings(s))
    chat_store.load(snapshot.messages)
    hub.chat.ids.observe(max(snapshot.last_message_id, chat_store.last_id))


def apply(hub: Hub, record: Record) -> None:
    """Replay one journal record onto the restored state (idempotent where it can be)."""
    store = hub.store
    chat_store = hub.chat.store
    ids = hub.chat.ids
    if isinstance(record, ChatMessage):
        if record.message_id > chat_store.last_id:
            chat_store.add(record)
        ids.observe(record.message_id)
    elif isinstance(record, Befriended):
        if record.a != record.b:
            store.add_friendship(record.a, record.b)
    elif isinstance(record, Unfriended):
        store.remove_friendship(record.a, record.b)
    elif isinstance(record, GroupSet):
        added, removed = store.set_group(record.group, record.members)
        for user in added:
            chat_store.join(record.group, user, record.joined_after)
        for user in removed:
            chat_store.leave(record.group, user)
        ids.observe(record.joined_after)
    elif isinstance(record, GroupDeleted):
        members = store.delete_group(record.group)
        if members is not None:
            chat_store.delete_group(record.group, members)
    elif isinstance(record, MemberAdded):
        if store.add_member(record.group, record.user):
            chat_store.join(record.group, record.user, record.joined_after)
        ids.observe(record.joined_after)
    elif isinstance(record, MemberRemoved):
        if store.remove_member(record.group, record.user):
            chat_store.leave(record.group, record.user)
    elif isinstance(record, SettingsChanged):
        store.put_settings(record.user, _settings(record))
    else:  # pragma: no cover - every Record kind is handled above
        raise TypeError(f"unknown record {record!r}")


def _settings(record: SettingsChanged) -> UserSettings:
    return UserSettings(
        share_location=record.share_location,
        radius_m=record.radius_m,
        visible_to_strangers=record.visible_to_strangers,
    )
