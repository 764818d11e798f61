"""The Redis key layout of the shared state (multi-node mode), and the helpers that read it.

Keys (``{...}`` is a Redis Cluster hash tag: each user's, group's or conversation's key has a
slot of its own; the index sets are what a starting node loads from)::

    gp:friends:{U}       set: U's friends              gp:users            index of users
    gp:group:{G}         hash: member -> join mark     gp:groups           index of groups
    gp:groups_of:{U}     set: U's groups
    gp:settings:{U}      JSON settings with their version "v" (``settings_writes.SET_SETTINGS``;
                         absent: defaults)   gp:settings_users  index of non-default ones
    gp:chat:{C}          sorted set of one conversation's messages ("<20-digit id> <JSON>",
                         all score 0: lexicographic = id order; C is "dm:A:B" or "g:G")
    gp:chats             index of conversations
    gp:chats_of:{U}      set: U's 1:1 conversations (what its ``sync`` reads, with its
                         groups': ``chat_reads``)
    gp:last_id:{N}       the last message id node N wrote (a restart never issues below it)
    gp:cmid:{C}          hash: "<sender>\n<client_msg_id>" -> the id of the message stored
                         for it in conversation C (a resend through any node is stored once)
    gp:cmids:{U}         hash: client_msg_id -> the conversation U first used it in (reused
                         for another one: refused)
    gp:loc:{U}           U's live location, [lat, lon, ts, accepted_at] (JSON), expiring
                         with the location TTL (Redis expiry: ``PXAT``); deleted when U goes
                         offline. Read by a node for its sessions' friends as they open.
    gp:presence:{U}      hash: status, last_active_at, v (transition count), d:<device> ->
                         the incarnation holding it (``geopresence.cluster.redis_presence``)
    gp:presence_users    index of users with a presence hash
    gp:nodes             hash: n:<N> -> each live node's lease, gone:<X> -> each incarnation
                         X ("<N>/<token>") that died or left (``redis_nodes``)
    gp:held:{X}          set: "<user>\\n<device>" of each device incarnation X holds (or
                         held: a superset, checked by the scripts)
    gp:feed              stream: forgets, and each node's chat watermark, for every other
                         node
                         (``geopresence.cluster.redis_feed``)
    gp:forgotten         sorted set: forgotten user -> forget time, for the history of the
                         nodes that were down (``geopresence.cluster.redis_forget``)
    gp:strangers:{H}     GEO set: visible user -> coarse position, per geohash-4 cell H;
    gp:strangers-exp:{H} with when strangers stop seeing each and the ts they see
    gp:strangers-ts:{H}  (``geopresence.cluster.stranger_cells``); beyond 80 degrees,
    gp:strangers-polar:{polar-n}  hash: user -> "lon lat" (``polar-s``: the south's)

``geopresence.cluster.state_writes`` writes the state keys (``redis_load`` loads them),
``redis_presence`` the presence keys, ``redis_feed`` the feed, ``redis_forget`` a forgotten
user's, ``redis_strangers`` the strangers' cells.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from geopresence.core.replication import LocationSet
from geopresence.model.chat_message import ChatMessage
from geopresence.model.records import record_from_json, record_to_json


class Keys:
    """Key names under one prefix (``gp`` unless tests isolate themselves)."""

    def __init__(self, prefix: str = "gp", *, location_ttl: float | None = None) -> None:
        self.prefix = prefix
        self.users = f"{prefix}:users"
        self.groups = f"{prefix}:groups"
        self.settings_users = f"{prefix}:settings_users"
        self.chats = f"{prefix}:chats"
        self.location_ttl = location_ttl
        """Seconds a ``gp:loc:{U}`` key lives after its update was accepted: the hub's
        location TTL (``ClusterLink`` passes it; None: these keys write no location)."""
        self.presence_users = f"{prefix}:presence_users"
        self.nodes = f"{prefix}:nodes"
        self.legacy_deadlines = f"{prefix}:deadlines"
        """Where versions before holders kept devices' deadlines (migrated at start)."""
        self.feed = f"{prefix}:feed"

    def of(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{{{name}}}"

    def last_id(self, node_id: int) -> str:
        """The last message id node ``node_id`` wrote (``chat_writes``; read at its start)."""
        return self.of("last_id", str(node_id))

    def location(self, user: str) -> str:
        return self.of("loc", user)

    def sender_ids(self, sender: str) -> str:
        """The conversation each of ``sender``'s ``client_msg_id`` belongs to."""
        return self.of("cmids", sender)

    def client_ids(self, conversation: str) -> str:
        """The conversation's ``client_msg_id`` index (the slot of its messages)."""
        return self.of("cmid", conversation)

    def conversation(self, message: ChatMessage) -> str:
        """The conversation a message belongs to (its key's name part)."""
        return conversation_of(message.sender, message.to, message.group)


def conversation_of(sender: str, to: str | None, group: str | None) -> str:
    """The conversation of a message from ``sender`` to ``to`` or in ``group``: "g:G", or
    "dm:A:B" (the two users in order)."""
    if group is not None:
        return f"g:{group}"
    assert to is not None
    a, b = sorted((sender, to))
    return f"dm:{a}:{b}"


def message_member(message: ChatMessage) -> bytes:
    """A message as a member of its conversation's sorted set (the id first, zero-padded, so
    lexicographic order is id order and ``ZRANGE ... BYLEX`` reads after a cursor)."""
    return b"%020d " % message.message_id + orjson.dumps(record_to_json(message))


def member_message(member: bytes | str) -> ChatMessage:
    raw = member.encode() if isinstance(member, str) else member
    record = record_from_json(orjson.loads(raw[21:]))
    if not isinstance(record, ChatMessage):
        raise ValueError("not a message")
    return record


def location_value(op: LocationSet) -> bytes:
    """``op`` as the value of its user's ``gp:loc:{U}`` key: ``[lat, lon, ts, accepted_at]``."""
    return orjson.dumps([op.lat, op.lon, op.ts, op.at])


def value_location(user: str, raw: bytes | str) -> LocationSet:
    """The ``LocationSet`` a ``gp:loc:{U}`` value (``location_value``) holds for ``user``."""
    lat, lon, ts, at = orjson.loads(raw)
    return LocationSet(user, float(lat), float(lon), float(ts), float(at))


def string(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def strings(values: Iterable[Any]) -> list[str]:
    return sorted(string(v) for v in values)
