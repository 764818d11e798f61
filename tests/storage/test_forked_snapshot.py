"""The forked snapshot writer (Redis' BGSAVE): a child process writes the file, the parent
installs it; a child that fails, is killed or is abandoned leaves the previous snapshot and
the journal as they were, and the next snapshot works.

Real processes and a real clock: ``trio.fail_after`` only bounds a hang, nothing is timed."""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

import pytest
import trio

from geopresence.model.chat_message import ChatMessage
from geopresence.storage import datadir
from geopresence.storage.datadir import (
    SNAPSHOT_PATTERN,
    numbered,
    state_dir,
    write_snapshot,
)
from geopresence.storage.forked_snapshot import (
    CHILD_NICENESS,
    SnapshotWriterFailed,
    write_snapshot_forked,
)
from geopresence.storage.recovery import recover
from geopresence.storage.snapshot import Snapshot


def snapshot_at(seq: int, *pairs: tuple[str, str]) -> Snapshot:
    return Snapshot(
        created_at=float(seq),
        journal_seq=seq,
        last_message_id=seq,
        friendships=list(pairs),
        messages=[ChatMessage(seq, "ann", "hi", 1.0, to="ben")],
    )


def snapshots(data_dir: Path) -> list[int]:
    return [seq for seq, _ in numbered(state_dir(data_dir), SNAPSHOT_PATTERN)]


def leftovers(data_dir: Path) -> list[str]:
    return sorted(p.name for p in state_dir(data_dir).glob("*.tmp"))


async def test_the_child_writes_the_snapshot_and_the_parent_installs_it(tmp_path: Path) -> None:
    taken = snapshot_at(5, ("ann", "ben"))
    with trio.fail_after(30):
        path, size, counts = await write_snapshot_forked(tmp_path, 5, lambda: taken)
    assert path.name == "snapshot-00000000000000000005.snap"
    assert size == path.stat().st_size
    assert counts == taken.counts()
    recovered = recover(tmp_path, repair=False)
    assert recovered.snapshot == taken and recovered.problems == []
    assert leftovers(tmp_path) == []


async def test_the_child_takes_the_state_as_it_was_at_the_fork(tmp_path: Path) -> None:
    """Changes the parent makes after the fork are not in the file (they are in the
    journal after ``journal_seq``)."""
    state = [("ann", "ben")]

    async def change_it() -> None:
        state.append(("cat", "dan"))  # the parent's loop runs while the child writes

    def take() -> Snapshot:
        time.sleep(0.2)  # in the child: the parent has changed its copy by now
        return snapshot_at(1, *state)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(change_it)
            await write_snapshot_forked(tmp_path, 1, take)
    assert state == [("ann", "ben"), ("cat", "dan")]
    recovered = recover(tmp_path, repair=False)
    assert recovered.snapshot is not None
    assert recovered.snapshot.friendships == [("ann", "ben")]


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
async def test_the_child_runs_only_on_cpu_time_nothing_else_wants(tmp_path: Path) -> None:
    """The child is in the SCHED_IDLE class (and niced): on a shared core it never takes
    a slice from the server."""

    def take() -> Snapshot:  # in the child: what it runs as goes into the file
        policy, niceness = os.sched_getscheduler(0), os.nice(0)
        return snapshot_at(1, (f"policy{policy}", f"nice{niceness}"))

    with trio.fail_after(30):
        await write_snapshot_forked(tmp_path, 1, take)
    recovered = recover(tmp_path, repair=False)
    assert recovered.snapshot is not None
    assert recovered.snapshot.friendships == [
        (f"policy{os.SCHED_IDLE}", f"nice{os.nice(0) + CHILD_NICENESS}")
    ]
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the parent's own class is untouched


async def test_a_failing_child_is_reported_and_changes_nothing(tmp_path: Path) -> None:
    write_snapshot(tmp_path, snapshot_at(3, ("ann", "ben")))
    before = sorted(p.name for p in state_dir(tmp_path).iterdir())

    def take() -> Snapshot:
        raise OSError(28, "No space left on device")

    with trio.fail_after(30), pytest.raises(SnapshotWriterFailed) as failed:
        await write_snapshot_forked(tmp_path, 4, take)
    assert "failed: OSError: [Errno 28] No space left on device" in str(failed.value)
    assert isinstance(failed.value, OSError)  # the snapshot loop logs it and goes on
    assert sorted(p.name for p in state_dir(tmp_path).iterdir()) == before
    with trio.fail_after(30):  # the next one works
        await write_snapshot_forked(tmp_path, 4, lambda: snapshot_at(4, ("cat", "dan")))
    assert snapshots(tmp_path) == [3, 4]


async def test_a_child_whose_disk_fills_up_mid_write_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The partial .tmp would hold the space the journal needs once some is freed, and the
    # next snapshot (another seq) would not write over it.
    write_snapshot(tmp_path, snapshot_at(3, ("ann", "ben")))
    write_all = datadir._write_all
    writes: list[int] = []

    def disk_full_after_the_header(fd: int, data: bytes) -> None:
        writes.append(len(data))
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        write_all(fd, data)

    monkeypatch.setattr(datadir, "_write_all", disk_full_after_the_header)  # the child's copy
    with trio.fail_after(30), pytest.raises(SnapshotWriterFailed, match="No space left"):
        await write_snapshot_forked(tmp_path, 4, lambda: snapshot_at(4, ("cat", "dan")))
    assert leftovers(tmp_path) == [] and snapshots(tmp_path) == [3]


async def test_a_child_killed_mid_write_leaves_the_previous_snapshot(tmp_path: Path) -> None:
    write_snapshot(tmp_path, snapshot_at(3, ("ann", "ben")))
    pid_file = tmp_path / "child.pid"

    def take() -> Snapshot:
        pid_file.write_text(str(os.getpid()))
        time.sleep(60)  # killed long before this ends
        raise AssertionError("not killed")

    async def kill_the_child() -> None:
        while not pid_file.exists() or not pid_file.read_text():
            await trio.sleep(0.01)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_the_child)
            with pytest.raises(SnapshotWriterFailed, match="killed by SIGKILL"):
                await write_snapshot_forked(tmp_path, 4, take)
    assert snapshots(tmp_path) == [3]
    recovered = recover(tmp_path, repair=False)
    assert recovered.snapshot is not None and recovered.snapshot.journal_seq == 3
    with trio.fail_after(30):
        await write_snapshot_forked(tmp_path, 4, lambda: snapshot_at(4))
    assert snapshots(tmp_path) == [3, 4] and leftovers(tmp_path) == []


async def test_a_cancelled_snapshot_kills_and_reaps_its_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"

    def take() -> Snapshot:
        pid_file.write_text(str(os.getpid()))
        time.sleep(60)
        raise AssertionError("not killed")

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def snapshot() -> None:
                await write_snapshot_forked(tmp_path, 4, take)

            nursery.start_soon(snapshot)
            while not pid_file.exists() or not pid_file.read_text():
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    pid = int(pid_file.read_text())
    with pytest.raises(ChildProcessError):  # reaped: no zombie left behind
        os.waitpid(pid, os.WNOHANG)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert snapshots(tmp_path) == []


async def test_a_captured_seq_other_than_the_one_asked_for_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(30), pytest.raises(SnapshotWriterFailed, match="journal seq 9, not 4"):
        await write_snapshot_forked(tmp_path, 4, lambda: snapshot_at(9))
    assert snapshots(tmp_path) == []
