"""Another node's changes, applied to what this node keeps and to its connections (sans-I/O).

With several nodes every node holds the slices of the state its sessions need in memory; a
change made on one node reaches the others that hold what it changes
(``geopresence.core.replication``). Applying it here runs this
node's own operations (``FEED_APPLY``) in the "none" publish scope: the store and the
features change, this node's connections are subscribed and told, and nothing is journaled
or published again (the origin did both). Presence transitions are the exception: every
node publishes them to its own subscribers (``announce_presence``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import Any, Final

from geopresence.core.chat import Chat
from geopresence.core.fanout import Fanout
from geopresence.core.forget import Forgetting
from geopresence.core.lifecycle import Lifecycle
from geopresence.core.membership import Membership
from geopresence.core.nearby import Nearby
from geopresence.core.presence import PresenceChange
from geopresence.core.replication import (
    FEED_KINDS,
    FeedOp,
    LocationSet,
    LogoutRequested,
    PresenceSet,
    Watermark,
)
from geopresence.core.state import one_entry_per_kind, settings_from
from geopresence.core.statuses import Statuses
from geopresence.model.chat_message import ChatMessage
from geopresence.model.records import (
    Befriended,
    GroupDeleted,
    GroupSet,
    MemberAdded,
    MemberRemoved,
    SettingsChanged,
    Unfriended,
    UserForgotten,
)
from geopresence.model.snowflake import SnowflakeGenerator
from geopresence.wire.errors import ProtocolError


class RemoteChanges:
    """Applies the feed: the parts of this node that another node's change reaches."""

    def __init__(
        self,
        statuses: Statuses,
        fanout: Fanout,
        lifecycle: Lifecycle,
        membership: Membership,
        nearby: Nearby,
        chat: Chat,
        ids: SnowflakeGenerator,
        forgetting: Forgetting,
    ) -> None:
        self.statuses = statuses
        self.fanout = fanout
        self.lifecycle = lifecycle
        self.membership = membership
        self.nearby = nearby
        self.chat = chat
        self.ids = ids
        self.forgetting = forgetting

    def announce_presence(self, transition: PresenceSet) -> None:
        """A user's cluster-wide transition (decided here, or on another node and received
        on a channel): update the status kept here and tell this node's subscribers.

        Presence is the one state whose events every node derives itself from the feed,
        rather than receiving the origin's channel publish: a publish in flight while a
        node subscribes for a new session would be missed, and unlike a position (the next
        update supersedes it) or a message (``sync`` recovers it), a missed transition
        would leave a friend's status wrong until the next one. Applying the feed op and
        telling the subscribers in one step leaves no gap: a session opened before it gets
        the event, one opened after it reads the new status in its ``friends_presence``.
        """
        t = transition
        if self.statuses.set_status(t.user, t.status, t.last_active_at, t.version):
            if self.membership.unshown_friends:  # a new friend's snapshot goes first
                self.membership.tell_waiting(t.user, t.last_active_at or 0.0)
            with self.fanout.scoped("local"):
                self.lifecycle.publish_presence(PresenceChange(t.user, t.status, t.last_active_at))

    def settings_read(self, op: SettingsChanged, now: float) -> None:
        """``op.user``'s settings, read from Redis after this node may have missed their
        change (a pub/sub gap): applied as another node's change, and this node's
        connections told what the origin's publish told the others (the location shown
        again, or gone ``hidden``)."""
        sharing = self.nearby.settings(op.user).share_location
        self.apply_feed(op, now)
        if op.share_location != sharing:
            with self.fanout.scoped("local"):
                self.nearby.tell_sharing(op.user, now)

    def apply_feed(self, op: FeedOp, now: float) -> None:
        """Apply a change made on another node: to what this node keeps, and to its own
        connections (subscriptions, views, frames only they need). Nothing is published or
        journaled again: the origin did that."""
        if isinstance(op, PresenceSet):
            self.announce_presence(op)
            return
        if isinstance(op, ChatMessage):
            # From a version that put chat on the feed: as if heard on its channels (to
            # this node's subscribers, once stable).
            with self.fanout.scoped("local"):
                self.chat.heard(op)
            return
        # A refusal means it is already applied or moot here (a group deleted meanwhile).
        with self.fanout.scoped("none"), suppress(ProtocolError):
            FEED_APPLY[type(op)](self, op, now)


# ---------------------------------------------------------------- another node's change


def _feed_location(changes: RemoteChanges, op: LocationSet, now: float) -> None:
    changes.nearby.apply(op.user, op.lat, op.lon, op.ts, op.at)


def _feed_mark(changes: RemoteChanges, op: Watermark, now: float) -> None:
    pass  # its watermark is the entry's, read by the feed reader (ClusterLink)


def _feed_logout(changes: RemoteChanges, op: LogoutRequested, now: float) -> None:
    changes.lifecycle.logout(op.user, op.device)


def _feed_befriended(changes: RemoteChanges, op: Befriended, now: float) -> None:
    changes.membership.add_friendships([(op.a, op.b)], now)


def _feed_unfriended(changes: RemoteChanges, op: Unfriended, now: float) -> None:
    changes.membership.remove_friendship(op.a, op.b)


def _feed_group_set(changes: RemoteChanges, op: GroupSet, now: float) -> None:
    changes.ids.observe(op.joined_after)
    changes.membership.set_group(op.group, op.members, op.joined_after)


def _feed_group_deleted(changes: RemoteChanges, op: GroupDeleted, now: float) -> None:
    changes.membership.delete_group(op.group)


def _feed_member_added(changes: RemoteChanges, op: MemberAdded, now: float) -> None:
    changes.ids.observe(op.joined_after)
    changes.membership.add_member(op.group, op.user, op.joined_after)


def _feed_member_removed(changes: RemoteChanges, op: MemberRemoved, now: float) -> None:
    changes.membership.remove_member(op.group, op.user)


def _feed_settings(changes: RemoteChanges, op: SettingsChanged, now: float) -> None:
    changes.nearby.change_settings(op.user, settings_from(op), now)


def _feed_forgotten(changes: RemoteChanges, op: UserForgotten, now: float) -> None:
    changes.forgetting.forget(op.user, now)


FEED_APPLY: Final[dict[type[Any], Callable[[RemoteChanges, Any, float], None]]] = (
    one_entry_per_kind(
        {
            LocationSet: _feed_location,
            LogoutRequested: _feed_logout,
            Watermark: _feed_mark,
            Befriended: _feed_befriended,
            Unfriended: _feed_unfriended,
            GroupSet: _feed_group_set,
            GroupDeleted: _feed_group_deleted,
            MemberAdded: _feed_member_added,
            MemberRemoved: _feed_member_removed,
            SettingsChanged: _feed_settings,
            UserForgotten: _feed_forgotten,
        },
        FEED_KINDS - {PresenceSet, ChatMessage},
        what="RemoteChanges.apply_feed",
    )
)
"""Feed op kind (but ``PresenceSet`` and ``ChatMessage``) -> how this node applies another
node's change: through its own operations, with their effects on its connections
(``RemoteChanges.apply_feed``)."""
