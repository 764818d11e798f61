"""Sans-I/O codec of the WebSocket protocol (PROTOCOL.md; documented in docs/protocol.md).

``decode`` turns one text frame into a typed client message or raises ``ProtocolError``
carrying the error code to send back; ``encode`` turns a server message into the JSON text of
one frame. Nothing here does I/O or knows about connections, like wsproto's event classes.

Decoding is strict: a field of the wrong JSON type is an error, never coerced (cattrs would
happily turn ``123`` into ``"123"``), numbers must be finite, ids must match ``ids.ID_PATTERN``.
Unknown fields are ignored so that clients may be newer than the server.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final, Literal, TypeVar

import attrs
import cattrs
import cattrs.gen
import orjson

from geopresence.model.ids import id_problem

ErrorCode = Literal[
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "rate_limited",
    "too_large",
    "no_location",
    "internal",
]

RequestId = int | float | str | None
"""The ``id`` a client may put on a request; echoed as ``re`` on the reply."""

MAX_SAFE_INTEGER: Final = 2**53 - 1
MAX_REQUEST_ID_CHARS: Final = 128
"""A string request id longer than this is refused: it is echoed on every reply."""

Status = Literal["online", "offline"]

GoneReason = Literal["out_of_range", "expired", "offline", "hidden", "unfriended"]
"""Why a friend left a client's nearby view (``friend_gone``)."""

StrangerGoneReason = Literal["out_of_range", "expired", "offline", "hidden", "friend"]
"""Why a stranger left a watcher's view (``stranger_gone``, an extension)."""

MAX_PAGE: Final = 1_000_000

MAX_CLIENT_MSG_ID_CHARS: Final = 128
MAX_MESSAGE_ID: Final = 2**63 - 1
DEFAULT_SYNC_LIMIT: Final = 100
MAX_SYNC_LIMIT: Final = 1000


class ProtocolError(Exception):
    """A client message that cannot be accepted.

    ``code`` is the wire error code, ``message`` a human explanation, ``re`` the request id
    of the offending message when it could be read (None otherwise).
    """

    def __init__(self, code: ErrorCode, message: str, re: RequestId = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.re = re


def _id_validator(what: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        problem = id_problem(value, what)
        if problem is not None:
            raise ValueError(problem)

    return check


# --------------------------------------------------------------------------------------------
# Client -> server messages


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
    def check(_instance: Any, _attribute: Any, value: float | None) -> None:
        if value is not None and not low <= value <= high:
            raise ValueError(f"{what} must be in [{low:g}, {high:g}], got {value!r}")

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


def _message_id(value: Any) -> int:
    """A message id cursor: a decimal string (the wire form) or a non-negative integer."""
    if isinstance(value, bool):
        raise ValueError("expected a message id (a decimal string), got a boolean")
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()) or len(value) > 19:
            raise ValueError("a message id is a decimal string of at most 19 digits")
        number = int(value)
    elif isinstance(value, int):
        number = value
    else:
        raise ValueError(f"expected a message id (a decimal string), got {_json_type_name(value)}")
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


# --------------------------------------------------------------------------------------------
# Server -> client messages. ``type`` comes first so that it leads in the JSON text.


@attrs.frozen(kw_only=True)
class Welcome:
    """Reply to a successful hello. Times are seconds; ``server_time`` is Unix epoch seconds."""

    type: Literal["welcome"] = "welcome"
    user: str
    device: str
    heartbeat_interval: float
    offline_after: float
    server_time: float
    re: RequestId = None
    """Extension: the hello's ``id`` when it had one (omitted otherwise)."""


@attrs.frozen(kw_only=True)
class FriendStatus:
    """One entry of ``friends_presence``; ``last_active_at`` is None for a never-seen user."""

    user: str
    status: Status
    last_active_at: float | None


@attrs.frozen(kw_only=True)
class FriendsPresence:
    """Snapshot of friends' presence: after welcome (all friends), and when a friendship is
    created while connected (just the new friend)."""

    type: Literal["friends_presence"] = "friends_presence"
    friends: list[FriendStatus]


@attrs.frozen(kw_only=True)
class Presence:
    """A USER's transition online/offline, sent exactly once per transition."""

    type: Literal["presence"] = "presence"
    user: str
    status: Status
    last_active_at: float | None


@attrs.frozen(kw_only=True)
class FriendRemoved:
    """Extension: the friendship with ``user`` was deleted; no more of its presence follows."""

    type: Literal["friend_removed"] = "friend_removed"
    user: str


@attrs.frozen(kw_only=True)
class GroupPresenceReply:
    """Online members of ``group`` (sorted) and its member count ``total``."""

    type: Literal["group_presence"] = "group_presence"
    re: RequestId
    group: str
    online: list[str]
    total: int


@attrs.frozen(kw_only=True)
class HeartbeatAck:
    """Reply to a heartbeat that carried an id."""

    type: Literal["heartbeat"] = "heartbeat"
    re: RequestId
    server_time: float


@attrs.frozen(kw_only=True)
class Error:
    """Reply to a message that could not be accepted; the connection stays open."""

    type: Literal["error"] = "error"
    re: RequestId
    code: ErrorCode
    message: str


@attrs.frozen(kw_only=True)
class FriendLocation:
    """A friend within the recipient's radius moved (or came into view)."""

    type: Literal["friend_location"] = "friend_location"
    user: str
    lat: float
    lon: float
    ts: float
    distance_m: float


@attrs.frozen(kw_only=True)
class FriendGone:
    """A friend the recipient was shown nearby no longer is, for ``reason``."""

    type: Literal["friend_gone"] = "friend_gone"
    user: str
    reason: GoneReason


@attrs.frozen(kw_only=True)
class NearbyFriend:
    """One entry of a ``nearby_friends`` reply."""

    user: str
    lat: float
    lon: float
    ts: float
    distance_m: float


@attrs.frozen(kw_only=True)
class NearbyFriendsReply:
    """One page of friends within radius, nearest first; ``total`` counts all pages."""

    type: Literal["nearby_friends"] = "nearby_friends"
    re: RequestId
    page: int
    page_size: int
    total: int
    friends: list[NearbyFriend]


@attrs.frozen(kw_only=True)
class SettingsReply:
    """Every current setting of the user (after applying the request)."""

    type: Literal["settings"] = "settings"
    re: RequestId
    share_location: bool
    radius_m: float
    visible_to_strangers: bool


@attrs.frozen(kw_only=True)
class WatchStrangersReply:
    """Whether the connection now watches strangers."""

    type: Literal["watch_strangers"] = "watch_strangers"
    re: RequestId
    on: bool


@attrs.frozen(kw_only=True)
class StrangerNearby:
    """A visible stranger within the watcher's radius: distance rounded to 100 m, never
    coordinates."""

    type: Literal["stranger_nearby"] = "stranger_nearby"
    user: str
    distance_m: int
    ts: float


@attrs.frozen(kw_only=True)
class StrangerGone:
    """Extension: a stranger the watcher was shown left its view, for ``reason``."""

    type: Literal["stranger_gone"] = "stranger_gone"
    user: str
    reason: StrangerGoneReason


@attrs.frozen(kw_only=True)
class Person:
    """One entry of a ``nearby_people`` reply (no coordinates)."""

    user: str
    distance_m: int
    ts: float


@attrs.frozen(kw_only=True)
class NearbyPeopleReply:
    """One page of visible strangers within radius, nearest first."""

    type: Literal["nearby_people"] = "nearby_people"
    re: RequestId
    page: int
    page_size: int
    total: int
    people: list[Person]


@attrs.frozen(kw_only=True)
class Sent:
    """Ack of a ``send``, once the message is stored under the configured durability.

    ``message_id`` is the decimal string of the 64-bit id. ``duplicate`` (extension) is true
    when the send was a resend of a stored ``client_msg_id`` (omitted otherwise)."""

    type: Literal["sent"] = "sent"
    re: RequestId
    message_id: str
    created_at: float
    duplicate: bool | None = None


@attrs.frozen(kw_only=True)
class ChatMessageOut:
    """Wire type ``message``: a chat message (live, or one entry of a ``messages`` reply).

    ``sender`` goes on the wire as ``from``; exactly one of ``to`` and ``group`` is present;
    ``client_msg_id`` (extension) only on frames for the sender's own devices."""

    type: Literal["message"] = "message"
    message_id: str
    sender: str
    to: str | None = None
    group: str | None = None
    text: str
    created_at: float
    client_msg_id: str | None = None


@attrs.frozen(kw_only=True)
class MessagesReply:
    """Reply to ``sync``: ascending by id; ``more`` when the client should sync again after
    the last one."""

    type: Literal["messages"] = "messages"
    re: RequestId
    messages: list[ChatMessageOut]
    more: bool


ServerMessage = (
    Welcome
    | FriendsPresence
    | Presence
    | FriendRemoved
    | GroupPresenceReply
    | HeartbeatAck
    | Error
    | FriendLocation
    | FriendGone
    | NearbyFriendsReply
    | SettingsReply
    | WatchStrangersReply
    | StrangerNearby
    | StrangerGone
    | NearbyPeopleReply
    | Sent
    | ChatMessageOut
    | MessagesReply
)


# --------------------------------------------------------------------------------------------
# Converter: strict JSON types, no coercion.

_converter = cattrs.Converter(detailed_validation=True)

T = TypeVar("T")


def _strict(expected: type[T], name: str) -> Callable[[Any, Any], T]:
    def structure(value: Any, _type: Any) -> T:
        # bool is an int subclass in Python; JSON true is not a number.
        if isinstance(value, bool) and expected is not bool:
            raise ValueError(f"expected {name}, got a boolean")
        if not isinstance(value, expected):
            raise ValueError(f"expected {name}, got {_json_type_name(value)}")
        return value

    return structure


def _structure_float(value: Any, _type: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {_json_type_name(value)}")
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return float(value)


def _structure_request_id(value: Any, _type: Any) -> RequestId:
    return _check_request_id(value)


_converter.register_structure_hook(str, _strict(str, "a string"))
_converter.register_structure_hook(bool, _strict(bool, "a boolean"))
_converter.register_structure_hook(int, _strict(int, "an integer"))
_converter.register_structure_hook(float, _structure_float)
_converter.register_structure_hook(RequestId, _structure_request_id)
_converter.register_structure_hook(
    Sync,
    cattrs.gen.make_dict_structure_fn(
        Sync,
        _converter,
        after=cattrs.gen.override(struct_hook=lambda value, _type: _message_id(value)),
    ),
)
_converter.register_unstructure_hook(
    ChatMessageOut,
    cattrs.gen.make_dict_unstructure_fn(
        ChatMessageOut,
        _converter,
        sender=cattrs.gen.override(rename="from"),
        to=cattrs.gen.override(omit_if_default=True),
        group=cattrs.gen.override(omit_if_default=True),
        client_msg_id=cattrs.gen.override(omit_if_default=True),
    ),
)
_converter.register_unstructure_hook(
    Sent,
    cattrs.gen.make_dict_unstructure_fn(
        Sent, _converter, duplicate=cattrs.gen.override(omit_if_default=True)
    ),
)


def _json_type_name(value: Any) -> str:
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


def _check_request_id(value: Any) -> RequestId:
    """Validate a request id: a number or a short string (or absent)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ProtocolError("bad_request", "id must be a number or a string")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ProtocolError("bad_request", "id must be finite")
        if isinstance(value, int) and abs(value) > MAX_SAFE_INTEGER:
            # Echoed back, it would lose digits in JavaScript (and in our own JSON encoder).
            raise ProtocolError("bad_request", "an integer id must be within ±(2**53 - 1)")
        if isinstance(value, float) and value.is_integer() and abs(value) > MAX_SAFE_INTEGER:
            # The JSON parser reads an integer beyond 64 bits as a float: it lost its digits
            # already. Whole floats that large are refused alike (1e20 would echo as 1e20).
            raise ProtocolError("bad_request", "an integer id must be within ±(2**53 - 1)")
        return value
    if isinstance(value, str):
        if len(value) > MAX_REQUEST_ID_CHARS:
            raise ProtocolError(
                "bad_request", f"id must be at most {MAX_REQUEST_ID_CHARS} characters"
            )
        return value
    raise ProtocolError("bad_request", "id must be a number or a string")


def decode(frame: str | bytes) -> ClientMessage:
    """Parse one WebSocket frame into a client message.

    Raises ``ProtocolError`` (code ``bad_request``) for binary frames, invalid JSON, a
    non-object, a missing or unknown ``type``, and fields of the wrong type or value. The
    error's ``re`` is the message's ``id`` whenever that much could be read.
    """
    if isinstance(frame, bytes | bytearray):
        raise ProtocolError("bad_request", "binary frames are not supported; send JSON text")
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("bad_request", f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", "a message must be a JSON object")
    re = _check_request_id(obj.get("id"))
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_request", 'a message needs a string "type"', re)
    cls = CLIENT_MESSAGE_TYPES.get(kind)
    if cls is None:
        shown = kind if len(kind) <= 40 else kind[:40] + "..."
        raise ProtocolError("bad_request", f"unknown message type {shown!r}", re)
    fields = {key: value for key, value in obj.items() if key != "type"}
    try:
        return _converter.structure(fields, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
        raise ProtocolError("bad_request", f"invalid {kind}: {_describe(exc)}", re) from None


def _describe(exc: BaseException) -> str:
    """One readable line per problem, e.g. ``device: expected a string, got a number``."""
    if not isinstance(exc, cattrs.BaseValidationError):
        return str(exc)
    problems = []
    for line in cattrs.transform_error(exc, path="", format_exception=_format_exception):
        text, _, path = line.rpartition(" @ ")
        field = path.lstrip("$.")
        problems.append(f"{field}: {text}" if field else text)
    return "; ".join(problems)


def _format_exception(exc: BaseException, _type: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    return str(exc) or type(exc).__name__


def unstructure(message: ServerMessage) -> dict[str, Any]:
    """The JSON object of a server message, as ``encode`` would write it."""
    data: dict[str, Any] = _converter.unstructure(message)
    return data


def encode(message: ServerMessage) -> str:
    """Serialize a server message to the text of one frame."""
    data = _converter.unstructure(message)
    if isinstance(message, Welcome) and message.re is None:
        del data["re"]  # the contract's welcome has no "re"; add it only when asked for
    return orjson.dumps(data).decode()


def error_message(error: ProtocolError) -> Error:
    """The ``error`` reply for a ``ProtocolError``."""
    return Error(re=error.re, code=error.code, message=error.message)
