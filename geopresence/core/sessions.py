"""This node's live sessions and each connection's rate limit (sans-I/O).

A session is an authenticated connection (``Session``): the table finds one by connection
and every connection of a user. Each connection has a token bucket of ``rate_limit``
messages per second (burst ``rate_burst``); a connection refused more than ``abuse_limit``
times in a row is closed with 4008.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Set

import attrs

from geopresence.core.broker import Broker, ConnId
from geopresence.core.context import Session
from geopresence.core.online_friends import OnlineFriends
from geopresence.core.replies import Replies
from geopresence.core.settings import HubSettings
from geopresence.wire.errors import CLOSE_SLOW_CONSUMER, ProtocolError, RequestId
from geopresence.wire.outgoing import out
from geopresence.wire.protocol import error_message


@attrs.define
class TokenBucket:
    """``capacity`` requests at once, refilled at one per ``interval`` seconds."""

    capacity: float
    interval: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """0 if a request may go now (and counts it), else seconds until one may."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) / self.interval)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) * self.interval


class Sessions:
    """The live sessions, by connection and by user, with their rate limits.

    Methods that take a ``conn`` ignore connections the table does not hold (already
    forgotten). Forgetting a session unsubscribes its connection from every channel, forgets
    its line of replies (``Replies.forget``) and tells each of ``on_closed`` (per-connection
    state elsewhere), in order.
    """

    def __init__(
        self,
        settings: HubSettings,
        sink: Replies,
        broker: Broker,
        errors: Counter[str],
        on_closed: Iterable[Callable[[ConnId], None]] = (),
        friends_of: Callable[[str], Collection[str]] | None = None,
        before_error: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.sink = sink
        """Where frames go: replies in order (``reply``), events (``send``), closes."""
        self.broker = broker
        self.errors = errors
        """Error replies sent, by code (the shell passes its metrics' counter)."""
        self.on_closed = tuple(on_closed)
        self.before_error = before_error
        """Called before each error reply: the checks that wait for the end of the read
        being handled (``Nearby.check_views``) go out before the error."""
        self._sessions: dict[ConnId, Session] = {}
        self._conns_of: dict[str, set[ConnId]] = {}
        self.online_friends = None if friends_of is None else OnlineFriends(friends_of)
        """Each online user's online friends, kept when ``friends_of`` is given (one node
        that derives ``user:U``'s subscribers from the friendship graph)."""
        self._buckets: dict[ConnId, TokenBucket] = {}
        self._rejected: dict[ConnId, int] = {}
        self.rate_limited = 0
        """Client messages refused by the per-connection rate limit (for metrics)."""

    @property
    def count(self) -> int:
        """Live sessions on this node."""
        return len(self._sessions)

    def get(self, conn: ConnId) -> Session | None:
        return self._sessions.get(conn)

    def connections_of(self, user: str) -> frozenset[ConnId]:
        """``user``'s live connections (a copy)."""
        return frozenset(self._conns_of.get(user, ()))

    def live_connections(self, user: str) -> Set[ConnId]:
        """``user``'s live connections, not copied: iterate it at once, never keep it."""
        return self._conns_of.get(user, frozenset())

    def connections_of_friends(self, user: str) -> list[ConnId]:
        """The live connections of ``user``'s friends, each once, as a list (needs
        ``friends_of`` at construction)."""
        assert self.online_friends is not None, "Sessions built without friends_of"
        conns_of = self._conns_of
        return [conn for friend in self.online_friends.of(user) for conn in conns_of[friend]]

    def users(self) -> list[str]:
        """The users with a session here."""
        return list(self._conns_of)

    def has_connections(self, user: str) -> bool:
        return user in self._conns_of

    def add(self, session: Session) -> None:
        """Hold ``session`` (its connection must be new)."""
        self._sessions[session.conn] = session
        conns = self._conns_of.get(session.user)
        if conns is None:
            conns = self._conns_of[session.user] = set()
            if self.online_friends is not None:
                self.online_friends.came_online(session.user)
        conns.add(session.conn)

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
            self.drop(conn, CLOSE_SLOW_CONSUMER, "rate limit abuse")
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

    def reply_error(self, conn: ConnId, error: ProtocolError) -> None:
        """Reply to ``conn`` with an ``error`` frame, in order (``Replies.reply``; the
        connection stays open)."""
        if conn in self._sessions:
            if self.before_error is not None:
                self.before_error()
            self.errors[error.code] += 1
            self.sink.reply(conn, out(error_message(error)))

    def drop(self, conn: ConnId, code: int, reason: str) -> None:
        """Forget ``conn``'s session and ask the sink to close it with ``code``."""
        if self.forget(conn) is not None:
            self.sink.close(conn, code, reason)

    def forget(self, conn: ConnId) -> Session | None:
        """Remove ``conn``'s session (returned; None if there was none)."""
        session = self._sessions.pop(conn, None)
        if session is None:
            return None
        conns = self._conns_of[session.user]
        conns.discard(conn)
        if not conns:
            del self._conns_of[session.user]
            if self.online_friends is not None:
                self.online_friends.went_offline(session.user)
        self.broker.unsubscribe_all(conn)
        self.sink.forget(conn)  # what it had made goes first; what it waited for, never
        self._buckets.pop(conn, None)
        self._rejected.pop(conn, None)
        for closed in self.on_closed:
            closed(conn)
        return session

    def close_all(self, code: int, reason: str) -> None:
        """Ask the sink to close every live connection (shutdown / drain)."""
        for conn in list(self._sessions):
            self.drop(conn, code, reason)

    def subscribe_user(self, channel: str, user: str) -> None:
        """Subscribe every live connection of ``user`` to ``channel``."""
        for conn in self._conns_of.get(user, ()):
            self.broker.subscribe(channel, conn)

    def unsubscribe_user(self, channel: str, user: str) -> None:
        for conn in self._conns_of.get(user, ()):
            self.broker.unsubscribe(channel, conn)
