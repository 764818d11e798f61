"""Sessions opening and closing, devices alive and ending, and the presence they change
(sans-I/O).

A user is online while at least one of its devices is alive: connected, or within
``offline_after`` of its last activity (``PresenceTable``). With one node this node decides
each transition and publishes it; with several, this node still keeps its devices'
deadlines (heartbeats stay here) and reports to the ``Replicator`` only a device's
transitions on this node: a session opened, the device ended. The cluster decides the
user's transitions (they come back through ``RemoteChanges.announce_presence``).
"""

from __future__ import annotations

from typing import Literal, Protocol

from geopresence.core.broker import ConnId, group_channel, inbox_channel, user_channel
from geopresence.core.context import Session
from geopresence.core.fanout import Fanout, presence_key
from geopresence.core.presence import Ended, PresenceChange, PresenceTable
from geopresence.core.replication import Replicator
from geopresence.core.replies import Replies
from geopresence.core.sessions import Sessions
from geopresence.core.settings import HubSettings
from geopresence.core.state import DurableState
from geopresence.core.statuses import Statuses
from geopresence.wire.client_messages import Heartbeat, Logout
from geopresence.wire.errors import (
    CLOSE_HEARTBEAT_TIMEOUT,
    CLOSE_LOGGED_OUT,
    CLOSE_REASONS,
    CLOSE_REPLACED,
    ProtocolError,
    RequestId,
)
from geopresence.wire.outgoing import out
from geopresence.wire.server_messages import FriendsPresence, HeartbeatAck, Presence, Welcome

Report = Literal["logout", "if_held", "no"]
"""How ``apply_ended`` reports ended devices to the other nodes: ended at once wherever held
(a logout on this node's session), ended if this node still holds them (a deadline passed
here, another node's logout), or not at all (``Replicator.logout`` already ended them)."""


class Locations(Protocol):
    """What the lifecycle tells the location cache (nearby friends)."""

    def on_offline(self, user: str) -> None:
        """``user`` went offline: its location is gone."""

    def expire(self, now: float) -> None:
        """End the locations whose TTL ended by ``now``."""

    def next_deadline(self) -> float | None:
        """When ``expire`` has work next (None: nothing pending)."""
        ...


class Lifecycle:
    """Opens and closes sessions, keeps devices alive, ends them (logout, heartbeat
    deadline) and publishes the users' transitions to online and offline."""

    def __init__(
        self,
        settings: HubSettings,
        state: DurableState,
        sink: Replies,
        sessions: Sessions,
        fanout: Fanout,
        statuses: Statuses,
        replicator: Replicator | None,
        locations: Locations,
    ) -> None:
        self.settings = settings
        self.state = state
        self.sink = sink
        self.sessions = sessions
        self.fanout = fanout
        self.statuses = statuses
        self.presence: PresenceTable[ConnId] = statuses.presence
        self.replicator = replicator
        self.locations = locations

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
                f"{user} already has {_count(s.max_devices_per_user, 'device')} online "
                "(max_devices_per_user); log one out or wait for it to go offline",
                request_id,
            )
        if len(self.sessions.live_connections(user)) >= s.max_connections_per_user:
            return ProtocolError(
                "forbidden",
                f"{user} already has {_count(s.max_connections_per_user, 'connection')} "
                "(max_connections_per_user)",
                request_id,
            )
        return None

    def open_session(
        self,
        conn: ConnId,
        user: str,
        device: str,
        now: float,
        request_id: RequestId = None,
        since: float | None = None,
    ) -> None:
        """``conn`` said a valid hello as ``user`` on ``device``: welcome it.

        Sends welcome and friends_presence to ``conn``, closes a connection of the same
        user+device with 4002 (no presence change), and publishes the user's transition to
        online if this is its first alive device. ``since``: when the connection opened (a
        logout made elsewhere before it does not end it), ``now`` if None.
        """
        connected = self.presence.connect(user, device, conn, now, since)
        if connected.replaced is not None and connected.replaced != conn:
            self.sessions.drop(connected.replaced, CLOSE_REPLACED, CLOSE_REASONS[CLOSE_REPLACED])
        self.sessions.add(Session(conn, user, device))
        broker, store = self.fanout.broker, self.state.users
        broker.subscribe(inbox_channel(user), conn)
        for friend in store.friends_of(user):
            broker.subscribe(user_channel(friend), conn)
        for group in store.groups_of(user):
            broker.subscribe(group_channel(group), conn)
        s = self.settings
        self.sink.reply(
            conn,
            out(
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
        friends = sorted(store.friends_of(user))
        status = self.statuses.friend_status
        self.sink.send(conn, out(FriendsPresence(friends=[status(f, now) for f in friends])))
        if self.replicator is not None:
            # Every session, not only the device's first here: it may have reconnected to
            # another node and back while alive here, and this node holds it again. Whether
            # this makes the user online is decided for the whole cluster.
            self.replicator.device_alive(user, device, since or now)
        elif connected.change is not None:
            self.publish_presence(connected.change)

    def activity(self, conn: ConnId, now: float) -> None:
        """``conn`` sent something, even if it could not be decoded."""
        session = self.sessions.get(conn)
        if session is not None:
            self.on_activity(session, now)

    def on_activity(self, session: Session, now: float) -> None:
        """``session`` was active at ``now``: its device stays alive. Only this node's
        deadline moves: with other nodes, this node holds the device until it ends here,
        and nothing is reported."""
        self.presence.activity(session.user, session.device, session.conn, now)

    def close_session(self, conn: ConnId) -> None:
        """``conn`` ended without a logout (dropped, or closed by the shell): its device
        stays alive until its heartbeat deadline."""
        session = self.sessions.forget(conn)
        if session is not None:
            self.presence.disconnect(session.user, session.device, conn)

    def expire(self, now: float) -> None:
        """Time has reached ``now``: end devices whose heartbeat deadline passed and
        locations whose TTL ended."""
        self.apply_ended(self.presence.expire(now), CLOSE_HEARTBEAT_TIMEOUT, "if_held")
        # Every node holds the same deadlines and tells its own connections.
        with self.fanout.scoped("local"):
            self.locations.expire(now)

    def next_deadline(self) -> float | None:
        """When ``expire`` has work next (None: nothing pending)."""
        deadlines = [
            d
            for d in (self.presence.next_deadline(), self.locations.next_deadline())
            if d is not None
        ]
        return min(deadlines, default=None)

    def logout(self, user: str, device: str | None = None) -> int:
        """Log out ``device`` (every device when None) at once; returns how many ended on
        this node (with other nodes, they log it out on theirs too)."""
        replaying = self.fanout.replaying
        if self.replicator is not None and not replaying:
            self.replicator.logout(user, device, self.presence.get(user).last_active_at)
        before = self.presence.get(user).devices
        # Made here, the logout above ends the devices wherever they are held; made on
        # another node (replaying), it ends them here only if this node still holds them (a
        # new session elsewhere since then must not end).
        report: Report = "if_held" if replaying else "no"
        self.apply_ended(self.presence.logout(user, device), CLOSE_LOGGED_OUT, report)
        return before - self.presence.get(user).devices

    def replaced_elsewhere(self, user: str, device: str, conn: ConnId) -> bool:
        """Another node took ``user``'s ``device`` over in the cluster's presence (a newer
        connection of it opened there). Close ``conn`` with 4002 if it is still the
        device's connection here, and end the device here, reporting the end only if this
        node still holds it: a report of this node's still queued (a session that reopened
        here meanwhile) must not make Redis hold a device no node has. True if closed."""
        if self.presence.connection_of(user, device) != conn:
            return False  # gone meanwhile, or replaced by a newer connection here
        ended = self.presence.logout(user, device)
        self.apply_ended(ended, CLOSE_REPLACED, "if_held")
        return True

    def logged_out_elsewhere(self, user: str, device: str, at: float) -> bool:
        """A logout made at ``at`` (epoch seconds) on another node ended ``user``'s
        ``device`` in the cluster's presence: end it here too (closing its connection,
        4001, if it has one), unless its latest connection here opened after the logout
        (``since``, as reported).
        Its end is reported only if this node still holds it, as in ``replaced_elsewhere``.
        True if ended."""
        since = self.presence.since(user, device)
        # In whole milliseconds, as Redis judged it (``presence_scripts``): a tie is the
        # logout's.
        if since is None or int(since * 1000) > round(at * 1000):
            return False
        self.apply_ended(self.presence.logout(user, device), CLOSE_LOGGED_OUT, "if_held")
        return True

    def on_heartbeat(self, session: Session, message: Heartbeat, now: float) -> None:
        if message.id is not None:
            self.sink.reply(session.conn, out(HeartbeatAck(re=message.id, server_time=now)))

    def on_logout(self, session: Session, message: Logout, now: float) -> None:
        self.apply_ended(
            self.presence.logout(session.user, session.device),
            CLOSE_LOGGED_OUT,
            "logout",
        )

    def apply_ended(self, ended: Ended[ConnId], code: int, report: Report) -> None:
        """Close the ended devices' connections and publish the users' transitions (with
        other nodes: report the devices as ``report`` says; the cluster decides the
        transitions)."""
        for device in ended.connections:
            self.sessions.drop(device.conn, code, CLOSE_REASONS[code])
        if self.replicator is not None:
            if report != "no":
                for user, name in ended.devices:
                    last = self.presence.get(user).last_active_at
                    self.replicator.device_ended(user, name, last, logout=report == "logout")
            return
        for change in ended.changes:
            self.publish_presence(change)

    def presence_channels(self, user: str) -> list[str]:
        """Where ``user``'s transitions go: its own channel (its friends) and those of its
        groups of at most ``presence_fanout_limit`` members."""
        groups = self.state.users.groups_of(user)
        small = [group_channel(g) for g in groups if self.carries_presence(g)]
        return [user_channel(user), *small]

    def carries_presence(self, group: str) -> bool:
        """True if ``group``'s channel carries its members' transitions: it exists and has at
        most ``presence_fanout_limit`` members (bigger groups ask: group_presence)."""
        members = self.state.users.group_members(group)
        return members is not None and len(members) <= self.settings.presence_fanout_limit

    def publish_presence(self, change: PresenceChange) -> None:
        """Publish ``user``'s transition to its friends and to the co-members of its groups
        of at most ``presence_fanout_limit`` members (bigger groups ask: group_presence)."""
        user = change.user
        channels = self.presence_channels(user)
        event = Presence(user=user, status=change.status, last_active_at=change.last_active_at)
        # Latest-wins per user: a slow client gets the newest status, not the backlog.
        exclude = self.sessions.live_connections(user)
        self.fanout.publish(channels, out(event, presence_key(user)), exclude)
        if change.status == "offline":
            self.locations.on_offline(user)


def _count(n: int, noun: str) -> str:
    """``1 device``, ``16 devices``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
