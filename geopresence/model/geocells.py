"""Geohash cells that cover a circle, exactly (sans-I/O).

The design subscribes a watcher to its geohash cell and the 8 neighbours. That misses people:
at precision 5 a cell is ~4.9 km tall and, at 60° latitude, ~2.4 km wide, so the 3x3 block
does not reach 5 miles (8 km) in every direction. Here the cover is computed from the circle
itself: the exact latitude/longitude bounding box of the spherical cap (widened over a pole
and split across the antimeridian), then every cell of one precision intersecting that box.
The precision is the finest whose cover has at most ``MAX_COVER_CELLS`` cells, so dense areas
get small cells and the poles get a few large ones. Nobody inside the circle is outside the
cover; callers then filter by exact distance.

Also here: the **coarse grid** (``coarse_cell``, ``coarse_center``), cells of about 100 m on
which every stranger-facing decision is taken (see ``strangers``).

Cells are python-geohash strings. ``cell_of`` and the cover agree on boundaries because both go
through ``geohash.encode`` (a point on a cell edge belongs to the cell north/east of it;
longitude 180 is the same meridian as -180).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Final

import geohash

from geopresence.model.geo import EARTH_RADIUS_M

MAX_PRECISION: Final = 6
"""Finest precision used for covers and cell channels (~1.2 km x 0.6 km cells)."""
MAX_COVER_CELLS: Final = 64
"""Upper bound on the cells of one cover: bounds the subscriptions of one watcher."""
INDEX_PRECISION: Final = 9
"""Precision of the position keys in the grid (~5 m): any cover cell is a prefix of them."""

_LAT_BELOW_90: Final = math.nextafter(90.0, -math.inf)
_MARGIN_M: Final = 1.0
"""Extra metres on the radius: the cover must never be the reason someone is missed."""
_EPS_DEG: Final = 1e-9


def lat_bits(precision: int) -> int:
    return 5 * precision // 2


def lon_bits(precision: int) -> int:
    return (5 * precision + 1) // 2


def normalize_lon(lon: float) -> float:
    """Longitude in [-180, 180)."""
    lon = math.fmod(lon + 180.0, 360.0)
    if lon < 0:
        lon += 360.0
    return lon - 180.0


_SNAP_DEG = 1e-9
"""Coordinates closer than this to 0 (0.1 mm) are encoded as 0: python-geohash's C encoder
misplaces some subnormal-scale values (lat 1.2e-291 lands one cell north of lat 0)."""


def cell_of(lat: float, lon: float, precision: int) -> str:
    """The geohash cell of a point (lat 90 is folded into the top row, lon 180 into -180)."""
    lat = 0.0 if abs(lat) < _SNAP_DEG else min(lat, _LAT_BELOW_90)
    lon = normalize_lon(lon)
    lon = 0.0 if abs(lon) < _SNAP_DEG else lon
    return str(geohash.encode(lat, lon, precision))


Box = tuple[float, float, list[tuple[float, float]]]
"""(lat_min, lat_max, [(lon_min, lon_max), ...]) with longitudes inside [-180, 180]."""


def cap_box(lat: float, lon: float, radius_m: float) -> Box:
    """The latitude/longitude box of the spherical cap of ``radius_m`` around a point.

    Exact for a sphere: the latitude extent is +/- the angular radius; the longitude extent is
    asin(sin(r) / cos(lat)) unless the cap contains a pole, in which case every longitude is
    covered. A range crossing the antimeridian is split in two.
    """
    angle = (radius_m + _MARGIN_M) / EARTH_RADIUS_M
    if angle >= math.pi / 2:
        return -90.0, 90.0, [(-180.0, 180.0)]
    dlat = math.degrees(angle)
    lat_min, lat_max = lat - dlat - _EPS_DEG, lat + dlat + _EPS_DEG
    cos_lat = math.cos(math.radians(lat))
    if lat_max >= 90.0 or lat_min <= -90.0 or math.sin(angle) >= cos_lat:
        return max(lat_min, -90.0), min(lat_max, 90.0), [(-180.0, 180.0)]
    dlon = math.degrees(math.asin(math.sin(angle) / cos_lat)) + _EPS_DEG
    lo, hi = lon - dlon, lon + dlon
    if lo < -180.0:
        return lat_min, lat_max, [(lo + 360.0, 180.0), (-180.0, hi)]
    if hi > 180.0:
        return lat_min, lat_max, [(lo, 180.0), (-180.0, hi - 360.0)]
    return lat_min, lat_max, [(lo, hi)]


def _index_range(low: float, high: float, origin: float, size: float, count: int) -> range:
    first = max(0, math.floor((low - origin) / size))
    last = min(count - 1, math.floor((high - origin) / size))
    return range(first, last + 1)


def _ranges(box: Box, precision: int) -> tuple[range, set[int]]:
    """Row indices and the set of column indices of the cells intersecting ``box``."""
    lat_min, lat_max, segments = box
    rows = 1 << lat_bits(precision)
    cols = 1 << lon_bits(precision)
    lat_range = _index_range(lat_min, lat_max, -90.0, 180.0 / rows, rows)
    columns = {i for lo, hi in segments for i in _index_range(lo, hi, -180.0, 360.0 / cols, cols)}
    return lat_range, columns


def cover_size(box: Box, precision: int) -> int:
    """How many cells of ``precision`` a ``cover`` of ``box`` has (without listing them)."""
    lat_range, columns = _ranges(box, precision)
    return len(lat_range) * len(columns)


def choose_precision(box: Box) -> int:
    """The finest precision (<= MAX_PRECISION) whose cover has at most MAX_COVER_CELLS."""
    for precision in range(MAX_PRECISION, 1, -1):
        if cover_size(box, precision) <= MAX_COVER_CELLS:
            return precision
    return 1  # 32 cells cover the whole world


def cells_in(box: Box, precision: int) -> Iterator[str]:
    """Every cell of ``precision`` that intersects ``box``."""
    lat_range, columns = _ranges(box, precision)
    height = 180.0 / (1 << lat_bits(precision))
    width = 360.0 / (1 << lon_bits(precision))
    for row in lat_range:
        center_lat = -90.0 + (row + 0.5) * height
        for col in sorted(columns):
            yield str(geohash.encode(center_lat, -180.0 + (col + 0.5) * width, precision))


def cover(lat: float, lon: float, radius_m: float) -> tuple[int, frozenset[str]]:
    """(precision, cells) covering every point within ``radius_m`` of (lat, lon)."""
    box = cap_box(lat, lon, radius_m)
    precision = choose_precision(box)
    return precision, frozenset(cells_in(box, precision))


def cell_box(cell: str) -> tuple[float, float, float, float]:
    """(south, north, west, east) of a cell, degrees."""
    b = geohash.bbox(cell)
    return b["s"], b["n"], b["w"], b["e"]


# ---------------------------------------------------------------------- the coarse grid

COARSE_CELL_M: Final = 100.0
"""Side of a coarse cell, metres (north-south exactly; east-west at the row's centre)."""
COARSE_ROWS: Final = round(math.pi * EARTH_RADIUS_M / COARSE_CELL_M)
"""Rows from pole to pole (200,151): a whole number, so that both poles are row edges."""
COARSE_DLAT: Final = 180.0 / COARSE_ROWS
"""Height of a row, degrees (99.9998 m)."""
COARSE_ERROR_M: Final = 90.0
"""No point is farther than this from its coarse cell's centre (about 71 m, half the
diagonal, away from the poles; up to 87 m in the three wedges of the polar rows)."""

CoarseCell = tuple[int, int]
"""(row, column): row 0 starts at the south pole; column 0 starts at longitude -180."""


@functools.lru_cache(maxsize=8192)
def coarse_columns(row: int) -> int:
    """Cells in ``row``: about one per 100 m of the parallel through the row's centre (at
    least one), a whole number so that the antimeridian is a cell edge in every row."""
    center = math.radians(-90.0 + (row + 0.5) * COARSE_DLAT)
    parallel = 2 * math.pi * EARTH_RADIUS_M * math.cos(center)
    return max(1, round(parallel / COARSE_CELL_M))


def coarse_cell(lat: float, lon: float) -> CoarseCell:
    """The coarse cell of a point. Deterministic (the same on every node); latitude 90 is in
    the top row, longitude 180 in the same column as -180. A point on a cell edge belongs to
    the cell north or east of it."""
    row = min(COARSE_ROWS - 1, max(0, math.floor((lat + 90.0) / COARSE_DLAT)))
    columns = coarse_columns(row)
    col = math.floor((normalize_lon(lon) + 180.0) / 360.0 * columns) % columns
    return row, col


def coarse_center(cell: CoarseCell) -> tuple[float, float]:
    """(lat, lon) of the centre of a coarse cell, longitude in [-180, 180)."""
    row, col = cell
    columns = coarse_columns(row)
    return -90.0 + (row + 0.5) * COARSE_DLAT, -180.0 + (col + 0.5) * 360.0 / columns


def coarse(lat: float, lon: float) -> tuple[float, float]:
    """A point snapped to the centre of its coarse cell."""
    return coarse_center(coarse_cell(lat, lon))
