"""The seams between the hub and its features (sans-I/O).

The hub (``geopresence.core.hub``) and its parts own sessions, friendships, the journal and
fan-out; the features (chat, nearby friends, nearby strangers) never see them. Each gets a
``FeatureContext``: the few things a feature may do (send a frame or a reply, publish on
channels, journal a change, look up sessions). Nearby friends and nearby strangers talk to
each other only through ``LocationListener`` (nearby tells strangers about accepted
locations and settings) and ``LocationView`` (strangers reads the location cache and radii).
The hub satisfies ``FeatureContext`` structurally; tests pass a fake.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from typing import Protocol

import attrs

from geopresence.core.broker import Broker, ConnId
from geopresence.core.journal import Journal
from geopresence.core.locations import Location
from geopresence.core.replication import Replicator
from geopresence.core.replies import Replies
from geopresence.core.replies import Sink as Sink
from geopresence.core.store import Store
from geopresence.model.records import Record
from geopresence.wire.errors import ProtocolError
from geopresence.wire.outgoing import Outgoing
from geopresence.wire.server_messages import StrangerGoneReason


@attrs.frozen(slots=True)
class Session:
    """A live, authenticated connection."""

    conn: ConnId
    user: str
    device: str


class FeatureContext(Protocol):
    """What a feature may use of the hub."""

    @property
    def sink(self) -> Sink:
        """Where events go (frames that answer no request)."""
        ...

    @property
    def replies(self) -> Replies:
        """Where replies go, in the order of their requests (on the hub, ``sink`` too)."""
        ...

    @property
    def store(self) -> Store: ...

    @property
    def broker(self) -> Broker: ...

    @property
    def journal(self) -> Journal: ...

    @property
    def replicator(self) -> Replicator | None:
        """The link to other nodes; None on a single node."""
        ...

    @property
    def replaying(self) -> bool:
        """True while applying another node's change (already journaled and published by
        its origin: a feature must not replicate it again)."""
        ...

    def session(self, conn: ConnId) -> Session | None: ...

    def connections_of(self, user: str) -> Set[ConnId]: ...

    def is_connected(self, user: str) -> bool:
        """``user`` has a live connection, on this node or (multi-node) another."""
        ...

    def publish(
        self, channels: Iterable[str], event: object, exclude: Set[ConnId] = frozenset()
    ) -> None:
        """Publish a channel event (as far as the hub's publish scope allows)."""

    def publish_everywhere(self, channels: Iterable[str], event: object) -> None:
        """Publish to every node, also where the scope is this node's subscribers only: an
        event only this node can derive (never while replaying another node's change)."""

    def reply_error(self, conn: ConnId, error: ProtocolError) -> None:
        """Reply to ``conn`` with an ``error`` frame (after the replies to its earlier
        requests, as every reply: ``Replies``)."""

    def journal_append(self, record: Record) -> int:
        """Journal a durable change; returns its sequence number."""
        ...

    def reply_when_durable(self, conn: ConnId, message: Outgoing) -> None:
        """Send ``message`` (a reply) once every record journaled so far is durable;
        later replies to ``conn`` wait behind it."""


class LocationListener(Protocol):
    """Told by nearby friends about what strangers depend on (times: server seconds)."""

    def on_location(self, user: str, location: Location, now: float) -> None: ...

    def on_location_gone(self, user: str, reason: StrangerGoneReason) -> None: ...

    def on_location_dropped(self, user: str, last: Location, until: float) -> None:
        """This node no longer keeps ``user``'s location current (``Nearby.drop_cached``):
        nothing happened to the user, whose location ``last`` lives until ``until`` unless
        renewed."""

    def on_visibility(self, user: str, visible: bool, now: float) -> None: ...

    def on_radius_changed(self, user: str, now: float) -> None: ...

    def tick(self, now: float) -> None:
        """Time passed: do what was due by ``now``."""

    def next_deadline(self) -> float | None:
        """When ``tick`` next has something to do (None: nothing pending)."""
        ...


class _NoListener:
    """Nobody listens (nearby friends used without strangers, as in unit tests)."""

    def on_location(self, user: str, location: Location, now: float) -> None:
        return None

    def on_location_gone(self, user: str, reason: StrangerGoneReason) -> None:
        return None

    def on_location_dropped(self, user: str, last: Location, until: float) -> None:
        return None

    def on_visibility(self, user: str, visible: bool, now: float) -> None:
        return None

    def on_radius_changed(self, user: str, now: float) -> None:
        return None

    def tick(self, now: float) -> None:
        return None

    def next_deadline(self) -> float | None:
        return None


NO_LISTENER: LocationListener = _NoListener()


class LocationView(Protocol):
    """What strangers reads of nearby friends' state."""

    def location_of(self, user: str, now: float) -> Location | None:
        """``user``'s cached location, unless expired at ``now``."""
        ...

    def expires_at(self, user: str) -> float | None:
        """When ``user``'s cached location expires unless renewed (server seconds; None: no
        location)."""
        ...

    def radius(self, user: str) -> float:
        """``user``'s radius in metres."""
        ...
