"""Forgetting a user (sans-I/O): everything held about it goes, and its friends are told.

``Forgetting.forget`` journals one ``UserForgotten`` record and applies it: the durable state
(``DurableState.forget``: friendships, group memberships, settings, chat messages), then what
only lives in memory (presence, the cached location, rate-limit buckets), and the live
connections: the former friends' as for an unfriending (``friend_removed``, ``friend_gone``
``unfriended``), the user's own closed with 4001. Replaying the record after a restart, or
applying another node's (``RemoteChanges``), forgets again: records before it are undone by it,
records after it are new facts.

What is on disk outside the state (the location history, older snapshots and journal
segments) and the push queue are the shell's: it is told through ``on_forgotten``.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from geopresence.core.acks import Acks
from geopresence.core.broker import group_channel
from geopresence.core.chat import Chat
from geopresence.core.lifecycle import Lifecycle
from geopresence.core.membership import Membership
from geopresence.core.nearby import Nearby
from geopresence.core.sessions import Sessions
from geopresence.core.state import DurableState
from geopresence.core.statuses import Statuses
from geopresence.core.strangers import Strangers
from geopresence.model.records import UserForgotten


@attrs.frozen
class ForgetReport:
    """What a forget removed on this node (``devices``: logged out here)."""

    user: str
    friends: int
    groups: int
    settings: bool
    messages: int
    location: bool
    devices: int
    seq: int
    """The journal record's sequence number (durable once the journal reaches it)."""


class Forgetting:
    """The hub's part that forgets users. ``on_forgotten(user)`` is called after each
    forget, this node's own or another node's (the shell scrubs the history files then)."""

    def __init__(
        self,
        state: DurableState,
        acks: Acks,
        sessions: Sessions,
        lifecycle: Lifecycle,
        membership: Membership,
        statuses: Statuses,
        nearby: Nearby,
        strangers: Strangers,
        chat: Chat,
    ) -> None:
        self.state = state
        self.acks = acks
        self.sessions = sessions
        self.lifecycle = lifecycle
        self.membership = membership
        self.statuses = statuses
        self.nearby = nearby
        self.strangers = strangers
        self.chat = chat
        self.on_forgotten: Callable[[str], None] | None = None
        self.forgotten = 0
        """Forgets applied on this node (for metrics)."""

    def forget(self, user: str, now: float) -> ForgetReport:
        """Forget ``user`` at ``now``: idempotent (forgetting an unknown user changes
        nothing but is journaled all the same, so that the shell scrubs its files)."""
        seq = self.acks.journal_append(UserForgotten(user))
        self.chat.forgetting(user)  # its messages still on their way to disk are dropped
        removed = self.state.forget(user)
        for friend in removed.friends:
            self.membership.unfriended(user, friend)
        for group in removed.groups:
            self.sessions.unsubscribe_user(group_channel(group), user)
        location = self.nearby.forget(user)
        # Its friends are gone: the logout's offline event reaches nobody.
        devices = self.lifecycle.logout(user)
        self.statuses.forget(user)
        self.strangers.forget(user)
        self.forgotten += 1
        if self.on_forgotten is not None:
            self.on_forgotten(user)
        return ForgetReport(
            user=user,
            friends=len(removed.friends),
            groups=len(removed.groups),
            settings=removed.settings,
            messages=removed.messages,
            location=location,
            devices=devices,
            seq=seq,
        )
