"""The hub: sessions, presence, friendships and groups wired together (sans-I/O).

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
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Generator, Iterable, Iterator, Set
from contextlib import contextmanager, suppress
from typing import Any, Final, Literal

import attrs

from geopresence.config import Config
from geopresence.core.broker import (
    Broker,
    ConnId,
    Deliver,
    MemoryBroker,
    group_channel,
    inbox_channel,
    user_channel,
)
from geopresence.core.chat import Chat, ChatEvent, PushHook
from geopresence.core.context import Session as Session
from geopresence.core.context import Sink as Sink
from geopresence.core.journal import Journal, MemoryJournal
from geopresence.core.nearby import NEARBY_TAG, GoneEvent, HistoryRecorder, LocationEvent, Nearby
from geopresence.core.presence import Ended, PresenceChange, PresenceTable, UserPresence
from geopresence.core.replication import (
    FEED_KINDS,
    FeedOp,
    LocationSet,
    LogoutRequested,
    PresenceSet,
    Replicator,
)
from geopresence.core.state import DurableState, covering, settings_from
from geopresence.core.store import Store
from geopresence.core.strangers import (
    STRANGER_TAG,
    StrangerEvent,
    StrangerGoneEvent,
    Strangers,
    TokenBucket,
)
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
)
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
from geopresence.wire.errors import (
    CLOSE_HEARTBEAT_TIMEOUT,
    CLOSE_LOGGED_OUT,
    CLOSE_REPLACED,
    CLOSE_SLOW_CONSUMER,
    ErrorCode,
    ProtocolError,
    RequestId,
)
from geopresence.wire.outbox import Outgoing
from geopresence.wire.protocol import encode, error_message
from geopresence.wire.server_messages import (
    FriendRemoved,
    FriendsPresence,
    FriendStatus,
    GroupPresenceReply,
    HeartbeatAck,
    Presence,
    ServerMessage,
    Status,
    Welcome,
)

GROUP_SLICE: Final = 5_000
"""Members per step of ``Hub.set_group_in_slices`` (~20 ms of work)."""


class BulkError(ProtocolError):
    """A pair of a bulk friendship import was refused: ``index`` is its position,
    ``created`` how many friendships the pairs before it created (they stay)."""

    def __init__(self, code: ErrorCode, message: str, index: int, created: int) -> None:
        super().__init__(code, message)
        self.index = index
        self.created = created


def _config_default(name: str) -> Any:
    """``Config``'s default of field ``name``: the one place that says what it is."""
    return attrs.fields_dict(Config)[name].default


@attrs.frozen(kw_only=True)
class HubSettings:
    """Domain limits and timings (seconds, metres): the ``Config`` fields the hub reads
    (``from_config``), with ``Config``'s defaults for a hub built without one (tests)."""

    heartbeat_interval: float = _config_default("heartbeat_interval")
    offline_after: float = _config_default("offline_after")
    location_ttl: float = _config_default("location_ttl")
    default_radius: float = attrs.field(
        default=_config_default("radius"), metadata={"config": "radius"}
    )
    max_radius: float = _config_default("max_radius")
    strangers_query_burst: int = _config_default("strangers_query_burst")
    strangers_query_interval: float = _config_default("strangers_query_interval")
    presence_fanout_limit: int = _config_default("presence_fanout_limit")
    max_friends: int = _config_default("max_friends")
    max_group_size: int = _config_default("max_group_size")
    node_id: int = _config_default("node_id")
    max_devices_per_user: int = _config_default("max_devices_per_user")
    max_connections_per_user: int = _config_default("max_connections_per_user")
    rate_limit: float = _config_default("rate_limit")
    rate_burst: int = _config_default("rate_burst")
    abuse_limit: int = _config_default("abuse_limit")

    @classmethod
    def from_config(cls, config: Config) -> HubSettings:
        """The settings ``config`` gives the hub (each field of the same name, ``radius``
        for ``default_radius``)."""
        return cls(
            **{
                field.name: getattr(config, field.metadata.get("config", field.name))
                for field in attrs.fields(cls)
            }
        )


def _presence_key(user: str) -> tuple[str, str]:
    """Coalesce key of frames that carry ``user``'s presence state."""
    return ("presence", user)


def _keys_about(user: str) -> tuple[tuple[str, str], ...]:
    """Every coalesce key of frames about ``user``: a friendship change seals them all, so no
    later presence or position can be delivered ahead of it."""
    return (_presence_key(user), (NEARBY_TAG, user), (STRANGER_TAG, user))


PublishScope = Literal["all", "local", "none"]
"""Where the hub's publishes go: every node, this node's subscribers only (events every node
derives itself), or nowhere (applying another node's change, whose origin published them)."""


def _out(message: ServerMessage, coalesce_key: Any = None) -> Outgoing:
    return Outgoing(encode(message), coalesce_key)


class Hub:
    """All domain state of one server, driven by method calls that pass ``now`` (seconds).

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
    ) -> None:
        self.settings = settings
        self.state = DurableState(users=store, ids=SnowflakeGenerator(settings.node_id))
        """The durable state: ``store`` (the user DB), the chat store and the id generator."""
        self.sink = sink
        self.broker = broker_factory(self._deliver)
        self.replicator = replicator
        """The link to the other nodes (None: this is the only node)."""
        self._scope: PublishScope = "all"
        self._statuses: dict[str, tuple[Status, float | None, int]] = {}
        """With other nodes: every user's cluster-wide (status, last_active_at, version)."""
        self.errors: Counter[str] = Counter() if errors is None else errors
        """Error replies sent, by code (the shell passes its metrics' counter)."""
        self.presence: PresenceTable[ConnId] = PresenceTable(settings.offline_after)
        self._sessions: dict[ConnId, Session] = {}
        self._conns_of: dict[str, set[ConnId]] = {}
        self._buckets: dict[ConnId, TokenBucket] = {}
        self._rejected: dict[ConnId, int] = {}
        self.rate_limited = 0
        """Client messages refused by the per-connection rate limit (for metrics)."""
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
            query_burst=settings.strangers_query_burst,
            query_interval=settings.strangers_query_interval,
        )
        self.nearby.listener = self.strangers  # nearby and strangers meet only here
        self.journal: Journal = MemoryJournal() if journal is None else journal
        self.last_seq = self.journal.durable_seq
        """Sequence number of the last record given to the journal."""
        self._durable_replies: deque[tuple[int, ConnId, Outgoing]] = deque()
        self.chat = Chat(self, ids=self.state.ids, store=self.state.chat, push=push)
        self._handlers: dict[type[Any], Callable[[Session, Any, float], None]] = {
            Heartbeat: self._on_heartbeat,
            Logout: self._on_logout,
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

    @property
    def store(self) -> Store:
        """The user DB (friendships, groups, settings): ``state.users``."""
        return self.state.users

    # ---------------------------------------------------------------- sessions

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def session(self, conn: ConnId) -> Session | None:
        return self._sessions.get(conn)

    def connections_of(self, user: str) -> frozenset[ConnId]:
        return frozenset(self._conns_of.get(user, ()))

    def is_connected(self, user: str) -> bool:
        """True if ``user`` has a live connection to this server, or, with several nodes,
        is online in the cluster (this node cannot see the others' connections; a device
        in its grace window there is reached by ``sync`` when it reconnects)."""
        if user in self._conns_of:
            return True
        return self.replicator is not None and self.status_of(user)[0] == "online"

    def session_refusal(
        self, user: str, device: str, request_id: RequestId = None
    ) -> ProtocolError | None:
        """Why ``user`` may not open a session on ``device`` now (None: it may). A device
        that is already alive can always reconnect (its new connection replaces the old)."""
        s = self.settings
        if self.presence.has_device(user, device):
            return None
        if self.presence.get(user).devices >= s.max_devices_per_user:
            return ProtocolError(
                "forbidden",
                f"{user} already has {s.max_devices_per_user} devices online "
                "(max_devices_per_user); log one out or wait for it to go offline",
                request_id,
            )
        if len(self._conns_of.get(user, ())) >= s.max_connections_per_user:
            return ProtocolError(
                "forbidden",
                f"{user} already has {s.max_connections_per_user} connections "
                "(max_connections_per_user)",
                request_id,
            )
        return None

    def admit(
        self, conn: ConnId, now: float, request_id: RequestId = None, *, answer: bool = True
    ) -> bool:
        """Count one client message (or control frame) of ``conn`` against its rate limit.
        False if it must be dropped: it was answered with ``rate_limited`` (unless
        ``answer`` is False: a ping has no id to answer), or, after ``abuse_limit`` refusals
        in a row, the connection was closed with 4008."""
        s = self.settings
        if s.rate_limit <= 0 or conn not in self._sessions:
            return True
        bucket = self._buckets.get(conn)
        if bucket is None:
            bucket = self._buckets[conn] = TokenBucket(
                capacity=s.rate_burst, interval=1 / s.rate_limit, tokens=s.rate_burst, updated=now
            )
        wait = bucket.take(now)
        if wait == 0:
            self._rejected.pop(conn, None)
            return True
        self.rate_limited += 1
        streak = self._rejected[conn] = self._rejected.get(conn, 0) + 1
        if streak > s.abuse_limit:
            self._drop(conn, CLOSE_SLOW_CONSUMER, "rate limit abuse")
            return False
        if not answer:
            return False
        self.reply_error(
            conn,
            ProtocolError(
                "rate_limited",
                f"more than {s.rate_limit:g} messages per second (burst {s.rate_burst}); "
                f"retry in {wait:.2f} s",
                request_id,
            ),
        )
        return False

    def open_session(
        self, conn: ConnId, user: str, device: str, now: float, request_id: RequestId = None
    ) -> None:
        """``conn`` said a valid hello as ``user`` on ``device``: welcome it.

        Sends welcome and friends_presence to ``conn``, closes a connection of the same
        user+device with 4002 (no presence change), and publishes the user's transition to
        online if this is its first alive device.
        """
        connected = self.presence.connect(user, device, conn, now)
        if connected.replaced is not None and connected.replaced != conn:
            self._drop(connected.replaced, CLOSE_REPLACED, "replaced by a newer connection")
        session = Session(conn, user, device)
        self._sessions[conn] = session
        self._conns_of.setdefault(user, set()).add(conn)
        self.broker.subscribe(inbox_channel(user), conn)
        for friend in self.store.friends_of(user):
            self.broker.subscribe(user_channel(friend), conn)
        for group in self.store.groups_of(user):
            self.broker.subscribe(group_channel(group), conn)
        s = self.settings
        self.sink.send(
            conn,
            _out(
                Welcome(
                    user=user,
                    device=device,
                    heartbeat_interval=s.heartbeat_interval,
                    offline_after=s.offline_after,
                    server_time=now,
                    re=request_id,
                )
            ),
        )
        friends = sorted(self.store.friends_of(user))
        self.sink.send(conn, _out(FriendsPresence(friends=[self._status(f) for f in friends])))
        if self.replicator is not None:
            # Whether this makes the user online is decided for the whole cluster.
            self.replicator.device_alive(user, device, now + s.offline_after, now)
        elif connected.change is not None:
            self._publish_presence(connected.change)

    def handle(self, conn: ConnId, message: ClientMessage, now: float) -> None:
        """A decoded client message from ``conn``. Any message but logout is activity."""
        session = self._sessions.get(conn)
        if session is None:
            return
        if not isinstance(message, Logout):
            self._activity(session, now)
        try:
            self._handlers[type(message)](session, message, now)
        except ProtocolError as exc:
            self.reply_error(conn, exc)

    def activity(self, conn: ConnId, now: float) -> None:
        """``conn`` sent something, even if it could not be decoded."""
        session = self._sessions.get(conn)
        if session is not None:
            self._activity(session, now)

    def _activity(self, session: Session, now: float) -> None:
        alive = self.presence.activity(session.user, session.device, session.conn, now)
        if alive and self.replicator is not None:
            self.replicator.device_alive(
                session.user, session.device, now + self.settings.offline_after, now
            )

    def reply_error(self, conn: ConnId, error: ProtocolError) -> None:
        """Send an ``error`` frame to ``conn`` (the connection stays open)."""
        if conn in self._sessions:
            self.errors[error.code] += 1
            self.sink.send(conn, _out(error_message(error)))

    def close_session(self, conn: ConnId) -> None:
        """``conn`` ended without a logout (dropped, or closed by the shell): its device
        stays alive until its heartbeat deadline."""
        session = self._forget(conn)
        if session is not None:
            self.presence.disconnect(session.user, session.device, conn)

    def expire(self, now: float) -> None:
        """Time has reached ``now``: end devices whose heartbeat deadline passed and
        locations whose TTL ended."""
        self._apply_ended(
            self.presence.expire(now), CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout", now
        )
        # Every node holds the same deadlines and tells its own connections.
        with self._scoped("local"):
            self.nearby.expire(now)

    def next_deadline(self) -> float | None:
        """When ``expire`` has work next (None: nothing pending)."""
        deadlines = [
            d for d in (self.presence.next_deadline(), self.nearby.next_deadline()) if d is not None
        ]
        return min(deadlines, default=None)

    # ---------------------------------------------------------------- durability

    def journal_append(self, record: Record) -> int:
        """Give ``record`` to the journal; returns its sequence number. A change applied from
        another node's feed is not journaled again (its origin wrote it)."""
        if self.replaying:
            return self.last_seq
        self.last_seq = self.journal.append(record)
        return self.last_seq

    def reply_when_durable(self, conn: ConnId, message: Outgoing) -> None:
        """Send ``message`` (an ack) once every record journaled so far is durable."""
        if self.journal.durable_seq >= self.last_seq:
            self.sink.send(conn, message)
        else:
            self._durable_replies.append((self.last_seq, conn, message))

    def journal_advanced(self, now: float) -> None:
        """The journal made more records durable (a background flush finished): deliver and
        acknowledge what was waiting for it."""
        self.chat.commit_durable()
        durable = self.journal.durable_seq
        replies = self._durable_replies
        while replies and replies[0][0] <= durable:
            _, conn, message = replies.popleft()
            self.sink.send(conn, message)

    def logout(self, user: str, device: str | None = None) -> int:
        """Log out ``device`` (every device when None) at once; returns how many ended on
        this node (with other nodes, they log it out on theirs too)."""
        if self.replicator is not None and not self.replaying:
            self.replicator.logout(user, device)
        before = self.presence.get(user).devices
        self._apply_ended(self.presence.logout(user, device), CLOSE_LOGGED_OUT, "logged out")
        return before - self.presence.get(user).devices

    def close_all(self, code: int, reason: str) -> None:
        """Ask the sink to close every live connection (shutdown / drain)."""
        for conn in list(self._sessions):
            self._drop(conn, code, reason)

    # ---------------------------------------------------------------- queries

    def user_presence(self, user: str) -> UserPresence:
        """The user's presence; ``devices`` counts its alive devices on this node."""
        local = self.presence.get(user)
        if self.replicator is None:
            return local
        status, last_active_at = self.status_of(user)
        return UserPresence(user, status, last_active_at, local.devices)

    def status_of(self, user: str) -> tuple[Status, float | None]:
        """The user's (status, last_active_at): this node's table with one node, the
        cluster-wide replica with several (last_active_at: the later of the replica's and
        this node's own)."""
        local = self.presence.get(user)
        if self.replicator is None:
            return local.status, local.last_active_at
        status, last, _ = self._statuses.get(user, ("offline", None, 0))
        if local.last_active_at is not None and (last is None or local.last_active_at > last):
            last = local.last_active_at
        return status, last

    def status_version(self, user: str) -> int:
        """The version of ``user``'s cluster-wide status this node holds (0: none)."""
        held = self._statuses.get(user)
        return 0 if held is None else held[2]

    def online_count(self) -> int:
        """Users online now (in the whole cluster with several nodes)."""
        if self.replicator is None:
            return self.presence.online_count
        return sum(1 for status, _, _ in self._statuses.values() if status == "online")

    def friends_presence(self, user: str) -> list[FriendStatus]:
        """The user's friends, sorted by id, with their presence."""
        return [self._status(f) for f in sorted(self.store.friends_of(user))]

    def group_online(self, group: str) -> tuple[list[str], int]:
        """Sorted online members of ``group`` and its member count; not_found if none."""
        members = self.store.group_members(group)
        if members is None:
            raise ProtocolError("not_found", f"group {group!r} does not exist")
        online = sorted(m for m in members if self.status_of(m)[0] == "online")
        return online, len(members)

    # ---------------------------------------------------------------- friendships

    def add_friendship(self, a: str, b: str, now: float) -> bool:
        """Make a and b friends; live connections start hearing each other at once.

        Each side's live connections get a ``friends_presence`` with the other's current
        status, and a ``friend_location`` if the other is within their radius. Returns False
        if they already were friends.
        """
        return bool(self.add_friendships([(a, b)], now))

    def add_friendships(self, pairs: Iterable[tuple[str, str]], now: float) -> int:
        """Create many friendships (a bulk import); returns how many were new.

        Like ``add_friendship`` for each pair, except that each live connection gets ONE
        ``friends_presence`` listing all of its new friends, not one frame per friend. Stops
        with ``ProtocolError`` at the first invalid pair (the earlier ones stay created).
        """
        created: list[tuple[str, str]] = []
        new_friends: dict[str, list[str]] = {}
        try:
            for index, (a, b) in enumerate(pairs):
                try:
                    if not self._befriend(a, b):
                        continue
                except ProtocolError as exc:
                    raise BulkError(exc.code, exc.message, index, len(created)) from None
                created.append((a, b))
                for user, friend in ((a, b), (b, a)):
                    conns = self._conns_of.get(user, ())
                    if conns:
                        new_friends.setdefault(user, []).append(friend)
                        for conn in conns:
                            self.broker.subscribe(user_channel(friend), conn)
        finally:
            for user, friends in new_friends.items():
                # Seal each friend's pending presence: an event queued earlier must not be
                # replaced by a later one that would then arrive before this snapshot.
                snapshot = Outgoing(
                    encode(FriendsPresence(friends=[self._status(f) for f in friends])),
                    seals=tuple(key for f in friends for key in _keys_about(f)),
                )
                for conn in self._conns_of.get(user, ()):
                    self.sink.send(conn, snapshot)
            for a, b in created:
                self.strangers.on_friendship_added(a, b)
                self.nearby.on_friendship_added(a, b, now)
        return len(created)

    def _befriend(self, a: str, b: str) -> bool:
        if a == b:
            raise ProtocolError("bad_request", "a user cannot befriend itself")
        if self.store.are_friends(a, b):
            return False
        limit = self.settings.max_friends
        for user in () if self.replaying else (a, b):  # the origin checked
            if len(self.store.friends_of(user)) >= limit:
                raise ProtocolError("too_large", f"{user} already has max_friends ({limit})")
        self.store.add_friendship(a, b)
        self.journal_append(Befriended(a, b))
        return True

    def remove_friendship(self, a: str, b: str) -> bool:
        """Unfriend a and b; live connections stop hearing each other at once and get a
        ``friend_removed``. Returns False if they were not friends."""
        if not self.store.remove_friendship(a, b):
            return False
        self.journal_append(Unfriended(a, b))
        self.nearby.on_friendship_removed(a, b)
        for user, friend in ((a, b), (b, a)):
            gone = Outgoing(encode(FriendRemoved(user=friend)), seals=_keys_about(friend))
            for conn in self._conns_of.get(user, ()):
                self.broker.unsubscribe(user_channel(friend), conn)
                self.sink.send(conn, gone)
        return True

    # ---------------------------------------------------------------- groups

    def set_group(
        self, group: str, members: Iterable[str], mark: int | None = None
    ) -> tuple[int, int]:
        """Create or replace ``group``'s membership; returns how many were (added, removed).
        New members read messages after ``mark`` (default: the last id issued)."""
        steps = self.set_group_in_slices(group, members, mark, slice_size=0)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                result: tuple[int, int] = done.value
                return result

    def set_group_in_slices(
        self,
        group: str,
        members: Iterable[str],
        mark: int | None = None,
        *,
        slice_size: int = GROUP_SLICE,
    ) -> Generator[None, None, tuple[int, int]]:
        """``set_group`` in steps of ``slice_size`` members (0: one step), so that a caller
        with an event loop can let others run between them (100,000 members take ~0.4 s).
        Returns (added, removed) when exhausted.

        Between steps the membership is part way: other changes may interleave. The
        journal record is written last and holds the membership as it then is, so that a
        replay rebuilds exactly the live state whatever interleaved."""
        wanted = set(members)
        limit = self.settings.max_group_size
        if len(wanted) > limit and not self.replaying:
            raise ProtocolError("too_large", f"a group has at most {limit} members")
        mark = self.state.ids.last_id if mark is None else mark
        if slice_size <= 0:
            added, removed = self.store.set_group(group, wanted)
        else:
            current = self.store.group_members(group)
            if current is None:
                self.store.set_group(group, ())
                current = frozenset()
            added, removed = wanted - current, set(current) - wanted
        count = 0
        for user in added:
            if slice_size > 0:
                self.store.add_member(group, user)
            self.chat.on_joined(group, user, mark)
            self._subscribe_user(group_channel(group), user)
            count += 1
            if count == slice_size:
                count = 0
                yield
        for user in removed:
            if slice_size > 0:
                self.store.remove_member(group, user)
            self.chat.on_left(group, user)
            self._unsubscribe_user(group_channel(group), user)
            count += 1
            if count == slice_size:
                count = 0
                yield
        final = self.store.group_members(group)
        if final is not None:  # None: deleted part way (journaled), and nothing added since
            self.journal_append(GroupSet(group, sorted(final), mark))
        return len(added), len(removed)

    def delete_group(self, group: str) -> None:
        members = self.store.delete_group(group)
        if members is None:
            raise ProtocolError("not_found", f"group {group!r} does not exist")
        self.journal_append(GroupDeleted(group))
        self.chat.on_group_deleted(group, members)
        for user in members:
            self._unsubscribe_user(group_channel(group), user)

    def add_member(self, group: str, user: str, mark: int | None = None) -> bool:
        members = self.store.group_members(group)
        limit = self.settings.max_group_size
        full = members is not None and user not in members and len(members) >= limit
        if full and not self.replaying:
            raise ProtocolError("too_large", f"a group has at most {limit} members")
        added = self.store.add_member(group, user)
        if added:
            mark = self.state.ids.last_id if mark is None else mark
            self.journal_append(MemberAdded(group, user, mark))
            self.chat.on_joined(group, user, mark)
            self._subscribe_user(group_channel(group), user)
        return added

    def remove_member(self, group: str, user: str) -> bool:
        if self.store.group_members(group) is None:
            raise ProtocolError("not_found", f"group {group!r} does not exist")
        removed = self.store.remove_member(group, user)
        if removed:
            self.journal_append(MemberRemoved(group, user))
            self.chat.on_left(group, user)
            self._unsubscribe_user(group_channel(group), user)
        return removed

    # ---------------------------------------------------------------- publishing

    def publish(
        self, channels: Iterable[str], event: object, exclude: Set[ConnId] = frozenset()
    ) -> None:
        """Publish a channel event, as far as the current scope allows (``PublishScope``)."""
        scope = self._scope
        if scope == "all":
            self.broker.publish(channels, event, exclude)
        elif scope == "local":
            self.broker.publish_local(channels, event, exclude)

    @property
    def replaying(self) -> bool:
        """True while applying another node's change (``apply_feed``)."""
        return self._scope == "none"

    @contextmanager
    def _scoped(self, scope: PublishScope) -> Iterator[None]:
        previous = self._scope
        self._scope = "none" if previous == "none" else scope
        try:
            yield
        finally:
            self._scope = previous

    # ---------------------------------------------------------------- other nodes

    def announce_presence(self, transition: PresenceSet) -> None:
        """A user's cluster-wide transition (decided here, or on another node and received
        on the feed): update the replica and tell this node's subscribers.

        Presence is the one state whose events every node derives itself from the feed,
        rather than receiving the origin's channel publish: a publish in flight while a
        node subscribes for a new session would be missed, and unlike a position (the next
        update supersedes it) or a message (``sync`` recovers it), a missed transition
        would leave a friend's status wrong until the next one. Applying the feed op and
        telling the subscribers in one step leaves no gap: a session opened before it gets
        the event, one opened after it reads the new status in its ``friends_presence``.
        """
        t = transition
        if self._set_status(t.user, t.status, t.last_active_at, t.version):
            with self._scoped("local"):
                self._publish_presence(PresenceChange(t.user, t.status, t.last_active_at))

    def apply_feed(self, op: FeedOp, now: float) -> None:
        """Apply a change made on another node: to the replica, and to this node's own
        connections (subscriptions, views, frames only they need). Nothing is published or
        journaled again: the origin did that."""
        if isinstance(op, PresenceSet):
            self.announce_presence(op)
            return
        # A refusal means it is already applied or moot here (a group deleted meanwhile).
        with self._scoped("none"), suppress(ProtocolError):
            FEED_APPLY[type(op)](self, op, now)

    def load_status(
        self, user: str, status: Status, last_active_at: float | None, version: int
    ) -> None:
        """Fill the presence replica at start-up (no event is sent)."""
        self._set_status(user, status, last_active_at, version)

    def _set_status(
        self, user: str, status: Status, last_active_at: float | None, version: int
    ) -> bool:
        held = self._statuses.get(user)
        if held is not None and held[2] >= version:
            return False  # an older transition arriving late
        self._statuses[user] = (status, last_active_at, version)
        return True

    # ---------------------------------------------------------------- handlers

    def _on_heartbeat(self, session: Session, message: Heartbeat, now: float) -> None:
        if message.id is not None:
            self.sink.send(session.conn, _out(HeartbeatAck(re=message.id, server_time=now)))

    def _on_logout(self, session: Session, message: Logout, now: float) -> None:
        self._apply_ended(
            self.presence.logout(session.user, session.device), CLOSE_LOGGED_OUT, "logged out"
        )

    def _on_group_presence(self, session: Session, message: GroupPresenceQuery, now: float) -> None:
        members = self.store.group_members(message.group)
        if members is None or session.user not in members:
            # One answer for both cases: outsiders learn nothing about a group's existence.
            raise ProtocolError("forbidden", f"not a member of group {message.group!r}", message.id)
        online, total = self.group_online(message.group)
        reply = GroupPresenceReply(re=message.id, group=message.group, online=online, total=total)
        self.sink.send(session.conn, _out(reply))

    def _on_repeated_hello(self, session: Session, message: Hello, now: float) -> None:
        raise ProtocolError("bad_request", "already authenticated: hello only once", message.id)

    # ---------------------------------------------------------------- internals

    def _deliver(self, conn: ConnId, event: object) -> None:
        """The broker hands a channel event to one local subscriber."""
        if isinstance(event, Outgoing):
            self.sink.send(conn, event)  # encoded once for every recipient
        elif isinstance(event, LocationEvent | GoneEvent):
            self.nearby.deliver(conn, event)  # per-recipient: distance to its own user
        elif isinstance(event, StrangerEvent | StrangerGoneEvent):
            self.strangers.deliver(conn, event)
        elif isinstance(event, ChatEvent):
            self.chat.deliver(conn, event)
        else:
            raise TypeError(f"unexpected channel event {event!r}")

    def _status(self, user: str) -> FriendStatus:
        status, last_active_at = self.status_of(user)
        return FriendStatus(user=user, status=status, last_active_at=last_active_at)

    def _publish_presence(self, change: PresenceChange) -> None:
        user = change.user
        channels = [user_channel(user)]
        limit = self.settings.presence_fanout_limit
        for group in self.store.groups_of(user):
            members = self.store.group_members(group)
            if members is not None and len(members) <= limit:
                channels.append(group_channel(group))
        event = Presence(user=user, status=change.status, last_active_at=change.last_active_at)
        # Latest-wins per user: a slow client gets the newest status, not the backlog.
        self.publish(channels, _out(event, _presence_key(user)), self._conns_of.get(user, set()))
        if change.status == "offline":
            self.nearby.on_offline(user)

    def _apply_ended(
        self, ended: Ended[ConnId], code: int, reason: str, expired_at: float | None = None
    ) -> None:
        """Close the ended devices' connections and publish the users' transitions (with
        other nodes: report the devices; the cluster decides the transitions)."""
        for device in ended.connections:
            self._drop(device.conn, code, reason)
        if self.replicator is not None:
            for user, name in ended.devices:
                self.replicator.device_ended(user, name, expired_at)
            return
        for change in ended.changes:
            self._publish_presence(change)

    def _drop(self, conn: ConnId, code: int, reason: str) -> None:
        if self._forget(conn) is not None:
            self.sink.close(conn, code, reason)

    def _forget(self, conn: ConnId) -> Session | None:
        session = self._sessions.pop(conn, None)
        if session is None:
            return None
        conns = self._conns_of[session.user]
        conns.discard(conn)
        if not conns:
            del self._conns_of[session.user]
        self.broker.unsubscribe_all(conn)
        self._buckets.pop(conn, None)
        self._rejected.pop(conn, None)
        self.nearby.on_session_closed(conn)
        self.strangers.on_session_closed(conn)
        return session

    def _subscribe_user(self, channel: str, user: str) -> None:
        for conn in self._conns_of.get(user, ()):
            self.broker.subscribe(channel, conn)

    def _unsubscribe_user(self, channel: str, user: str) -> None:
        for conn in self._conns_of.get(user, ()):
            self.broker.unsubscribe(channel, conn)


# ---------------------------------------------------------------- another node's change


def _feed_location(hub: Hub, op: LocationSet, now: float) -> None:
    hub.nearby.apply(op.user, op.lat, op.lon, op.ts, op.at)


def _feed_logout(hub: Hub, op: LogoutRequested, now: float) -> None:
    hub.logout(op.user, op.device)


def _feed_message(hub: Hub, op: ChatMessage, now: float) -> None:
    hub.chat.insert(op)


def _feed_befriended(hub: Hub, op: Befriended, now: float) -> None:
    hub.add_friendships([(op.a, op.b)], now)


def _feed_unfriended(hub: Hub, op: Unfriended, now: float) -> None:
    hub.remove_friendship(op.a, op.b)


def _feed_group_set(hub: Hub, op: GroupSet, now: float) -> None:
    hub.state.ids.observe(op.joined_after)
    hub.set_group(op.group, op.members, op.joined_after)


def _feed_group_deleted(hub: Hub, op: GroupDeleted, now: float) -> None:
    hub.delete_group(op.group)


def _feed_member_added(hub: Hub, op: MemberAdded, now: float) -> None:
    hub.state.ids.observe(op.joined_after)
    hub.add_member(op.group, op.user, op.joined_after)


def _feed_member_removed(hub: Hub, op: MemberRemoved, now: float) -> None:
    hub.remove_member(op.group, op.user)


def _feed_settings(hub: Hub, op: SettingsChanged, now: float) -> None:
    hub.nearby.change_settings(op.user, settings_from(op), now)


FEED_APPLY: Final[dict[type[Any], Callable[[Hub, Any, float], None]]] = covering(
    {
        LocationSet: _feed_location,
        LogoutRequested: _feed_logout,
        ChatMessage: _feed_message,
        Befriended: _feed_befriended,
        Unfriended: _feed_unfriended,
        GroupSet: _feed_group_set,
        GroupDeleted: _feed_group_deleted,
        MemberAdded: _feed_member_added,
        MemberRemoved: _feed_member_removed,
        SettingsChanged: _feed_settings,
    },
    FEED_KINDS - {PresenceSet},
    what="Hub.apply_feed",
)
"""Feed op kind (but ``PresenceSet``) -> how the hub applies another node's change: through
its own operations, with their effects on this node's connections (``Hub.apply_feed``)."""
