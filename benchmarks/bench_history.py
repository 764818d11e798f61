"""Location history benchmark: disk use per 1,000 users per day at the design's load, and
what a forget's rewrite costs.

    python benchmarks/bench_history.py [--quick] [--users N] [--updates M] [--dir DIR]

Writes N users' location updates, M each, through the server's own ``HistoryWriter`` into a
temporary history directory on DIR's file system, as accepted updates arrive: users in turn,
each a few metres further along a walk around Seoul, one update every 30 s (the design's
load), coordinates as a phone sends them (full double precision) and ``ts`` as the server's
clock gives it (microseconds). Bytes per line are measured from the files written, for two
kinds of user id (12 characters; a 36-character UUID), and scaled to a day: 2,880 updates
per user. Then it scrubs one user from all the files (``history_care.scrub``, what a forget
does) and reports the rate. Default N=2,000, M=100 (200,000 lines per id kind).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import tempfile
import time
import uuid
from pathlib import Path

from geopresence.core.locations import Location
from geopresence.storage.history import HistoryWriter
from geopresence.storage.history_care import scrub

UPDATES_PER_DAY = 24 * 3600 // 30
"""The design's load: a location every 30 s per user."""


def write(directory: Path, ids: list[str], updates: int, seed: int) -> tuple[int, int, float]:
    """Write ``updates`` rounds of one update per user; returns (lines, bytes, seconds)."""
    rng = random.Random(seed)
    spots = [(37.5665 + rng.uniform(-0.1, 0.1), 126.978 + rng.uniform(-0.1, 0.1)) for _ in ids]
    writer = HistoryWriter(directory, max_age=86_400.0)
    clock = 1_796_000_000.0 + rng.random()
    started = time.perf_counter()
    for _ in range(updates):
        for index, user in enumerate(ids):
            lat, lon = spots[index]
            heading = rng.uniform(0, 2 * math.pi)
            lat += 0.0003 * math.cos(heading)  # about 30 m in 30 s: a walk
            lon += 0.0003 * math.sin(heading)
            spots[index] = (lat, lon)
            clock += 30.0 / len(ids)
            now = round(clock, 6)  # time.time() as the server reads it
            writer.append(user, Location(lat, lon, now), now)
    writer.close()
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in directory.iterdir())
    return len(ids) * updates, size, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (200 users x 20)")
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--updates", type=int, default=100, help="updates per user")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (a temp dir)")
    args = parser.parse_args()
    users, updates = (200, 20) if args.quick else (args.users, args.updates)
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{users:,} users x {updates:,} updates each, one every 30 s of server time")
    kinds = {
        "12-character ids": [f"user{n:08d}" for n in range(users)],
        "UUID ids (36 characters)": [str(uuid.UUID(int=n + 1)) for n in range(users)],
    }
    print(
        f"{'':26} {'bytes/line':>10} {'MB per 1,000 users per day':>27} "
        f"{'GB per 10,000 per day':>22} {'append µs':>10}"
    )
    for label, ids in kinds.items():
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            directory = Path(tmp)
            lines, size, seconds = write(directory, ids, updates, seed=7)
            per_line = size / lines
            per_thousand = per_line * UPDATES_PER_DAY * 1_000
            print(
                f"{label:26} {per_line:10.1f} {per_thousand / 1e6:27.1f} "
                f"{per_thousand * 10 / 1e9:22.2f} {seconds / lines * 1e6:10.2f}"
            )
            if label.startswith("12"):
                started = time.perf_counter()
                done = scrub(directory, {ids[len(ids) // 2]})
                took = time.perf_counter() - started
                print(
                    f"  forget one user: {done.lines:,} line(s) removed from {size / 1e6:.1f} MB "
                    f"in {took:.2f} s ({size / 1e6 / took:.0f} MB/s, read twice, written once)"
                )


if __name__ == "__main__":
    main()
