"""Client -> server messages: typed, validated values (wire layer).

``geopresence.wire.protocol.decode`` builds them from a frame; validators here check values
(ranges, id syntax) once the JSON types are right.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import attrs

from geopresence.model.ids import id_problem
from geopresence.wire.errors import RequestId

MAX_PAGE: Final = 1_000_000

MAX_CLIENT_MSG_ID_CHARS: Final = 128
MAX_MESSAGE_ID: Final = 2**63 - 1
DEFAULT_SYNC_LIMIT: Final = 100
MAX_SYNC_LIMIT: Final = 1000


def _id_validator(what: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        problem = id_problem(value, what)
        if problem is not None:
            raise ValueError(problem)

    return check


@attrs.frozen(kw_only=True)
class Hello:
    """First message of a session: authenticate as ``token``'s subject (or ``user`` when the
    server runs with ``--insecure``) on ``device``."""

    device: str = attrs.field(validator=_id_validator("device"))
    token: str | None = None
    user: str | None = attrs.field(default=None, validator=_id_validator("user"))
    id: RequestId = None


@attrs.frozen(kw_only=True)
class Heartbeat:
    """Keep-alive. Replied to (``{"type":"heartbeat","re":id}``) only when it carries an id."""

    id: RequestId = None


@attrs.frozen(kw_only=True)
class Logout:
    """Log this device out: offline at once, connection closed with 4001."""

    id: RequestId = None


@attrs.frozen(kw_only=True)
class GroupPresenceQuery:
    """Which members of ``group`` are online (for groups too large for fan-out)."""

    group: str = attrs.field(validator=_id_validator("group"))
    id: RequestId = None


def _in_range(what: str, low: float, high: float) -> Callable[[Any, Any, Any], None]:
    # Bounds as written ("1000000", not :g's "1e+06"); they are never huge.
    bounds = f"[{low!r}, {high!r}]"

    def check(_instance: Any, _attribute: Any, value: float | None) -> None:
        if value is not None and not low <= value <= high:
            raise ValueError(f"{what} must be in {bounds}, got {value!r}")

    return check


def _positive(what: str) -> Callable[[Any, Any, Any], None]:
    def check(_instance: Any, _attribute: Any, value: float | None) -> None:
        if value is not None and not value > 0:
            raise ValueError(f"{what} must be positive, got {value!r}")

    return check


@attrs.frozen(kw_only=True)
class LocationUpdate:
    """Wire type ``location``: the sender's position (degrees) taken at ``ts`` (epoch seconds;
    the server's clock when absent). No reply on success."""

    lat: float = attrs.field(validator=_in_range("lat", -90, 90))
    lon: float = attrs.field(validator=_in_range("lon", -180, 180))
    ts: float | None = None
    id: RequestId = None


@attrs.frozen(kw_only=True)
class NearbyFriendsQuery:
    """Friends within the sender's radius, 20 per ``page``. With ``lat``/``lon`` (both), they
    are first applied as a location update: the design's client-init call."""

    page: int = attrs.field(default=0, validator=_in_range("page", 0, MAX_PAGE))
    lat: float | None = attrs.field(default=None, validator=_in_range("lat", -90, 90))
    lon: float | None = attrs.field(default=None, validator=_in_range("lon", -180, 180))
    ts: float | None = None
    id: RequestId = None

    def __attrs_post_init__(self) -> None:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon go together: give both or neither")


@attrs.frozen(kw_only=True)
class SettingsUpdate:
    """Wire type ``settings``: change any subset; the reply carries every current value."""

    share_location: bool | None = None
    radius_m: float | None = attrs.field(default=None, validator=_positive("radius_m"))
    visible_to_strangers: bool | None = None
    id: RequestId = None


@attrs.frozen(kw_only=True)
class WatchStrangers:
    """Start (``on`` true) or stop watching visible strangers within the radius."""

    on: bool
    id: RequestId = None


@attrs.frozen(kw_only=True)
class NearbyPeopleQuery:
    """Visible strangers within the radius, 20 per ``page`` (rate limited)."""

    page: int = attrs.field(default=0, validator=_in_range("page", 0, MAX_PAGE))
    id: RequestId = None


def json_type_name(value: Any) -> str:
    """How an error message names the JSON type of ``value``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def message_id(value: Any) -> int:
    """A message id cursor: a decimal string (the wire form) or a non-negative integer;
    ValueError if not."""
    if isinstance(value, bool):
        raise ValueError("expected a message id (a decimal string), got a boolean")
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()) or len(value) > 19:
            raise ValueError("a message id is a decimal string of at most 19 digits")
        number = int(value)
    elif isinstance(value, int):
        number = value
    else:
        raise ValueError(f"expected a message id (a decimal string), got {json_type_name(value)}")
    if not 0 <= number <= MAX_MESSAGE_ID:
        raise ValueError("a message id is in 0..2**63-1")
    return number


def _at_least_one(what: str) -> Callable[[Any, Any, Any], None]:
    def check(_instance: Any, _attribute: Any, value: int) -> None:
        if value < 1:
            raise ValueError(f"{what} must be at least 1, got {value}")

    return check


def _client_msg_id(_instance: Any, _attribute: Any, value: str | None) -> None:
    if value is not None and not 1 <= len(value) <= MAX_CLIENT_MSG_ID_CHARS:
        raise ValueError(f"client_msg_id must be 1..{MAX_CLIENT_MSG_ID_CHARS} characters")


@attrs.frozen(kw_only=True)
class Send:
    """A chat message to ``to`` (a friend) or to ``group`` (one of them, not both).

    ``text`` is checked against the 4096-byte limit by the hub (error ``too_large``);
    ``client_msg_id`` makes a resend idempotent."""

    text: str
    to: str | None = attrs.field(default=None, validator=_id_validator("to"))
    group: str | None = attrs.field(default=None, validator=_id_validator("group"))
    client_msg_id: str | None = attrs.field(default=None, validator=_client_msg_id)
    id: RequestId = None

    def __attrs_post_init__(self) -> None:
        if (self.to is None) == (self.group is None):
            raise ValueError('a send needs exactly one of "to" and "group"')


@attrs.frozen(kw_only=True)
class Sync:
    """The user's messages with ids greater than ``after`` (``0``: from the beginning),
    ascending, at most ``limit`` (1..1000; larger values are capped at 1000)."""

    after: int = 0
    limit: int = attrs.field(default=DEFAULT_SYNC_LIMIT, validator=_at_least_one("limit"))
    id: RequestId = None


ClientMessage = (
    Hello
    | Heartbeat
    | Logout
    | GroupPresenceQuery
    | LocationUpdate
    | NearbyFriendsQuery
    | SettingsUpdate
    | WatchStrangers
    | NearbyPeopleQuery
    | Send
    | Sync
)

CLIENT_MESSAGE_TYPES: Final[dict[str, type[ClientMessage]]] = {
    "hello": Hello,
    "heartbeat": Heartbeat,
    "logout": Logout,
    "group_presence": GroupPresenceQuery,
    "location": LocationUpdate,
    "nearby_friends": NearbyFriendsQuery,
    "settings": SettingsUpdate,
    "watch_strangers": WatchStrangers,
    "nearby_people": NearbyPeopleQuery,
    "send": Send,
    "sync": Sync,
}
"""Wire ``type`` -> message class. The server's dispatch table is keyed by these classes."""
