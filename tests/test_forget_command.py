"""``geopresence forget USER --data-dir DIR``: a stopped server's files forget a user, as the
running server's ``DELETE /v1/users/{user}`` does; it refuses a data dir in use; and a
``kill -9`` in the middle of the history rewrite leaves the old or the new file of each,
never neither, and the next start finishes the job."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from geopresence.core.locations import Location
from geopresence.storage.history import HistoryWriter, history_dir
from geopresence.testing import open_server
from tests.helpers import files_naming, geopresence, start

DURABLE: dict[str, Any] = {"in_memory": False, "time_origin": None, "fsync": "always"}


async def make_data_dir(data_dir: Path, history_lines: int = 10) -> None:
    """alice befriended, in a group, with a message, and ``history_lines`` history lines
    per file in 4 files, mixed with bob's."""
    async with open_server(data_dir=data_dir, **DURABLE) as server:
        await server.admin.befriend("alice", "bob")
        await server.admin.befriend("bob", "carol")
        await server.admin.set_group("hikers", ["alice", "bob"])
        async with server.connect("alice") as alice:
            await alice.send_message("for bob", to="bob")
    writer = HistoryWriter(history_dir(data_dir))
    for _ in range(4):
        for i in range(history_lines):
            writer.append("alice" if i % 2 else "bob", Location(1.0 + i / 1e6, 2.0, float(i)))
        writer.rotate()


async def test_forget_offline_then_the_server_starts_without_the_user(tmp_path: Path) -> None:
    await make_data_dir(tmp_path)
    result = geopresence("forget", "alice", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == [
        "forgot alice: 1 friendship(s), 1 group membership(s), 1 message(s); "
        "20 history line(s) (4 file(s) rewritten, 0 deleted)",
        f"  wrote {tmp_path}/state/snapshot-00000000000000000005.snap; the older snapshots "
        "and journal segments are deleted",
    ]
    assert files_naming(tmp_path, "alice") == []
    again = geopresence("forget", "alice", "--data-dir", str(tmp_path), "--json")
    report = orjson.loads(again.stdout)
    assert (report["friends"], report["messages"], report["history"]["lines"]) == (0, 0, 0)
    async with open_server(data_dir=tmp_path, **DURABLE) as server:
        assert await server.admin.friends("alice") == []
        assert (await server.admin.group("hikers"))["members"] == ["bob"]
        assert [f["user"] for f in await server.admin.friends("bob")] == ["carol"]
    assert files_naming(tmp_path, "alice") == []


def test_forget_refuses_while_a_server_runs_and_names_bad_input(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    served = start("--data-dir", str(data_dir), "--port", "0", "--http-port", "0", cwd=tmp_path)
    try:
        result = geopresence("forget", "alice", "--data-dir", str(data_dir))
    finally:
        served.proc.send_signal(signal.SIGTERM)
        served.proc.wait(30)
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "one geopresence process per data dir; ask the running server instead: "
        "DELETE /v1/users/alice on its HTTP API"
    )
    assert geopresence("forget", "not a user", "--data-dir", str(data_dir)).returncode == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = geopresence("forget", "alice", "--data-dir", str(empty))
    assert refused.returncode == 1 and "not a geopresence data dir" in refused.stderr


async def test_a_kill_in_the_middle_of_the_rewrite_loses_no_file(tmp_path: Path) -> None:
    await make_data_dir(tmp_path, history_lines=60_000)  # 4 files of about 3.5 MB
    directory = history_dir(tmp_path)
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "geopresence", "forget", "alice", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the first file is rewritten: kill it in the next one
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert first.startswith("  history locations-000001.jsonl: 30,000 line(s) removed")
    for name, old in before.items():  # the old file, or the new one: never neither
        now = (directory / name).read_bytes()
        assert now == old or now == b"".join(
            line + b"\n" for line in old.splitlines() if b'"alice"' not in line
        ), name
    # The record was journaled before the rewrite began: the next start finishes it.
    async with open_server(data_dir=tmp_path, **DURABLE) as server:
        assert await server.admin.friends("alice") == []
    assert files_naming(tmp_path, "alice") == []
    assert sorted(p.name for p in directory.iterdir()) == sorted(before)
