"""The durable state (sans-I/O): what the journal's records build up and a snapshot holds.

``DurableState`` is the user DB (friendships, groups, settings: a ``Store``), the chat
messages with each member's join mark (a ``ChatStore``) and the message id generator. The
hub owns one (``Hub.state``); recovery rebuilds one from a snapshot plus the journal, the
Redis loader fills one from Redis, and the offline tools (inspect, snapshot, repair) replay a
data dir into one, without a hub.

``DurableState.apply`` replays one record through ``APPLY``, the table from record kind to
state change. The other readers of records keep a table of their own over the same kinds
(the hub applying another node's change, the Redis writer); ``one_entry_per_kind`` checks, when the
table is built, that it has exactly one entry per kind, so that a new record kind cannot be
forgotten by any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Final, TypeVar

import attrs

from geopresence.core.chat_store import ChatStore
from geopresence.core.store import DEFAULT_SETTINGS, MemoryStore, Store, UserSettings
from geopresence.model.chat_message import ChatMessage
from geopresence.model.records import (
    TAGS,
    Befriended,
    GroupDeleted,
    GroupSet,
    MemberAdded,
    MemberRemoved,
    Record,
    SettingsChanged,
    Unfriended,
    UserForgotten,
)
from geopresence.model.snowflake import SnowflakeGenerator

RECORD_KINDS: Final[frozenset[type[Any]]] = frozenset(TAGS)
"""Every kind of durable record (``geopresence.model.records``)."""

H = TypeVar("H")


def one_entry_per_kind(
    table: Mapping[type[Any], H], kinds: Collection[type[Any]] = RECORD_KINDS, *, what: str
) -> dict[type[Any], H]:
    """``table`` as a dict, once checked to have exactly one entry per kind of ``kinds``
    (TypeError naming ``what`` otherwise)."""
    missing = sorted(kind.__name__ for kind in set(kinds) - set(table))
    extra = sorted(kind.__name__ for kind in set(table) - set(kinds))
    if missing or extra:
        raise TypeError(f"{what}: no entry for {missing}, unexpected {extra}")
    return dict(table)


def settings_from(record: SettingsChanged) -> UserSettings:
    """The settings a ``SettingsChanged`` record sets."""
    return UserSettings(
        share_location=record.share_location,
        radius_m=record.radius_m,
        visible_to_strangers=record.visible_to_strangers,
    )


def settings_record(user: str, settings: UserSettings) -> SettingsChanged:
    """The record that sets ``user``'s settings to ``settings`` (inverse of ``settings_from``)."""
    return SettingsChanged(
        user, settings.share_location, settings.radius_m, settings.visible_to_strangers
    )


@attrs.frozen
class Forgotten:
    """What forgetting a user deleted from the durable state: its former ``friends`` and
    ``groups`` (sorted), whether it had non-default ``settings``, and how many
    ``messages`` went."""

    friends: list[str]
    groups: list[str]
    settings: bool
    messages: int


@attrs.define(eq=False)
class DurableState:
    """The state that survives a restart: ``users`` (friendships, groups, settings),
    ``chat`` (messages and join marks) and ``ids`` (no id at or below its ``last_id`` is
    issued again)."""

    users: Store = attrs.Factory(MemoryStore)
    chat: ChatStore = attrs.Factory(ChatStore)
    ids: SnowflakeGenerator = attrs.Factory(SnowflakeGenerator)

    def apply(self, record: Record) -> None:
        """Replay one journal record (idempotent where it can be: a record the state
        already reflects changes nothing)."""
        APPLY[type(record)](self, record)

    def forget(self, user: str) -> Forgotten:
        """Delete everything held about ``user`` (``UserForgotten``): its friendships, group
        memberships with their join marks, settings, and the messages it sent or received
        1:1 and the group messages it sent. Groups stay, without it (empty ones too)."""
        users, chat = self.users, self.chat
        friends = sorted(users.friends_of(user))
        for friend in friends:
            users.remove_friendship(user, friend)
        groups = sorted(users.groups_of(user))
        for group in groups:
            users.remove_member(group, user)
            chat.leave(group, user)
        # A store of partial settings keeps defaults only for the users it was given.
        settings = users.settings_kept(user) and users.get_settings(user) != DEFAULT_SETTINGS
        if users.settings_kept(user):
            users.put_settings(user, DEFAULT_SETTINGS)
        return Forgotten(friends, groups, settings, chat.forget(user))

    def load(
        self,
        *,
        friendships: Iterable[tuple[str, str]],
        groups: Mapping[str, Mapping[str, int]],
        settings: Iterable[SettingsChanged],
        messages: Iterable[ChatMessage],
        last_message_id: int = 0,
    ) -> None:
        """Fill a fresh (empty) state in bulk: a snapshot's content, or Redis'. ``groups``:
        group -> {member: join mark}; ``messages`` ascending by id; ``last_message_id``:
        the id generator's high-water mark (the last message's id counts too)."""
        users, chat = self.users, self.chat
        for a, b in friendships:
            users.add_friendship(a, b)  # False (no-op) for a pair given twice
        for group, members in groups.items():
            users.set_group(group, members)
            for user, mark in members.items():
                chat.join(group, user, mark)
        for record in settings:
            users.put_settings(record.user, settings_from(record))
        chat.load(messages)
        self.ids.observe(max(last_message_id, chat.last_id))


# ---------------------------------------------------------------------- record -> change


def _message(state: DurableState, record: ChatMessage) -> None:
    if record.message_id > state.chat.last_id:
        state.chat.add(record)
    state.ids.observe(record.message_id)


def _befriended(state: DurableState, record: Befriended) -> None:
    if record.a != record.b:
        state.users.add_friendship(record.a, record.b)


def _unfriended(state: DurableState, record: Unfriended) -> None:
    state.users.remove_friendship(record.a, record.b)


def _group_set(state: DurableState, record: GroupSet) -> None:
    added, removed = state.users.set_group(record.group, record.members)
    for user in added:
        state.chat.join(record.group, user, record.joined_after)
    for user in removed:
        state.chat.leave(record.group, user)
    state.ids.observe(record.joined_after)


def _group_deleted(state: DurableState, record: GroupDeleted) -> None:
    members = state.users.delete_group(record.group)
    if members is not None:
        state.chat.delete_group(record.group, members)


def _member_added(state: DurableState, record: MemberAdded) -> None:
    if state.users.add_member(record.group, record.user):
        state.chat.join(record.group, record.user, record.joined_after)
    state.ids.observe(record.joined_after)


def _member_removed(state: DurableState, record: MemberRemoved) -> None:
    if state.users.remove_member(record.group, record.user):
        state.chat.leave(record.group, record.user)


def _settings_changed(state: DurableState, record: SettingsChanged) -> None:
    state.users.put_settings(record.user, settings_from(record))


def _user_forgotten(state: DurableState, record: UserForgotten) -> None:
    state.forget(record.user)


APPLY: Final[dict[type[Any], Callable[[DurableState, Any], None]]] = one_entry_per_kind(
    {
        ChatMessage: _message,
        Befriended: _befriended,
        Unfriended: _unfriended,
        GroupSet: _group_set,
        GroupDeleted: _group_deleted,
        MemberAdded: _member_added,
        MemberRemoved: _member_removed,
        SettingsChanged: _settings_changed,
        UserForgotten: _user_forgotten,
    },
    what="DurableState.apply",
)
"""Record kind -> the change it makes to a ``DurableState``."""
