"""Figures of one load run, their table, their verdict, and the JSON a sweep keeps."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import orjson

GENERATOR_BOUND = 0.85
"""Above this share of its core, the generator may be what limits the run."""
P99_LIMIT_MS = 100.0


def percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


@attrs.define
class Result:
    """One run of the load model (or of a saturation), measured over its window."""

    users: int
    connected: int
    inbound_per_s: float
    deliveries_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    samples: int
    coalesced: float
    lost: int
    server_cpu: float | None
    server_rss_mb: float | None
    per_user_kb: float | None
    generator_cpu: float
    generator_us_per_frame: float
    errors: int
    model: str = "design"
    servers: int = 1
    """Server processes measured (CPU and RSS are their sums)."""
    locations_per_s: float = math.nan
    friendships: int = 0
    friendship_seconds: float = math.nan
    redis_ops_per_s: float | None = None
    redis_cpu: float | None = None
    server_cpus: list[float] = attrs.Factory(list)
    """Each server's CPU over the window (share of one core), when started here."""
    server_grown_kb: list[float] = attrs.Factory(list)
    """Each server's RSS growth from connecting the users (KB), when started here."""
    extra: list[tuple[str, str]] = attrs.Factory(list)
    """More rows (several nodes: per node, cross-node, Redis)."""

    @property
    def generator_bound(self) -> bool:
        return self.generator_cpu > GENERATOR_BOUND

    @property
    def sustained(self) -> bool:
        """p99 within the limit, nothing lost, everyone connected (and a server figure)."""
        return (
            self.p99_ms <= P99_LIMIT_MS
            and self.lost == 0
            and self.connected == self.users
            and not self.generator_bound
        )

    @property
    def verdict(self) -> str:
        if self.generator_bound:
            return "GENERATOR-BOUND (not a server figure)"
        return "ok" if self.sustained else "over"

    @property
    def cpu_per_delivery_us(self) -> float | None:
        """Server CPU (all nodes) per delivery, in µs."""
        if self.server_cpu is None or not self.deliveries_per_s:
            return None
        return self.server_cpu / self.deliveries_per_s * 1e6

    @property
    def cpu_per_user_us(self) -> float | None:
        """Server CPU per connected user: µs of CPU each second."""
        if self.server_cpu is None or not self.connected:
            return None
        return self.server_cpu / self.connected * 1e6

    def table(self) -> str:
        latency = (
            f"{fmt(self.p50_ms, '.1f')} / {fmt(self.p95_ms, '.1f')} / "
            f"{fmt(self.p99_ms, '.1f')} (max {fmt(self.max_ms, '.0f')})  "
            f"({self.samples:,} samples)"
        )
        cpu = None if self.server_cpu is None else self.server_cpu * 100
        summed = f" (sum of {self.servers} nodes)" if self.servers > 1 else ""
        generator = f"{self.generator_cpu * 100:.0f} %" + (
            "  GENERATOR-BOUND: not a server figure" if self.generator_bound else ""
        )
        rows = [
            ("users (connected)", f"{self.users:,} ({self.connected:,})"),
            ("model", self.model),
            ("friendships loaded", f"{self.friendships:,} in "
             f"{fmt(self.friendship_seconds, '.1f')} s"),
            ("inbound msgs/s", fmt(self.inbound_per_s, ",.0f")),
            ("deliveries/s (friend_location)", fmt(self.deliveries_per_s, ",.0f")),
            ("latency p50 / p95 / p99 (ms)", latency),
            ("coalesced updates (latest-wins)", fmt(self.coalesced, ",.0f")),
            ("lost (closed sessions, 4008)", f"{self.lost:,}"),
            ("server CPU", fmt(cpu, ".0f") + " %" + summed),
            ("server CPU per delivery", fmt(self.cpu_per_delivery_us, ",.1f") + " µs"),
            ("server CPU per user", fmt(self.cpu_per_user_us, ",.1f") + " µs/s"),
            ("server RSS", fmt(self.server_rss_mb, ",.0f") + " MB" + summed),
            ("memory per connected user", fmt(self.per_user_kb, ",.1f") + " KB"),
            ("load generator CPU", generator),
            ("generator CPU per frame", fmt(self.generator_us_per_frame, ".1f") + " µs"),
            ("error replies", f"{self.errors:,}"),
            *self.extra,
        ]  # fmt: skip
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)

    def line(self) -> str:
        """One sweep line."""
        return (
            f"  N={self.users:>7,}  p99 {self.p99_ms:7.1f} ms  lost {self.lost:>4}  "
            f"deliveries/s {self.deliveries_per_s:>8,.0f}  server CPU "
            f"{fmt(None if self.server_cpu is None else self.server_cpu * 100, '3.0f')} %  "
            f"{fmt(self.cpu_per_delivery_us, '5.0f')} µs/delivery  "
            f"{fmt(self.per_user_kb, '5.1f')} KB/user  generator CPU "
            f"{self.generator_cpu * 100:3.0f} %  {self.verdict}"
        )

    def point(self) -> dict[str, Any]:
        """The figures as a JSON object (one point of a sweep)."""
        values = attrs.asdict(self)
        values.pop("extra")
        values.update(
            cpu_per_delivery_us=self.cpu_per_delivery_us,
            cpu_per_user_us=self.cpu_per_user_us,
            generator_bound=self.generator_bound,
            sustained=self.sustained,
        )
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in values.items()}  # fmt: skip


def ratio(a: float | None, b: float | None) -> float:
    """``a / b``; NaN when either is missing or NaN, or ``b`` is 0."""
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return math.nan
    return a / b


def columns(rows: Sequence[Sequence[str]], indent: str = "  ") -> str:
    """Rows as aligned text columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for first, *rest in rows:
        cells = [first.ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return "\n".join(lines)


def commit_of(src: Path) -> str:
    """The checkout's commit (``+dirty`` when geopresence/ has uncommitted changes)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "geopresence"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"  # fmt: skip
    return head + ("+dirty" if dirty else "")


def save_sweep(path: Path, label: str, src: Path, config: dict[str, Any],
               results: list[Result]) -> None:  # fmt: skip
    """Write the sweep's points (and where and how they were measured) to ``path``."""
    save_points(path, label, src, config, [result.point() for result in results])


def save_points(path: Path, label: str, src: Path, config: dict[str, Any],
                points: list[dict[str, Any]], **more: Any) -> None:  # fmt: skip
    """Write ``points`` (JSON objects), where and how they were measured, and ``more``
    (figures of the whole series), to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "label": label,
        "server_commit": commit_of(src),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.node()}",
        "python": sys.version.split()[0],
        "config": config,
        "points": points,
        **more,
    }
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
