"""Server -> client messages (wire layer). ``type`` comes first in each class so that it
leads in the JSON text; ``geopresence.wire.protocol.encode`` writes them."""

from __future__ import annotations

from typing import Final, Literal

import attrs

from geopresence.wire.errors import ErrorCode, RequestId

PAGE_SIZE: Final = 20
"""Entries per page of a ``nearby_friends`` or ``nearby_people`` reply (the contract's)."""


def whole(value: float) -> float:
    """``value`` as an ``int`` when it is a whole number: it is written ``5``, as the
    contract's examples show, not ``5.0``, which a client decoding an integer refuses (Go's
    ``encoding/json``, for one). Fractions, and numbers past 2**53, stay floats."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


Status = Literal["online", "offline"]

GoneReason = Literal["out_of_range", "expired", "offline", "hidden", "unfriended"]
"""Why a friend left a client's nearby view (``friend_gone``)."""

StrangerGoneReason = Literal["out_of_range", "expired", "offline", "hidden", "friend"]
"""Why a stranger left a watcher's view (``stranger_gone``, an extension)."""


@attrs.frozen(kw_only=True)
class Welcome:
    """Reply to a successful hello. Times are seconds; ``server_time`` is Unix epoch seconds."""

    type: Literal["welcome"] = "welcome"
    user: str
    device: str
    heartbeat_interval: float = attrs.field(converter=whole)
    offline_after: float = attrs.field(converter=whole)
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
    radius_m: float = attrs.field(converter=whole)
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
