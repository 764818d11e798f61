"""Server configuration: one immutable record, filled by the CLI or by an embedder."""

from __future__ import annotations

import math
import urllib.parse
from pathlib import Path
from typing import Any, Literal

import attrs

FsyncPolicy = Literal["always", "everysec", "no"]


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _at_least(minimum: int) -> Any:
    def check(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
        if value < minimum:
            raise ValueError(f"{attribute.name} must be at least {minimum}, got {value!r}")

    return check


def _node_id(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 1023:
        raise ValueError(f"{attribute.name} must be 0..1023, got {value!r}")


def webhook_problem(url: str) -> str | None:
    """Why ``url`` cannot be a push webhook (None when it can)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        return f"not a valid URL ({exc}): {url!r}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http:// or https:// URL with a host, got {url!r}"
    return None


def _webhook(_instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    problem = None if value is None else webhook_problem(value)
    if problem is not None:
        raise ValueError(f"{attribute.name} {problem}")


def _finite_non_negative(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _port(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be 0..65535, got {value!r}")


@attrs.frozen(kw_only=True)
class Config:
    """Everything ``serve`` needs. Durations are seconds (fractions allowed), sizes bytes.

    The defaults are the embedded single-process server of the README: state in memory,
    journaled and snapshotted to a data dir in the current folder, loopback only.
    """

    host: str = "127.0.0.1"
    """Interface for both listeners; ``0.0.0.0`` to accept from other machines."""
    port: int = attrs.field(default=8765, validator=_port)
    """WebSocket port (path ``/ws``); 0 picks a free one."""
    http_port: int = attrs.field(default=8766, validator=_port)
    """HTTP API port; 0 picks a free one."""
    data_dir: Path = attrs.field(default=Path("geopresence-data"), converter=Path)
    """Holds the generated secret and admin key, the journal and snapshots (``state/``),
    the location history and the lock (docs/durability.md)."""
    insecure: bool = False
    """Accept ``hello`` with a bare ``user`` and HTTP calls without the admin key."""
    admin_key: str | None = None
    """Bearer key of the HTTP API; None: env ``GEOPRESENCE_ADMIN_KEY`` or the data dir's."""
    secret: str | None = None
    """HS256 token secret; None: env ``GEOPRESENCE_SECRET`` or the data dir's."""
    heartbeat_interval: float = attrs.field(default=5.0, validator=_positive)
    offline_after: float = attrs.field(default=30.0, validator=_positive)
    location_ttl: float = attrs.field(default=600.0, validator=_positive)
    """Lifetime of a user's latest location (nearby friends)."""
    radius: float = attrs.field(default=8046.72, validator=_positive)
    """Default nearby radius in metres (5 miles)."""
    max_radius: float = attrs.field(default=50_000.0, validator=_positive)
    """Largest ``radius_m`` a user may set, metres."""
    strangers_query_burst: int = attrs.field(default=3, validator=_at_least(1))
    """``nearby_people`` queries a connection may make at once (token bucket capacity)."""
    strangers_query_interval: float = attrs.field(default=10.0, validator=_positive)
    """Seconds per ``nearby_people`` query refilled (one per 10 s: 6 a minute sustained)."""
    history_max_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=_positive)
    """Size at which the location history starts a new file."""
    history_flush_interval: float = attrs.field(default=1.0, validator=_positive)
    """Longest time an accepted location waits in memory before reaching the history file."""
    in_memory: bool = False
    """Keep the state in memory only: no journal, no snapshots, nothing survives a restart.
    Secrets it has to generate stay in memory too; only the location history is written to
    the data dir."""
    snapshot_interval: float = attrs.field(default=60.0, validator=_positive)
    """Seconds between snapshots of the durable state (one more is written at shutdown)."""
    fsync: FsyncPolicy = attrs.field(
        default="everysec", validator=attrs.validators.in_(("always", "everysec", "no"))
    )
    """Journal fsync policy, as Redis' appendfsync: ``always`` (fsync before every ack,
    group-committed), ``everysec`` (ack once written to the OS, fsync every second), ``no``."""
    presence_fanout_limit: int = 500
    """Groups with at most this many members get presence events of co-members."""
    max_friends: int = 5000
    max_group_size: int = 100_000
    max_devices_per_user: int = attrs.field(default=16, validator=_at_least(1))
    """Alive devices a user may have (connected or within its offline_after grace window);
    one more is refused at hello (error ``forbidden``, close 1008)."""
    max_connections_per_user: int = attrs.field(default=16, validator=_at_least(1))
    """Live connections a user may have (each device has at most one: a new connection of
    the same device replaces the old one)."""
    rate_limit: float = attrs.field(default=30.0, validator=_finite_non_negative)
    """Client messages per second a connection may send, sustained; more get a
    ``rate_limited`` error instead of being handled (0: no limit)."""
    rate_burst: int = attrs.field(default=60, validator=_at_least(1))
    """Client messages a connection may send at once (token bucket capacity)."""
    abuse_limit: int = attrs.field(default=100, validator=_at_least(1))
    """Rate-limited messages in a row after which the connection is closed with 4008."""
    max_message_bytes: int = attrs.field(default=64 * 1024, validator=_positive)
    """Largest client frame; a larger one closes the connection with 1009."""
    hello_timeout: float = attrs.field(default=10.0, validator=_positive)
    """Time a new connection has to send a valid hello before it is closed with 1008."""
    queue_size: int = attrs.field(default=1024, validator=_at_least(4))
    """Replies and other frames without a coalescing key queued per connection before the
    client counts as a slow consumer (4008)."""
    queue_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_at_least(1024))
    """Characters (about bytes) of those frames queued per connection before the client
    counts as a slow consumer (4008): bounds memory when replies are large (a ``messages``
    page is up to 512 KiB). One frame always fits an empty queue."""
    state_queue_size: int = attrs.field(default=8192, validator=_at_least(4))
    """Latest-wins state frames (presence, positions) queued per connection: at most one per
    user they are about, so this bounds a burst of distinct users (more than ``max_friends``
    by default, so a popular user's friends logging in at once never cost it its session)."""
    close_timeout: float = attrs.field(default=5.0, validator=_positive)
    """How long a close handshake (or a stuck send before a 4008) may take."""
    drain_timeout: float = attrs.field(default=10.0, validator=_positive)
    """On shutdown, how long to wait for clients to finish their close handshakes."""
    node_id: int = attrs.field(default=0, validator=_node_id)
    """Snowflake node id of this server (0..1023): part of every message id it issues."""
    push_webhook: str | None = attrs.field(default=None, validator=_webhook)
    """URL that gets an HTTP POST per message for each recipient without a connected device;
    None: such pushes are only logged."""
    push_timeout: float = attrs.field(default=5.0, validator=_positive)
    """Time one webhook POST may take before it counts as failed."""
    push_retries: int = attrs.field(default=3, validator=_at_least(0))
    """Retries of a failed POST (network error, timeout, 429 or 5xx), backing off 0.5 s,
    1 s, 2 s, ... (at most 30 s)."""
    push_queue_size: int = attrs.field(default=10_000, validator=_at_least(1))
    """Pushes waiting for the webhook; beyond it new pushes are dropped (counted, logged):
    the message is stored either way and the device gets it with ``sync``."""
    push_concurrency: int = attrs.field(default=4, validator=_at_least(1))
    """Webhook POSTs in flight at once."""
    gc_freeze_interval: float = attrs.field(default=10.0, validator=_finite_non_negative)
    """Every this many seconds, objects that survived so far are moved out of the cyclic
    garbage collector's reach (``gc.freeze``), so that its full collections, which otherwise
    walk every object of a large population and pause the server for 100+ ms, stay short;
    the collector's thresholds are also raised to (20000, 50, 100). 0 turns both off
    (``geopresence.testing`` does, to leave the host process alone)."""
    gc_full_interval: float = attrs.field(default=3600.0, validator=_positive)
    """Every this many seconds, frozen objects are released and one full collection runs,
    so that cyclic garbage among long-lived objects is still reclaimed (one longer pause)."""
    redis: str | None = None
    """``redis://HOST:PORT/DB``: run as one node of several sharing one standalone Redis
    (state and pub/sub); None (with no ``redis_cluster``): a single node, no Redis at all."""
    redis_cluster: tuple[str, ...] = ()
    """``HOST:PORT`` of one or more Redis Cluster nodes: like ``redis`` over a Redis 7
    Cluster, with sharded pub/sub."""
    redis_prefix: str = "gp"
    """Prefix of every Redis key (one geopresence cluster per prefix)."""
    redis_sweep_interval: float = attrs.field(default=0.5, validator=_positive)
    """How often each node looks for devices whose deadline passed on a node that stopped
    reporting (a dead node's users go offline at most this long after their deadline)."""
    time_origin: float | None = None
    """Epoch seconds at trio clock 0. None anchors to the wall clock at start; tests under
    ``trio.testing.MockClock`` pass 0 so server times equal ``trio.current_time()``."""

    @property
    def clustered(self) -> bool:
        """True when this node shares its state with others through Redis."""
        return self.redis is not None or bool(self.redis_cluster)

    def __attrs_post_init__(self) -> None:
        if self.redis is not None and self.redis_cluster:
            raise ValueError("give either redis or redis_cluster, not both")
        if self.redis is not None and not self.redis.startswith(("redis://", "rediss://")):
            raise ValueError(f"redis must be a redis:// URL, got {self.redis!r}")
        for address in self.redis_cluster:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"a Redis Cluster node is HOST:PORT, got {address!r}")
        if self.radius > self.max_radius:
            raise ValueError(
                f"radius ({self.radius:g} m) must not exceed max_radius ({self.max_radius:g} m)"
            )
        if self.heartbeat_interval >= self.offline_after:
            raise ValueError(
                f"heartbeat_interval ({self.heartbeat_interval:g} s) must be shorter than "
                f"offline_after ({self.offline_after:g} s), or every client times out"
            )
