"""How each kind of change is written to the shared state in Redis (cluster): ``WRITERS``
(feed op kind -> its commands, or a write that reads first), for ``RedisJournal``
(``geopresence.cluster.redis_state``), which writes them in order. Every write is
idempotent: a retry after a failure is harmless. ``geopresence.cluster.redis_load`` reads
these keys back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs

from geopresence.cluster.group_writes import write_group_deleted, write_group_set
from geopresence.cluster.redis_feed import RedisFeed
from geopresence.cluster.redis_forget import forget_user
from geopresence.cluster.redis_keys import Keys, location_value
from geopresence.cluster.settings_writes import SetSettings
from geopresence.core.replication import (
    FEED_KINDS,
    FeedOp,
    LocationSet,
    LogoutRequested,
    PresenceSet,
    Watermark,
)
from geopresence.core.state import one_entry_per_kind
from geopresence.model.chat_message import ChatMessage
from geopresence.model.records import (
    Befriended,
    GroupDeleted,
    GroupSet,
    MemberAdded,
    MemberRemoved,
    SettingsChanged,
    Unfriended,
    UserForgotten,
)

Command = tuple[str, tuple[Any, ...]] | tuple[str, tuple[Any, ...], dict[str, Any]]
"""A coredis client method name, its arguments and (optionally) keyword arguments."""


def _call(target: Any, command: Command) -> Any:
    """Call ``command`` on a client or pipeline."""
    kwargs = command[2] if len(command) == 3 else {}
    return getattr(target, command[0])(*command[1], **kwargs)


@attrs.frozen
class Writer:
    """How one kind of change reaches Redis: either ``commands``, the commands that apply
    it without reading anything first (so that many changes share one pipeline: one round
    trip), or ``write``, which reads before it writes (group changes)."""

    commands: Callable[[Keys, Any], list[Command]] | None = None
    write: Callable[[Any, Keys, Any], Awaitable[Any]] | None = None
    """Returns what ``RedisJournal.on_written`` is told (settings: their version)."""

    def __attrs_post_init__(self) -> None:
        if (self.commands is None) == (self.write is None):
            raise TypeError("a Writer has commands or a write, not both")


def _location(k: Keys, op: LocationSet) -> list[Command]:
    # One key per user (spread over a Cluster's slots), expiring with the location: Redis
    # drops it, no node sweeps.
    assert k.location_ttl is not None, "Keys.location_ttl is the hub's location TTL"
    value = location_value(op)
    return [("set", (k.location(op.user), value), {"pxat": round((op.at + k.location_ttl) * 1000)})]


def _befriended(k: Keys, op: Befriended) -> list[Command]:
    return [
        ("sadd", (k.of("friends", op.a), [op.b])),
        ("sadd", (k.of("friends", op.b), [op.a])),
        ("sadd", (k.users, [op.a, op.b])),
    ]


def _unfriended(k: Keys, op: Unfriended) -> list[Command]:
    return [
        ("srem", (k.of("friends", op.a), [op.b])),
        ("srem", (k.of("friends", op.b), [op.a])),
    ]


def _member_added(k: Keys, op: MemberAdded) -> list[Command]:
    return [
        ("hsetnx", (k.of("group", op.group), op.user, str(op.joined_after))),
        ("sadd", (k.of("groups_of", op.user), [op.group])),
        ("sadd", (k.groups, [op.group])),
    ]


def _member_removed(k: Keys, op: MemberRemoved) -> list[Command]:
    return [
        ("hdel", (k.of("group", op.group), [op.user])),
        ("srem", (k.of("groups_of", op.user), [op.group])),
    ]


async def _settings(client: Any, k: Keys, op: SettingsChanged) -> int:
    """Store ``op``'s settings; returns their version (``settings_writes``)."""
    [version] = await SetSettings(client, k)([op])
    return version


def _feed_only(k: Keys, op: PresenceSet | LogoutRequested | Watermark) -> list[Command]:
    # Presence is written by the Lua scripts that decide it (geopresence.cluster
    # .redis_presence); a logout request has no state of its own.
    return []


async def _chat_writes_only(client: Any, k: Keys, op: ChatMessage) -> None:
    raise TypeError("chat messages are written in batches by ChatWrites (RedisJournal)")


WRITERS: Final[dict[type[Any], Writer]] = one_entry_per_kind(
    {
        ChatMessage: Writer(write=_chat_writes_only),
        LocationSet: Writer(_location),
        Befriended: Writer(_befriended),
        Unfriended: Writer(_unfriended),
        MemberAdded: Writer(_member_added),
        MemberRemoved: Writer(_member_removed),
        SettingsChanged: Writer(write=_settings),
        GroupSet: Writer(write=write_group_set),
        GroupDeleted: Writer(write=write_group_deleted),
        UserForgotten: Writer(write=forget_user),
        PresenceSet: Writer(_feed_only),
        LogoutRequested: Writer(_feed_only),
        Watermark: Writer(_feed_only),
    },
    FEED_KINDS,
    what="the Redis writer",
)
"""Feed op kind -> how ``RedisJournal`` writes it to the keys above (every change is
idempotent: a retry after a failure is harmless)."""


def blind_commands(keys: Keys, op: FeedOp) -> list[Command] | None:
    """The commands that apply ``op`` without reading anything first, so that many ops can
    share one pipeline (one round trip); None for the ones that must read (group changes)
    and chat messages (``chat_writes``)."""
    commands = WRITERS[type(op)].commands
    return None if commands is None else commands(keys, op)


async def write(client: Any, keys: Keys, op: FeedOp) -> Any:
    """Apply one change to Redis (idempotent: a retry after a failure is harmless); not
    for a chat message (``chat_writes``). Returns what its writer
    returns (settings: their version)."""
    writer = WRITERS[type(op)]
    if writer.write is not None:
        return await writer.write(client, keys, op)
    assert writer.commands is not None
    for command in writer.commands(keys, op):
        await _call(client, command)
    return None


async def write_batch(
    client: Any, keys: Keys, ops: list[tuple[int, FeedOp, bool, int | None]], feed: RedisFeed
) -> None:
    """Apply ops that need no reads, and append those marked for it to the feed, in one
    pipeline (not a transaction: a batch that failed halfway is written again, and every op
    is idempotent, for Redis and for the nodes that may then read it twice)."""
    async with client.pipeline(transaction=False) as pipe:
        for _, op, _, _ in ops:
            for command in blind_commands(keys, op) or ():
                _call(pipe, command)
        for uid, op, on_feed, watermark in ops:
            if on_feed:
                feed.append_to(pipe, op, uid, watermark)
