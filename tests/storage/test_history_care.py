"""Keeping the history files within limits, on real files: whole files deleted past the
retention, files rewritten without forgotten users, atomically."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from geopresence.core.locations import Location
from geopresence.core.retention import HistoryFile
from geopresence.storage.history import HistoryWriter, read_history
from geopresence.storage.history_care import (
    delete_files,
    history_files,
    remove_temporaries,
    scrub,
    scrubbed_through,
    set_scrubbed_through,
)


def write_files(directory: Path, *files: list[str]) -> None:
    """One history file per argument, holding a record of each user listed, in order."""
    writer = HistoryWriter(directory)
    for users in files:
        for i, user in enumerate(users):
            writer.append(user, Location(10.0 + i, 20.0, 1000.0 + i))
        writer.rotate()


def users_in(path: Path) -> list[str]:
    return [orjson.loads(line)["user"] for line in path.read_bytes().splitlines()]


def test_history_files_and_delete_files(tmp_path: Path) -> None:
    write_files(tmp_path, ["a"], ["b"], ["c"])
    for number, when in ((1, 100.0), (2, 200.0), (3, 300.0)):
        os.utime(tmp_path / f"locations-{number:06d}.jsonl", (when, when))
    assert history_files(tmp_path) == [
        HistoryFile(1, 100.0),
        HistoryFile(2, 200.0),
        HistoryFile(3, 300.0),
    ]
    freed = delete_files(tmp_path, [1, 3, 9])  # 9: gone already
    assert freed > 0
    assert [f.number for f in history_files(tmp_path)] == [2]
    assert history_files(tmp_path / "missing") == []


def test_scrub_removes_the_users_lines_and_torn_ones_keeping_the_rest(tmp_path: Path) -> None:
    write_files(tmp_path, ["alice", "bob", "alice", "carol"], ["alice"], ["bob"], ["alice"])
    first, only_alice, only_bob, later = sorted(tmp_path.iterdir())
    with open(first, "ab") as f:
        f.write(b'{"user":"alice","lat":3')  # a torn line: it may hold part of a record
    os.utime(first, (12345.0, 12345.0))
    bob_inode = only_bob.stat().st_ino
    changed: list[tuple[str, int]] = []
    done = scrub(tmp_path, {"alice"}, through=3, progress=lambda n, k: changed.append((n, k)))
    assert (done.lines, done.rewritten, done.deleted) == (4, 1, 1)
    assert changed == [(first.name, 3), (only_alice.name, 1)]
    assert users_in(first) == ["bob", "carol"]
    assert [e.lat for e in read_history(tmp_path, "carol")] == [13.0]  # lines unchanged
    assert first.stat().st_mtime == 12345.0  # the retention is unchanged by a rewrite
    assert not only_alice.exists()  # nothing left in it
    assert only_bob.stat().st_ino == bob_inode  # not rewritten: nothing of alice
    assert users_in(later) == ["alice"]  # past ``through``: written after the forget
    assert not list(tmp_path.glob("*.tmp"))


def test_a_crash_in_the_middle_of_a_rewrite_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed before the rename: the old file is whole, beside a ``.tmp`` that readers
    ignore and the next scrub (or start) deletes; after it, the new file alone."""
    write_files(tmp_path, ["alice", "bob"])
    [path] = tmp_path.iterdir()
    before = path.read_bytes()

    def killed(*args: object) -> None:
        raise SystemExit("killed")  # nothing after this point runs, as with kill -9

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(SystemExit):
        scrub(tmp_path, {"alice"})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.glob("*.tmp")] == [path.name + ".tmp"]
    assert [e.user for e in read_history(tmp_path)] == ["alice", "bob"]
    monkeypatch.undo()
    assert scrub(tmp_path, {"alice"}).lines == 1
    assert users_in(path) == ["bob"] and not list(tmp_path.glob("*.tmp"))
    assert remove_temporaries(tmp_path) == 0


def test_the_scrubbed_through_mark(tmp_path: Path) -> None:
    assert scrubbed_through(tmp_path) == 0.0
    set_scrubbed_through(tmp_path / "history", 1795307773.25)
    assert scrubbed_through(tmp_path / "history") == 1795307773.25
