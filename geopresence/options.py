"""The vocabulary of ``Config`` (model rank): each setting's CLI metadata (``Option``: help,
group, unit, environment variable), the field helper ``setting``, ``ConfigError`` and the
validators, so that ``geopresence.config`` is the list of settings and nothing else."""

from __future__ import annotations

import ipaddress
import math
import re
import urllib.parse
from collections.abc import Callable
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
    parse: Callable[[str], Any] | None = None
    """How the flag's text is read when the unit's reading is not enough (None: by unit)."""

    def flag_for(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")

    def env_for(self, name: str) -> str:
        return self.env or ENV_PREFIX + name.upper()


def setting(
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


_FIELDS: set[str] = set()
"""The names of ``Config``'s fields (``register_fields``): placeholders a problem may use."""


def register_fields(config_class: type) -> None:
    """Let ``ConfigError.describe`` name ``config_class``'s fields (``{offline_after}``)."""
    _FIELDS.update(attrs.fields_dict(config_class))


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
        return re.sub(r"\{(\w+)\}", lambda m: name(m[1]) if m[1] in _FIELDS else m[0], self.problem)


def shown(instance: object, name: str) -> str:
    """The value of field ``name`` of ``instance`` in its unit (``5 s``)."""
    cli = option(attrs.fields_dict(type(instance))[name])  # type: ignore[arg-type]
    return show(getattr(instance, name), cli.unit if cli else "")


def positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ConfigError(attribute.name, value, "must be positive")


def at_least(minimum: int) -> Any:
    def check(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
        if value < minimum:
            raise ConfigError(attribute.name, value, f"must be {minimum} or more")

    return check


HIDDEN: Final = "(hidden)"
"""What an error shows instead of a secret's or an admin key's value."""


def valid_secret(_instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """A secret given must be one: empty is a mistake (an unset shell variable), not "use
    the data dir's", which leaving the setting out means."""
    if value is not None and not value:
        raise ConfigError(attribute.name, HIDDEN, "must not be empty")


def valid_token_secret(
    _instance: object, attribute: attrs.Attribute[Any], value: str | None
) -> None:
    """As ``valid_secret``, and long enough to sign tokens (``secret_problem``)."""
    valid_secret(_instance, attribute, value)
    problem = None if value is None else secret_problem(value)
    if problem is not None:
        raise ConfigError(attribute.name, HIDDEN, problem)


MIN_SECRET_BYTES: Final = 32
"""RFC 7518 3.2: an HS256 key must be at least as long as the hash (256 bits)."""


def secret_problem(secret: str) -> str | None:
    """What makes ``secret`` unfit to sign tokens (HS256), if anything."""
    if len(secret.encode()) < MIN_SECRET_BYTES:
        return (
            f"must be at least {MIN_SECRET_BYTES} bytes (HS256; make one with "
            "`openssl rand -hex 32`)"
        )
    return None


def valid_admin_key(_instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """As ``valid_secret``; and a key a client can send: it travels in an HTTP header
    (``Authorization: Bearer KEY``), so printable ASCII without spaces."""
    valid_secret(_instance, attribute, value)
    if value is not None and not all("!" <= c <= "~" for c in value):
        raise ConfigError(
            attribute.name,
            HIDDEN,
            "must be printable ASCII without spaces (it is sent in an HTTP header)",
        )


def valid_node_id(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
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


def valid_webhook(_instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    problem = None if value is None else webhook_problem(value)
    if problem is not None:
        raise ConfigError(attribute.name, value, problem)


def non_negative(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:  # NaN too
        raise ConfigError(attribute.name, value, "must be 0 or more")


def finite_non_negative(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(attribute.name, value, "must be a finite number >= 0")


def valid_port(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
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


def valid_host(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    problem = host_problem(value)
    if problem is not None:
        raise ConfigError(attribute.name, value, problem)


SELF_ORIGIN: Final = "self"
"""In ``allowed_origins``: the pages the server's own HTTP port serves (the console)."""
ANY_ORIGIN: Final = "*"

_SCHEME: Final = re.compile(r"^[a-z][a-z0-9+.-]*$")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def origin_problem(text: str) -> str | None:
    """Why ``text`` is not a web origin, ``scheme://host[:port]`` (None when it is)."""
    try:
        parts = urllib.parse.urlsplit(text.strip())
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        return f"not a valid origin ({exc})"
    if not _SCHEME.match(parts.scheme.lower()) or not parts.hostname:
        return "an origin is scheme://host[:port], e.g. https://app.example.com"
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        return "an origin has no path, query or user: scheme://host[:port]"
    return None


def normalize_origin(text: str) -> str:
    """``text`` (a valid origin) as a browser sends it in ``Origin``: scheme and host in
    lower case, no default port, no trailing slash."""
    parts = urllib.parse.urlsplit(text.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address keeps its brackets
    port = parts.port
    if port is None or _DEFAULT_PORTS.get(scheme) == port:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def to_origins(value: Any) -> tuple[str, ...]:
    """``allowed_origins`` as given (any iterable of strings), each valid origin normalized;
    ``self`` and ``*`` kept; anything else left for ``valid_origins`` to refuse."""
    items = (value,) if isinstance(value, str) else tuple(value)
    return tuple(
        item
        if item in (SELF_ORIGIN, ANY_ORIGIN) or origin_problem(item) is not None
        else normalize_origin(item)
        for item in items
    )


def valid_origins(
    _instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]
) -> None:
    for item in value:
        if item in (SELF_ORIGIN, ANY_ORIGIN):
            continue
        problem = origin_problem(item)
        if problem is not None:
            raise ConfigError(attribute.name, item, f"{problem}; or {SELF_ORIGIN}, or {ANY_ORIGIN}")
