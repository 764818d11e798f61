"""The Lua scripts that search a cell of strangers in Redis (``redis_strangers``): both
remove the cell's expired members first, then return what the node's exact query decides."""

from __future__ import annotations

from typing import Final

SURE_WITHIN: Final = 0.9995, -5.0
"""Redis' distance (its Earth radius is 0.03 % larger than ours; its positions are kept to
~0.6 m) within ``radius * 0.9995 - 5`` m: surely within ours, counted in Redis."""
SURE_BEYOND: Final = 1.0005, 5.0
"""... beyond ``radius * 1.0005 + 5`` m: surely beyond ours, not read. Members between the
two, and the nearest for the page, are sent to the node, whose exact query decides."""
TIE_M: Final = 1.0
"""Members within this of the page's last distance (by Redis) are sent as well: the exact
query breaks ties by user id, Redis' order does not."""


def _cell_script_head(remove_position: str, now: str, first_excluded: int) -> str:
    """The start both scripts share (KEYS: positions, expiries, ts): remove the cell's
    expired members (``remove_position``: the command that takes one out of the positions,
    ``ZREM`` for a GEO set, ``HDEL`` for a hash; ``now``: the argument holding the time),
    then read the excluded users from ``ARGV[first_excluded]`` on into ``excluded``."""
    return f"""
local dead = redis.call('ZRANGE', KEYS[2], '-inf', {now}, 'BYSCORE')
for first = 1, #dead, 512 do
  local some = {{unpack(dead, first, math.min(first + 511, #dead))}}
  redis.call('{remove_position}', KEYS[1], unpack(some))
  redis.call('ZREM', KEYS[2], unpack(some))
  redis.call('HDEL', KEYS[3], unpack(some))
end
local excluded = {{}}
for i = {first_excluded}, #ARGV do excluded[ARGV[i]] = true end
"""


SEARCH: Final = (
    _cell_script_head("ZREM", "ARGV[5]", 8)
    + """local sure_within, need = tonumber(ARGV[3]), tonumber(ARGV[6])
local found = redis.call('GEOSEARCH', KEYS[1], 'FROMLONLAT', ARGV[1], ARGV[2],
                         'BYRADIUS', ARGV[4], 'm', 'ASC', 'WITHDIST', 'WITHCOORD')
local counted, sent, last = 0, 0, -1
local out = {0}
for _, item in ipairs(found) do
  local user = item[1]
  if not excluded[user] then
    local distance = tonumber(item[2])
    if sent < need or distance <= last + tonumber(ARGV[7]) or distance > sure_within then
      if sent < need then last = distance end
      sent = sent + 1
      out[#out + 1] = user
      out[#out + 1] = item[3][1]
      out[#out + 1] = item[3][2]
      out[#out + 1] = redis.call('HGET', KEYS[3], user) or '0'
    else
      counted = counted + 1
    end
  end
end
out[1] = counted
return out
"""
)
"""One cell's search (KEYS: GEO set, expiries, ts; ARGV: lon, lat, the radius within which
members are surely inside and beyond which surely outside (metres, by Redis), now, the page's
need, the tie distance, then the excluded users). Removes expired members first. Returns the
count of members surely within that are not sent, then user, lon, lat, ts of those sent: the
``need`` nearest (with ties) and every one in the uncertain ring."""


POLAR: Final = (
    _cell_script_head("HDEL", "ARGV[1]", 2)
    + """local all = redis.call('HGETALL', KEYS[1])
local out = {0}
for i = 1, #all, 2 do
  if not excluded[all[i]] then
    local lon, lat = string.match(all[i + 1], '(%S+) (%S+)')
    out[#out + 1] = all[i]
    out[#out + 1] = lon
    out[#out + 1] = lat
    out[#out + 1] = redis.call('HGET', KEYS[3], all[i]) or '0'
  end
end
return out
"""
)
"""A polar cap's search (KEYS: positions hash, expiries, ts; ARGV: now, then the excluded
users): every live member, as ``SEARCH`` returns them (none counted in Redis)."""
