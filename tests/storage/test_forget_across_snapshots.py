"""A forget cut short is finished by the next start whatever snapshot absorbed its record.

A forget's one to-do marker is its ``user_forgotten`` journal record (security.md,
"Forgetting a user": "a crash at any point is finished by the next start"). The three
writers of ordinary snapshots (the running server's interval or ``POST /v1/snapshot``, the
offline ``geopresence snapshot``, and ``geopresence repair``) may fold that record into a
snapshot while the history is still to be scrubbed and the older snapshots to be deleted;
the segment holding the record must then stay until the forget is done, and the next start
must find it there, even behind the snapshot it loads.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from geopresence.core.locations import Location
from geopresence.model.records import Befriended, UserForgotten
from geopresence.storage.datadir import (
    JOURNAL_PATTERN,
    SNAPSHOT_PATTERN,
    journal_path,
    numbered,
    prune,
    snapshot_path,
    state_dir,
)
from geopresence.storage.history import HistoryWriter, history_dir
from geopresence.storage.journal_file import append_offline
from geopresence.storage.offline import compact, forget_offline
from geopresence.storage.recovery import recover
from geopresence.storage.repair import repair_data_dir
from geopresence.testing import open_server
from tests.helpers import files_naming, geopresence, start

DURABLE: dict[str, Any] = {"in_memory": False, "time_origin": None, "fsync": "always"}


async def alice_everywhere(data_dir: Path, history_lines: int) -> None:
    """alice in a snapshot (the final one of a clean stop), in the journal and in 4 history
    files of ``history_lines`` lines (half of them hers)."""
    async with open_server(data_dir=data_dir, **DURABLE) as server:
        await server.admin.befriend("alice", "bob")
        await server.admin.befriend("bob", "carol")
    writer = HistoryWriter(history_dir(data_dir))
    for _ in range(4):
        for i in range(history_lines):
            writer.append("alice" if i % 2 else "bob", Location(1.0 + i / 1e6, 2.0, float(i)))
        writer.rotate()


async def test_an_offline_compaction_after_a_cut_short_forget_does_not_undo_it(
    tmp_path: Path,
) -> None:
    """``geopresence forget`` killed during its history rewrite, then ``geopresence
    snapshot``: the compaction folds the ``user_forgotten`` record into its snapshot, yet the
    next start still scrubs the history and deletes the older snapshot, which held alice."""
    await alice_everywhere(tmp_path, history_lines=60_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "geopresence", "forget", "alice", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the first history file is rewritten: kill it now
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert first.startswith("  history locations-000001.jsonl"), first
    compacted = geopresence("snapshot", "--data-dir", str(tmp_path))
    assert compacted.returncode == 0, compacted.stderr
    async with open_server(data_dir=tmp_path, **DURABLE) as server:  # "finishes it"
        assert await server.admin.friends("alice") == []
    assert files_naming(tmp_path, "alice") == []


@pytest.mark.parametrize("snapshots", [1, 2])
def test_a_snapshot_taken_during_a_forget_then_a_kill_still_leaves_the_forget_to_the_next_start(
    tmp_path: Path, snapshots: int
) -> None:
    """``DELETE /v1/users/alice`` whose history scrub fails (and is retried every 10 s), one
    or two snapshots meanwhile (``POST /v1/snapshot``, as the interval's would be: the
    second one's pruning would delete the older snapshot and the record's segment), then a
    kill: the next start scrubs the history and deletes what still holds alice."""
    data = tmp_path / "data"
    trio.run(alice_everywhere, data, 10)
    args = ("--insecure", "--port", "0", "--http-port", "0", "--data-dir", str(data))
    server = start(*args, "--fsync", "always", "--log-level", "warning", cwd=tmp_path)
    obstacle = history_dir(data) / "locations-000001.jsonl.tmp"
    obstacle.mkdir()  # the scrub's rewrite of the first file fails while this is here
    try:
        with httpx.Client(base_url=server.http_url, timeout=30) as http:
            forget = http.delete("/v1/users/alice")
            assert forget.status_code == 500, forget.text  # applied, durable; scrub retried
            assert "alice is forgotten" in forget.json()["message"]
            for n in range(snapshots):
                # A change in between: each snapshot is a new file (not the same seq again).
                assert http.put(f"/v1/friendships/dan/erin{n}").status_code == 200
                assert http.post("/v1/snapshot").status_code == 200
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    obstacle.rmdir()
    restarted = start(*args, "--log-level", "warning", cwd=tmp_path)  # "finishes it"
    restarted.proc.send_signal(signal.SIGTERM)
    restarted.proc.wait(30)
    assert restarted.proc.returncode == 0
    assert files_naming(data, "alice") == []


async def test_a_repair_after_a_cut_short_forget_leaves_it_to_the_next_start(
    tmp_path: Path,
) -> None:
    """A forget cut short before its scrub (its record journaled, nothing else done), an
    offline compaction, then later records with a torn tail that ``geopresence repair``
    cleans up with a new snapshot: its pruning keeps the record's segment, and the next
    start finishes the forget."""
    await alice_everywhere(tmp_path, history_lines=10)
    last = recover(tmp_path, repair=False).last_seq
    append_offline(tmp_path, last + 1, UserForgotten("alice"))  # then a kill
    compact(tmp_path)
    segment = append_offline(tmp_path, last + 2, Befriended("dan", "erin"))
    with open(segment, "ab") as file:
        file.write(b"\x00\x00\x00")  # a torn tail: repair writes a snapshot, then prunes
    report = repair_data_dir(tmp_path)
    assert report["snapshot"] is not None and report["still_damaged"] == []
    async with open_server(data_dir=tmp_path, **DURABLE) as server:
        assert await server.admin.friends("alice") == []
        assert [f["user"] for f in await server.admin.friends("dan")] == ["erin"]
    assert files_naming(tmp_path, "alice") == []


async def test_an_offline_forget_finishes_an_earlier_one_cut_short(tmp_path: Path) -> None:
    """``geopresence forget bob`` deletes every older snapshot and segment, alice's cut-short
    forget's record with them: it scrubs her history first (its report counts bob's lines
    only)."""
    await alice_everywhere(tmp_path, history_lines=10)
    last = recover(tmp_path, repair=False).last_seq
    append_offline(tmp_path, last + 1, UserForgotten("alice"))  # then a kill
    report = forget_offline(tmp_path, "bob")
    assert report["history"]["lines"] == 4 * 5
    assert files_naming(tmp_path, "alice") == [] and files_naming(tmp_path, "bob") == []


@pytest.mark.parametrize(
    ("keep_from", "segments_left"), [(None, [7, 10]), (5, [4, 7, 10]), (2, [1, 4, 7, 10])]
)
def test_pruning_keeps_the_segment_of_an_unfinished_forget_and_those_after_it(
    tmp_path: Path, keep_from: int | None, segments_left: list[int]
) -> None:
    """Snapshots 3, 6 and 9 and segments from 1, 4, 7 and 10: a prune keeps snapshots 6 and
    9, and the segments needed from 6 on, plus the one holding record ``keep_from`` (an
    unfinished forget's marker) and every later one."""
    directory = state_dir(tmp_path)
    directory.mkdir()
    for seq in (3, 6, 9):
        snapshot_path(directory, seq).touch()
    for first in (1, 4, 7, 10):
        journal_path(directory, first).touch()
    prune(directory, keep_from)
    assert [n for n, _ in numbered(directory, SNAPSHOT_PATTERN)] == [6, 9]
    assert [n for n, _ in numbered(directory, JOURNAL_PATTERN)] == segments_left
