"""Server configuration: one immutable record, filled by the CLI or by an embedder.

Each field's metadata (``Option``, under the key ``"cli"``) says how ``geopresence serve``
offers it: flag, help line, unit, group and environment variable. ``geopresence.shell.flags``
builds the command line from it, so a new setting is one field here.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from geopresence.options import (
    AUTH,
    CHAT,
    CLUSTER,
    DURABILITY,
    LIMITS,
    NEARBY,
    NETWORK,
    PRESENCE,
    ConfigError,
    FsyncPolicy,
    at_least,
    finite_non_negative,
    non_negative,
    positive,
    register_fields,
    setting,
    shown,
    to_origins,
    valid_admin_key,
    valid_host,
    valid_node_id,
    valid_origins,
    valid_port,
    valid_token_secret,
    valid_webhook,
)
from geopresence.units import parse_retention


@attrs.frozen(kw_only=True)
class Config:
    """Everything ``serve`` needs. Durations are seconds (fractions allowed), sizes bytes.

    The defaults are the embedded single-process server of the README: state in memory,
    journaled and snapshotted to a data dir in the current folder, loopback only. Each
    field's help line is its ``Option`` (``geopresence serve --help`` shows them all); the
    docstrings below add what does not fit in a line.
    """

    # network
    host: str = setting(
        "127.0.0.1",
        "interface to listen on, both ports (0.0.0.0: every interface)",
        NETWORK,
        valid_host,
        metavar="HOST",
    )
    port: int = setting(
        8765, "WebSocket port, path /ws (0: any free port)", NETWORK, valid_port, metavar="PORT"
    )
    http_port: int = setting(
        8766, "HTTP API port (0: any free port)", NETWORK, valid_port, metavar="PORT"
    )
    allowed_origins: tuple[str, ...] = setting(
        ("self",),
        "web pages that may open a WebSocket (their Origin header): self (the console on "
        'the HTTP port), * (any), or scheme://host[:port], comma-separated; empty (""): no page',
        NETWORK,
        valid_origins,
        converter=to_origins,
        metavar="ORIGIN[,...]",
        default_text="self",
    )
    """Checked in the opening handshake: an ``Origin`` not allowed gets HTTP 403. A client
    that sends no ``Origin`` (anything but a browser) is always let through: browsers always
    send one, and other clients could send any. ``self`` is an ``http(s)://HOST:HTTP_PORT``
    origin whose HOST is the one the WebSocket request was addressed to (its ``Host``) and an
    IP address, ``localhost`` or ``host`` (no other name: DNS rebinding)."""

    # auth
    insecure: bool = setting(
        False,
        "accept hello with a bare user and HTTP calls without the admin key (development only)",
        AUTH,
    )
    secret: str | None = setting(
        None,
        "token signing secret (HS256, at least 32 bytes)",
        AUTH,
        valid_token_secret,
        repr=False,
        metavar="SECRET",
        default_text="generated in DATA_DIR/secret",
    )
    admin_key: str | None = setting(
        None,
        "bearer key of the HTTP API",
        AUTH,
        valid_admin_key,
        repr=False,
        metavar="KEY",
        default_text="generated in DATA_DIR/admin_key",
    )

    # presence and timing
    heartbeat_interval: float = setting(
        5.0, "heartbeat period clients are told to use", PRESENCE, positive, unit="s"
    )
    offline_after: float = setting(
        30.0, "a device without activity for this long is offline", PRESENCE, positive, unit="s"
    )
    presence_fanout_limit: int = setting(
        500, "groups up to this size get co-member presence events", PRESENCE, at_least(0)
    )
    max_friends: int = setting(5000, "friends per user (more: HTTP 409)", PRESENCE, at_least(1))
    max_group_size: int = setting(100_000, "members per group", PRESENCE, at_least(1))
    max_devices_per_user: int = setting(
        16, "alive devices a user may have (one more is refused at hello)", PRESENCE, at_least(1)
    )
    """Alive devices: connected, or within their offline_after grace window; one more is
    refused at hello (error ``forbidden``, close 1008)."""
    max_connections_per_user: int = setting(
        16, "live connections a user may have", PRESENCE, at_least(1)
    )
    """A device has at most one: its new connection replaces the old one."""

    # nearby and strangers
    location_ttl: float = setting(
        600.0, "lifetime of a user's latest location (nearby friends)", NEARBY, positive, unit="s"
    )
    radius: float = setting(
        8046.72,
        "default nearby radius",
        NEARBY,
        positive,
        unit="m",
        default_text="8046.72 m, 5 mi",
    )
    max_radius: float = setting(
        50_000.0, "largest radius_m a user may set", NEARBY, positive, unit="m"
    )
    strangers_query_burst: int = setting(
        3,
        "nearby_people queries a user may make at once (all its devices together)",
        NEARBY,
        at_least(1),
    )
    strangers_query_interval: float = setting(
        10.0, "time per nearby_people query refilled", NEARBY, positive, unit="s"
    )
    """One per 10 s by default: 6 a minute sustained."""

    # chat and push
    push_webhook: str | None = setting(
        None,
        "POST each message for a recipient without a connected device to URL",
        CHAT,
        valid_webhook,
        metavar="URL",
        default_text="none: such pushes are only logged",
    )
    push_timeout: float = setting(5.0, "time one webhook POST may take", CHAT, positive, unit="s")
    push_retries: int = setting(
        3, "retries of a failed webhook POST, with backoff", CHAT, at_least(0)
    )
    """Retries on a network error, timeout, 429 or 5xx, backing off 0.5 s, 1 s, 2 s, ...
    (at most 30 s)."""
    push_queue_size: int = setting(
        10_000, "pushes waiting for the webhook; more are dropped", CHAT, at_least(1)
    )
    """A dropped push is counted and logged; the message is stored either way and the device
    gets it with ``sync``."""
    push_concurrency: int = setting(4, "webhook POSTs in flight at once", CHAT, at_least(1))

    # durability
    data_dir: Path = setting(  # noqa: RUF009 - an attrs field, evaluated once
        Path("geopresence-data"),
        "holds the secret, the admin key, the journal and snapshots, the location history",
        DURABILITY,
        converter=Path,
        metavar="DIR",
    )
    """Generated secret and admin key, journal and snapshots (``state/``), location history
    and the lock (docs/durability.md)."""
    in_memory: bool = setting(
        False,
        "keep the state in memory only: no journal, no snapshots, nothing survives a restart",
        DURABILITY,
    )
    """Secrets it has to generate stay in memory too; only the location history is written
    to the data dir."""
    fsync: FsyncPolicy = setting(  # noqa: RUF009 - an attrs field, evaluated once
        "everysec",
        "journal fsync policy, as Redis' appendfsync",
        DURABILITY,
        attrs.validators.in_(("always", "everysec", "no")),
        choices=("always", "everysec", "no"),
    )
    """``always``: fsync before every ack (group commit); ``everysec``: ack once written to
    the OS, fsync every second; ``no``: leave it to the OS."""
    snapshot_interval: float = setting(
        60.0, "time between snapshots of the durable state", DURABILITY, positive, unit="s"
    )
    """One more is written at shutdown."""
    history_max_bytes: int = setting(
        64 * 1024 * 1024,
        "size at which the location history starts a new file",
        DURABILITY,
        positive,
        unit="B",
    )
    history_retention: float = setting(
        30 * 86400.0,
        "how long the location history is kept: a file is deleted once all it holds is this "
        "old (0: nothing written; forever: nothing deleted)",
        DURABILITY,
        non_negative,
        unit="s",
        metavar="DURATION",
        parse=parse_retention,
    )
    """Seconds, ``math.inf`` for ever. Checked at start and whenever the next file falls due
    (``geopresence.core.retention``); files span at most a day (a tenth of the retention if
    less), so a record is deleted at most that long after it passed the limit."""
    history_flush_interval: float = setting(
        1.0,
        "longest time an accepted location waits before reaching the history file",
        DURABILITY,
        positive,
        unit="s",
    )

    # multi-node
    redis: str | None = setting(
        None,
        "redis://HOST:PORT/DB: be one node of several sharing this standalone Redis",
        CLUSTER,
        metavar="URL",
        default_text="none: the only node, no Redis",
    )
    """Redis holds the state and the pub/sub; None (with no ``redis_cluster``): a single
    node, no Redis at all."""
    redis_cluster: tuple[str, ...] = setting(
        (),
        "like --redis over a Redis 7 Cluster (sharded pub/sub), given some of its nodes",
        CLUSTER,
        converter=tuple,
        metavar="HOST:PORT[,...]",
        default_text="none",
    )
    redis_prefix: str = setting(
        "gp", "prefix of every Redis key (one deployment each)", CLUSTER, metavar="PREFIX"
    )
    redis_sweep_interval: float = setting(
        0.5,
        "how often each node looks for nodes whose lease lapsed and ends their devices",
        CLUSTER,
        positive,
        unit="s",
    )
    """A dead node's users go offline at most this long after lease + offline_after."""
    redis_lease: float = setting(
        5.0,
        "how long a node that stops renewing its lease (every lease/5) counts as alive",
        CLUSTER,
        positive,
        unit="s",
    )
    """A killed node's users go offline lease + ``offline_after`` after its last renewal
    (their clients may reconnect to another node until then without a flap); its node id
    is free again after this. Too short, and a stalled node (a slow Redis) loses it: its
    devices are reported again, and may flap."""
    node_id: int = setting(
        0,
        "Snowflake node id in message ids, 0..1023; with several nodes each needs its own",
        CLUSTER,
        valid_node_id,
    )

    # logging and limits
    rate_limit: float = setting(
        30.0,
        "client messages per connection, sustained (0: no limit)",
        LIMITS,
        finite_non_negative,
        unit="/s",
    )
    """More get a ``rate_limited`` error instead of being handled."""
    rate_burst: int = setting(
        60, "client messages a connection may send at once", LIMITS, at_least(1)
    )
    abuse_limit: int = setting(
        100, "rate-limited messages in a row that close the connection (4008)", LIMITS, at_least(1)
    )
    max_message_bytes: int = setting(
        64 * 1024, "largest client frame (larger: close 1009)", LIMITS, positive, unit="B"
    )
    hello_timeout: float = setting(
        10.0, "time to send a valid hello (else close 1008)", LIMITS, positive, unit="s"
    )
    queue_size: int = setting(
        1024, "replies queued per connection before it is a slow consumer (4008)", LIMITS,
        at_least(4),
    )  # fmt: skip
    """Replies and other frames without a coalescing key."""
    queue_bytes: int = setting(
        4 * 1024 * 1024,
        "characters (bytes for ASCII) of replies queued per connection before it is "
        "a slow consumer (4008)",
        LIMITS,
        at_least(1024),
        unit="B",
    )
    """Characters (about bytes): bounds memory when replies are large (a ``messages`` page is
    up to 512 KiB). One frame always fits an empty queue."""
    state_queue_size: int = setting(
        8192, "latest-wins state frames (one per user) queued per connection", LIMITS, at_least(4)
    )
    """Presence and positions, at most one per user they are about: bounds a burst of
    distinct users (more than ``max_friends`` by default, so a popular user's friends logging
    in at once never cost it its session)."""
    close_timeout: float = setting(
        5.0, "time a close handshake (or a stuck send) may take", LIMITS, positive, unit="s"
    )
    drain_timeout: float = setting(
        10.0,
        "on shutdown, time clients get to finish closing (then the time the last pushes get, "
        "then, with Redis, the time Redis gets to take this node's last changes)",
        LIMITS,
        positive,
        unit="s",
    )
    gc_freeze_interval: float = setting(
        10.0,
        "move long-lived objects out of the garbage collector's reach this often (0: off)",
        LIMITS,
        finite_non_negative,
        unit="s",
    )
    """``gc.freeze`` of the objects that survived so far, so that full collections, which
    otherwise walk every object of a large population and pause the server for 100+ ms, stay
    short; the collector's thresholds are also raised to (20000, 50, 100). Both are undone when
    ``serve`` returns; 0 turns them off (``geopresence.testing`` does, to leave the host
    process alone)."""
    gc_full_interval: float = setting(
        3600.0, "time between full collections of frozen objects", LIMITS, positive, unit="s"
    )
    """Frozen objects are released and one full collection runs, so that cyclic garbage among
    long-lived objects is still reclaimed (one longer pause)."""

    # no flag
    time_origin: float | None = None
    """Epoch seconds at trio clock 0. None anchors to the wall clock at start; tests under
    ``trio.testing.MockClock`` pass 0 so server times equal ``trio.current_time()``."""

    @property
    def clustered(self) -> bool:
        """True when this node shares its state with others through Redis."""
        return self.redis is not None or bool(self.redis_cluster)

    def __attrs_post_init__(self) -> None:
        if self.redis is not None and self.redis_cluster:
            raise ConfigError(
                "redis_cluster",
                self.redis_cluster,
                "give either {redis} or {redis_cluster}, not both",
                alternatives=(ConfigError("redis", self.redis, "not with {redis_cluster}"),),
            )
        if self.redis is not None and not self.redis.startswith(("redis://", "rediss://")):
            raise ConfigError("redis", self.redis, "must be a redis:// or rediss:// URL")
        for address in self.redis_cluster:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError("redis_cluster", address, "a Redis Cluster node is HOST:PORT")
        if self.radius > self.max_radius:
            raise _conflict(self, "radius", "must not exceed", "max_radius", "must be at least")
        if self.heartbeat_interval >= self.offline_after:
            raise _conflict(
                self, "offline_after", "must be longer than", "heartbeat_interval",
                "must be shorter than", ", or every client times out",
            )  # fmt: skip


register_fields(Config)


def _conflict(
    config: Config, field: str, rule: str, other: str, other_rule: str, why: str = ""
) -> ConfigError:
    """``field`` against ``other``, told from either side."""

    def side(name: str, text: str, against: str) -> ConfigError:
        limit = f"{text} {{{against}}} ({shown(config, against)}){why}"
        return ConfigError(name, getattr(config, name), limit)

    alternative = side(other, other_rule, field)
    return ConfigError(
        field,
        getattr(config, field),
        side(field, rule, other).problem,
        alternatives=(alternative,),
    )
