"""What one node tells the others so that every node can serve any user (sans-I/O).

With several nodes (``--redis``), Redis holds the shared state and each node the slices of
it its sessions need, in its hub's stores (the hub answers synchronously). A change made on
one node reaches the nodes that hold what it changes as a *feed op*, applied by
``Hub.apply_feed``. The name is historical: only forgets and watermarks still travel
on the feed stream every node reads (``geopresence.cluster.redis_feed``); the rest reach only the
nodes that need them, on channels (``geopresence.cluster.link``):

- the durable records (``geopresence.model.records``): settings and chat messages as
  themselves; friendships and groups as a notice, after which a holding node reads them
  again and applies the difference as records; forgets on the feed;
- ``LocationSet``: an accepted location update (``gp:loc:{U}``), on the user's channel;
- ``PresenceSet``: a user's online/offline transition, decided once for the whole cluster in
  Redis (``geopresence.cluster.redis_presence``), on the user's and small groups' channels;
- ``LogoutRequested``: a logout, as older versions put it on the feed for every node
  (a logout now reaches only the node holding the device, on its control channel:
  ``geopresence.cluster.control``);
- ``Watermark``: nothing but the entry itself, from an idle node: every feed entry says below
  which message id the node will never commit again (``geopresence.core.chat_horizon``).

A node applies a feed op to its state and to its own connections, but never republishes
what it derives from it: the origin already published the channel events.

``Replicator`` is the seam between the hub and the node's Redis side; with one node there is
none and nothing here is used.
"""

from __future__ import annotations

from typing import Any, Final, Protocol, get_args

import attrs

from geopresence.model.records import Record, record_from_json, record_to_json
from geopresence.wire.server_messages import Status


@attrs.frozen
class LocationSet:
    """``user`` was at (lat, lon) at ``ts``; the origin accepted it at ``at`` (epoch
    seconds), so the location expires at ``at + location_ttl`` on every node."""

    user: str
    lat: float
    lon: float
    ts: float
    at: float


@attrs.frozen
class PresenceSet:
    """``user``'s cluster-wide status changed (decided once, in Redis). ``version`` counts
    the user's transitions: a node applies a transition only if it is newer than the one it
    holds (feed ops from different nodes may arrive in either order)."""

    user: str
    status: Status
    last_active_at: float | None
    version: int


@attrs.frozen
class LogoutRequested:
    """Log ``device`` of ``user`` out (every device when None) on the node it reaches."""

    user: str
    device: str | None


@attrs.frozen
class Watermark:
    """An idle node's feed entry: it carries only the entry's watermark."""


FeedOp = Record | LocationSet | PresenceSet | LogoutRequested | Watermark
FEED_KINDS: Final[frozenset[type[Any]]] = frozenset(get_args(FeedOp))
"""Every kind of feed op: the durable records and the three above."""


def feed_to_json(op: FeedOp) -> dict[str, Any]:
    """The JSON object of a feed op (records keep their journal encoding)."""
    if isinstance(op, LocationSet):
        return {"t": "location", "u": op.user, "p": [op.lat, op.lon, op.ts, op.at]}
    if isinstance(op, PresenceSet):
        return {
            "t": "presence",
            "u": op.user,
            "s": op.status,
            "l": op.last_active_at,
            "v": op.version,
        }
    if isinstance(op, LogoutRequested):
        return {"t": "logout", "u": op.user, "d": op.device}
    if isinstance(op, Watermark):
        return {"t": "mark"}
    return record_to_json(op)


def feed_from_json(data: Any) -> FeedOp:
    """Inverse of ``feed_to_json``; ValueError (or KeyError/TypeError) if malformed."""
    if not isinstance(data, dict):
        raise ValueError("a feed op is a JSON object")
    tag = data.get("t")
    if tag == "location":
        lat, lon, ts, at = (float(v) for v in data["p"])
        return LocationSet(str(data["u"]), lat, lon, ts, at)
    if tag == "presence":
        status = data["s"]
        if status not in ("online", "offline"):
            raise ValueError(f"bad status {status!r}")
        last = data["l"]
        return PresenceSet(
            str(data["u"]), status, None if last is None else float(last), int(data["v"])
        )
    if tag == "logout":
        device = data["d"]
        return LogoutRequested(str(data["u"]), None if device is None else str(device))
    if tag == "mark":
        return Watermark()
    return record_from_json(data)


class Replicator(Protocol):
    """The hub's link to the other nodes (implemented over Redis by ``cluster.link.ClusterLink``).

    Every method returns at once (it queues); the implementation applies the calls to Redis
    in order. Heartbeats stay on the node: its ``PresenceTable`` keeps each device's
    deadline and grace window, and the cluster hears only a device's transitions here
    (never an activity). Contract:

    - ``replicate(op)``: publish ``op`` on the feed for every other node (never back to this
      one). Durable records do not go through here: the Redis journal publishes them once
      they are written.
    - ``device_alive(user, device, at)``: a session of ``device`` of ``user`` opened on this
      node at ``at`` (epoch seconds): this node holds the device from now on, until it
      reports it ended or stops renewing its lease (then the other nodes end it once its
      grace window has passed). Called for every session, not only a device's first on
      this node: the device may have moved to another node and back while alive here. If
      no device of the user was alive anywhere, the implementation announces the
      transition to online, once for the cluster, by calling ``Hub.announce_presence`` on
      this node and publishing a ``PresenceSet``.
    - ``device_ended(user, device, last_active_at, logout=...)``: the device ended on this
      node. ``logout`` True: the user logged it out here; it ends at once, whichever node
      holds it. ``logout`` False: its deadline passed here, or another node's logout reached
      here; it ends only if this node still holds it (a device that reconnected to another
      node within its grace window stays alive). ``last_active_at``: the user's latest
      activity on this node (epoch seconds; None: none), which the cluster's
      ``last_active_at`` takes if later. If it was the user's last alive device anywhere,
      the transition to offline is announced as above.
    - ``logout(user, device, last_active_at)``: end ``device`` (every device of the user
      when None) on every node at once, whichever node holds it (or held it, if that node
      died), and have the node that holds it close its connection (told on that node's
      control channel); ``last_active_at`` as above.
    """

    def replicate(self, op: FeedOp) -> None: ...

    def device_alive(self, user: str, device: str, at: float) -> None: ...

    def device_ended(
        self, user: str, device: str, last_active_at: float | None, *, logout: bool
    ) -> None: ...

    def logout(self, user: str, device: str | None, last_active_at: float | None) -> None: ...
