"""``geopresence repair --dry-run`` only reads, as ``inspect`` does: it works on a data dir
it cannot write (a disk the kernel remounted read-only after errors, a read-only copy), and
still refuses one a running server holds."""

from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path
from typing import Any

import pytest

from geopresence.cli import main
from geopresence.storage.datadir import JOURNAL_PATTERN
from geopresence.storage.journal_format import HEADER
from tests.storage.test_repair import contents, files, flip, frames_of, persistent, write_and_crash


def read_only(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    """Every open of a file under ``data_dir`` for writing fails as on a read-only mount."""
    real_open, real_os_open = builtins.open, os.open
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def refuse(path: Any) -> None:
        if Path(os.fsdecode(path)).resolve().is_relative_to(data_dir.resolve()):
            raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))

    def ro_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, bytes, os.PathLike)) and set(mode) & set("wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def ro_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & writes:
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", ro_open)
    monkeypatch.setattr(os, "open", ro_os_open)


async def test_a_dry_run_reports_the_damage_of_a_read_only_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await write_and_crash(tmp_path, monkeypatch)
    [segment] = files(tmp_path, JOURNAL_PATTERN)
    bad = frames_of(segment)[17]
    flip(segment, bad.start + HEADER.size + 5, 0xFF)
    before = contents(tmp_path)
    read_only(monkeypatch, tmp_path)

    assert main(["repair", "--dry-run", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "Read-only file system" not in out.err, out.err
    assert f"checksum mismatch at byte {bad.start}" in out.out
    assert "would be rewritten" in out.out
    # The real repair needs to write: one line, as for any error reading or writing.
    assert main(["repair", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Read-only file system" in err and len(err.splitlines()) == 1, err
    assert contents(tmp_path) == before


async def test_a_dry_run_still_refuses_while_a_server_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with persistent(tmp_path) as server:
        await server.admin.befriend("a", "b")
        assert main(["repair", "--dry-run", "--data-dir", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert f"is in use by geopresence pid {os.getpid()}" in err and "stop it first" in err
