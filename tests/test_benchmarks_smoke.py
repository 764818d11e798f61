"""Benchmarks must keep running: a tiny smoke run that checks every figure is reported.

Speed is never asserted here (that belongs in benchmarks/RESULTS.md, not in a test).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_core_benchmark_reports_every_figure() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_core.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for label in (
        "heartbeat",
        "presence event to 5,000 online friends",
        "per subscriber",
        "login of a user with 5,000 friends",
        "location update, 400 online friends",
        "decode heartbeat frame",
        "encode presence event",
        "snowflake id",
        "chat send 1:1",
        "chat send to a group",
        "per member",
        "sync page of 100 messages",
    ):
        assert label in result.stdout


def test_strangers_benchmark_reports_every_figure() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_strangers.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for label in ("geopresence core", "geopresence nearby_people (WS)", "Redis GEOSEARCH"):
        assert label in result.stdout


def test_durability_benchmark_reports_every_figure() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_durability.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for label in (
        "in-memory",
        "--fsync no",
        "--fsync everysec",
        "--fsync always",
        "msg/fsync",
        "snapshot: capture",
        "restart: snapshot +",
    ):
        assert label in result.stdout
