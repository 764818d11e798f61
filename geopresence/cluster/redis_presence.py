"""Presence shared by every node (shell): per-device deadlines in Redis, and each user-level
transition decided once, atomically, by a Lua script.

Each node keeps its own devices in its hub's ``PresenceTable`` (heartbeats, 4000 closes) and
reports them here (the ``Replicator`` calls ``device_alive`` / ``device_ended``). Redis holds,
per user, ``gp:presence:{U}``: ``status``, ``last_active_at``, ``v`` (transition count) and
``d:<device>`` -> deadline (epoch seconds), plus ``gp:deadlines``, every device scored by its
deadline. The scripts below run atomically on the user's slot, so whichever node's call makes
the user's first device alive, or ends its last one, is the only one that sees the
transition: it announces it (``announce``), once for the whole cluster.

A node that dies stops reporting; its devices' deadlines pass and the *sweeper* of every
live node (``sweep_interval``, 0.5 s) finds them in ``gp:deadlines`` and ends them with the
same script, so the user goes offline exactly once, at most ``sweep_interval`` plus one
round trip after the deadline. A device that reconnected to another node in the meantime
has a later deadline there, and nothing happens (no flap).

Node clocks must agree (NTP): deadlines are compared across nodes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any, Final, Literal

import trio

from geopresence.cluster.redis_keys import Keys, string
from geopresence.core.replication import PresenceSet

log = logging.getLogger("geopresence.redis")

_NEXT_VERSION: Final = """
-- A user's transition count, made to grow with time as well: if Redis loses the hash (a
-- restart without persistence, a failover), new transitions still outrank old ones.
local function next_version(k, now_ms)
  local v = math.max(tonumber(redis.call('HGET', k, 'v') or '0') + 1, tonumber(now_ms))
  redis.call('HSET', k, 'v', string.format('%d', v))
  return string.format('%d', v)
end
"""

ALIVE: Final = (
    _NEXT_VERSION
    + """
-- KEYS[1] presence hash; ARGV: device, deadline, last_active_at, now (ms)
local k = KEYS[1]
local field = 'd:' .. ARGV[1]
local deadline = tonumber(ARGV[2])
local current = tonumber(redis.call('HGET', k, field) or '0')
if deadline > current then redis.call('HSET', k, field, ARGV[2]) end
local last = redis.call('HGET', k, 'last_active_at')
if not last or tonumber(ARGV[3]) > tonumber(last) then
  redis.call('HSET', k, 'last_active_at', ARGV[3])
  last = ARGV[3]
end
if redis.call('HGET', k, 'status') ~= 'online' then
  redis.call('HSET', k, 'status', 'online')
  return {1, last, next_version(k, ARGV[4]), 'online'}
end
return {0, last, redis.call('HGET', k, 'v') or '0', 'online'}
"""
)
"""Make a device alive until ``deadline`` (never shortening it); {1, last, v, 'online'} if
this made the user online, else {0, last, v, 'online'}: the current state, so that a node
whose reply to the deciding call was lost learns it from its next call. Numbers travel as
strings: Lua numbers would be truncated to integers."""

END: Final = (
    _NEXT_VERSION
    + """
-- KEYS[1] presence hash; ARGV: device, mode ('logout' | 'logout_all' | 'expire'),
-- now (s), now (ms)
local k = KEYS[1]
local now = tonumber(ARGV[3])
local mode = ARGV[2]
if mode == 'logout' then redis.call('HDEL', k, 'd:' .. ARGV[1]) end
local alive = 0
local mine = '0'
local fields = redis.call('HGETALL', k)
for i = 1, #fields, 2 do
  local name = fields[i]
  if string.sub(name, 1, 2) == 'd:' then
    if mode == 'logout_all' or tonumber(fields[i + 1]) <= now then
      redis.call('HDEL', k, name)
    else
      alive = alive + 1
      if name == 'd:' .. ARGV[1] then mine = fields[i + 1] end
    end
  end
end
local last = redis.call('HGET', k, 'last_active_at') or ''
if alive == 0 and redis.call('HGET', k, 'status') == 'online' then
  redis.call('HSET', k, 'status', 'offline')
  return {1, last, next_version(k, ARGV[4]), mine, 'offline'}
end
return {0, last, redis.call('HGET', k, 'v') or '0', mine,
        redis.call('HGET', k, 'status') or 'offline'}
"""
)
"""End a device (logout: at once; logout_all: every device of the user, at once; expire:
only if its deadline is ``<= now``, so a deadline another node extended wins), along with
every other device past its deadline; {1, last, v, ...} if this left the user without an
alive device; else {0, last, v, ..., status} (the current state). The fourth value is the
device's remaining deadline ('0': gone)."""

BATCH: Final = 256
"""Device changes sent per pipeline."""

DeviceOp = tuple[Literal["alive", "expire", "logout", "logout_all"], float, float | None]
"""("alive", deadline, last_active_at), ("expire", expired_at, None), or a logout
("logout": one device, "logout_all": every device of the user; both at once)."""


class RedisPresence:
    """Reports this node's devices to Redis and announces the transitions it decides.

    ``announce(transition)`` is called in the event loop for each transition this node
    decided; ``clock()`` is the current epoch time. Start ``run`` in a task.
    """

    def __init__(
        self,
        client: Any,
        keys: Keys,
        announce: Callable[[PresenceSet], None],
        clock: Callable[[], float],
        *,
        known_version: Callable[[str], int] = lambda user: 0,
        sweep_interval: float = 0.5,
    ) -> None:
        self._client = client
        self._keys = keys
        self._announce = announce
        self._clock = clock
        self._known_version = known_version
        """The version of ``user``'s status this node holds (0: none)."""
        self.sweep_interval = sweep_interval
        # Latest-wins per device: only its newest state matters to Redis, except that a
        # logout overtaken by a reconnect is still applied first (one node would publish
        # offline then online; so does the cluster).
        self._pending: dict[tuple[str, str], DeviceOp] = {}
        self._first: list[tuple[str, str, DeviceOp]] = []
        self._applying = 0
        self._scripts_loaded = False
        self._wakeup = trio.Event()
        # EVALSHA by hand: coredis' Script objects ask SCRIPT EXISTS before each pipelined
        # call, doubling the round trips' commands.
        self._alive_sha = hashlib.sha1(ALIVE.encode()).hexdigest()
        self._end_sha = hashlib.sha1(END.encode()).hexdigest()
        self.transitions = 0
        """Transitions this node decided (for metrics)."""
        self.swept = 0
        """Devices of other nodes ended by this node's sweeper (for metrics)."""
        self.errors = 0

    # ---------------------------------------------------------------- from the hub

    def device_alive(self, user: str, device: str, deadline: float, last_active_at: float) -> None:
        self._report(user, device, ("alive", deadline, last_active_at))

    def device_ended(self, user: str, device: str, expired_at: float | None) -> None:
        op: DeviceOp = ("logout", 0.0, None) if expired_at is None else ("expire", expired_at, None)
        self._report(user, device, op)

    def logout_user(self, user: str) -> None:
        """End every device of ``user`` on every node at once (HTTP logout of a user)."""
        self._report(user, "*", ("logout_all", 0.0, None))

    async def alive_now(
        self, user: str, device: str, deadline: float, last_active_at: float
    ) -> None:
        """Make a device alive in Redis before its session starts, so that whatever its
        user does next (a logout on another device, on another node) comes after it: a
        report still queued here could reach Redis after that and flap the user's status.
        If the device has a change queued, that queue keeps the order instead."""
        if (user, device) in self._pending or any(k[:2] == (user, device) for k in self._first):
            return
        self._applying += 1
        try:
            await self._apply_batch([(user, device, ("alive", deadline, last_active_at))])
        finally:
            self._applying -= 1

    def _report(self, user: str, device: str, op: DeviceOp) -> None:
        key = (user, device)
        previous = self._pending.get(key)
        if previous is not None and previous[0] == "logout" and op[0] == "alive":
            self._first.append((user, device, previous))
        self._pending[key] = op
        self._wakeup.set()

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._first) + self._applying

    # ---------------------------------------------------------------- Redis side

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Apply reported device changes and sweep expired devices, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sweep_loop)
            task_status.started()
            while True:
                if not self._pending and not self._first:
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                    continue
                first, self._first = self._first, []
                batch, self._pending = self._pending, {}
                ops = first + [(user, device, op) for (user, device), op in batch.items()]
                self._applying += len(ops)
                try:
                    for start in range(0, len(ops), BATCH):
                        await self._apply_batch(ops[start : start + BATCH])
                except Exception as exc:
                    self.errors += 1
                    log.error("redis presence of %d devices failed (%s); retrying", len(ops), exc)
                    # Retry them, in order, unless newer states were reported since.
                    for u, d, o in reversed(ops):
                        if (u, d) not in self._pending:
                            self._pending[(u, d)] = o
                    await trio.sleep(1.0)
                finally:
                    self._applying -= len(ops)

    async def flush(self) -> None:
        """Wait until every reported change is in Redis (``run`` must be running)."""
        while self.pending:
            await trio.sleep(0.005)

    async def _apply_batch(self, ops: list[tuple[str, str, DeviceOp]]) -> None:
        """Run the scripts of ``ops`` in one pipeline, then their follow-ups (the deadline
        index, an offline user's location) in another, and announce the transitions, in
        order. A user's ops stay in order: its keys live on one connection."""
        keys = self._keys
        client = self._client
        if not self._scripts_loaded:
            # Pipelines cannot fall back from EVALSHA to EVAL: load the scripts first.
            await client.script_load(ALIVE)  # every master of a cluster gets it
            await client.script_load(END)
            self._scripts_loaded = True
        now_ms = self._now_ms()
        requests = []
        try:
            async with client.pipeline(transaction=False) as pipe:
                for user, device, (kind, when, last_active_at) in ops:
                    key = keys.of("presence", user)
                    if kind == "alive":
                        args = [device, repr(when), repr(last_active_at), now_ms]
                        requests.append(pipe.evalsha(self._alive_sha, keys=[key], args=args))
                        pipe.zadd(keys.deadlines, {f"{user}\n{device}": when})
                        # Every time: after a Redis data loss the index must be rebuilt.
                        pipe.sadd(keys.presence_users, [user])
                    else:
                        now = when if kind == "expire" else self._clock()
                        args = [device, kind, repr(now), now_ms]
                        requests.append(pipe.evalsha(self._end_sha, keys=[key], args=args))
            results = [await request for request in requests]
        except Exception:
            self._scripts_loaded = False  # a restarted Redis forgot them
            raise
        offline: list[str] = []
        async with client.pipeline(transaction=False) as pipe:
            for (user, device, (kind, _, _)), result in zip(ops, results, strict=True):
                if kind == "alive":
                    self._result(user, result, 3)
                    continue
                if kind != "logout_all":
                    member = f"{user}\n{device}"
                    remaining = float(string(result[3]))
                    if remaining > 0:  # extended by another node meanwhile
                        pipe.zadd(keys.deadlines, {member: remaining})
                    else:
                        pipe.zrem(keys.deadlines, [member])
                if self._result(user, result, 4) == "offline":
                    offline.append(user)
            if offline:
                pipe.hdel(keys.locations, offline)

    def _now_ms(self) -> str:
        return str(int(self._clock() * 1000))

    def _result(self, user: str, result: Any, status_at: int) -> str | None:
        """Announce what a script reply says if it is news: a transition this call decided,
        or a state newer than the replica's (the reply to the deciding call was lost, and a
        retry or a later report finds the transition already made). Returns the status
        announced, if any."""
        decided = bool(int(result[0]))
        version = int(string(result[2]))
        if not decided and version <= self._known_version(user):
            return None
        status: Literal["online", "offline"] = (
            "online" if string(result[status_at]) == "online" else "offline"
        )
        text = string(result[1])
        if decided:
            self.transitions += 1
        self._announce(PresenceSet(user, status, float(text) if text else None, version))
        return status

    async def _sweep_loop(self) -> None:
        failing = False
        while True:
            await trio.sleep(self.sweep_interval)
            try:
                await self.sweep()
            except Exception as exc:
                self.errors += 1
                if not failing:  # once per outage, not twice a second
                    log.error("redis presence sweep failed (retrying quietly): %s", exc)
                failing = True
            else:
                if failing:
                    log.info("redis presence sweep works again")
                failing = False

    async def sweep(self) -> int:
        """End every device (of any node) whose deadline has passed; returns how many."""
        from coredis import PureToken

        now = self._clock()
        due = await self._client.zrange(
            self._keys.deadlines, "-inf", now, sortby=PureToken.BYSCORE, offset=0, count=500
        )
        ops: list[tuple[str, str, DeviceOp]] = []
        for member in due:
            user, _, device = string(member).partition("\n")
            ops.append((user, device, ("expire", now, None)))
        if ops:
            await self._apply_batch(ops)
        self.swept += len(due)
        return len(due)
