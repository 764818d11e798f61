"""The shared state in Redis (shell): the journal that writes it, and the loader that reads it.

With several nodes, Redis holds the state every node shares, and each node a replica in
memory (its hub's stores) that answers synchronously. Changes reach Redis through the
``Journal`` seam: ``RedisJournal.append`` queues a durable record, ``run`` writes it to the
keys below in order and appends it, in the same pipeline, to the feed stream (``RedisFeed``)
that the other nodes' replicas read (``geopresence.core.replication``). A record is *durable* once
Redis has it, so acks (``sent``, ``settings``, HTTP writes) wait for Redis exactly as they
wait for the disk with one node.
``load_state`` fills a starting node's replica from these keys.

Keys (``{...}`` is a Redis Cluster hash tag: each user's, group's or conversation's key has a
slot of its own; the index sets are what ``load_state`` starts from)::

    gp:friends:{U}       set: U's friends              gp:users            index of users
    gp:group:{G}         hash: member -> join mark     gp:groups           index of groups
    gp:groups_of:{U}     set: U's groups
    gp:settings:{U}      JSON settings (absent: defaults)  gp:settings_users  index
    gp:chat:{C}          sorted set of one conversation's messages ("<20-digit id> <JSON>",
                         all score 0: lexicographic = id order; C is "dm:A:B" or "g:G")
    gp:chats             index of conversations
    gp:locations         hash: user -> [lat, lon, ts, accepted_at] (expired ones are skipped
                         and removed by the loader; an offline user's is removed at once)
    gp:presence:{U}      hash: status, last_active_at, v (transition count), d:<device> ->
                         deadline (see ``geopresence.cluster.redis_presence``)
    gp:presence_users    index of users with a presence hash
    gp:deadlines         sorted set: "<user>\\n<device>" scored by its deadline
    gp:node:{N}          the lease of the node with Snowflake node id N
    gp:feed              stream: every change, for the other nodes' replicas (``RedisFeed``)
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

import orjson
import trio

from geopresence.cluster.redis_broker import SeenOnce, fresh_ids
from geopresence.core.replication import FeedOp, LocationSet, feed_from_json, feed_to_json
from geopresence.core.store import UserSettings
from geopresence.model.chat_message import ChatMessage
from geopresence.model.records import (
    Befriended,
    GroupDeleted,
    GroupSet,
    MemberAdded,
    MemberRemoved,
    Record,
    SettingsChanged,
    Unfriended,
    record_from_json,
    record_to_json,
)

if TYPE_CHECKING:
    from geopresence.core.hub import Hub

log = logging.getLogger("geopresence.redis")

BATCH: Final = 512
"""Changes written per pipeline (one round trip) by ``RedisJournal``."""


class Keys:
    """Key names under one prefix (``gp`` unless tests isolate themselves)."""

    def __init__(self, prefix: str = "gp") -> None:
        self.prefix = prefix
        self.users = f"{prefix}:users"
        self.groups = f"{prefix}:groups"
        self.settings_users = f"{prefix}:settings_users"
        self.chats = f"{prefix}:chats"
        self.locations = f"{prefix}:locations"
        self.presence_users = f"{prefix}:presence_users"
        self.deadlines = f"{prefix}:deadlines"
        self.feed = f"{prefix}:feed"

    def of(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{{{name}}}"

    def conversation(self, message: ChatMessage) -> str:
        """The conversation a message belongs to (its key's name part)."""
        if message.group is not None:
            return f"g:{message.group}"
        assert message.to is not None
        a, b = sorted((message.sender, message.to))
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


def _settings_json(record: SettingsChanged) -> str:
    return orjson.dumps(
        {
            "share_location": record.share_location,
            "radius_m": record.radius_m,
            "visible_to_strangers": record.visible_to_strangers,
        }
    ).decode()


Command = tuple[str, tuple[Any, ...]]
"""A coredis client method name and its arguments."""


def blind_commands(keys: Keys, op: FeedOp) -> list[Command] | None:
    """The commands that apply ``op`` without reading anything first, so that many ops can
    share one pipeline (one round trip); None for the two that must read (group changes)."""
    k = keys
    if isinstance(op, ChatMessage):
        conversation = k.conversation(op)
        return [
            ("zadd", (k.of("chat", conversation), {message_member(op): 0})),
            ("sadd", (k.chats, [conversation])),
        ]
    if isinstance(op, LocationSet):
        return [("hset", (k.locations, {op.user: orjson.dumps([op.lat, op.lon, op.ts, op.at])}))]
    if isinstance(op, Befriended):
        return [
            ("sadd", (k.of("friends", op.a), [op.b])),
            ("sadd", (k.of("friends", op.b), [op.a])),
            ("sadd", (k.users, [op.a, op.b])),
        ]
    if isinstance(op, Unfriended):
        return [
            ("srem", (k.of("friends", op.a), [op.b])),
            ("srem", (k.of("friends", op.b), [op.a])),
        ]
    if isinstance(op, MemberAdded):
        return [
            ("hsetnx", (k.of("group", op.group), op.user, str(op.joined_after))),
            ("sadd", (k.of("groups_of", op.user), [op.group])),
            ("sadd", (k.groups, [op.group])),
        ]
    if isinstance(op, MemberRemoved):
        return [
            ("hdel", (k.of("group", op.group), [op.user])),
            ("srem", (k.of("groups_of", op.user), [op.group])),
        ]
    if isinstance(op, SettingsChanged):
        if _settings_of(op) == UserSettings():
            return [
                ("delete", ([k.of("settings", op.user)],)),
                ("srem", (k.settings_users, [op.user])),
            ]
        return [
            ("set", (k.of("settings", op.user), _settings_json(op))),
            ("sadd", (k.settings_users, [op.user])),
        ]
    if isinstance(op, GroupSet | GroupDeleted):
        return None
    # PresenceSet and LogoutRequested only travel on the feed: presence is written by the
    # Lua scripts that decide it.
    return []


async def write(client: Any, keys: Keys, op: FeedOp) -> None:
    """Apply one change to Redis (idempotent: a retry after a failure is harmless)."""
    commands = blind_commands(keys, op)
    if commands is not None:
        for name, args in commands:
            await getattr(client, name)(*args)
        return
    k = keys
    if isinstance(op, GroupSet):
        key = k.of("group", op.group)
        current = set(_strings(await client.hkeys(key)))
        wanted = set(op.members)
        for user in current - wanted:
            await client.hdel(key, [user])
            await client.srem(k.of("groups_of", user), [op.group])
        for user in wanted - current:
            await client.hset(key, {user: str(op.joined_after)})
            await client.sadd(k.of("groups_of", user), [op.group])
        await client.sadd(k.groups, [op.group])
    elif isinstance(op, GroupDeleted):
        key = k.of("group", op.group)
        for user in _strings(await client.hkeys(key)):
            await client.srem(k.of("groups_of", user), [op.group])
        await client.delete([key, k.of("chat", f"g:{op.group}")])
        await client.srem(k.groups, [op.group])
        await client.srem(k.chats, [f"g:{op.group}"])


async def write_batch(
    client: Any, keys: Keys, ops: list[tuple[int, FeedOp]], feed: RedisFeed
) -> None:
    """Apply ops that need no reads, and append them to the feed, in one pipeline (not a
    transaction: a batch that failed halfway is written again, and every op is idempotent,
    for Redis and for the replicas that may then read it twice)."""
    async with client.pipeline(transaction=False) as pipe:
        for _, op in ops:
            for name, args in blind_commands(keys, op) or ():
                getattr(pipe, name)(*args)
        for uid, op in ops:
            feed.append_to(pipe, op, uid)


SEEN_ENTRIES: Final = 100_000
"""(node, uid) of recent feed entries remembered, to apply each change once."""
GAP_CHECK_INTERVAL: Final = 10.0
"""Seconds between checks that the feed was not trimmed past what this node read."""
FEED_MAXLEN: Final = 1_000_000
"""Feed entries kept (approximately): a node cut off from Redis for longer than it takes
the cluster to make this many changes must be restarted to catch up (it says so)."""


class RedisFeed:
    """The feed: a Redis stream (``gp:feed``) of every change, in one order for all nodes.

    A stream rather than pub/sub: a node that loses its connection reads on from the last
    entry it applied, and a starting node reads from the entry before it loaded the state,
    so no change is ever missed (pub/sub would drop what was published meanwhile).
    """

    def __init__(self, client: Any, keys: Keys, node_id: int) -> None:
        self._client = client
        self.key = keys.feed
        self.node_id = node_id
        self.applied = 0
        """Other nodes' ops applied here (for metrics)."""
        self.lost = False
        """True once this node fell so far behind that entries were trimmed unread."""
        self._seen = SeenOnce(SEEN_ENTRIES)

    def _fields(self, op: FeedOp, uid: int) -> dict[str, bytes]:
        return {
            "n": str(self.node_id).encode(),
            "u": str(uid).encode(),
            "op": orjson.dumps(feed_to_json(op)),
        }

    def append_to(self, pipe: Any, op: FeedOp, uid: int) -> None:
        """Append ``op`` in ``pipe``; ``uid`` (unique per node) lets readers skip the copy a
        retried pipeline appends again."""
        from coredis import PureToken

        pipe.xadd(
            self.key,
            self._fields(op, uid),
            trim_strategy=PureToken.MAXLEN,
            trim_operator=PureToken.APPROXIMATELY,
            threshold=FEED_MAXLEN,
        )

    async def append(self, op: FeedOp, uid: int) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            self.append_to(pipe, op, uid)

    async def last_id(self) -> str:
        """The id of the newest entry ("0-0" for an empty feed)."""
        entries = await self._client.xrevrange(self.key, count=1)
        return _string(entries[0].identifier) if entries else "0-0"

    async def run(
        self,
        apply: Callable[[FeedOp], None],
        after: str,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Hand every other node's op after entry ``after`` to ``apply``, in feed order,
        until cancelled; across connection losses it resumes where it stopped."""
        task_status.started()
        last = after
        read_one = False  # ``last`` is an entry this node read (not a start position)
        failing = False
        checked = trio.current_time()
        while True:
            try:
                reply = await self._client.xread({self.key: last}, count=1000, block=1000)
                if read_one and (failing or trio.current_time() - checked > GAP_CHECK_INTERVAL):
                    checked = trio.current_time()
                    await self._check_gap(last)
            except Exception as exc:
                if not failing:
                    log.error("reading the feed failed (%s); retrying from %s", exc, last)
                failing = True
                await trio.sleep(1.0)
                continue
            if failing:
                log.info("reading the feed works again (from %s)", last)
                failing = False
            for entries in (reply or {}).values():
                for entry in entries:
                    last = _string(entry.identifier)
                    read_one = True
                    self._apply_entry(last, entry.field_values, apply)

    def _apply_entry(self, entry_id: str, values: Any, apply: Callable[[FeedOp], None]) -> None:
        """Apply one entry unless it is this node's own; a malformed one, or one the hub
        cannot apply, is logged and skipped (the node goes on: one bad entry must not stop
        every later change from reaching it)."""
        try:
            fields = {_string(k): v for k, v in values.items()}
            node = int(fields["n"])
            if node == self.node_id:
                return  # its own change: applied when it was made
            if not self._seen.first_time(node, int(fields.get("u", b"0"))):
                return  # a copy appended by a retried write
            op = feed_from_json(orjson.loads(fields["op"]))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring a malformed feed entry %s: %s", entry_id, exc)
            return
        self.applied += 1
        try:
            apply(op)
        except Exception:
            log.exception("applying feed entry %s (%s) failed", entry_id, type(op).__name__)

    async def _check_gap(self, last: str) -> None:
        """If the entry this node read last is gone from the feed and older entries were
        trimmed past it, entries it never read may have gone too (it was cut off, or lagged,
        for about ``FEED_MAXLEN`` changes): say so once; its replica may miss changes until
        it restarts."""
        if self.lost or await self._client.xrange(self.key, last, last, count=1):
            return
        oldest = await self._client.xrange(self.key, "-", "+", count=1)
        if oldest and _id_after(_string(oldest[0].identifier), last):
            self.lost = True
            log.error(
                "the feed was trimmed past entry %s before this node read on: its replica may "
                "miss changes; restart it to reload the state",
                last,
            )


def earlier_id(entry_id: str, seconds: float) -> str:
    """A stream position ``seconds`` before ``entry_id`` ("0-0" at the earliest)."""
    ms = int(entry_id.partition("-")[0]) - int(seconds * 1000)
    return f"{ms}-0" if ms > 0 else "0-0"


class RedisJournal:
    """The ``Journal`` seam over Redis: records (and replicated ops) written in order, each
    appended to the feed stream in the same pipeline (``RedisFeed``). Start ``run`` in a
    task."""

    def __init__(self, client: Any, keys: Keys, node_id: int, last_seq: int = 0) -> None:
        self._client = client
        self._keys = keys
        self.feed = RedisFeed(client, keys, node_id)
        self._queue: deque[tuple[int, int, FeedOp]] = deque()
        """(seq or 0, uid, op) in write order."""
        self._uids = fresh_ids()
        self._wakeup = trio.Event()
        self.last_seq = last_seq
        self._durable = last_seq
        self.on_durable: Callable[[], None] | None = None
        """Called (in the event loop) each time ``durable_seq`` advanced."""
        self.write_errors = 0

    def append(self, record: Record) -> int:
        self.last_seq += 1
        self._queue.append((self.last_seq, next(self._uids), record))
        self._wakeup.set()
        return self.last_seq

    def replicate(self, op: FeedOp) -> None:
        """Write ``op`` (if it has state in Redis) and publish it on the feed, in order with
        the records (no sequence number: nothing waits for it)."""
        self._queue.append((0, next(self._uids), op))
        self._wakeup.set()

    @property
    def durable_seq(self) -> int:
        return self._durable

    def _blind_batch(self) -> list[tuple[int, int, FeedOp]]:
        """The queue's longest prefix (at most ``BATCH``) that one pipeline can write."""
        batch: list[tuple[int, int, FeedOp]] = []
        for item in self._queue:
            if len(batch) == BATCH or blind_commands(self._keys, item[2]) is None:
                break
            batch.append(item)
        return batch

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write queued changes, oldest first, until cancelled. A failed write is retried
        (after a second) before any later one, so Redis and the feed never see them
        reordered; acks wait meanwhile."""
        task_status.started()
        queue = self._queue
        while True:
            if not queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            advanced = False
            while queue:
                batch = self._blind_batch()
                try:
                    if batch:
                        ops = [(uid, op) for _, uid, op in batch]
                        await write_batch(self._client, self._keys, ops, self.feed)
                    else:
                        batch = [queue[0]]
                        _, uid, op = batch[0]
                        await write(self._client, self._keys, op)
                        await self.feed.append(op, uid)
                except Exception as exc:
                    self.write_errors += 1
                    log.error("redis write of %d changes failed (%s); retrying", len(batch), exc)
                    await trio.sleep(1.0)
                    continue
                for seq, _, _ in batch:
                    queue.popleft()
                    if seq:
                        self._durable = seq
                        advanced = True
            if advanced and self.on_durable is not None:
                self.on_durable()

    async def flush(self) -> None:
        """Wait until everything queued so far is written (``run`` must be running)."""
        while self._queue:
            await trio.sleep(0.005)


async def load_state(client: Any, keys: Keys, hub: Hub, now: float) -> dict[str, int]:
    """Fill a fresh hub's replica from Redis: the user DB, chat messages, live locations and
    every user's presence. Returns counts for the log line."""
    k = keys
    store = hub.store
    chat_store = hub.chat.store
    for user in _strings(await client.smembers(k.users)):
        for friend in _strings(await client.smembers(k.of("friends", user))):
            store.add_friendship(user, friend)  # False (no-op) for the second direction
    groups = 0
    for group in _strings(await client.smembers(k.groups)):
        members = await client.hgetall(k.of("group", group))
        marks = {_string(user): int(mark) for user, mark in members.items()}
        if not marks:
            continue
        groups += 1
        store.set_group(group, marks)
        for user, mark in marks.items():
            chat_store.join(group, user, mark)
            hub.chat.ids.observe(mark)
    for user in _strings(await client.smembers(k.settings_users)):
        raw = await client.get(k.of("settings", user))
        if raw is not None:
            data = orjson.loads(raw)
            store.put_settings(
                user,
                UserSettings(
                    share_location=bool(data["share_location"]),
                    radius_m=data["radius_m"],
                    visible_to_strangers=bool(data["visible_to_strangers"]),
                ),
            )
    messages: list[ChatMessage] = []
    for conversation in _strings(await client.smembers(k.chats)):
        members = await client.zrange(k.of("chat", conversation), 0, -1)
        messages.extend(member_message(member) for member in members)
    messages.sort(key=lambda m: m.message_id)
    chat_store.load(messages)
    if messages:
        hub.chat.ids.observe(messages[-1].message_id)
    ttl = hub.settings.location_ttl
    locations = 0
    expired = []
    for user, raw in (await client.hgetall(k.locations)).items():
        lat, lon, ts, at = orjson.loads(raw)
        if at + ttl <= now:
            expired.append(user)
            continue
        locations += 1
        hub.apply_feed(LocationSet(_string(user), lat, lon, ts, at), now)
    if expired:
        await client.hdel(k.locations, expired)
    online = 0
    for user in _strings(await client.smembers(k.presence_users)):
        status, last, version = await client.hmget(
            k.of("presence", user), ["status", "last_active_at", "v"]
        )
        if status is None:
            continue
        online += _string(status) == "online"
        hub.load_status(
            user,
            "online" if _string(status) == "online" else "offline",
            None if last is None else float(last),
            0 if version is None else int(version),
        )
    return {
        "friendships": sum(1 for _ in store.friendships()),
        "groups": groups,
        "messages": len(messages),
        "locations": locations,
        "online": online,
    }


def _id_after(a: str, b: str) -> bool:
    """True if stream id ``a`` comes after ``b``."""
    a_ms, _, a_seq = a.partition("-")
    b_ms, _, b_seq = b.partition("-")
    return (int(a_ms), int(a_seq or 0)) > (int(b_ms), int(b_seq or 0))


def _settings_of(record: SettingsChanged) -> UserSettings:
    return UserSettings(
        share_location=record.share_location,
        radius_m=record.radius_m,
        visible_to_strangers=record.visible_to_strangers,
    )


def _string(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _strings(values: Iterable[Any]) -> list[str]:
    return sorted(_string(v) for v in values)
