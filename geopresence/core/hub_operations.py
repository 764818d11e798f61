"""The hub's operations for the shell and the tests, each handed to the part that does the work.

``Hub`` inherits them; each is documented on the part it calls (``Acks``, ``Sessions``,
``Lifecycle``, ``Statuses``, ``Membership``, ``RemoteChanges``). New callers may call the parts
directly.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable

from geopresence.core.acks import Acks
from geopresence.core.broker import ConnId
from geopresence.core.lifecycle import Lifecycle
from geopresence.core.membership import GROUP_SLICE, Membership
from geopresence.core.presence import PresenceTable, UserPresence
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
    membership: Membership
    remote: RemoteChanges

    @property
    def last_seq(self) -> int:
        return self.acks.last_seq

    @last_seq.setter
    def last_seq(self, seq: int) -> None:
        self.acks.last_seq = seq  # recovery: the journal read back

    @property
    def session_count(self) -> int:
        return self.sessions.count

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

    def logout(self, user: str, device: str | None = None) -> int:
        return self.lifecycle.logout(user, device)

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

    def user_presence(self, user: str, now: float) -> UserPresence:
        return self.statuses.user_presence(user, now)

    def online_count(self) -> int:
        return self.statuses.online_count()

    def group_online(self, group: str) -> tuple[list[str], int]:
        return self.statuses.group_online(group)

    def status_version(self, user: str) -> int:
        return self.statuses.status_version(user)

    def add_friendship(self, a: str, b: str, now: float) -> bool:
        return self.membership.add_friendship(a, b, now)

    def remove_friendship(self, a: str, b: str) -> bool:
        return self.membership.remove_friendship(a, b)

    def set_group(
        self, group: str, members: Iterable[str], mark: int | None = None
    ) -> tuple[int, int]:
        return self.membership.set_group(group, members, mark)

    def set_group_in_slices(
        self,
        group: str,
        members: Iterable[str],
        mark: int | None = None,
        *,
        slice_size: int = GROUP_SLICE,
    ) -> Generator[None, None, tuple[int, int]]:
        return self.membership.set_group_in_slices(group, members, mark, slice_size=slice_size)

    def delete_group(self, group: str) -> None:
        self.membership.delete_group(group)

    def add_member(self, group: str, user: str, mark: int | None = None) -> bool:
        return self.membership.add_member(group, user, mark)

    def remove_member(self, group: str, user: str) -> bool:
        return self.membership.remove_member(group, user)

    def announce_presence(self, transition: PresenceSet) -> None:
        self.remote.announce_presence(transition)

    def apply_feed(self, op: FeedOp, now: float) -> None:
        self.remote.apply_feed(op, now)
