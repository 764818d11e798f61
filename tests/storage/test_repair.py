"""Damage on a real disk (issue 14): a torn tail is the only damage a start-up repairs by
itself; anything else makes it refuse, changing nothing, and ``geopresence repair`` keeps every
intact record and a copy of every file it changes.

Each data dir here is written by a real server (``fsync="always"``: every acknowledged change
is on disk), then damaged with ``open(..., "r+b")``.
"""

from __future__ import annotations

import errno
import logging
import zlib
from pathlib import Path
from typing import Any

import pytest

from geopresence.cli import main
from geopresence.shell import tools
from geopresence.storage import offline, repair
from geopresence.storage.datadir import (
    CORRUPT_DIR,
    JOURNAL_PATTERN,
    SNAPSHOT_PATTERN,
    DataDirLocked,
    keep_aside,
    state_dir,
)
from geopresence.storage.journal_format import HEADER, Frame, scan_frames
from geopresence.storage.recovery import DataDirCorrupt
from geopresence.storage.repair import repair_data_dir
from geopresence.storage.snapshot import HEADER_SIZE, header
from geopresence.testing import TestServer, open_server
from tests.helpers import geopresence

MESSAGES = 50


def persistent(data_dir: Path, **overrides: Any) -> Any:
    return open_server(in_memory=False, data_dir=data_dir, time_origin=None, **overrides)


def files(data_dir: Path, pattern: Any) -> list[Path]:
    return sorted(p for p in state_dir(data_dir).iterdir() if pattern.match(p.name))


def contents(data_dir: Path) -> dict[str, bytes]:
    """Every file under the data dir's state/ and corrupt/, by path: "nothing was changed"."""
    return {
        str(p.relative_to(data_dir)): p.read_bytes()
        for folder in (state_dir(data_dir), data_dir / CORRUPT_DIR)
        if folder.is_dir()
        for p in sorted(folder.iterdir())
    }


def flip(path: Path, offset: int, mask: int = 0x01) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([byte ^ mask]))


async def write_and_crash(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, *, users: tuple[str, str] = ("alice", "bob")
) -> None:
    """A friendship and MESSAGES acknowledged messages; then the server stops without its
    final snapshot, as a crash would: they are in the journal only."""
    a, b = users
    async with persistent(data_dir, fsync="always") as server:
        await server.admin.befriend(a, b)
        async with server.connect(a) as client:
            for n in range(MESSAGES):
                reply = await client.send_message(f"{a}-{n}", to=b)
                assert reply["type"] == "sent"

        async def no_snapshot(**_: Any) -> dict[str, object]:
            return {}

        monkeypatch.setattr(server.running.server, "take_snapshot", no_snapshot)


async def texts(server: TestServer, user: str) -> list[str]:
    async with server.connect(user) as client:
        return [m["text"] for m in await client.sync_all(limit=1000)]


async def friends_of(server: TestServer, user: str) -> list[str]:
    return [f["user"] for f in await server.admin.friends(user)]


async def refuses(data_dir: Path) -> DataDirCorrupt:
    before = contents(data_dir)
    with pytest.raises(DataDirCorrupt) as refused:
        async with persistent(data_dir):
            pass  # pragma: no cover
    assert contents(data_dir) == before  # nothing changed, nothing moved
    assert ("geopresence repair --data-dir" in str(refused.value)) != refused.value.newer
    assert "\n" not in str(refused.value)
    return refused.value


def frames_of(path: Path) -> list[Frame]:
    scan = scan_frames(path.read_bytes())
    assert not scan.damaged
    return scan.frames


async def test_a_bit_flip_in_a_segment_header_refuses_and_repair_keeps_all_51_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await write_and_crash(tmp_path, monkeypatch)
    [segment] = files(tmp_path, JOURNAL_PATTERN)
    assert not files(tmp_path, SNAPSHOT_PATTERN)
    original = segment.read_bytes()
    flip(segment, 3)
    damaged = segment.read_bytes()

    refused = await refuses(tmp_path)
    message = str(refused)
    assert segment.name in message and "byte 0" in message
    assert f"then {MESSAGES + 1} intact record(s)" in message
    # The command says the same in one line, with exit status 1.
    served = geopresence("serve", "--insecure", "--port", "0", "--http-port", "0",
                         "--data-dir", str(tmp_path))  # fmt: skip
    assert served.returncode == 1
    assert served.stderr.strip().splitlines() == [f"geopresence: {message}"]
    assert segment.read_bytes() == damaged

    repaired = geopresence("repair", "--data-dir", str(tmp_path))
    assert repaired.returncode == 0, repaired.stderr
    assert f"rewritten with {MESSAGES + 1} intact record(s)" in repaired.stdout
    assert "lost: nothing" in repaired.stdout
    [kept] = (tmp_path / CORRUPT_DIR).iterdir()
    assert kept.name.startswith(segment.name + ".") and kept.read_bytes() == damaged
    assert segment.read_bytes() == original  # the magic rebuilt, every frame as it was

    async with persistent(tmp_path) as server:
        assert await friends_of(server, "alice") == ["bob"]
        assert await texts(server, "bob") == [f"alice-{n}" for n in range(MESSAGES)]


async def test_a_byte_flip_mid_segment_refuses_and_repair_keeps_the_records_before_and_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await write_and_crash(tmp_path, monkeypatch)
    [segment] = files(tmp_path, JOURNAL_PATTERN)
    frames = frames_of(segment)
    assert len(frames) == MESSAGES + 1
    bad = frames[17]  # message alice-16; 16 records before it, 33 after
    flip(segment, bad.start + HEADER.size + 5, 0xFF)
    damaged = segment.read_bytes()

    message = str(await refuses(tmp_path))
    assert f"checksum mismatch at byte {bad.start}" in message
    assert "then 33 intact record(s)" in message

    report = repair_data_dir(tmp_path)
    [rewritten] = report["files"]
    assert (rewritten["records_kept"], rewritten["records_dropped"]) == (MESSAGES, 1)
    assert rewritten["bytes_dropped"] == bad.end - bad.start
    assert Path(rewritten["original"]).read_bytes() == damaged
    assert report["lost"] == [f"journal {segment.name}: 1 damaged record(s)"]
    assert report["still_damaged"] == []

    async with persistent(tmp_path) as server:
        assert await friends_of(server, "alice") == ["bob"]
        expected = [f"alice-{n}" for n in range(MESSAGES) if n != 16]
        assert await texts(server, "bob") == expected


async def test_a_damaged_length_field_followed_by_good_records_loses_nothing_after_repair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flipped length makes a record look torn; the intact records after it say it is not a
    torn tail, and its checksum still matches the bytes up to the next record."""
    await write_and_crash(tmp_path, monkeypatch)
    [segment] = files(tmp_path, JOURNAL_PATTERN)
    original = segment.read_bytes()
    bad = frames_of(segment)[30]
    flip(segment, bad.start + 1, 0x40)  # its length now runs far past the end of the file

    message = str(await refuses(tmp_path))
    assert f"damaged frame length at byte {bad.start}" in message
    assert "then 20 intact record(s)" in message

    report = repair_data_dir(tmp_path)
    assert report["files"][0]["records_reframed"] == 1 and report["lost"] == []
    assert segment.read_bytes() == original
    async with persistent(tmp_path) as server:
        assert await texts(server, "bob") == [f"alice-{n}" for n in range(MESSAGES)]


async def _two_runs(data_dir: Path) -> None:
    """Two servers in a row, each stopping cleanly: snapshots 11 and 22, the journal after
    the older one kept for the fallback."""
    for a, b in (("alice", "bob"), ("carol", "dave")):
        async with persistent(data_dir, fsync="always") as server:
            await server.admin.befriend(a, b)
            async with server.connect(a) as client:
                for n in range(10):
                    await client.send_message(f"{a}-{n}", to=b)


async def test_a_damaged_snapshot_is_set_aside_and_the_older_one_plus_journal_lose_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await _two_runs(tmp_path)
    older, newest = files(tmp_path, SNAPSHOT_PATTERN)
    assert newest.name == "snapshot-00000000000000000022.snap"
    flip(newest, newest.stat().st_size // 2)
    damaged = newest.read_bytes()
    caplog.set_level(logging.WARNING, logger="geopresence")
    async with persistent(tmp_path) as server:
        assert await friends_of(server, "carol") == ["dave"]
        assert await texts(server, "bob") == [f"alice-{n}" for n in range(10)]
        assert await texts(server, "dave") == [f"carol-{n}" for n in range(10)]
    [line] = [r.getMessage() for r in caplog.records if "recovery:" in r.getMessage()]
    assert newest.name in line and "moved to" in line and older.name in line
    [kept] = (tmp_path / CORRUPT_DIR).iterdir()
    assert kept.name.startswith(newest.name + ".") and kept.read_bytes() == damaged
    assert kept.name in line


async def test_a_damaged_snapshot_and_damage_in_the_journal_behind_it_refuse(
    tmp_path: Path,
) -> None:
    """Falling back to the older snapshot needs the segment after it: damage there is not
    skipped (records 12..22 exist nowhere else), and repair keeps all but the damaged one."""
    await _two_runs(tmp_path)
    _, newest = files(tmp_path, SNAPSHOT_PATTERN)
    flip(newest, newest.stat().st_size // 2)
    middle = state_dir(tmp_path) / "journal-00000000000000000012.log"
    frames = frames_of(middle)
    assert len(frames) == 11
    flip(middle, frames[4].start + HEADER.size + 3, 0xFF)  # carol-3

    message = str(await refuses(tmp_path))
    assert f"journal {middle.name}: checksum mismatch" in message
    assert "then 6 intact record(s)" in message

    report = repair_data_dir(tmp_path)
    assert report["still_damaged"] == [] and report["snapshot"]["journal_seq"] == 22
    moved = {f["file"]: f["original"] for f in report["files"]}
    assert set(moved) == {newest.name, middle.name}
    async with persistent(tmp_path) as server:
        assert await friends_of(server, "carol") == ["dave"]
        assert await texts(server, "bob") == [f"alice-{n}" for n in range(10)]
        assert await texts(server, "dave") == [f"carol-{n}" for n in range(10) if n != 3]


async def test_a_damaged_snapshot_whose_records_are_in_no_other_file_refuses(
    tmp_path: Path,
) -> None:
    await _two_runs(tmp_path)
    _, newest = files(tmp_path, SNAPSHOT_PATTERN)
    flip(newest, newest.stat().st_size // 2)
    (state_dir(tmp_path) / "journal-00000000000000000012.log").unlink()  # as if lost
    message = str(await refuses(tmp_path))
    assert "records 12..22 are in no other file" in message


async def test_a_torn_tail_is_still_repaired_at_start_up_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await write_and_crash(tmp_path, monkeypatch)
    [segment] = files(tmp_path, JOURNAL_PATTERN)
    last = frames_of(segment)[-1]
    with open(segment, "r+b") as file:
        file.truncate(last.end - 7)  # the last write cut off
    caplog.set_level(logging.WARNING, logger="geopresence")
    async with persistent(tmp_path) as server:
        assert await texts(server, "bob") == [f"alice-{n}" for n in range(MESSAGES - 1)]
    [line] = [r.getMessage() for r in caplog.records if "recovery:" in r.getMessage()]
    assert f"torn frame at byte {last.start}" in line
    assert not (tmp_path / CORRUPT_DIR).exists()


def _frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@pytest.mark.parametrize(
    ("damage", "refused"),
    [
        ("length of the last record", "damaged frame length"),
        ("a whole record of a kind it does not know", "run the geopresence version that wrote"),
        ("zeros after the last record", None),  # what a power loss can leave: a torn tail
    ],
)
async def test_only_a_tail_that_may_be_a_cut_write_is_dropped_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str, refused: str | None
) -> None:
    await write_and_crash(tmp_path, monkeypatch)
    [segment] = files(tmp_path, JOURNAL_PATTERN)
    last = frames_of(segment)[-1]
    if damage.startswith("length"):
        flip(segment, last.start + 2, 0x01)
    elif damage.startswith("a whole record"):
        with open(segment, "ab") as file:
            file.write(_frame(b'{"t":"from_a_newer_version"}'))
    else:
        with open(segment, "ab") as file:
            file.write(bytes(4096))
    if refused is not None:
        assert refused in str(await refuses(tmp_path))
        if damage.startswith("a whole record"):  # sound, from a newer version: never repaired
            before = contents(tmp_path)
            result = geopresence("repair", "--data-dir", str(tmp_path))
            assert result.returncode == 1 and "from_a_newer_version" in result.stderr
            assert contents(tmp_path) == before
        return
    async with persistent(tmp_path) as server:
        assert len(await texts(server, "bob")) == MESSAGES
    assert segment.stat().st_size == last.end


async def test_inspect_and_snapshot_report_corruption_and_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await write_and_crash(tmp_path, monkeypatch)
    [segment] = files(tmp_path, JOURNAL_PATTERN)
    flip(segment, frames_of(segment)[10].start + HEADER.size + 2, 0xFF)
    before = contents(tmp_path)
    inspected = geopresence("inspect", str(tmp_path))
    assert inspected.returncode == 1
    assert "start-up refuses" in inspected.stdout and "geopresence repair" in inspected.stdout
    compacted = geopresence("snapshot", str(tmp_path))
    assert compacted.returncode == 1
    assert compacted.stderr.startswith("geopresence snapshot: ") and "checksum" in compacted.stderr
    dry = geopresence("repair", "--data-dir", str(tmp_path), "--dry-run")
    assert dry.returncode == 0 and "would be rewritten with 50 intact record(s)" in dry.stdout
    assert contents(tmp_path) == before


async def test_repair_refuses_while_a_server_runs_and_does_nothing_on_a_healthy_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with persistent(tmp_path) as server:
        await server.admin.befriend("a", "b")
        with pytest.raises(DataDirLocked):
            repair_data_dir(tmp_path)
    await write_and_crash(tmp_path, monkeypatch)  # healthy, with records after the snapshot
    before = contents(tmp_path)
    result = geopresence("repair", "--data-dir", str(tmp_path))
    assert result.returncode == 0 and "nothing to repair" in result.stdout
    assert contents(tmp_path) == before


def test_repair_refuses_a_folder_that_is_not_a_data_dir_and_leaves_it_alone(
    tmp_path: Path,
) -> None:
    (tmp_path / "notes.txt").write_text("not a data dir")
    result = geopresence("repair", "--data-dir", str(tmp_path))
    assert result.returncode == 1, result.stdout
    assert "is not a geopresence data dir" in result.stderr
    assert "nothing to repair" not in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no lock file left


async def test_a_full_disk_or_unreadable_file_is_one_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with persistent(tmp_path) as server:
        await server.admin.befriend("a", "b")

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    def unreadable(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "state"))

    monkeypatch.setattr(offline, "write_snapshot", full)
    monkeypatch.setattr(repair, "examine", unreadable)
    for argv in (
        ["snapshot", str(tmp_path)],
        ["forget", "a", "--data-dir", str(tmp_path)],
        ["repair", "--data-dir", str(tmp_path)],
        ["inspect", str(tmp_path)],
    ):
        if argv[0] == "inspect":
            monkeypatch.setattr(offline, "load_offline", unreadable)
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith(f"geopresence {argv[0]}: ") and "Traceback" not in err, err
        assert "No space left on device" in err or "Permission denied" in err, err
        assert len(err.splitlines()) == 1, err
    (tmp_path / "history").mkdir(exist_ok=True)
    monkeypatch.setattr(tools, "read_history", unreadable)
    assert main(["history", "a", "--data-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("geopresence history: [Errno 13] Permission denied")


async def test_a_snapshot_from_a_newer_version_is_not_repaired_away(tmp_path: Path) -> None:
    async with persistent(tmp_path) as server:
        await server.admin.befriend("a", "b")
    [newest] = files(tmp_path, SNAPSHOT_PATTERN)[-1:]
    data = newest.read_bytes()
    payload = data[HEADER_SIZE:].replace(b'"version":1', b'"version":2', 1)
    newest.write_bytes(header(len(payload), zlib.crc32(payload)) + payload)
    with pytest.raises(DataDirCorrupt) as refused:
        async with persistent(tmp_path):
            pass  # pragma: no cover
    assert "snapshot version 2 is newer than this geopresence reads (1)" in str(refused.value)
    assert "run the geopresence version that wrote it" in str(refused.value)
    assert "run geopresence repair" not in str(refused.value)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = geopresence("repair", "--data-dir", str(tmp_path))
    assert result.returncode == 1, result.stdout
    assert "run the geopresence version that wrote it" in result.stderr
    assert newest.exists() and sorted(p.name for p in tmp_path.rglob("*")) == before
    inspected = geopresence("inspect", "--json", str(tmp_path))
    assert "run the geopresence version that wrote it" in inspected.stdout


def test_a_file_kept_aside_never_overwrites_another(tmp_path: Path) -> None:
    one = tmp_path / "state" / "journal-00000000000000000001.log"
    one.parent.mkdir()
    one.write_bytes(b"first")
    first = keep_aside(tmp_path, one, move=False, now=0)
    one.write_bytes(b"second")
    second = keep_aside(tmp_path, one, move=True, now=0)
    assert first.name == "journal-00000000000000000001.log.19700101T000000Z"
    assert second.name == first.name + "-2"
    assert (first.read_bytes(), second.read_bytes()) == (b"first", b"second")
    assert not one.exists()
