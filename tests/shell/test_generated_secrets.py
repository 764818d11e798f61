"""The secret and admin key a server generates in its data dir are durable at once: tokens
signed with the secret (``POST /v1/tokens``) and the admin key read from the file are in
use right after the first start, so an OS crash or power loss must not lose or empty the
files (a new secret would void every token; a new admin key lock out every admin tool)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from geopresence.shell.auth import ADMIN_KEY_FILE, SECRET_FILE, load_or_create


@pytest.mark.parametrize("name", [SECRET_FILE, ADMIN_KEY_FILE])
def test_a_generated_secret_is_fsynced_with_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    real_fsync = os.fsync
    fsynced: set[int] = set()  # inodes

    def recording_fsync(fd: int) -> None:
        fsynced.add(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    data_dir = tmp_path / "data"
    value = load_or_create(data_dir, name)
    path = data_dir / name
    assert path.read_text().strip() == value
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.stat().st_ino in fsynced, "the file's contents"
    assert data_dir.stat().st_ino in fsynced, "its name in the directory"
    assert load_or_create(data_dir, name) == value


def test_a_secret_that_cannot_be_written_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk at the first start: the error is raised, and no ``.tmp`` is left in the
    data dir for the operator to wonder about (the next start writes the file again)."""

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    data_dir = tmp_path / "data"
    with pytest.raises(OSError, match="No space left"):
        load_or_create(data_dir, ADMIN_KEY_FILE)
    assert list(data_dir.iterdir()) == []
