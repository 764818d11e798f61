"""Server configuration: one immutable record, filled by the CLI or by an embedder.

Each field's metadata (``Option``, under the key ``"cli"``) says how ``geopresence serve``
offers it: flag, help line, unit, group and environment variable. ``geopresence.shell.flags``
builds the command line from it, so a new setting is one field here.
"""

from __future__ import annotations

import ipaddress
import math
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Literal

import attrs

from geopresence.units import Unit, show

FsyncPolicy = Literal["always", "everysec", "no"]

ENV_PREFIX: Final = "GEOPRESENCE_"

NETWORK: Final = "network"
AUTH: Final = "auth"
PRESENCE: Final = "presence and timing"
NEARBY: Final = "nearby and strangers"
CHAT: Final = "chat and push"
DURABILITY: Final = "durability"
CLUSTER: Final = "multi-node"
LIMITS: Final = "logging and limits"
GROUPS: Final = (NETWORK, AUTH, PRESENCE, NEARBY, CHAT, DURABILITY, CLUSTER, LIMITS)
"""The groups of ``geopresence serve --help``, in order."""


@attrs.frozen
class Option:
    """How a setting appears on the command line of ``geopresence serve``."""

    help: str
    """One line for ``--help`` (the default and the environment variable are added)."""
    group: str
    """One of ``GROUPS``."""
    unit: Unit = ""
    """How the value is read and shown: ``s`` durations, ``B`` sizes, ``m`` metres, ``/s``."""
    metavar: str | None = None
    default_text: str | None = None
    """What ``--help`` says the default is, when the value alone would not tell (None)."""
    flag: str | None = None
    """The flag; None: ``--`` and the field name with dashes (``offline_after``:
    ``--offline-after``)."""
    env: str | None = None
    """The environment variable; None: ``GEOPRESENCE_`` and the field name in capitals."""
    choices: tuple[str, ...] = ()

    def flag_for(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")

    def env_for(self, name: str) -> str:
        return self.env or ENV_PREFIX + name.upper()


def _setting(
    default: Any,
    help: str,
    group: str,
    validator: Any = None,
    *,
    converter: Any = None,
    repr: bool = True,
    **option: Any,
) -> Any:
    """A ``Config`` field with its command-line ``Option``."""
    return attrs.field(
        default=default,
        validator=validator,
        converter=converter,
        repr=repr,
        metadata={"cli": Option(help, group, **option)},
    )


def option(field: attrs.Attribute[Any]) -> Option | None:
    """The command-line metadata of a ``Config`` field (None: the field has no flag)."""
    found = field.metadata.get("cli")
    return found if isinstance(found, Option) else None


class ConfigError(ValueError):
    """A setting that cannot be used.

    ``field`` is the ``Config`` field at fault, ``value`` its value, ``problem`` what is wrong
    with it, naming other fields as ``{field_name}``: rendered as field names by ``str()``, as
    flags by the command line. ``alternatives`` say the same from another field's side (the
    command line blames the flag the user gave).
    """

    def __init__(
        self,
        field: str,
        value: object,
        problem: str,
        *,
        alternatives: tuple[ConfigError, ...] = (),
    ) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        self.alternatives = alternatives
        super().__init__(f"{field} {value!r}: {self.describe(lambda name: name)}")

    def describe(self, name: Callable[[str], str]) -> str:
        """``problem`` with each ``{field}`` replaced by ``name(field)``."""
        fields = attrs.fields_dict(Config)
        return re.sub(r"\{(\w+)\}", lambda m: name(m[1]) if m[1] in fields else m[0], self.problem)


def _shown(instance: object, name: str) -> str:
    """The value of field ``name`` of ``instance`` in its unit (``5 s``)."""
    cli = option(attrs.fields_dict(Config)[name])
    return show(getattr(instance, name), cli.unit if cli else "")


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ConfigError(attribute.name, value, "must be positive")


def _at_least(minimum: int) -> Any:
    def check(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
        if value < minimum:
            raise ConfigError(attribute.name, value, f"must be {minimum} or more")

    return check


def _node_id(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 1023:
        raise ConfigError(attribute.name, value, "must be 0..1023")


def webhook_problem(url: str) -> str | None:
    """Why ``url`` cannot be a push webhook (None when it can)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    return None


def _webhook(_instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    problem = None if value is None else webhook_problem(value)
    if problem is not None:
        raise ConfigError(attribute.name, value, problem)


def _finite_non_negative(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(attribute.name, value, "must be a finite number >= 0")


def _port(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ConfigError(attribute.name, value, "must be 0..65535 (0: any free port)")


_LABEL: Final = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def host_problem(host: str) -> str | None:
    """Why ``host`` cannot be listened on (None when it may be: an IP address, a host name,
    or ``""`` for every interface)."""
    if host == "":
        return None
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    named = len(host) <= 253 and all(_LABEL.match(label) for label in labels)
    if named and not labels[-1].isdigit():  # 999.1.1.1 is no name and no address
        return None
    return "not an IP address or a host name"


def _host(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    problem = host_problem(value)
    if problem is not None:
        raise ConfigError(attribute.name, value, problem)


@attrs.frozen(kw_only=True)
class Config:
    """Everything ``serve`` needs. Durations are seconds (fractions allowed), sizes bytes.

    The defaults are the embedded single-process server of the README: state in memory,
    journaled and snapshotted to a data dir in the current folder, loopback only. Each
    field's help line is its ``Option`` (``geopresence serve --help`` shows them all); the
    docstrings below add what does not fit in a line.
    """

    # network
    host: str = _setting(
        "127.0.0.1",
        "interface to listen on, both ports (0.0.0.0: every interface)",
        NETWORK,
        _host,
        metavar="HOST",
    )
    port: int = _setting(
        8765, "WebSocket port, path /ws (0: any free port)", NETWORK, _port, metavar="PORT"
    )
    http_port: int = _setting(
        8766, "HTTP API port (0: any free port)", NETWORK, _port, metavar="PORT"
    )

    # auth
    insecure: bool = _setting(
        False,
        "accept hello with a bare user and HTTP calls without the admin key (development only)",
        AUTH,
    )
    secret: str | None = _setting(
        None,
        "token signing secret (HS256)",
        AUTH,
        repr=False,
        metavar="SECRET",
        default_text="generated in DATA_DIR/secret",
    )
    admin_key: str | None = _setting(
        None,
        "bearer key of the HTTP API",
        AUTH,
        repr=False,
        metavar="KEY",
        default_text="generated in DATA_DIR/admin_key",
    )

    # presence and timing
    heartbeat_interval: float = _setting(
        5.0, "heartbeat period clients are told to use", PRESENCE, _positive, unit="s"
    )
    offline_after: float = _setting(
        30.0, "a device without activity for this long is offline", PRESENCE, _positive, unit="s"
    )
    presence_fanout_limit: int = _setting(
        500, "groups up to this size get co-member presence events", PRESENCE, _at_least(0)
    )
    max_friends: int = _setting(5000, "friends per user (more: HTTP 409)", PRESENCE, _at_least(1))
    max_group_size: int = _setting(100_000, "members per group", PRESENCE, _at_least(1))
    max_devices_per_user: int = _setting(
        16, "alive devices a user may have (one more is refused at hello)", PRESENCE, _at_least(1)
    )
    """Alive devices: connected, or within their offline_after grace window; one more is
    refused at hello (error ``forbidden``, close 1008)."""
    max_connections_per_user: int = _setting(
        16, "live connections a user may have", PRESENCE, _at_least(1)
    )
    """A device has at most one: its new connection replaces the old one."""

    # nearby and strangers
    location_ttl: float = _setting(
        600.0, "lifetime of a user's latest location (nearby friends)", NEARBY, _positive, unit="s"
    )
    radius: float = _setting(
        8046.72,
        "default nearby radius",
        NEARBY,
        _positive,
        unit="m",
        default_text="8046.72 m, 5 mi",
    )
    max_radius: float = _setting(
        50_000.0, "largest radius_m a user may set", NEARBY, _positive, unit="m"
    )
    strangers_query_burst: int = _setting(
        3,
        "nearby_people queries a user may make at once (all its devices together)",
        NEARBY,
        _at_least(1),
    )
    strangers_query_interval: float = _setting(
        10.0, "time per nearby_people query refilled", NEARBY, _positive, unit="s"
    )
    """One per 10 s by default: 6 a minute sustained."""

    # chat and push
    push_webhook: str | None = _setting(
        None,
        "POST each message for a recipient without a connected device to URL",
        CHAT,
        _webhook,
        metavar="URL",
        default_text="none: such pushes are only logged",
    )
    push_timeout: float = _setting(5.0, "time one webhook POST may take", CHAT, _positive, unit="s")
    push_retries: int = _setting(
        3, "retries of a failed webhook POST, with backoff", CHAT, _at_least(0)
    )
    """Retries on a network error, timeout, 429 or 5xx, backing off 0.5 s, 1 s, 2 s, ...
    (at most 30 s)."""
    push_queue_size: int = _setting(
        10_000, "pushes waiting for the webhook; more are dropped", CHAT, _at_least(1)
    )
    """A dropped push is counted and logged; the message is stored either way and the device
    gets it with ``sync``."""
    push_concurrency: int = _setting(4, "webhook POSTs in flight at once", CHAT, _at_least(1))

    # durability
    data_dir: Path = _setting(  # noqa: RUF009 - an attrs field, evaluated once
        Path("geopresence-data"),
        "holds the secret, the admin key, the journal and snapshots, the location history",
        DURABILITY,
        converter=Path,
        metavar="DIR",
    )
    """Generated secret and admin key, journal and snapshots (``state/``), location history
    and the lock (docs/durability.md)."""
    in_memory: bool = _setting(
        False,
        "keep the state in memory only: no journal, no snapshots, nothing survives a restart",
        DURABILITY,
    )
    """Secrets it has to generate stay in memory too; only the location history is written
    to the data dir."""
    fsync: FsyncPolicy = _setting(  # noqa: RUF009 - an attrs field, evaluated once
        "everysec",
        "journal fsync policy, as Redis' appendfsync",
        DURABILITY,
        attrs.validators.in_(("always", "everysec", "no")),
        choices=("always", "everysec", "no"),
    )
    """``always``: fsync before every ack (group commit); ``everysec``: ack once written to
    the OS, fsync every second; ``no``: leave it to the OS."""
    snapshot_interval: float = _setting(
        60.0, "time between snapshots of the durable state", DURABILITY, _positive, unit="s"
    )
    """One more is written at shutdown."""
    history_max_bytes: int = _setting(
        64 * 1024 * 1024,
        "size at which the location history starts a new file",
        DURABILITY,
        _positive,
        unit="B",
    )
    history_flush_interval: float = _setting(
        1.0,
        "longest time an accepted location waits before reaching the history file",
        DURABILITY,
        _positive,
        unit="s",
    )

    # multi-node
    redis: str | None = _setting(
        None,
        "redis://HOST:PORT/DB: be one node of several sharing this standalone Redis",
        CLUSTER,
        metavar="URL",
        default_text="none: the only node, no Redis",
    )
    """Redis holds the state and the pub/sub; None (with no ``redis_cluster``): a single
    node, no Redis at all."""
    redis_cluster: tuple[str, ...] = _setting(
        (),
        "like --redis over a Redis 7 Cluster (sharded pub/sub), given some of its nodes",
        CLUSTER,
        converter=tuple,
        metavar="HOST:PORT[,...]",
        default_text="none",
    )
    redis_prefix: str = _setting(
        "gp", "prefix of every Redis key (one deployment each)", CLUSTER, metavar="PREFIX"
    )
    redis_sweep_interval: float = _setting(
        0.5,
        "how often each node ends the devices of a node that stopped reporting",
        CLUSTER,
        _positive,
        unit="s",
    )
    """A dead node's users go offline at most this long after their deadline."""
    node_id: int = _setting(
        0,
        "Snowflake node id in message ids, 0..1023; with several nodes each needs its own",
        CLUSTER,
        _node_id,
    )

    # logging and limits
    rate_limit: float = _setting(
        30.0,
        "client messages per connection, sustained (0: no limit)",
        LIMITS,
        _finite_non_negative,
        unit="/s",
    )
    """More get a ``rate_limited`` error instead of being handled."""
    rate_burst: int = _setting(
        60, "client messages a connection may send at once", LIMITS, _at_least(1)
    )
    abuse_limit: int = _setting(
        100, "rate-limited messages in a row that close the connection (4008)", LIMITS, _at_least(1)
    )
    max_message_bytes: int = _setting(
        64 * 1024, "largest client frame (larger: close 1009)", LIMITS, _positive, unit="B"
    )
    hello_timeout: float = _setting(
        10.0, "time to send a valid hello (else close 1008)", LIMITS, _positive, unit="s"
    )
    queue_size: int = _setting(
        1024, "replies queued per connection before it is a slow consumer (4008)", LIMITS,
        _at_least(4),
    )  # fmt: skip
    """Replies and other frames without a coalescing key."""
    queue_bytes: int = _setting(
        4 * 1024 * 1024,
        "characters (bytes for ASCII) of replies queued per connection before it is "
        "a slow consumer (4008)",
        LIMITS,
        _at_least(1024),
        unit="B",
    )
    """Characters (about bytes): bounds memory when replies are large (a ``messages`` page is
    up to 512 KiB). One frame always fits an empty queue."""
    state_queue_size: int = _setting(
        8192, "latest-wins state frames (one per user) queued per connection", LIMITS, _at_least(4)
    )
    """Presence and positions, at most one per user they are about: bounds a burst of
    distinct users (more than ``max_friends`` by default, so a popular user's friends logging
    in at once never cost it its session)."""
    close_timeout: float = _setting(
        5.0, "time a close handshake (or a stuck send) may take", LIMITS, _positive, unit="s"
    )
    drain_timeout: float = _setting(
        10.0, "on shutdown, time clients get to finish closing", LIMITS, _positive, unit="s"
    )
    gc_freeze_interval: float = _setting(
        10.0,
        "move long-lived objects out of the garbage collector's reach this often (0: off)",
        LIMITS,
        _finite_non_negative,
        unit="s",
    )
    """``gc.freeze`` of the objects that survived so far, so that full collections, which
    otherwise walk every object of a large population and pause the server for 100+ ms, stay
    short; the collector's thresholds are also raised to (20000, 50, 100). 0 turns both off
    (``geopresence.testing`` does, to leave the host process alone)."""
    gc_full_interval: float = _setting(
        3600.0, "time between full collections of frozen objects", LIMITS, _positive, unit="s"
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


def _conflict(
    config: Config, field: str, rule: str, other: str, other_rule: str, why: str = ""
) -> ConfigError:
    """``field`` against ``other``, told from either side."""

    def side(name: str, text: str, against: str) -> ConfigError:
        limit = f"{text} {{{against}}} ({_shown(config, against)}){why}"
        return ConfigError(name, getattr(config, name), limit)

    alternative = side(other, other_rule, field)
    return ConfigError(
        field,
        getattr(config, field),
        side(field, rule, other).problem,
        alternatives=(alternative,),
    )
