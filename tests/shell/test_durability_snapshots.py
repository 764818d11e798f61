"""A running server's snapshots are written by a forked child: what the server acknowledges
while the child writes is in the journal after the snapshot, a child that fails is logged
and retried, and pruning keeps what recovery needs.

Real disk, real processes, real clock (``trio.fail_after`` only bounds a hang). The child
is steered through files, as it shares no memory with the test once forked."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from geopresence.client import ApiError
from geopresence.model.records import Befriended
from geopresence.shell import durability
from geopresence.storage.datadir import (
    JOURNAL_PATTERN,
    SNAPSHOT_PATTERN,
    journal_path,
    numbered,
    state_dir,
)
from geopresence.storage.recovery import load_offline, recover
from geopresence.storage.snapshot import capture
from geopresence.testing import TestServer, open_server


def persistent(data_dir: Path, **overrides: Any) -> Any:
    return open_server(
        in_memory=False, data_dir=data_dir, time_origin=None, fsync="always", **overrides
    )


async def friends_of(server: TestServer, user: str) -> list[str]:
    return [f["user"] for f in await server.admin.friends(user)]


async def until_exists(path: Path) -> None:
    while not path.exists():
        await trio.sleep(0.01)


async def test_what_is_acked_while_the_child_writes_is_recovered_from_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, started, go = tmp_path / "data", tmp_path / "started", tmp_path / "go"
    server_pid = os.getpid()

    def capture_when_told(*args: Any) -> Any:
        if os.getpid() != server_pid:  # the child: wait until the test has changed things
            started.touch()
            deadline = time.monotonic() + 30
            while not go.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return capture(*args)

    monkeypatch.setattr(durability, "capture", capture_when_told)
    with trio.fail_after(60):
        async with persistent(data) as server:
            await server.admin.befriend("ann", "ben")
            info: dict[str, Any] = {}

            async def snapshot() -> None:
                info.update(await server.admin.call("POST", "/v1/snapshot"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(snapshot)
                await until_exists(started)
                # The loop serves while the child writes: this is applied and acked now.
                await server.admin.befriend("cat", "dan")
                go.touch()
            seq = info["journal_seq"]
            assert info["counts"]["friendships"] == 1  # the state at the fork
            # A crash now (a copy of the files as they are) recovers both friendships: one
            # from the snapshot, one from the segment that began after it.
            shutil.copytree(state_dir(data), state_dir(tmp_path / "crashed"))
    recovered = recover(tmp_path / "crashed", repair=False)
    assert recovered.snapshot is not None and recovered.snapshot.journal_seq == seq
    assert recovered.snapshot.friendships == [("ann", "ben")]
    assert recovered.records == [(seq + 1, Befriended("cat", "dan"))]
    assert journal_path(state_dir(tmp_path / "crashed"), seq + 1).exists()
    async with persistent(tmp_path / "crashed") as server:
        assert await friends_of(server, "ann") == ["ben"]
        assert await friends_of(server, "cat") == ["dan"]


async def test_a_failed_child_is_logged_and_the_next_snapshot_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data, failed = tmp_path / "data", tmp_path / "failed"
    server_pid = os.getpid()

    def fail_twice(*args: Any) -> Any:
        if os.getpid() != server_pid:  # the child; the marker counts across children
            count = int(failed.read_text()) if failed.exists() else 0
            if count < 2:
                failed.write_text(str(count + 1))
                raise OSError(5, "Input/output error")
        return capture(*args)

    monkeypatch.setattr(durability, "capture", fail_twice)
    caplog.set_level(logging.ERROR, logger="geopresence")
    with trio.fail_after(60):
        async with persistent(data, snapshot_interval=0.05) as server:
            await server.admin.befriend("ann", "ben")
            with pytest.raises(ApiError) as error:  # the forced one fails: a 500
                await server.admin.call("POST", "/v1/snapshot")
            assert error.value.status == 500
            # It says what failed, and the log has it in one line, not as a traceback.
            assert "snapshot failed" in error.value.message
            assert "Input/output error" in error.value.message
            assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
            while not numbered(state_dir(data), SNAPSHOT_PATTERN):
                await trio.sleep(0.01)  # the loop's retry
            assert "Input/output error" in caplog.text
            assert "snapshot failed (the journal still has everything)" in caplog.text
            await server.admin.befriend("cat", "dan")
    assert not list(state_dir(data).glob("*.tmp"))
    async with persistent(data) as server:
        assert await friends_of(server, "ann") == ["ben"]
        assert await friends_of(server, "cat") == ["dan"]


async def test_pruning_keeps_two_snapshots_and_the_segments_after_the_older(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with persistent(tmp_path) as server:
            for n in range(4):
                await server.admin.befriend("ann", f"f{n}")
                await server.admin.call("POST", "/v1/snapshot")
            await server.admin.befriend("ann", "last")  # journal only (until the shutdown)
            directory = state_dir(tmp_path)
            kept = [seq for seq, _ in numbered(directory, SNAPSHOT_PATTERN)]
            segments = [seq for seq, _ in numbered(directory, JOURNAL_PATTERN)]
            assert len(kept) == 2
            # Every record after the older snapshot is in a segment still there.
            assert segments[0] <= kept[0] + 1 and segments[-1] == kept[-1] + 1
            state, recovered = load_offline(tmp_path, repair=False)
    assert recovered.problems == []
    assert sorted(state.users.friends_of("ann")) == ["f0", "f1", "f2", "f3", "last"]
