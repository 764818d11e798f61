"""Durability on a real disk (real clock): restart, group commit, torn tails, fallback to an
older snapshot, the data dir lock, and a SIGKILL in the middle of acknowledged sends."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from geopresence.client import connect
from geopresence.model.records import Befriended
from geopresence.storage import journal_file
from geopresence.storage.datadir import (
    JOURNAL_PATTERN,
    SNAPSHOT_PATTERN,
    DataDirLocked,
    is_locked,
    state_dir,
    write_snapshot,
)
from geopresence.storage.journal_file import FileJournal
from geopresence.storage.journal_format import FILE_MAGIC, encode_frame
from geopresence.storage.offline import compact
from geopresence.storage.recovery import recover
from geopresence.storage.snapshot import Snapshot
from geopresence.testing import TestServer, open_server
from tests.helpers import geopresence, start


def persistent(data_dir: Path, **overrides: Any) -> Any:
    return open_server(in_memory=False, data_dir=data_dir, time_origin=None, **overrides)


def files(data_dir: Path, pattern: Any) -> list[Path]:
    directory = state_dir(data_dir)
    return sorted(p for p in directory.iterdir() if pattern.match(p.name))


async def friends_of(server: TestServer, user: str) -> list[str]:
    return [f["user"] for f in await server.admin.friends(user)]


async def test_a_restart_restores_everything_durable(tmp_path: Path) -> None:
    async with persistent(tmp_path, fsync="always") as server:
        await server.admin.befriend("alice", "bob")
        await server.admin.set_group("g", ["alice", "bob", "carol"])
        await server.admin.remove_member("g", "carol")
        async with server.connect("alice") as alice, server.connect("bob"):
            reply = await alice.request("settings", share_location=False, radius_m=1200)
            assert reply["type"] == "settings"
            sent = [
                await alice.send_message("one", to="bob", client_msg_id="k1"),
                await alice.send_message("two", group="g"),
                await alice.send_message("three", to="bob"),
            ]
            before = await alice.sync_all()
    assert [m["message_id"] for m in before] == [s["message_id"] for s in sent]

    async with persistent(tmp_path) as server:
        assert await friends_of(server, "alice") == ["bob"]
        assert (await server.admin.group("g"))["total"] == 2
        async with server.connect("alice") as alice, server.connect("carol") as carol:
            reply = await alice.request("settings")
            assert (reply["share_location"], reply["radius_m"]) == (False, 1200)
            assert await alice.sync_all() == before  # same ids, same order, same fields
            assert (await carol.sync())["messages"] == []  # removed before it was sent
            again = await alice.send_message("one", to="bob", client_msg_id="k1")
            assert again["message_id"] == sent[0]["message_id"] and again["duplicate"]
            new = await alice.send_message("four", to="bob")
            assert int(new["message_id"]) > max(int(s["message_id"]) for s in sent)
        metrics = await server.admin.metrics()
        assert "geopresence_chat_messages_stored 4" in metrics


async def test_fsync_always_group_commits_concurrent_sends(tmp_path: Path) -> None:
    senders, each = 20, 10
    async with persistent(tmp_path, fsync="always") as server:
        pairs = [("hub", f"u{i}") for i in range(senders)]
        await server.admin.befriend_many(pairs)
        before = await _fsyncs(server)
        acks: list[dict[str, Any]] = []

        async def sender(user: str) -> None:
            async with server.connect(user) as client:
                for n in range(each):
                    acks.append(await client.send_message(f"{user}-{n}", to="hub"))

        async with trio.open_nursery() as nursery:
            for _, user in pairs:
                nursery.start_soon(sender, user)
        assert len(acks) == senders * each and all(a["type"] == "sent" for a in acks)
        fsyncs = await _fsyncs(server) - before
        # one fsync covered several acknowledged messages
        assert 0 < fsyncs < senders * each, fsyncs


async def _fsyncs(server: TestServer) -> int:
    for line in (await server.admin.metrics()).splitlines():
        if line.startswith("geopresence_journal_fsyncs_total "):
            return int(float(line.split()[1]))
    raise AssertionError("no fsync metric")


async def test_a_torn_journal_tail_is_truncated_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with persistent(tmp_path) as server:
        await server.admin.befriend("alice", "bob")
    # After a clean stop the last segment is empty; a crash would have left records in it,
    # the last one torn.
    segment = files(tmp_path, JOURNAL_PATTERN)[-1]
    good = encode_frame(Befriended("carol", "dave"))
    torn = encode_frame(Befriended("erin", "frank"))[:-3]
    with open(segment, "ab") as file:
        file.write(good + torn)
    before = segment.read_bytes()
    caplog.set_level(logging.WARNING, logger="geopresence")
    async with persistent(tmp_path) as server:
        assert await friends_of(server, "alice") == ["bob"]
        assert await friends_of(server, "carol") == ["dave"]
        assert await friends_of(server, "erin") == []
    assert "torn frame" in caplog.text and "dropping" in caplog.text
    assert segment.read_bytes() == before[: -len(torn)]  # cut right after the good record


async def test_a_corrupt_snapshot_falls_back_to_the_previous_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with persistent(tmp_path) as server:
        await server.admin.befriend("a", "b")
    async with persistent(tmp_path) as server:
        await server.admin.befriend("c", "d")
    newest = files(tmp_path, SNAPSHOT_PATTERN)[-1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, logger="geopresence")
    async with persistent(tmp_path) as server:
        assert await friends_of(server, "a") == ["b"]
        assert await friends_of(server, "c") == ["d"]  # replayed from the journal
    assert "unreadable" in caplog.text and "moved to" in caplog.text


async def test_two_servers_never_share_a_data_dir(tmp_path: Path) -> None:
    async with persistent(tmp_path):
        with pytest.raises(DataDirLocked, match="one geopresence process per data dir"):
            async with persistent(tmp_path):
                pass  # pragma: no cover


async def test_sigkill_loses_no_acknowledged_message(tmp_path: Path) -> None:
    """``--fsync always``: every message acked before a SIGKILL is there after a restart."""
    data = tmp_path / "data"
    args = ("--insecure", "--port", "0", "--http-port", "0", "--data-dir", str(data))
    server = start(*args, "--fsync", "always", "--log-level", "warning", cwd=tmp_path)
    acked: list[str] = []
    try:
        async with trio.open_nursery() as nursery:

            async def befriend() -> None:
                import httpx

                async with httpx.AsyncClient(base_url=server.http_url) as http:
                    pairs = [["sink", f"s{i}"] for i in range(8)]
                    response = await http.post("/v1/friendships", json={"pairs": pairs})
                    assert response.status_code == 200

            await befriend()

            async def stream(user: str) -> None:
                try:
                    async with connect(server.ws_url, user=user) as client:
                        n = 0
                        while True:
                            reply = await client.send_message(f"{user}:{n}", to="sink")
                            assert reply["type"] == "sent"
                            acked.append(reply["message_id"])
                            n += 1
                except Exception:  # the server dies under us: expected
                    return

            for i in range(8):
                nursery.start_soon(stream, f"s{i}")
            with trio.fail_after(30):
                while len(acked) < 300:
                    await trio.sleep(0.01)
            server.proc.send_signal(signal.SIGKILL)
            await trio.to_thread.run_sync(server.proc.wait)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    assert server.proc.returncode == -signal.SIGKILL
    restarted = start(*args, cwd=tmp_path)
    try:
        async with connect(restarted.ws_url, user="sink") as sink:
            stored = {m["message_id"] for m in await sink.sync_all(limit=1000)}
        missing = [m for m in acked if m not in stored]
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged messages lost"
        report = geopresence("inspect", str(data))
        assert report.returncode == 0 and "durable state" in report.stdout
    finally:
        restarted.proc.send_signal(signal.SIGTERM)
        restarted.proc.wait(30)
    assert restarted.proc.returncode == 0


def test_damage_in_a_segment_the_snapshot_covers_loses_nothing(tmp_path: Path) -> None:
    """Only damage to records after the snapshot can cost data; older damage is noted, left
    as it is, and recovery goes on with the later segments."""
    directory = state_dir(tmp_path)
    directory.mkdir(parents=True)
    old = [Befriended("a", "b"), Befriended("c", "d")]
    new = [Befriended("e", "f"), Befriended("g", "h")]
    (directory / "journal-00000000000000000001.log").write_bytes(
        FILE_MAGIC + b"".join(encode_frame(r) for r in old)
    )
    (directory / "journal-00000000000000000003.log").write_bytes(
        FILE_MAGIC + b"".join(encode_frame(r) for r in new)
    )
    write_snapshot(tmp_path, Snapshot(created_at=0, journal_seq=2, last_message_id=0,
                                      friendships=[("a", "b"), ("c", "d")]))  # fmt: skip
    first = directory / "journal-00000000000000000001.log"
    data = bytearray(first.read_bytes())
    data[len(FILE_MAGIC) + 12] ^= 0xFF
    first.write_bytes(bytes(data))
    recovered = recover(tmp_path, repair=True)
    assert [seq for seq, _ in recovered.records] == [3, 4]
    assert recovered.last_seq == 4
    assert any("not needed" in p for p in recovered.problems)
    assert first.read_bytes() == bytes(data)  # not truncated
    assert not list(directory.glob("*.orphaned"))


def test_after_an_offline_compaction_damage_in_the_old_segment_costs_nothing(
    tmp_path: Path,
) -> None:
    """``geopresence snapshot`` starts a new segment, as a running server does with each
    snapshot: the segment it compacted is then one the snapshot holds entirely, and damage
    found in it later is noted and left, not a refused start (found by review)."""
    directory = state_dir(tmp_path)
    directory.mkdir(parents=True)
    records = [Befriended("a", "b"), Befriended("c", "d"), Befriended("e", "f")]
    first = directory / "journal-00000000000000000001.log"
    first.write_bytes(FILE_MAGIC + b"".join(encode_frame(r) for r in records))
    compact(tmp_path)
    assert (directory / "journal-00000000000000000004.log").read_bytes() == FILE_MAGIC
    data = bytearray(first.read_bytes())
    data[len(FILE_MAGIC) + 12] ^= 0xFF  # bit rot in record 1
    first.write_bytes(bytes(data))
    recovered = recover(tmp_path, repair=True)
    assert recovered.last_seq == 3 and recovered.records == []
    assert any("not needed" in p for p in recovered.problems)


async def test_a_segment_with_half_its_magic_is_reused_cleanly(tmp_path: Path) -> None:
    directory = state_dir(tmp_path)
    directory.mkdir(parents=True)
    (directory / "journal-00000000000000000001.log").write_bytes(FILE_MAGIC[:3])
    assert recover(tmp_path, repair=True).problems == []
    journal = FileJournal(tmp_path, "always")
    await trio.to_thread.run_sync(journal.open, 0)
    journal.append(Befriended("a", "b"))
    await journal.close()
    recovered = recover(tmp_path, repair=False)
    assert recovered.problems == [] and [s for s, _ in recovered.records] == [1]


async def test_a_failed_write_is_retried_without_writing_anything_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_file, "RETRY_AFTER_WRITE_ERROR_S", 0.01)
    journal = FileJournal(tmp_path, "always")
    await trio.to_thread.run_sync(journal.open, 0)
    real_write = os.write
    failures = [1]

    def flaky_write(fd: int, data: Any) -> int:
        if failures[0] and len(data) > 20:
            failures[0] -= 1
            real_write(fd, bytes(data[:20]))  # half a frame reaches the file, then ENOSPC
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", flaky_write)
    for i in range(5):
        journal.append(Befriended(f"a{i}", f"b{i}"))
    await journal.flush()
    assert journal.durable_seq == 5 and journal.write_errors == 1
    await journal.close()
    monkeypatch.setattr(os, "write", real_write)
    recovered = recover(tmp_path, repair=False)
    assert recovered.problems == []
    assert [r for _, r in recovered.records] == [Befriended(f"a{i}", f"b{i}") for i in range(5)]


async def test_reads_never_wait_for_a_stuck_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with persistent(tmp_path) as server:
        journal = server.running.server.journal
        assert journal is not None

        async def stuck() -> None:
            await trio.sleep_forever()

        monkeypatch.setattr(journal, "flush", stuck)
        with trio.move_on_after(1) as put_timeout:
            await server.admin.befriend("a", "b")
        assert put_timeout.cancelled_caught  # not acknowledged: not durable
        with trio.fail_after(5):
            assert (await server.admin.health()) == {"status": "ok"}
            assert "geopresence_journal_write_errors_total" in await server.admin.metrics()
            assert await friends_of(server, "a") == ["b"]
        server.running.server.journal = None  # let the shutdown skip the stuck journal


def test_inspect_leaves_the_lock_file_alone(tmp_path: Path) -> None:
    (tmp_path / "lock").write_text("geopresence pid 1\n")
    assert not is_locked(tmp_path)
    assert (tmp_path / "lock").read_text() == "geopresence pid 1\n"


def test_purge_before_keeps_only_the_new_snapshot_and_the_journal_after_it(
    tmp_path: Path,
) -> None:
    """After a forget: no older snapshot or segment is left to hold the user (``prune``
    would keep one older snapshot and the segments to replay from it)."""
    directory = state_dir(tmp_path)
    directory.mkdir(parents=True)
    for first in (1, 5, 9, 12):
        (directory / f"journal-{first:020d}.log").write_bytes(FILE_MAGIC)
    for seq in (4, 8):
        write_snapshot(tmp_path, Snapshot(created_at=0.0, journal_seq=seq, last_message_id=0))
    write_snapshot(
        tmp_path, Snapshot(created_at=0.0, journal_seq=11, last_message_id=0), purge=True
    )
    assert [p.name for p in files(tmp_path, SNAPSHOT_PATTERN)] == [
        "snapshot-00000000000000000011.snap"
    ]
    # 9..11 is held by the snapshot; 12 may hold later records (and is the last)
    assert [p.name for p in files(tmp_path, JOURNAL_PATTERN)] == [
        "journal-00000000000000000012.log"
    ]


@pytest.mark.parametrize("saved", ["snapshot", "journal only"])
async def test_in_memory_says_it_leaves_the_saved_state_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, saved: str
) -> None:
    """durability.md "--in-memory": the data dir's saved state is not loaded, "a WARNING
    says so", also when it is all in the journal (a server killed before its first
    snapshot), not only when there is a snapshot."""
    directory = state_dir(tmp_path)
    directory.mkdir()
    (directory / "journal-00000000000000000001.log").write_bytes(
        FILE_MAGIC + encode_frame(Befriended("alice", "bob"))
    )
    if saved == "snapshot":
        write_snapshot(tmp_path, Snapshot(created_at=0.0, journal_seq=1, last_message_id=0))
    caplog.set_level(logging.WARNING, logger="geopresence")
    async with open_server(in_memory=True, data_dir=tmp_path, time_origin=None) as server:
        assert await friends_of(server, "alice") == []
    assert f"--in-memory: the state saved in {directory} is not loaded" in caplog.text
