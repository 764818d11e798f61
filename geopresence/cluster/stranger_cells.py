"""The strangers' cells in Redis (cluster): which cell a visible user's coarse position is
in (its precision-4 geohash cell, ~39 x 20 km at the equator, or a polar cap), and the keys
of a cell, which share a Cluster hash tag::

    gp:strangers:{9q8y}      GEO set: user -> coarse position
    gp:strangers-exp:{9q8y}  sorted set: user -> when strangers stop seeing it (epoch
                             seconds: its strangers' deadline, ``core.stranger_expiry``)
    gp:strangers-ts:{9q8y}   hash: user -> the ts of the update that entered its coarse cell

``RedisStrangers`` (``geopresence.cluster.redis_strangers``) writes and searches them; a
forget takes a user out of every one (``forget_stranger``).
"""

from __future__ import annotations

from typing import Any, Final

from geopresence.cluster.redis_keys import Keys, string
from geopresence.model.geocells import cell_box, cell_of

CELL_PRECISION: Final = 4
"""Geohash precision of the Redis cells (~39 x 20 km at the equator): a search of the
largest radius (50 km) reads a few dozen keys, a city's users are spread over a few."""

POLAR_LAT: Final = 80.0
"""Beyond this latitude (north or south) visible users are kept in one hash per polar cap,
``gp:strangers-polar:{polar-n}`` (``polar-s``), not in GEO sets: Redis keeps GEO positions
only up to 85.05 degrees, and geohash cells narrow towards the poles (a search there would
read hundreds). The caps hold few people; a search that reaches one reads it whole."""
POLAR_CELLS: Final = {"polar-n": POLAR_LAT, "polar-s": -POLAR_LAT}


def cell_keys(keys: Keys, cell: str) -> tuple[str, str, str]:
    """The keys of one cell: positions (a GEO set; a polar cap's: a hash), expiries, ts
    (one hash tag, one slot)."""
    kind = "strangers-polar" if cell in POLAR_CELLS else "strangers"
    return keys.of(kind, cell), keys.of("strangers-exp", cell), keys.of("strangers-ts", cell)


def leave(pipe: Any, keys: Keys, cell: str, user: str) -> Any:
    """Queue on ``pipe`` the commands that take ``user`` out of ``cell``; returns the request
    whose answer says whether it was listed there."""
    where, exp, ts = cell_keys(keys, cell)
    if cell in POLAR_CELLS:
        pipe.hdel(where, [user])
    else:
        pipe.zrem(where, [user])
    pipe.zrem(exp, [user])
    return pipe.hdel(ts, [user])


def cell_name(lat: float, lon: float) -> str:
    """The Redis cell of a coarse position: its geohash-4 cell, or its polar cap."""
    if abs(lat) > POLAR_LAT:
        return "polar-n" if lat > 0 else "polar-s"
    return cell_of(lat, lon, CELL_PRECISION)


def cells_of_index(code: str) -> list[str]:
    """The Redis cell(s) a user whose index geohash (``core.grid``) is ``code`` can be in:
    both when that ~5 m cell straddles a polar cap's edge."""
    south, north, _, _ = cell_box(code)
    names = {cell_name(lat, 0.0) for lat in (south, north)}
    return sorted(code[:CELL_PRECISION] if name not in POLAR_CELLS else name for name in names)


async def forget_stranger(client: Any, keys: Keys, user: str) -> int:
    """Take ``user`` out of every strangers' cell (a forget: also the entries that expired
    but no search has cleaned yet, so its name stays in no cell). Scans the cells' keys on
    every master: forgets are rare. Returns how many cells listed it."""
    head = f"{keys.prefix}:strangers-ts:"
    found = [string(key) async for key in client.scan_iter(match=f"{head}*")]
    listed = 0
    for key in found:
        async with client.pipeline(transaction=False) as pipe:
            removed = leave(pipe, keys, key[len(head) :].strip("{}"), user)
        listed += bool(await removed)
    return listed
