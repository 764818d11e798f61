"""The ``Store`` seam over Redis (shell): the user DB shared by several nodes.

The ``Store`` contract is synchronous (the core calls it while handling a message), so, as
its docstring foresees, this keeps a local replica (a ``MemoryStore``) that answers every
read, applies every write to it at once, and writes through to Redis in the background, in
order (``run``). ``load`` fills the replica from Redis at start-up.

Keys (hash tags keep each user's or group's keys on one Cluster slot; the three index sets
are what ``load`` starts from)::

    {prefix}:friends:{U}      set of U's friends
    {prefix}:groups_of:{U}    set of the groups U is a member of
    {prefix}:group:{G}        set of G's members
    {prefix}:settings:{U}     JSON of U's settings (absent: the defaults)
    {prefix}:users            index: users with at least one friend
    {prefix}:groups           index: existing groups
    {prefix}:settings_users   index: users with settings

Status (issue 9): changes made by another node reach this replica only through ``load`` (a
change feed between nodes is still to come), so ``geopresence serve`` does not offer
``--redis`` yet.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator, Set
from typing import Any

import orjson
import trio

from geopresence.store import DEFAULT_SETTINGS, MemoryStore, UserSettings

log = logging.getLogger("geopresence.redis")

Op = tuple[str, str, tuple[str, ...]]
"""(command, key, arguments): "sadd", "srem", "del" or "set"."""


class RedisStore:
    """A ``Store`` whose data lives in Redis, read from a local replica."""

    def __init__(self, client: Any, *, prefix: str = "gp") -> None:
        self._client = client
        self._prefix = prefix
        self._replica = MemoryStore()
        self._ops: deque[Op] = deque()
        self._wakeup = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self.write_errors = 0

    # ---------------------------------------------------------------- keys

    def _key(self, kind: str, name: str | None = None) -> str:
        return f"{self._prefix}:{kind}" if name is None else f"{self._prefix}:{kind}:{{{name}}}"

    def _queue(self, command: str, key: str, *args: str) -> None:
        self._ops.append((command, key, args))
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._wakeup.set()

    # ---------------------------------------------------------------- the Store seam

    def add_friendship(self, a: str, b: str) -> bool:
        if not self._replica.add_friendship(a, b):
            return False
        for user, friend in ((a, b), (b, a)):
            self._queue("sadd", self._key("friends", user), friend)
            self._queue("sadd", self._key("users"), user)
        return True

    def remove_friendship(self, a: str, b: str) -> bool:
        if not self._replica.remove_friendship(a, b):
            return False
        for user, friend in ((a, b), (b, a)):
            self._queue("srem", self._key("friends", user), friend)
            if not self._replica.friends_of(user):
                self._queue("srem", self._key("users"), user)
        return True

    def are_friends(self, a: str, b: str) -> bool:
        return self._replica.are_friends(a, b)

    def friends_of(self, user: str) -> Set[str]:
        return self._replica.friends_of(user)

    def set_group(self, group: str, members: Iterable[str]) -> tuple[set[str], set[str]]:
        added, removed = self._replica.set_group(group, members)
        self._queue("sadd", self._key("groups"), group)
        for user in added:
            self._queue("sadd", self._key("group", group), user)
            self._queue("sadd", self._key("groups_of", user), group)
        for user in removed:
            self._queue("srem", self._key("group", group), user)
            self._queue("srem", self._key("groups_of", user), group)
        return added, removed

    def delete_group(self, group: str) -> set[str] | None:
        members = self._replica.delete_group(group)
        if members is None:
            return None
        self._queue("del", self._key("group", group))
        self._queue("srem", self._key("groups"), group)
        for user in members:
            self._queue("srem", self._key("groups_of", user), group)
        return members

    def add_member(self, group: str, user: str) -> bool:
        if not self._replica.add_member(group, user):
            return False
        self._queue("sadd", self._key("groups"), group)
        self._queue("sadd", self._key("group", group), user)
        self._queue("sadd", self._key("groups_of", user), group)
        return True

    def remove_member(self, group: str, user: str) -> bool:
        if not self._replica.remove_member(group, user):
            return False
        self._queue("srem", self._key("group", group), user)
        self._queue("srem", self._key("groups_of", user), group)
        return True

    def group_members(self, group: str) -> Set[str] | None:
        return self._replica.group_members(group)

    def groups_of(self, user: str) -> Set[str]:
        return self._replica.groups_of(user)

    def get_settings(self, user: str) -> UserSettings:
        return self._replica.get_settings(user)

    def put_settings(self, user: str, settings: UserSettings) -> None:
        self._replica.put_settings(user, settings)
        if settings == DEFAULT_SETTINGS:
            self._queue("del", self._key("settings", user))
            self._queue("srem", self._key("settings_users"), user)
        else:
            data = orjson.dumps(
                {
                    "share_location": settings.share_location,
                    "radius_m": settings.radius_m,
                    "visible_to_strangers": settings.visible_to_strangers,
                }
            ).decode()
            self._queue("set", self._key("settings", user), data)
            self._queue("sadd", self._key("settings_users"), user)

    def friendships(self) -> Iterator[tuple[str, str]]:
        return self._replica.friendships()

    def groups(self) -> Iterator[tuple[str, Set[str]]]:
        return self._replica.groups()

    def settings_items(self) -> Iterator[tuple[str, UserSettings]]:
        return self._replica.settings_items()

    # ---------------------------------------------------------------- Redis side

    @property
    def pending(self) -> int:
        """Writes applied here and not yet in Redis."""
        return len(self._ops)

    async def load(self) -> None:
        """Fill the (empty) replica from Redis (start-up, before serving)."""
        client = self._client
        replica = MemoryStore()
        for user in _strings(await client.smembers(self._key("users"))):
            for friend in _strings(await client.smembers(self._key("friends", user))):
                if user < friend or not replica.are_friends(user, friend):
                    replica.add_friendship(user, friend)
        for group in _strings(await client.smembers(self._key("groups"))):
            replica.set_group(group, _strings(await client.smembers(self._key("group", group))))
        for user in _strings(await client.smembers(self._key("settings_users"))):
            raw = await client.get(self._key("settings", user))
            if raw is not None:
                data = orjson.loads(raw)
                replica.put_settings(
                    user,
                    UserSettings(
                        share_location=bool(data["share_location"]),
                        radius_m=data["radius_m"],
                        visible_to_strangers=bool(data["visible_to_strangers"]),
                    ),
                )
        self._replica = replica

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write queued changes to Redis, in order, until cancelled. A failed write is
        retried (after a second) before any later one: Redis never sees them reordered."""
        task_status.started()
        while True:
            if not self._ops:
                self._idle.set()
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            command, key, args = self._ops[0]
            try:
                await self._write(command, key, args)
            except Exception as exc:
                self.write_errors += 1
                log.error("redis %s %s failed (%s); retrying", command, key, exc)
                await trio.sleep(1.0)
                continue
            self._ops.popleft()

    async def flush(self) -> None:
        """Wait until every change made so far is in Redis (``run`` must be running)."""
        while self._ops:
            await self._idle.wait()

    async def _write(self, command: str, key: str, args: tuple[str, ...]) -> None:
        client = self._client
        if command == "sadd":
            await client.sadd(key, args)
        elif command == "srem":
            await client.srem(key, args)
        elif command == "del":
            await client.delete([key])
        elif command == "set":
            await client.set(key, args[0])
        else:  # pragma: no cover - every queued command is one of the above
            raise ValueError(command)


def _strings(values: Iterable[Any]) -> list[str]:
    return sorted(v.decode() if isinstance(v, bytes) else str(v) for v in values)
