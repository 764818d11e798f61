"""Benchmarks must keep running: a tiny smoke run that checks every figure is reported.

Speed is never asserted here (that belongs in benchmarks/RESULTS.md, not in a test).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _quick(script: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """A benchmark script's ``--quick`` run."""
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _module_lines(module: str, *args: str) -> list[str]:
    """The lines ``python -m benchmarks.MODULE ARGS`` prints (it must succeed)."""
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()


def test_core_benchmark_reports_every_figure() -> None:
    result = _quick("bench_core.py", 120)
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
        "geohash cover of a 5-mile radius",
        "grid query, 5 miles",
        "chat send 1:1",
        "chat send to a group",
        "per member",
        "sync page of 100 messages",
    ):
        assert label in result.stdout


def test_strangers_benchmark_reports_every_figure() -> None:
    result = _quick("bench_strangers.py", 300)
    assert result.returncode == 0, result.stderr
    for label in ("geopresence core", "geopresence nearby_people (WS)", "Redis GEOSEARCH"):
        assert label in result.stdout


def test_durability_benchmark_reports_every_figure() -> None:
    result = _quick("bench_durability.py", 300)
    assert result.returncode == 0, result.stderr
    for label in (
        "in-memory",
        "--fsync no",
        "--fsync everysec",
        "--fsync always",
        "msg/fsync",
        "longest event-loop stall",
        "snapshot, forked child",
        "restart: snapshot +",
    ):
        assert label in result.stdout


def test_history_benchmark_reports_every_figure() -> None:
    result = _quick("bench_history.py", 120)
    assert result.returncode == 0, result.stderr
    for label in ("12-character ids", "UUID ids", "MB per 1,000 users per day", "forget one"):
        assert label in result.stdout


def _load(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.load", *args, "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def test_load_benchmark_reports_every_figure() -> None:
    """The lean generator against a real (durable) server: a few users, a few seconds."""
    result = _load(
        "run", "--users", "60", "--friends", "20", "--duration", "2", "--warmup", "1",
        "--location-interval", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for label in (
        "users (connected)", "60 (60)", "friendships loaded", "inbound msgs/s", "deliveries/s",
        "p50 / p95 / p99", "coalesced updates", "lost", "server CPU per delivery",
        "server CPU per user", "server RSS", "memory per connected user", "load generator CPU",
        "generator CPU per frame",
    ):  # fmt: skip
        assert label in result.stdout, result.stdout
    deliveries = re.search(r"deliveries/s \(friend_location\)\s+([\d,]+)", result.stdout)
    assert deliveries is not None and int(deliveries[1].replace(",", "")) > 0, result.stdout


def test_all_online_model_runs() -> None:
    result = _load(
        "run", "--model", "all-online", "--users", "60", "--friends", "20", "--duration", "1",
        "--warmup", "0", "--location-interval", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "all-online" in result.stdout and "60 (60)" in result.stdout, result.stdout


def test_sweep_writes_points_and_plot_draws_them(tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    sweep = _load(
        "sweep", "--users", "20,30", "--friends", "10", "--duration", "1", "--warmup", "0",
        "--location-interval", "1", "--out", str(out), "--label", "smoke",
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr
    assert "HEADLINE:" in sweep.stdout
    document = json.loads(out.read_text())
    assert [p["users"] for p in document["points"]] == [20, 30]
    assert {"p99_ms", "server_cpu", "per_user_kb", "generator_cpu"} <= set(document["points"][0])
    pytest.importorskip("matplotlib")
    png = tmp_path / "sweep.png"
    plot = subprocess.run(
        [sys.executable, "-m", "benchmarks.load", "plot", str(out), "--out", str(png)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert plot.returncode == 0, plot.stderr
    assert png.read_bytes().startswith(b"\x89PNG")


def test_ceiling_reports_every_row() -> None:
    pytest.importorskip("websockets")
    ceiling = _load(
        "ceiling", "--users", "30", "--friends", "10", "--duration", "1", "--warmup", "0"
    )
    assert ceiling.returncode == 0, ceiling.stderr
    for label in (
        "geopresence deliveries", "bare write floor", "websockets asyncio server",
        "trio-websocket", "µs/frame", "ratio:",
    ):  # fmt: skip
        assert label in ceiling.stdout, ceiling.stdout


def test_chat_reports_acks() -> None:
    chat = _load("chat", "--senders", "5", "--in-flight", "2", "--duration", "1")
    assert chat.returncode == 0, chat.stderr
    acked = re.search(r"acked messages/s\s+([\d,]+)", chat.stdout)
    assert acked is not None and int(acked[1].replace(",", "")) > 0, chat.stdout
    assert "ack latency p50 / p99" in chat.stdout


def test_load_cluster_reports_every_figure() -> None:
    """2 nodes sharing a standalone Redis, then 1 node in memory, with 20 users."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    result = _load(
        "cluster", "--users", "20", "--nodes", "2", "--redis", "standalone", "--friends", "10",
        "--near-share", "0.4", "--duration", "2", "--warmup", "1", "--location-interval", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for label in (
        "2 nodes + standalone Redis: 20 users", "users (connected)", "20 (20)", "inbound msgs/s",
        "deliveries/s", "p50 / p95 / p99", "coalesced updates", "lost", "server CPU",
        "(sum of 2 nodes)", "memory per connected user", "load generator CPU", "location updates/s",
        "deliveries each", "cross-node deliveries (via Redis)", "same-node deliveries",
        "duplicate deliveries", "Redis backlog after the ramp", "node 1", "node 2", "from Redis",
        "Redis ops/s", "Redis commands/s", "Redis CPU", "1 node in memory: the same 20 users",
        "comparison, 20 users", "deliveries per location update", "latency p99 (ms)",
        "server CPU per delivery",
    ):  # fmt: skip
        assert label in out, (label, out)
    assert re.search(r"share \d+ CPUs", out), out
    # Friends on other nodes heard each other through Redis, once, and no node complained.
    cross = re.search(r"cross-node deliveries \(via Redis\)\s+(\d+) % of samples", out)
    assert cross is not None and int(cross[1]) > 0, out
    assert re.search(r"duplicate deliveries\s+0\n", out), out
    assert re.search(r"node log warnings/errors\s+0 until measured", out), out


def test_load_scaleout_reports_every_figure(tmp_path: Path) -> None:
    """k = 1 and 2 nodes sharing a standalone Redis, 10 users per node: the table, the
    breakdown by cause, the flatness line and the JSON."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    out = tmp_path / "scaleout.json"
    result = _load(
        "scaleout", "--users-per-node", "10", "--nodes", "1,2", "--redis", "standalone",
        "--friends", "10", "--near-share", "0.4", "--duration", "1", "--warmup", "0",
        "--location-interval", "1", "--out", str(out), "--rounds", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out_text = result.stdout
    for label in (
        "weak scaling: 10 users per node, k = 1, 2 nodes on a standalone Redis",
        "every round (2, alternating the order of k)", "median",
        "2 nodes + 1 redis-server + the load generator share", "node CPU µs/user-s",
        "RSS KB/user", "Redis ops/user-s", "per node:", "feed ops in/s", "by cause",
        "feed read", "location cache", "live events", "presence & leases",
        "by command", "publish", "k=2 / k=1", "flatness, k = 2 against k = 1",
        "per event of another node",
    ):  # fmt: skip
        assert label in out_text, (label, out_text)
    document = json.loads(out.read_text())
    assert [p["nodes"] for p in document["points"]] == [1, 2]
    two = document["points"][1]
    assert [n["users"] for n in two["per_node"]] == [10, 10]
    assert two["redis_causes_per_user_s"]["location cache"] > 0
    assert two["per_node"][0]["envelopes_per_s"] > 0  # node 1 heard node 2's users move
    assert set(document["changes"]) == {"node_cpu_per_user", "redis_ops_per_user"}
    assert {k: len(runs) for k, runs in document["rounds"].items()} == {"1": 2, "2": 2}
    assert document["config"]["orders"] == [[1, 2], [2, 1]]


def test_paced_writes_reports_the_writer_s_cost_per_frame() -> None:
    lines = _module_lines(
        "paced_writes", "--connections", "20", "--rate", "2000", "--duration", "0.5"
    )
    assert len(lines) == 2, lines
    assert lines[0].startswith("reader sleeps in epoll")
    assert "µs of writer CPU per frame" in lines[0]
    assert lines[1].startswith("reader polls every ms")


def test_read_paths_reports_the_reader_s_cost_per_message_each_way() -> None:
    lines = _module_lines("read_paths", "--connections", "20", "--rate", "500", "--duration", "0.5")
    assert [line.split("  ")[0] for line in lines] == ["receive_some", "wait_readable", "one epoll"]
    assert all("µs of reader CPU per message" in line for line in lines), lines


def test_write_paths_reports_what_the_shell_adds_to_a_write() -> None:
    lines = _module_lines(
        "write_paths", "--connections", "20", "--rate", "2000", "--duration", "0.5"
    )
    assert [line.split("  ")[0] for line in lines] == [
        "os.write (floor)", "Connections", "the shell adds"
    ]  # fmt: skip
    assert all("µs" in line for line in lines), lines


def test_decode_paths_times_the_hot_messages_each_way() -> None:
    lines = _module_lines("decode_paths", "--frames", "200")
    rows = [line.split()[:2] for line in lines if "µs/frame" in line]
    for kind in ("heartbeat", "location"):
        assert [kind, "cattrs"] in rows and [kind, "hand-checked"] in rows, lines
