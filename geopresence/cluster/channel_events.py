"""Channel events on the wire between nodes (sans-I/O): one JSON object per publish.

In one process the broker hands Python objects to local subscribers. Between nodes (the
Redis scale-out) the same events travel as an *envelope*: the publishing node's id, a
publish id (a node that is subscribed to several of the publish's channels receives the
envelope once per channel, and must deliver it once), the channel list, and the event::

    {"node": 3, "id": 17, "channels": ["user:alice"], "event": {"k": "location", ...}}

Every event kind the hub publishes has a tag here; ``encode_event`` and ``decode_event`` are
inverses (tests/cluster/test_channel_events.py).
"""

from __future__ import annotations

import math
from typing import Any, Final

import attrs
import orjson

from geopresence.core.chat_message_wire import ChatEvent
from geopresence.core.locations import Location
from geopresence.core.nearby import GoneEvent, LocationEvent, LocationKept
from geopresence.core.replication import PresenceSet, feed_from_json, feed_to_json
from geopresence.core.stranger_events import StrangerEvent, StrangerGoneEvent
from geopresence.model.records import SettingsChanged, record_from_json, record_to_json
from geopresence.wire.outgoing import Outgoing


@attrs.frozen
class Replaced:
    """On a node's control channel: a session of ``user``'s ``device`` opened on another
    node at ``since`` (epoch seconds), which holds the device now; the node of
    ``incarnation`` (``<node id>/<token>``), its holder until then, closes its connection
    of it (4002) if that opened before."""

    user: str
    device: str
    incarnation: str
    since: float = math.inf


@attrs.frozen
class LoggedOut:
    """On a node's control channel: a logout made on another node at ``at`` (epoch
    seconds) ended ``user``'s ``device``, which this node held; it ends it here (4001)
    unless the device's connection here opened after."""

    user: str
    device: str
    at: float


@attrs.frozen
class SettingsHeard:
    """On ``user:U``: U's settings changed, as Redis stored them at ``version``
    (``settings_writes.SET_SETTINGS``: versions order the changes made through any node)."""

    change: SettingsChanged
    version: int


@attrs.frozen
class Reread:
    """On ``inbox:U`` and ``group:G``: the friendships of ``friends_of``, the groups of
    ``groups_of`` (one was added to a group), or the membership of ``groups`` changed in
    Redis; the nodes that hold them read them again (``Holdings``). Published once Redis
    has the change, by the node that wrote it."""

    friends_of: tuple[str, ...] = ()
    groups_of: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


ChannelEvent = (
    Outgoing
    | LocationEvent
    | GoneEvent
    | StrangerEvent
    | StrangerGoneEvent
    | ChatEvent
    | Replaced
    | PresenceSet
    | SettingsHeard
    | Reread
    | LoggedOut
)


@attrs.frozen
class Envelope:
    """One publish as another node receives it."""

    node: int
    publish_id: int
    channels: tuple[str, ...]
    event: ChannelEvent


def _location(location: Location) -> list[float]:
    return [location.lat, location.lon, location.ts]


_LOCATION_CLASSES: dict[str, type[LocationEvent | StrangerEvent]] = {
    "location": LocationEvent,
    "kept": LocationKept,
    "stranger": StrangerEvent,
}
_LOCATION_KINDS = {cls: kind for kind, cls in _LOCATION_CLASSES.items()}


def _key(value: Any) -> Any:
    """JSON arrays back into the tuples coalesce keys and seals are made of."""
    return tuple(_key(v) for v in value) if isinstance(value, list) else value


def encode_event(event: ChannelEvent) -> dict[str, Any]:
    if isinstance(event, Outgoing):
        return {"k": "frame", "text": event.text, "key": event.coalesce_key, "seals": event.seals}
    if isinstance(event, LocationEvent | StrangerEvent):
        return {
            "k": _LOCATION_KINDS[type(event)],
            "user": event.user,
            "at": _location(event.location),
            "now": event.now,
        }
    if isinstance(event, GoneEvent):
        return {"k": "gone", "user": event.user, "reason": event.reason}
    if isinstance(event, StrangerGoneEvent):
        return {"k": "stranger_gone", "user": event.user, "reason": event.reason}
    if isinstance(event, ChatEvent):
        return {"k": "chat", "message": record_to_json(event.message)}
    if isinstance(event, PresenceSet):
        return {"k": "presence", "op": feed_to_json(event)}  # as the feed carried it
    if isinstance(event, SettingsHeard):
        return {"k": "settings", "record": record_to_json(event.change), "v": event.version}
    if isinstance(event, Reread):
        return {
            "k": "reread",
            "friends_of": event.friends_of,
            "groups_of": event.groups_of,
            "groups": event.groups,
        }
    if isinstance(event, LoggedOut):
        return {"k": "logout", "user": event.user, "device": event.device, "at": event.at}
    if isinstance(event, Replaced):
        return {
            "k": "replaced",
            "user": event.user,
            "device": event.device,
            "held_by": event.incarnation,
            "since": event.since,
        }
    raise TypeError(f"not a channel event: {event!r}")


def decode_event(data: dict[str, Any]) -> ChannelEvent:
    kind = data["k"]
    if kind == "frame":
        key = data["key"]
        return Outgoing(
            data["text"],
            None if key is None else _key(key),
            tuple(_key(seal) for seal in data["seals"]),
        )
    if kind in _LOCATION_CLASSES:
        lat, lon, ts = data["at"]
        return _LOCATION_CLASSES[kind](data["user"], Location(lat, lon, ts), data["now"])
    if kind == "gone":
        return GoneEvent(data["user"], data["reason"])
    if kind == "stranger_gone":
        return StrangerGoneEvent(data["user"], data["reason"])
    if kind == "chat":
        message = record_from_json(data["message"])
        return ChatEvent(message)  # type: ignore[arg-type]
    if kind == "presence":
        op = feed_from_json(data["op"])
        if not isinstance(op, PresenceSet):
            raise ValueError("not a presence transition")
        return op
    if kind == "settings":
        record = record_from_json(data["record"])
        if not isinstance(record, SettingsChanged):
            raise ValueError("not a settings change")
        return SettingsHeard(record, int(data["v"]))
    if kind == "reread":
        return Reread(*(tuple(str(name) for name in data[k]) for k in _REREAD_FIELDS))
    if kind == "logout":
        return LoggedOut(str(data["user"]), str(data["device"]), float(data["at"]))
    if kind == "replaced":
        since = float(data.get("since", math.inf))  # an older version's: no time
        return Replaced(str(data["user"]), str(data["device"]), str(data["held_by"]), since)
    raise ValueError(f"unknown channel event kind {kind!r}")


_REREAD_FIELDS: Final = ("friends_of", "groups_of", "groups")

MAX_ENVELOPE_BYTES: Final = 4 * 1024 * 1024


def encode_envelope(envelope: Envelope) -> bytes:
    return orjson.dumps(
        {
            "node": envelope.node,
            "id": envelope.publish_id,
            "channels": envelope.channels,
            "event": encode_event(envelope.event),
        }
    )


def decode_envelope(data: bytes) -> Envelope:
    """Parse an envelope; ValueError (or KeyError/TypeError) for anything malformed."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise ValueError("envelope too large")
    raw = orjson.loads(data)
    return Envelope(
        node=int(raw["node"]),
        publish_id=int(raw["id"]),
        channels=tuple(str(c) for c in raw["channels"]),
        event=decode_event(raw["event"]),
    )
