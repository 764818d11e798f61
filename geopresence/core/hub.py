"""The hub: the domain of one server, wired from its parts (sans-I/O).

The hub is the whole domain of the server as one synchronous object. The trio shell feeds it
what happened (a session opened, a frame arrived, time passed, an HTTP call) together with
``now``, and the hub answers by handing frames and close requests to a ``Sink``, which the
shell implements with bounded per-connection queues. Fan-out therefore costs no awaits: a
presence change reaching 5,000 friends is 5,000 non-blocking queue pushes.

Channels (see ``broker``): each user U has ``user:U``, subscribed by every live connection of
each of U's friends, and ``inbox:U``, subscribed by U's own connections (1:1 chat); each
group G has ``group:G``, subscribed by its members' connections, which carries the group's
chat messages, and its co-members' presence only while the group has at most
``presence_fanout_limit`` members.

The parts, each in its own module: ``Sessions`` (the session table and rate limits),
``Lifecycle`` (sessions opening and closing, devices, presence transitions), ``Membership``
(friendships and groups), ``Statuses`` (presence queries), ``Acks`` (the journal and the
replies waiting for it), ``Replies`` (every frame: each connection's replies in the order of
its requests), ``RemoteChanges`` (other nodes' changes), ``Fanout`` (the publish scope),
``Forgetting`` (a user deleted), and the features ``Chat``, ``Nearby`` and ``Strangers``,
which see the hub only as their ``FeatureContext``. ``HubSettings`` and ``FEED_APPLY`` are
importable from here as before the parts were split out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Set
from typing import Any

from geopresence.core.acks import Acks
from geopresence.core.broker import Broker, ConnId, Deliver, MemoryBroker
from geopresence.core.chat import Chat
from geopresence.core.chat_message_wire import ChatEvent, PushHook
from geopresence.core.chat_send_rules import check_member
from geopresence.core.context import Session, Sink
from geopresence.core.fanout import Fanout
from geopresence.core.forget import Forgetting
from geopresence.core.hub_operations import HubOperations
from geopresence.core.journal import Journal, MemoryJournal
from geopresence.core.lifecycle import Lifecycle
from geopresence.core.membership import Membership
from geopresence.core.nearby import (
    GoneEvent,
    HistoryRecorder,
    LocationEvent,
    LocationKept,
    Nearby,
)
from geopresence.core.presence import PresenceTable
from geopresence.core.remote_changes import FEED_APPLY as FEED_APPLY
from geopresence.core.remote_changes import RemoteChanges
from geopresence.core.replication import Replicator
from geopresence.core.replies import Replies
from geopresence.core.sessions import Sessions
from geopresence.core.settings import HubSettings as HubSettings
from geopresence.core.state import DurableState
from geopresence.core.statuses import Statuses
from geopresence.core.store import Store
from geopresence.core.stranger_events import StrangerEvent, StrangerGoneEvent
from geopresence.core.stranger_index import StrangerIndex
from geopresence.core.strangers import Strangers
from geopresence.model.records import Record
from geopresence.model.snowflake import SnowflakeGenerator
from geopresence.wire.client_messages import (
    ClientMessage,
    GroupPresenceQuery,
    Heartbeat,
    Hello,
    LocationUpdate,
    Logout,
    NearbyFriendsQuery,
    NearbyPeopleQuery,
    Send,
    SettingsUpdate,
    Sync,
    WatchStrangers,
)
from geopresence.wire.errors import ProtocolError
from geopresence.wire.outgoing import Outgoing, out
from geopresence.wire.server_messages import GroupPresenceReply


class Hub(HubOperations):
    """All domain state of one server, driven by method calls that pass ``now`` (seconds).

    The hub wires its parts, dispatches client messages by type (``handle``) and broker
    events to the feature that renders them, and is the features' ``FeatureContext``. The
    methods it inherits (``HubOperations``) hand the call to the part that does the work;
    friendships and groups are changed on ``membership``, presence is queried on ``statuses``.

    Methods that take a ``conn`` ignore connections the hub does not know (already closed by
    the hub itself); HTTP-facing methods raise ``ProtocolError`` for invalid requests.
    """

    def __init__(
        self,
        settings: HubSettings,
        store: Store,
        sink: Sink,
        *,
        broker_factory: Callable[[Deliver], Broker] = MemoryBroker,
        errors: Counter[str] | None = None,
        history: HistoryRecorder | None = None,
        journal: Journal | None = None,
        push: PushHook | None = None,
        replicator: Replicator | None = None,
        stranger_index: StrangerIndex | None = None,
    ) -> None:
        self.settings = settings
        self.state = DurableState(users=store, ids=SnowflakeGenerator(settings.node_id))
        """The durable state: ``store`` (the user DB), the chat store and the id generator."""
        frames = settings.queue_size + settings.state_queue_size  # as a connection's queue
        self.sink = self.replies = Replies(sink, max_frames=frames, max_chars=settings.queue_bytes)
        """Every frame goes through it: replies in the order of their requests."""
        self.broker = broker_factory(self._deliver)
        self.replicator = replicator
        """The link to the other nodes (None: this is the only node)."""
        self.errors: Counter[str] = Counter() if errors is None else errors
        """Error replies sent, by code (the shell passes its metrics' counter)."""
        self.presence: PresenceTable[ConnId] = PresenceTable(settings.offline_after)
        self.fanout = Fanout(self.broker)
        journal = MemoryJournal() if journal is None else journal
        self.acks = Acks(journal, self.replies, self.fanout)
        self.statuses = Statuses(self.presence, self.state, clustered=replicator is not None)
        self.nearby = Nearby(
            self,
            location_ttl=settings.location_ttl,
            default_radius=settings.default_radius,
            max_radius=settings.max_radius,
            history=history,
        )
        self.strangers = Strangers(
            self,
            self.nearby,
            location_ttl=settings.location_ttl,
            query_burst=settings.strangers_query_burst,
            query_interval=settings.strangers_query_interval,
            index=stranger_index,
        )
        self.nearby.listener = self.strangers  # nearby and strangers meet only here
        self.chat = Chat(self, ids=self.state.ids, store=self.state.chat, push=push)
        derived = replicator is None and isinstance(self.broker, MemoryBroker)  # the only node
        self.sessions = Sessions(
            settings,
            self.replies,
            self.broker,
            self.errors,
            on_closed=(self.nearby.on_session_closed, self.strangers.on_session_closed),
            friends_of=self.state.users.friends_of if derived else None,
            before_error=self.nearby.check_views,
        )
        if derived:
            assert isinstance(self.broker, MemoryBroker)
            self.broker.derive_user_channels(self.sessions.connections_of_friends)
        self.lifecycle = Lifecycle(
            settings,
            self.state,
            self.replies,
            self.sessions,
            self.fanout,
            self.statuses,
            replicator,
            self.nearby,
        )
        self.membership = Membership(
            settings,
            self.state,
            self.sessions,
            self.fanout,
            self.acks,
            self.statuses,
            friends=self.nearby,
            strangers=self.strangers,
            groups=self.chat,
        )
        self.forgetting = Forgetting(
            self.state,
            self.acks,
            self.sessions,
            self.lifecycle,
            self.membership,
            self.statuses,
            self.nearby,
            self.strangers,
            self.chat,
        )
        self.remote = RemoteChanges(
            self.statuses,
            self.fanout,
            self.lifecycle,
            self.membership,
            self.nearby,
            self.chat,
            self.state.ids,
            self.forgetting,
        )
        self._handlers: dict[type[Any], Callable[[Session, Any, float], None]] = {
            Heartbeat: self.lifecycle.on_heartbeat,
            Logout: self.lifecycle.on_logout,
            GroupPresenceQuery: self._on_group_presence,
            Hello: self._on_repeated_hello,
            LocationUpdate: self.nearby.on_location,
            NearbyFriendsQuery: self.nearby.on_query,
            SettingsUpdate: self.nearby.on_settings,
            WatchStrangers: self.strangers.on_watch,
            NearbyPeopleQuery: self.strangers.on_query,
            Send: self.chat.on_send,
            Sync: self.chat.on_sync,
        }
        # Channel events by type -> the part that turns them into frames for one subscriber.
        self._deliverers: dict[type[Any], Callable[[ConnId, Any], None]] = {
            Outgoing: lambda conn, frame: self.sink.send(conn, frame),  # encoded once for all
            LocationEvent: self.nearby.deliver_location,  # per recipient: its own distance
            GoneEvent: self.nearby.deliver_gone,
            LocationKept: lambda conn, event: None,  # for the nodes' caches (ClusterLink)
            StrangerEvent: self.strangers.deliver,
            StrangerGoneEvent: self.strangers.deliver,
            ChatEvent: self.chat.deliver,
        }

    # ---------------------------------------------------------------- client messages

    def handle(self, conn: ConnId, message: ClientMessage, now: float) -> None:
        """A decoded client message from ``conn``. Any message but logout is activity."""
        session = self.sessions.get(conn)
        if session is None:
            return
        self.settle(message)
        if not isinstance(message, Logout):
            self.lifecycle.on_activity(session, now)
        try:
            self._handlers[type(message)](session, message, now)
        except ProtocolError as exc:
            self.sessions.reply_error(conn, exc)

    def settle(self, message: ClientMessage) -> None:
        """Before ``message`` of a read whose moves are deferred (``Nearby.defer_moves``),
        what those moves make that must come first goes out: a heartbeat (a reply to the
        sender at most) leaves the moves deferred but has the sender's own views checked
        first; any other message but a move has the moves shown to friends and checked.
        ``handle`` does this; the shell too, before a message it answers itself."""
        nearby = self.nearby
        if not nearby.moves_deferred or type(message) is LocationUpdate:
            return
        if type(message) is Heartbeat:
            nearby.check_views()
        else:
            nearby.show_moves(keep_deferring=True)

    def _on_group_presence(self, session: Session, message: GroupPresenceQuery, now: float) -> None:
        check_member(self.store, session.user, message.group, message.id)
        online, total = self.statuses.group_online(message.group)
        reply = GroupPresenceReply(re=message.id, group=message.group, online=online, total=total)
        self.replies.reply(session.conn, out(reply))

    def _on_repeated_hello(self, session: Session, message: Hello, now: float) -> None:
        raise ProtocolError("bad_request", "already authenticated: hello only once", message.id)

    def _deliver(self, conn: ConnId, event: object) -> None:
        """The broker hands a channel event to one local subscriber."""
        deliver = self._deliverers.get(type(event))
        if deliver is None:
            raise TypeError(f"unexpected channel event {event!r}")
        deliver(conn, event)

    # ---------------------------------------------------------------- the FeatureContext

    @property
    def store(self) -> Store:
        """The user DB (friendships, groups, settings): ``state.users``."""
        return self.state.users

    @property
    def journal(self) -> Journal:
        return self.acks.journal

    @property
    def replaying(self) -> bool:
        """True while applying another node's change (``apply_feed``)."""
        return self.fanout.replaying

    def session(self, conn: ConnId) -> Session | None:
        return self.sessions.get(conn)

    def connections_of(self, user: str) -> frozenset[ConnId]:
        return self.sessions.connections_of(user)

    def is_connected(self, user: str) -> bool:
        """True if ``user`` has a live connection to this server, or, with several nodes,
        is online in the cluster (this node cannot see the others' connections; a device
        in its grace window there is reached by ``sync`` when it reconnects)."""
        if self.sessions.has_connections(user):
            return True
        return self.replicator is not None and self.statuses.is_online(user)

    def publish(
        self, channels: Iterable[str], event: object, exclude: Set[ConnId] = frozenset()
    ) -> None:
        self.fanout.publish(channels, event, exclude)

    def publish_everywhere(self, channels: Iterable[str], event: object) -> None:
        with self.fanout.scoped("all"):
            self.fanout.publish(channels, event)

    def journal_append(self, record: Record) -> int:
        return self.acks.journal_append(record)

    def reply_when_durable(self, conn: ConnId, message: Outgoing) -> None:
        self.acks.reply_when_durable(conn, message)

    def journal_advanced(self, now: float) -> None:
        """The journal made more records durable (a background flush finished): deliver and
        acknowledge what was waiting for it."""
        self.chat.commit_durable()
        self.acks.journal_advanced()
