"""Journal write errors on a real disk: a full disk while a snapshot starts a segment, a
failed fsync under ``always``: retried every second, nothing acknowledged before it is
durable, nothing lost (found by an adversarial review)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from geopresence.model.records import Befriended
from geopresence.storage import journal_file
from geopresence.storage.journal_file import FileJournal
from geopresence.storage.journal_format import FILE_MAGIC
from geopresence.storage.recovery import recover


async def test_a_disk_full_while_a_snapshot_starts_a_segment_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """durability.md "Write errors": a failed journal write is retried every second and
    nothing is lost. A disk that is full when a snapshot rotates the journal makes the new
    segment's magic fail (ENOSPC); the retry must then create it again, not crash."""
    monkeypatch.setattr(journal_file, "RETRY_AFTER_WRITE_ERROR_S", 0.01)
    journal = FileJournal(tmp_path, "everysec")
    await trio.to_thread.run_sync(journal.open, 0)
    journal.append(Befriended("a", "b"))
    await journal.flush()
    real_write = os.write
    failures = [1]

    def full_disk(fd: int, data: Any) -> int:
        if failures[0] and bytes(data) == FILE_MAGIC:
            failures[0] -= 1
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    assert journal.start_segment() == 1  # what Durability.take_snapshot does
    journal.append(Befriended("c", "d"))
    with trio.fail_after(5):
        await journal.flush()  # AssertionError (self._fd is None) instead of a retry
    assert journal.durable_seq == 2 and journal.write_errors == 1
    await journal.close()
    monkeypatch.setattr(os, "write", real_write)
    recovered = recover(tmp_path, repair=False)
    assert [r for _, r in recovered.records] == [Befriended("a", "b"), Befriended("c", "d")]


async def test_a_failed_fsync_under_always_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """durability.md "Write errors": acks wait and the write is "retried every second".
    Under ``--fsync always`` a batch whose write worked but whose fsync failed (EIO) is
    re-queued as nothing (every frame was written), so nothing retries the fsync: the
    records stay not durable, and their acks (a PUT, a ``sent``) wait until some other
    record happens to be written."""
    monkeypatch.setattr(journal_file, "RETRY_AFTER_WRITE_ERROR_S", 0.01)
    journal = FileJournal(tmp_path, "always")
    await trio.to_thread.run_sync(journal.open, 0)
    real_fsync = os.fsync
    failures = [1]

    def flaky_fsync(fd: int) -> None:
        if failures[0]:
            failures[0] -= 1
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", flaky_fsync)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(journal.run)  # as the server runs it
        journal.append(Befriended("a", "b"))
        with trio.move_on_after(3):
            while journal.durable_seq < 1:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert journal.write_errors == 1
    assert journal.durable_seq == 1, "the ack of record 1 waits for an unrelated write"


async def test_everysec_keeps_fsyncing_after_a_segment_start_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """durability.md "fsync policies": ``everysec`` fsyncs once a second, for the server's
    whole life. The once-a-second fsync found the segment closed when a snapshot's new
    segment could not be created (a full disk) while it waited for the file, and took that
    for the shutdown: it stopped for good, so an OS crash could lose every record written
    since, not the last second's."""
    monkeypatch.setattr(journal_file, "RETRY_AFTER_WRITE_ERROR_S", 0.01)
    journal = FileJournal(tmp_path, "everysec")
    await trio.to_thread.run_sync(journal.open, 0)
    real_write, real_fsync = os.write, os.fsync
    slow_fsyncs, failures = [1], [1]

    def slow_fsync(fd: int) -> None:
        if slow_fsyncs[0]:  # the old segment's, at the rotation: the tick waits for it
            slow_fsyncs[0] -= 1
            time.sleep(1.5)
        real_fsync(fd)

    def full_disk(fd: int, data: Any) -> int:
        if failures[0] and bytes(data) == FILE_MAGIC:
            failures[0] -= 1
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(journal.run)  # as the server runs it; its first tick is at 1 s
        journal.append(Befriended("a", "b"))
        await journal.flush()  # written, not yet fsynced: the tick will want to
        monkeypatch.setattr(os, "fsync", slow_fsync)
        monkeypatch.setattr(os, "write", full_disk)
        journal.start_segment()  # what Durability.take_snapshot does
        journal.append(Befriended("c", "d"))
        with trio.fail_after(5):
            while journal.durable_seq < 2:
                await trio.sleep(0.01)
        assert journal.write_errors == 1
        fsyncs = journal.fsyncs
        journal.append(Befriended("e", "f"))
        await trio.sleep(2.5)  # two ticks
        nursery.cancel_scope.cancel()
    assert journal.fsyncs > fsyncs, "no fsync since the failed segment start"


async def test_a_flush_during_a_failing_write_keeps_the_records_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two flushes at once (the writer's and a forget's ``settle``): the second took the
    records appended meanwhile while the first's batch was being written; that write then
    failed and was put back, and the second wrote its later records first. Record 2 then
    sat where record 1 belongs (a restart replays the records out of order, under the
    wrong numbers), and record 1 was acknowledged before it was on disk."""
    monkeypatch.setattr(journal_file, "RETRY_AFTER_WRITE_ERROR_S", 0.01)
    journal = FileJournal(tmp_path, "always")
    await trio.to_thread.run_sync(journal.open, 0)
    real_write = os.write
    writing, fail = threading.Event(), threading.Event()
    failures = [1]

    def failing_once(fd: int, data: Any) -> int:
        if failures[0]:
            failures[0] -= 1
            writing.set()
            fail.wait(5)
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", failing_once)
    durable_on_disk: list[tuple[int, int]] = []  # (durable seq, records in the file then)
    journal.on_durable = lambda: durable_on_disk.append(
        (journal.durable_seq, len(recover(tmp_path, repair=False).records))
    )
    journal.append(Befriended("a", "b"))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.flush)  # the writer's: record 1, which will fail
            await trio.to_thread.run_sync(writing.wait)
            journal.append(Befriended("c", "d"))
            nursery.start_soon(journal.settle)  # takes record 2 while record 1 is out
            await trio.sleep(0.1)
            fail.set()
    recovered = recover(tmp_path, repair=False)
    assert [r for _, r in recovered.records] == [Befriended("a", "b"), Befriended("c", "d")]
    assert all(durable <= on_disk for durable, on_disk in durable_on_disk), durable_on_disk
