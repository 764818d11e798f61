"""The Lua scripts behind shared presence (shell): each runs atomically on one key's slot.

A Redis Cluster lets a script touch the keys of one slot only, so each script here touches
one key: a user's presence hash ``gp:presence:{U}`` (``ALIVE``, ``END``) or the node registry
``gp:nodes`` (``TAKE``, ``RENEW``, ``LAPSE``, ``LEAVE``). What spans slots (a node's index of
the devices it holds, ``gp:held:{X}``, the ``gp:presence_users`` index) is written by plain
commands around the scripts, in an order that keeps the index a superset of the truth
(``geopresence.cluster.redis_presence``).

The presence hash holds ``status``, ``last_active_at`` (epoch seconds), ``v`` (the user's
transition count), ``d:<device>`` -> ``"<incarnation> <since ms>"``: the *incarnation*
that holds the device (``<node id>/<token>``, one per run of a node: a restarted node, or
one that lost its lease, is a new incarnation) and when the device's connection opened
there, and a logout's tombstones (``END``). Numbers travel as strings: Lua numbers would be
truncated to integers.

A logout made at time T (the node's clock that made it) ends the connections opened at or
before T, and no later one: Redis (``END``, ``ALIVE``) and the nodes
(``geopresence.cluster.control``) judge by the same two times.

The registry ``gp:nodes`` is one hash: ``n:<node id>`` -> ``"<token> <renewed ms> <expires
ms>"`` for each live node's lease, and ``gone:<incarnation>`` -> ``"<last seen ms> <grace
from ms>"`` for each incarnation whose lease lapsed or that left, until the sweepers have
ended every device it held (``geopresence.cluster.redis_nodes``). Times are the nodes'
clocks in epoch milliseconds (nodes run NTP, as for every other deadline they share).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any, Final

_NEXT_VERSION: Final = """
-- A user's transition count, made to grow with time as well: if Redis loses the hash (a
-- restart without persistence, a failover), new transitions still outrank old ones.
local function next_version(k, now_ms)
  local v = math.max(tonumber(redis.call('HGET', k, 'v') or '0') + 1, tonumber(now_ms))
  redis.call('HSET', k, 'v', string.format('%d', v))
  return string.format('%d', v)
end
"""

_TOMBSTONES: Final = """
-- A logout's tombstone: lo:<device> (or lo:* for every device) -> "<holder or -> <ms>";
-- a holder: d:<device> -> "<incarnation> <since ms>" (an older version's: "<incarnation>").
local function logged_out_at(value)
  return tonumber(string.match(value or '', ' (%d+)$') or '-1')
end
local function holder_of(value)  -- '' for none, or an older version's deadline
  if tonumber(value) then return '' end
  return string.match(value or '', '^(%S*)')
end
"""

ALIVE: Final = (
    _NEXT_VERSION
    + _TOMBSTONES
    + """
-- KEYS[1] presence hash; ARGV: device, holder (incarnation), at (s), now (ms), since (ms:
-- when the device's connection opened on its node)
local k = KEYS[1]
local since = tonumber(ARGV[5])
local function refused(code, detail)
  return {code, redis.call('HGET', k, 'last_active_at') or '', redis.call('HGET', k, 'v') or '0',
          redis.call('HGET', k, 'status') or 'offline', detail}
end
local logout = math.max(logged_out_at(redis.call('HGET', k, 'lo:' .. ARGV[1])),
                        logged_out_at(redis.call('HGET', k, 'lo:*')))
if logout >= since then return refused(-1, string.format('%d', logout)) end
local held = redis.call('HGET', k, 'd:' .. ARGV[1])
local before = holder_of(held)
if before ~= ARGV[2] and logged_out_at(held) > since then
  return refused(-2, before)  -- a newer connection of the device holds it elsewhere
end
redis.call('PERSIST', k)  -- a hash of tombstones only expires (END)
redis.call('HSET', k, 'd:' .. ARGV[1], ARGV[2] .. ' ' .. ARGV[5])
local last = redis.call('HGET', k, 'last_active_at')
if not last or tonumber(ARGV[3]) > tonumber(last) then
  redis.call('HSET', k, 'last_active_at', ARGV[3])
  last = ARGV[3]
end
if redis.call('HGET', k, 'status') ~= 'online' then
  redis.call('HSET', k, 'status', 'online')
  return {1, last, next_version(k, ARGV[4]), 'online', before}
end
return {0, last, redis.call('HGET', k, 'v') or '0', 'online', before}
"""
)
"""``holder`` holds the device from now on (a session of it opened there at ``at``); {1,
last, v, 'online', before} if this made the user online, else {0, last, v, 'online',
before}: the current state, so that a node whose reply to the deciding call was lost learns
it from its next call; ``before`` is the incarnation that held the device until now ('' if
none), which must close its connection of it (4002). A report that reaches Redis late
(from a node that lost its lease, was cut off, or had it queued) changes nothing if the
device was logged out at or after its connection opened (``since``): {-1, last, v,
status, the logout's time in ms}, and its node ends it (4001); nor if a connection of the
device that opened later holds it elsewhere: {-2, last, v, status, its holder}, and its
node closes its own (4002)."""

TOMBSTONE_MS: Final = 86_400_000
"""How long a logout's tombstone stays (a day), as far as the user's next ``END``: longer
than any report of a device's can reach Redis late, or a pub/sub gap last, while its node
holds its lease."""

END: Final = (
    _NEXT_VERSION
    + _TOMBSTONES
    + f"local TOMBSTONE_MS = {TOMBSTONE_MS}\n"
    + """
-- KEYS[1] presence hash; ARGV: device, mode ('end' | 'logout' | 'logout_all' | 'legacy'),
-- holder, last_active_at (s, '' if unknown), now (ms), made (ms: when the end or logout
-- was made on its node)
local k = KEYS[1]
local mode = ARGV[2]
local now, made = ARGV[5], ARGV[6]
local logout = mode == 'logout' or mode == 'logout_all'
local function tombstone(device, holder)  -- the latest logout's stays
  local name = 'lo:' .. device
  if logged_out_at(redis.call('HGET', k, name)) < tonumber(made) then
    redis.call('HSET', k, name, holder .. ' ' .. made)
  end
end
local ended = {}
local told = {}
local gone = {}
local dropped = 0
local alive = 0
local fields = redis.call('HGETALL', k)
for i = 1, #fields, 2 do
  local name, value = fields[i], fields[i + 1]
  if string.sub(name, 1, 3) == 'lo:' then
    local device = string.sub(name, 4)
    if logged_out_at(value) < tonumber(now) - TOMBSTONE_MS then
      redis.call('HDEL', k, name)
    elseif logout and device ~= '*' and (mode == 'logout_all' or device == ARGV[1]) then
      told[device] = value  -- an earlier logout's (this one retried?): told again
    end
  elseif string.sub(name, 1, 2) == 'd:' then
    local device = string.sub(name, 3)
    local holder = holder_of(value)
    local drop = false
    if logout and (mode == 'logout_all' or device == ARGV[1]) then
      drop = logged_out_at(value) <= tonumber(made)  -- a later connection stays
    elseif device == ARGV[1] then
      if mode == 'legacy' then
        drop = tonumber(value) ~= nil
      elseif mode == 'end' then
        drop = holder == ARGV[3]
      end
    end
    if drop then
      redis.call('HDEL', k, name)
      dropped = dropped + 1
      table.insert(ended, device)
      table.insert(ended, holder)
      if logout then
        gone[device] = true
        tombstone(device, holder ~= '' and holder or '-')
        table.insert(ended, made)
      else
        table.insert(ended, '')
      end
      table.insert(ended, '1')
    else
      alive = alive + 1
    end
  end
end
if mode == 'logout_all' then
  tombstone('*', '-')
elseif mode == 'logout' then
  tombstone(ARGV[1], '-')  -- held by none: for a report that reaches Redis late
end
if logout and redis.call('HEXISTS', k, 'status') == 0 then
  redis.call('PEXPIRE', k, TOMBSTONE_MS)  -- tombstones only (a user forgotten meanwhile?)
end
for device, value in pairs(told) do
  local holder, at = string.match(value, '^(%S+) (%d+)$')
  if holder and holder ~= '-' and not gone[device] then  -- (what this call ended: above)
    table.insert(ended, device)
    table.insert(ended, holder)
    table.insert(ended, at)
    table.insert(ended, '0')
  end
end
if dropped > 0 and ARGV[4] ~= '' then
  local last = redis.call('HGET', k, 'last_active_at')
  if not last or tonumber(ARGV[4]) > tonumber(last) then
    redis.call('HSET', k, 'last_active_at', ARGV[4])
  end
end
local last = redis.call('HGET', k, 'last_active_at') or ''
local reply
if alive == 0 and redis.call('HGET', k, 'status') == 'online' then
  redis.call('HSET', k, 'status', 'offline')
  reply = {1, last, next_version(k, now), 'offline'}
else
  reply = {0, last, redis.call('HGET', k, 'v') or '0', redis.call('HGET', k, 'status') or 'offline'}
end
for _, entry in ipairs(ended) do table.insert(reply, entry) end
return reply
"""
)
"""End a device: ``end`` only if ``holder`` still holds it (another node that took it over
meanwhile wins), ``logout`` whoever holds it, ``logout_all`` every device of the user (a
logout only if its connection opened at or before ``made``), ``legacy`` a device recorded
by an older version (its value a deadline, not a holder).
``last_active_at`` raises the user's if this ended a device. Replies {1, last, v,
'offline', ...} if this left the user without a device, else {0, last, v, status, ...},
then (device, its holder, the logout's time in ms or '', '1') for each device ended, and,
for a logout, (device, holder, time, '0') for each earlier logout of the devices it ends
(the holder is told again: this may be a retry whose first reply was lost). A logout
leaves a tombstone, ``lo:<device>`` (``lo:*`` for every device) -> ``"<holder or -> <ms>"``:
what a report that reaches Redis late (``ALIVE``'s ``since``) and a node that missed its
notice (``geopresence.cluster.control``) judge by. One older than ``TOMBSTONE_MS`` is
dropped by the user's next ``END``; a hash of tombstones only (a user never seen, or
forgotten while logged out) expires then."""

_LEASES: Final = """
-- gp:nodes holds n:<N> -> "<token> <renewed ms> <expires ms>", each live incarnation's lease,
-- and gone:<N>/<token> -> "<last sign of life ms> <grace window from ms>".
local function lease(nodes, field)
  local held = redis.call('HGET', nodes, field)
  if not held then return nil end
  return string.match(held, '^(%S+) (%d+) (%d+)$')
end
local function gone(nodes, node, token, last, grace_from)
  redis.call('HSET', nodes, 'gone:' .. node .. '/' .. token, last .. ' ' .. grace_from)
end
"""

TAKE: Final = (
    _LEASES
    + """
-- KEYS[1] gp:nodes; ARGV: node id, token, now (ms), lease (ms)
local field = 'n:' .. ARGV[1]
local now = tonumber(ARGV[3])
local token, renewed, expires = lease(KEYS[1], field)
if token and token ~= ARGV[2] then
  if tonumber(expires) > now then return tonumber(expires) - now end
  gone(KEYS[1], ARGV[1], token, renewed, expires)
end
redis.call('HSET', KEYS[1], field,
           ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. string.format('%d', now + tonumber(ARGV[4])))
return 0
"""
)
"""Take node id ``N`` for the incarnation ``N/token``; 0 if taken, else the milliseconds
left of another live incarnation's lease. An earlier incarnation whose lease lapsed becomes
``gone``: the sweepers end its devices."""

RENEW: Final = (
    _LEASES
    + """
-- KEYS[1] gp:nodes; ARGV: node id, token, now (ms), lease (ms)
local field = 'n:' .. ARGV[1]
local now = tonumber(ARGV[3])
local token, renewed, expires = lease(KEYS[1], field)
if token == ARGV[2] then
  if tonumber(expires) > now then
    redis.call('HSET', KEYS[1], field,
               token .. ' ' .. ARGV[3] .. ' ' .. string.format('%d', now + tonumber(ARGV[4])))
    return 1
  end
  redis.call('HDEL', KEYS[1], field)
  gone(KEYS[1], ARGV[1], token, renewed, expires)
end
return 0
"""
)
"""Extend the lease of ``N/token``; 1 if kept, 0 if lost: it lapsed (the node was stalled or
cut off from Redis for longer than its lease: it is ``gone`` now, even if no sweeper said so
yet), another incarnation took the id, or Redis lost the registry. A node that lost its
lease must become a new incarnation: the others may already be ending its devices."""

LAPSE: Final = (
    _LEASES
    + """
-- KEYS[1] gp:nodes; ARGV: node id, token, now (ms)
local field = 'n:' .. ARGV[1]
local token, renewed, expires = lease(KEYS[1], field)
if token ~= ARGV[2] or tonumber(expires) > tonumber(ARGV[3]) then return 0 end
redis.call('HDEL', KEYS[1], field)
gone(KEYS[1], ARGV[1], token, renewed, expires)
return 1
"""
)
"""A sweeper found the lease of ``N/token`` lapsed: the incarnation is ``gone`` (once, if
several sweepers race), its last sign of life the last renewal, its devices' grace window
counted from the lease's end."""

LEAVE: Final = (
    _LEASES
    + """
-- KEYS[1] gp:nodes; ARGV: node id, token, now (ms)
local field = 'n:' .. ARGV[1]
local held = redis.call('HGET', KEYS[1], field)
if not held or string.match(held, '^(%S+)') ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], field)
gone(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[3])
return 1
"""
)
"""A clean shutdown: the id is free at once; the devices the node held stay alive for their
grace window from now (their clients reconnect elsewhere), then the sweepers end them."""


def sha1(script: str) -> str:
    """The SHA1 Redis knows ``script`` by (``EVALSHA``)."""
    return hashlib.sha1(script.encode()).hexdigest()


class PipelinedScript:
    """A script run by its SHA in pipelines, which cannot fall back from ``EVALSHA`` to
    ``EVAL``: loaded before its first use, and again after a failure (a restarted Redis
    forgot it)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = sha1(source)
        self._loaded = False

    @contextlib.asynccontextmanager
    async def ready(self, client: Any) -> AsyncIterator[str]:
        """For the block: the script is loaded (every master of a Cluster has it); gives
        its SHA. A failure inside marks it to be loaded again."""
        if not self._loaded:
            await client.script_load(self.source)
            self._loaded = True
        try:
            yield self.sha
        except Exception:
            self._loaded = False
            raise
