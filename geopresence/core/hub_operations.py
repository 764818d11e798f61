"""The hub's operations for the shell and the cluster, each handed to the part that does the work.

``Hub`` inherits them; each is documented on the part it calls (``Acks``, ``Sessions``,
``Lifecycle``, ``PresenceTable``, ``Statuses``, ``RemoteChanges``). Everything else is called
on the part itself (``hub.membership.add_friendship``, ``hub.statuses.user_presence``,
``hub.lifecycle.logout``), and so should new callers.
"""

from __future__ import annotations

from geopresence.core.acks import Acks
from geopresence.core.broker import ConnId
from geopresence.core.lifecycle import Lifecycle
from geopresence.core.presence import PresenceTable
from geopresence.core.remote_changes import RemoteChanges
from geopresence.core.replication import FeedOp, PresenceSet
from geopresence.core.sessions import Sessions
from geopresence.core.statuses import Statuses
from geopresence.wire.errors import ProtocolError, RequestId

__all__ = ["HubOperations"]


class HubOperations:
    """The parts' operations (mixed into ``Hub``, which sets these attributes)."""

    acks: Acks
    sessions: Sessions
    lifecycle: Lifecycle
    presence: PresenceTable[ConnId]
    statuses: Statuses
    remote: RemoteChanges

    @property
    def last_seq(self) -> int:
        return self.acks.last_seq

    @last_seq.setter
    def last_seq(self, seq: int) -> None:
        self.acks.last_seq = seq  # recovery: the journal read back

    @property
    def rate_limited(self) -> int:
        return self.sessions.rate_limited

    @rate_limited.setter
    def rate_limited(self, count: int) -> None:
        self.sessions.rate_limited = count  # the shell counts what it refuses itself

    def session_refusal(
        self, user: str, device: str, request_id: RequestId = None
    ) -> ProtocolError | None:
        return self.lifecycle.session_refusal(user, device, request_id)

    def admit(
        self, conn: ConnId, now: float, request_id: RequestId = None, *, answer: bool = True
    ) -> bool:
        return self.sessions.admit(conn, now, request_id, answer=answer)

    def open_session(
        self,
        conn: ConnId,
        user: str,
        device: str,
        now: float,
        request_id: RequestId = None,
        since: float | None = None,
    ) -> None:
        """``Lifecycle.open_session``; ``since``: when the connection opened, if before
        ``now`` (the time its device was reported alive to the other nodes)."""
        self.lifecycle.open_session(conn, user, device, now, request_id, since)

    def activity(self, conn: ConnId, now: float) -> None:
        self.lifecycle.activity(conn, now)

    def reply_error(self, conn: ConnId, error: ProtocolError) -> None:
        self.sessions.reply_error(conn, error)

    def close_session(self, conn: ConnId) -> None:
        self.lifecycle.close_session(conn)

    def close_all(self, code: int, reason: str) -> None:
        self.sessions.close_all(code, reason)

    def expire(self, now: float) -> None:
        self.lifecycle.expire(now)

    def next_deadline(self) -> float | None:
        return self.lifecycle.next_deadline()

    def connection_of(self, user: str, device: str) -> ConnId | None:
        """This node's connection of ``user``'s ``device``, if any."""
        return self.presence.connection_of(user, device)

    def replaced_elsewhere(self, user: str, device: str, conn: ConnId) -> bool:
        """Another node took ``user``'s ``device`` over: close ``conn`` here (4002)."""
        return self.lifecycle.replaced_elsewhere(user, device, conn)

    def logged_out_elsewhere(self, user: str, device: str, at: float) -> bool:
        """A logout made at ``at`` on another node ended ``user``'s ``device``: end it here
        unless it reconnected here since (``Lifecycle.logged_out_elsewhere``)."""
        return self.lifecycle.logged_out_elsewhere(user, device, at)

    def online_count(self) -> int:
        return self.statuses.online_count()

    def status_version(self, user: str) -> int:
        return self.statuses.status_version(user)

    def announce_presence(self, transition: PresenceSet) -> None:
        self.remote.announce_presence(transition)

    def apply_feed(self, op: FeedOp, now: float) -> None:
        self.remote.apply_feed(op, now)
