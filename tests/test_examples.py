"""The examples the README names run as a newcomer runs them, and check themselves (each
exits non-zero when the server does anything other than its story says)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("name", ["two_friends.py", "nearby_friends.py", "chat.py"])
def test_the_example_tells_its_story(name: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "in-process server: ws://" in done.stdout
    if name == "chat.py":  # the push of a message to an offline device shows in the log
        assert "server log: push (no --push-webhook)" in done.stdout
