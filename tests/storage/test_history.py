"""The location history files: format, rotation (size, age, each start, a forget), torn
lines, and the history command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from geopresence.core.locations import Location
from geopresence.storage.history import HistoryWriter, read_history


def test_jsonl_format_and_rotation(tmp_path: Path) -> None:
    writer = HistoryWriter(tmp_path, max_bytes=200)
    for i in range(10):
        writer.append("alice" if i % 2 else "bob", Location(1.5, -2.25, ts=1000.0 + i))
    writer.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) > 1
    assert files[0] == "locations-000001.jsonl"
    first_line = (tmp_path / files[0]).read_bytes().splitlines()[0]
    assert orjson.loads(first_line) == {"user": "bob", "lat": 1.5, "lon": -2.25, "ts": 1000.0}
    for name in files[:-1]:
        assert (tmp_path / name).stat().st_size >= 200  # rotated only once full
    track = list(read_history(tmp_path, "alice"))
    assert [e.ts for e in track] == [1001.0, 1003.0, 1005.0, 1007.0, 1009.0]
    assert [e.ts for e in read_history(tmp_path, "alice", since=1005)] == [1005.0, 1007.0, 1009.0]
    assert len(list(read_history(tmp_path))) == 10


def test_torn_line_is_terminated_and_skipped(tmp_path: Path) -> None:
    writer = HistoryWriter(tmp_path)
    writer.append("alice", Location(1, 2, 10))
    writer.close()
    path = tmp_path / "locations-000001.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"user":"alice","lat":3')  # a crash mid-write
    writer = HistoryWriter(tmp_path)  # a restart starts a new file
    writer.append("alice", Location(5, 6, 20))
    writer.close()
    assert [(e.lat, e.ts) for e in read_history(tmp_path, "alice")] == [(1, 10), (5, 20)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "locations-000001.jsonl",
        "locations-000002.jsonl",
    ]


def test_a_file_spans_at_most_max_age_and_rotate_fences_the_files_so_far(tmp_path: Path) -> None:
    writer = HistoryWriter(tmp_path, max_age=100.0)
    writer.append("alice", Location(1, 2, 0), now=1000.0)
    writer.append("alice", Location(1, 2, 0), now=1099.9)
    assert writer.current == 1 and writer.last_write == 1099.9
    writer.append("alice", Location(1, 2, 0), now=1100.0)  # 100 s after the file's first
    assert writer.current == 2
    assert writer.rotate() == 2  # every later record goes to a higher number
    assert writer.current is None and writer.last_write is None
    writer.append("bob", Location(1, 2, 0), now=1101.0)
    assert writer.current == 3
    writer.close()
    counts = [len(p.read_bytes().splitlines()) for p in sorted(tmp_path.iterdir())]
    assert counts == [2, 1, 1]


def test_history_command_text_output(tmp_path: Path) -> None:
    writer = HistoryWriter(tmp_path / "history")
    writer.append("alice", Location(37.5665, 126.978, 1_763_769_600.5))
    writer.append("bob", Location(1, 1, 1_763_769_601))
    writer.close()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "geopresence", "history", *args, "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = run("alice")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2025-11-22T00:00:00.500Z", "37.566500", "126.978000"]
    assert "1 location(s) for alice" in result.stderr
    assert run("alice", "--since", "2025-11-22T00:00:01Z").stdout == ""
    assert run("bob", "--since", "1763769600").stdout.count("\n") == 1
    bad = run("not a user")
    assert bad.returncode == 2
    empty = subprocess.run(
        [sys.executable, "-m", "geopresence", "history", "x", "--data-dir", str(tmp_path / "no")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert empty.returncode == 1
    assert "no location history" in empty.stderr
