"""What reaches a node (cluster): another node's changes and events, and its own records,
each routed to the hub and to what the node keeps for its sessions.

- the feed (``RedisFeed``): forgets and watermarks (and what older versions put there);
- events on the channels it listens to (``RedisBroker.on_remote``): moves, transitions,
  settings, chat messages, devices taken over or logged out elsewhere (``Control``), notices
  that friendships or groups changed
  (``Reread``: ``Holdings`` reads them again and applies the difference through ``change``);
- the records it journals (``RedisJournal.on_append``), and those written that the other
  nodes hear of on channels (``RedisJournal.on_written``);
- channels no connection here listens to any more (``RedisBroker.on_released``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from geopresence.cluster.channel_events import LoggedOut, Replaced, Reread, SettingsHeard
from geopresence.cluster.covered import Covered
from geopresence.cluster.holdings import Holdings
from geopresence.cluster.redis_keys import value_location
from geopresence.cluster.redis_strangers import RedisStrangers
from geopresence.cluster.views import Views
from geopresence.cluster.watermarks import Watermarks
from geopresence.core.broker import group_channel, inbox_channel, user_channel
from geopresence.core.chat_message_wire import ChatEvent
from geopresence.core.hub import Hub
from geopresence.core.locations import Location
from geopresence.core.nearby import GoneEvent, LocationEvent, LocationKept
from geopresence.core.replication import FeedOp, LocationSet, PresenceSet
from geopresence.model.chat_message import ChatMessage
from geopresence.model.records import (
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

GroupOps = GroupSet | GroupDeleted | MemberAdded | MemberRemoved

if TYPE_CHECKING:
    from geopresence.cluster.chat_gaps import ChatGaps
    from geopresence.cluster.control import Control
    from geopresence.cluster.redis_broker import RedisBroker


class Arrivals:
    """Routes what reaches this node; ``ClusterLink.run`` builds it and hands its methods
    to the feed, the broker and the journal."""

    def __init__(
        self,
        hub: Hub,
        broker: RedisBroker,
        covered: Covered,
        views: Views,
        holdings: Holdings,
        watermarks: Watermarks,
        strangers: RedisStrangers,
        now: Callable[[], float],
    ) -> None:
        self._hub = hub
        self._broker = broker
        self._covered = covered
        self._views = views
        self._holdings = holdings
        self._watermarks = watermarks
        self._strangers = strangers
        self._now = now
        self.chat_gaps: ChatGaps | None = None
        """Catches up on chat lost in a pub/sub gap (once running)."""
        self.control: Control | None = None
        """This node's control channel, once it listens to it (devices taken over)."""

    def on_record(self, record: Record) -> None:
        """A record this node journals: a friendship made here (``Views``), a change the
        reads in flight must not miss (``Holdings``), a group changed (``Covered``),
        settings changed (``KeptSettings``)."""
        self._views.on_record(record)
        self._holdings.made_here(record)
        self._covered.changed(record)
        self._joined(record)
        if isinstance(record, SettingsChanged):  # stored later (``written``)
            self._covered.settings.changing(record)

    def on_feed(self, op: FeedOp) -> None:
        if isinstance(op, PresenceSet):  # from a version that put transitions on the feed
            if self._covered.covers(op.user):
                self._apply_feed(op)
            return
        if isinstance(op, SettingsChanged):  # from a version that put settings on the feed
            store = self._hub.store
            if store.settings_kept(op.user) and self._covered.settings.needed(op.user):
                self._hub.apply_feed(op, self._now())
            return
        if isinstance(op, Befriended | Unfriended | GroupOps):
            self._holdings.heard_op(op)  # from a version that put them on the feed
            return
        if isinstance(op, UserForgotten):
            again = self._holdings.forgetting(op)
            self.change(op)
            self._holdings.heard(again)
            return
        self.change(op)

    def change(self, op: FeedOp) -> None:
        """Apply another node's change to the hub and to what this node keeps: one on the
        feed, or one a read again of a friendship or group found (``Holdings``)."""
        self._apply_feed(op)
        self._holdings.groups.applied(op)

    def _apply_feed(self, op: FeedOp) -> None:
        if isinstance(op, Befriended):
            self._views.befriended(op.a, op.b)
        if isinstance(op, ChatMessage):
            self._watermarks.chat_at = trio.current_time()
        self._hub.apply_feed(op, self._now())
        self._covered.changed(op)
        self._joined(op)

    def _joined(self, op: FeedOp) -> None:
        """A member added to a group: chat this node may have missed is read back."""
        if self.chat_gaps is None:
            return
        if isinstance(op, MemberAdded):
            self.chat_gaps.joined(op.group, (op.user,), op.joined_after)
        elif isinstance(op, GroupSet):
            self.chat_gaps.joined(op.group, op.members, op.joined_after)

    def on_remote(self, event: object) -> bool:
        """Another node's event on a channel this node listens to: a friend's (or a local
        user's own) move updates the location cache before the subscribers are told; a
        device taken over elsewhere closes here; a transition updates the status kept here
        and, if newer, is told to this node's connections, and settings the settings kept
        here; a message is shown once stable (True: the broker does not deliver it)."""
        if isinstance(event, PresenceSet):
            self._hub.announce_presence(event)
            self._covered.announced(event)
            return True
        if isinstance(event, SettingsHeard):
            self._covered.settings.heard(event)
            return True
        if isinstance(event, Reread):
            self._holdings.heard(event)
            return True
        if isinstance(event, ChatEvent):
            # Shown once stable, in id order (``Chat.heard``), not as it arrives.
            self._watermarks.chat_at = trio.current_time()
            self._hub.chat.heard(event.message)
            return True
        if isinstance(event, GoneEvent) and event.reason == "hidden":
            self._hidden(event.user)
        if isinstance(event, LoggedOut):
            if self.control is not None:
                self.control.on_logout(event)
            return True
        if isinstance(event, Replaced):
            if self.control is not None:
                self.control.on_replaced(event)
        elif isinstance(event, LocationEvent):
            if isinstance(event, LocationKept) and self._shared_here(event.user):
                # Its node no longer shares it, and this node has not heard the change
                # yet: its last shared position stays, never a later one.
                return False
            where = event.location
            op = LocationSet(event.user, where.lat, where.lon, where.ts, event.now)
            self._hub.apply_feed(op, self._now())
        return False

    def _hidden(self, user: str) -> None:
        """``user``'s node says it stopped sharing its location, ahead of the change, which
        is published once Redis stored it: until then no query here may list it, so its
        position is dropped; if a session of the user is here, whose own position it is,
        the user is taken as hidden instead (``KeptSettings.hidden``)."""
        if self._hub.sessions.has_connections(user):
            self._covered.settings.hidden(user)
        else:
            self._hub.nearby.drop_cached(user)

    def _shared_here(self, user: str) -> bool:
        store = self._hub.store
        return store.settings_kept(user) and store.get_settings(user).share_location

    def written(self, record: Record, version: Any) -> None:
        """Redis stored a settings change made here at ``version``: the nodes that keep
        them hear it now (``KeptSettings``)."""
        if isinstance(record, SettingsChanged):
            self._covered.settings.wrote(record, version)
            heard = SettingsHeard(record, version)
            self._broker.publish_remote([user_channel(record.user)], heard)

    def notices(self, op: FeedOp, added: Any) -> list[tuple[str, str, bytes]]:
        """What the journal publishes once Redis has a friendship or group change made
        here (``RedisJournal.notices``), so that the nodes holding what it changes read it
        again (``Holdings``): a friendship on both users' inboxes; a group change on the
        group's channel, and on the inbox of each member it adds (``added``: those a
        ``GroupSet`` added), whose node may not hold the group yet: one small publish
        each, however big the group."""
        publications = self._broker.publications
        if isinstance(op, Befriended | Unfriended):
            users = (op.a, op.b)
            return publications([inbox_channel(user) for user in users], Reread(friends_of=users))
        if not isinstance(op, GroupOps):
            return []
        found = publications([group_channel(op.group)], Reread(groups=(op.group,)))
        joined = [op.user] if isinstance(op, MemberAdded) else []
        if isinstance(op, GroupSet):
            joined = list(added or ())
        for user in joined:
            found += publications([inbox_channel(user)], Reread(groups_of=(user,)))
        return found

    def went_offline(self, user: str, raw: bytes) -> None:
        """This node decided that ``user``, last at ``raw`` (its ``gp:loc:{U}``), is
        offline: out of its strangers' cell in Redis, and out of the watchers' views if the
        cell listed it (this node may not keep its settings: its sessions ended)."""
        kept = value_location(user, raw)
        last = Location(kept.lat, kept.lon, 0.0)
        strangers = self._hub.strangers
        self._strangers.went_offline(user, last, lambda: strangers.went_offline_at(user, last))

    def gap(self, channels: list[str]) -> None:
        """``channels`` may have missed events (their Redis connection was lost, or a
        Cluster moved them): the statuses they carry are read again (``Covered.resync``),
        and the chat messages they may have lost (``ChatGaps``)."""
        self._covered.resync(channels)
        self._holdings.gap(channels)
        if self.control is not None and self.control.channel in channels:
            self.control.recheck()
        if self.chat_gaps is not None:
            self.chat_gaps.gap(channels)

    def released(self, channel: str) -> None:
        """No connection here listens to ``channel`` any more."""
        self._views.released(channel)
        self._covered.released(channel)
