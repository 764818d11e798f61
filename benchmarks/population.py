"""The simulated population of the load benchmark: who is friends with whom, where each user
lives, and the fastest documented way to load those friendships into a server.

Two models (``--model``), both with ``friends`` (400) friends per simulated user ``u<i>``:

- ``design`` (the design's model): clusters of ``near + 1`` simulated users (41) are all
  friends with each other and live within a few km of each other, so each user has ``near``
  (40) friends online and near; its other friends (360) are offline users ``x<j>`` who never
  connect.
- ``all-online`` (the harder case): the same near clusters, and every other friend is a
  simulated user too, online but far away (in another cluster, 50 km or more away): all 400
  friends online, 10 % of them near.

Clusters sit on a 50 km grid (no two clusters within the 5-mile radius); a user's home is
within 500 m of its cluster's centre and it roams at most ``ROAM_M`` from home, so the
members of a cluster stay within about 3 km of each other.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import attrs
import httpx
import orjson

EARTH_M_PER_DEG = 111_195.0
SPEEDS = {"walking": 1.4, "driving": 14.0}
MODELS = ("design", "all-online")
ROAM_M = 1000.0
"""How far (in latitude and in longitude) a user wanders from home."""
BULK_PAIRS = 10_000
"""Pairs per ``POST /v1/friendships`` (the server's limit per call)."""


@attrs.frozen
class Model:
    """The load model: who, how many friends, how often they talk."""

    users: int
    friends: int = 400
    near_share: float = 0.1
    model: str = "design"
    location_interval: float = 30.0
    heartbeat_interval: float = 5.0
    speed: str = "walking"

    @property
    def cluster(self) -> int:
        """Simulated users per near cluster (each is near the others)."""
        return max(2, round(self.friends * self.near_share) + 1)

    @property
    def clusters(self) -> int:
        return math.ceil(self.users / self.cluster)

    def describe(self) -> str:
        far = self.friends - (self.cluster - 1)
        rest = "offline" if self.model == "design" else "online, far"
        return (
            f"{self.users:,} users x {self.friends} friends ({self.cluster - 1} online and "
            f"near, {far} {rest}), model {self.model}"
        )


def _far_offsets(model: Model) -> list[tuple[int, int]]:
    """``all-online``: each user (cluster c, position p) befriends (c + k, p + j) for each
    (k, j) here, and is befriended from (c - k, p - j): two friends per offset, no pair twice
    (k stays below half the number of clusters)."""
    wanted = max(0, model.friends - (model.cluster - 1)) // 2
    span = min(wanted, (model.clusters - 1) // 2)
    if span <= 0:
        return []
    offsets = [(k, j) for j in range(model.cluster) for k in range(1, span + 1)]
    return offsets[:wanted]


def friendships(model: Model) -> Iterator[tuple[str, str]]:
    """Every friendship of the model, each pair once."""
    n, size = model.users, model.cluster
    for start in range(0, n, size):
        members = range(start, min(start + size, n))
        for i in members:
            for j in members:
                if i < j:
                    yield f"u{i}", f"u{j}"
    if model.model == "design":
        offline = max(0, model.friends - (size - 1))
        pool = max(offline, n)
        for i in range(n):
            for k in range(offline):
                yield f"u{i}", f"x{(i * 7919 + k) % pool}"
        return
    clusters = model.clusters
    for k, j in _far_offsets(model):
        for i in range(n):
            c, p = divmod(i, size)
            other = ((c + k) % clusters) * size + (p + j) % size
            if other < n:
                yield f"u{i}", f"u{other}"


def home(index: int, model: Model) -> tuple[float, float]:
    """Where user ``index`` lives: its cluster's centre on the 50 km grid, plus up to 500 m."""
    cluster = index // model.cluster
    side = max(1, math.ceil(math.sqrt(model.clusters + 1)))
    row, col = divmod(cluster, side)
    lat = -60 + (row * 50_000) / EARTH_M_PER_DEG
    lat = ((lat + 60) % 120) - 60
    lon = -170 + (col * 50_000) / (EARTH_M_PER_DEG * math.cos(math.radians(lat)))
    rng = random.Random(index)
    lat += rng.uniform(-500, 500) / EARTH_M_PER_DEG
    lon += rng.uniform(-500, 500) / (EARTH_M_PER_DEG * math.cos(math.radians(lat)))
    return lat, ((lon + 180) % 360) - 180


def step(
    lat: float, lon: float, home_at: tuple[float, float], metres: float, rng: random.Random
) -> tuple[float, float]:
    """Move ``metres`` in a random direction, back home when that leaves the roaming box."""
    bearing = rng.uniform(0, 2 * math.pi)
    lat += metres * math.cos(bearing) / EARTH_M_PER_DEG
    lon += metres * math.sin(bearing) / (EARTH_M_PER_DEG * math.cos(math.radians(lat)))
    if abs(lat - home_at[0]) * EARTH_M_PER_DEG > ROAM_M:
        lat = home_at[0]
    if abs(lon - home_at[1]) * EARTH_M_PER_DEG * math.cos(math.radians(lat)) > ROAM_M:
        lon = home_at[1]
    return lat, lon


def _batches(model: Model) -> Iterator[bytes]:
    """The friendships as ready ``POST /v1/friendships`` bodies."""
    batch: list[tuple[str, str]] = []
    for pair in friendships(model):
        batch.append(pair)
        if len(batch) == BULK_PAIRS:
            yield orjson.dumps({"pairs": batch})
            batch = []
    if batch:
        yield orjson.dumps({"pairs": batch})


def create_friendships(
    http: str, admin_key: str | None, model: Model, quiet: bool = False, parallel: int = 2
) -> tuple[int, float]:
    """Load the model's friendships through the bulk endpoint (``POST /v1/friendships``,
    10,000 pairs a call); ``parallel`` calls in flight so that the next body is encoded here
    while the server applies one. Returns (created, seconds)."""
    headers = {"authorization": f"Bearer {admin_key}"} if admin_key else {}
    expected = _expected_pairs(model)
    created = 0
    started = time.monotonic()
    with (
        httpx.Client(base_url=http, headers=headers, timeout=600) as client,
        ThreadPoolExecutor(parallel) as pool,
    ):

        def post(body: bytes) -> int:
            response = client.post("/v1/friendships", content=body)
            response.raise_for_status()
            count: int = response.json()["created"]
            return count

        pending = []
        for body in _batches(model):
            pending.append(pool.submit(post, body))
            while len(pending) >= parallel:
                created += pending.pop(0).result()
                if created % 200_000 < BULK_PAIRS:
                    _progress(created, expected, started, quiet)
        for future in pending:
            created += future.result()
    _progress(created, expected, started, quiet, done=True)
    return created, time.monotonic() - started


def _expected_pairs(model: Model) -> int:
    size, n = model.cluster, model.users
    full, rest = divmod(n, size)
    near = full * size * (size - 1) // 2 + rest * (rest - 1) // 2
    if model.model == "design":
        return near + n * max(0, model.friends - (size - 1))
    return near + n * len(_far_offsets(model))


def _progress(created: int, total: int, started: float, quiet: bool, done: bool = False) -> None:
    if quiet:
        return
    elapsed = time.monotonic() - started
    print(
        f"\r  friendships {created:,}/{total:,} ({elapsed:.0f} s, "
        f"{created / max(elapsed, 1e-9):,.0f}/s)",
        end="\n" if done else "",
        file=sys.stderr,
        flush=True,
    )
