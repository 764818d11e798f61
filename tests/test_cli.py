"""The real ``geopresence`` command, as an outside client sees it: a subprocess on loopback.

Real time here (the process has its own clock), so waits are generous upper bounds and the
timings are the short ones of the contract's test setup (0.2 s heartbeats, 1.5 s offline).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from geopresence.client import SessionRefused, connect
from geopresence.shell.auth import verify_token
from tests.helpers import ServerProcess, geopresence, start


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServerProcess]:
    server = start(
        "--port",
        "0",
        "--http-port",
        "0",
        "--heartbeat-interval",
        "0.2",
        "--offline-after",
        "1.5",
        "--data-dir",
        str(tmp_path / "data"),
        cwd=tmp_path,
    )
    yield server
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait(10)


@pytest.fixture
async def http(served: ServerProcess, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    key = (tmp_path / "data" / "admin_key").read_text().strip()
    async with httpx.AsyncClient(
        base_url=served.http_url, headers={"authorization": f"Bearer {key}"}, timeout=10
    ) as client:
        yield client


def test_help_lists_the_contract_flags() -> None:
    result = geopresence("serve", "--help")
    assert result.returncode == 0
    for flag in (
        "--host", "--port", "--http-port", "--data-dir", "--insecure", "--admin-key",
        "--secret", "--heartbeat-interval", "--offline-after", "--location-ttl", "--radius",
        "--snapshot-interval", "--fsync", "--node-id", "--push-webhook", "--push-timeout",
        "--push-retries",
    ):  # fmt: skip
        assert flag in result.stdout
    bad = geopresence("serve", "--offline-after", "-1")
    assert bad.returncode == 2
    assert "positive" in bad.stderr
    for flags, complaint in (
        (("--node-id", "1024"), "must be 0..1023"),
        (("--push-webhook", "ftp://x"), "http:// or https://"),
        (("--push-retries", "-1"), "must be 0 or more"),
    ):
        refused = geopresence("serve", *flags)
        assert refused.returncode == 2 and complaint in refused.stderr, refused.stderr


def test_token_command_uses_the_data_dir_secret(tmp_path: Path) -> None:
    missing = geopresence("token", "alice", "--data-dir", str(tmp_path))
    assert missing.returncode == 2
    assert "no secret in" in missing.stderr  # it never invents a secret no server uses
    (tmp_path / "secret").write_text("the-servers-secret-0123456789abcdef\n")
    (tmp_path / "secret").chmod(0o600)
    result = geopresence("token", "alice", "--ttl", "60", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    secret = (tmp_path / "secret").read_text().strip()
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600
    import time

    assert verify_token(secret, result.stdout.strip(), time.time()) == "alice"
    bad = geopresence("token", "not valid!", "--data-dir", str(tmp_path))
    assert bad.returncode == 2
    assert "user must be" in bad.stderr
    too_long = geopresence("token", "alice", "--ttl", "1e9", "--data-dir", str(tmp_path))
    assert too_long.returncode == 2  # as POST /v1/tokens: at most a year
    assert "--ttl 1e9: must be at most 31536000 s" in too_long.stderr


async def test_real_server_end_to_end(
    served: ServerProcess, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    assert "geopresence token USER --data-dir" in "".join(served.output)
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    assert (await http.put("/v1/friendships/alice/bob")).json()["created"] is True

    data = str(tmp_path / "data")
    token_alice = geopresence("token", "alice", "--data-dir", data).stdout.strip()
    token_bob = (await http.post("/v1/tokens", json={"user": "bob", "ttl": 60})).json()["token"]

    with trio.fail_after(20):
        with pytest.raises(SessionRefused) as refused:
            async with connect(served.ws_url, user="alice", device="phone"):
                pass
        assert refused.value.close_code == 1008

        async with connect(served.ws_url, token=token_alice, device="phone", heartbeat=True) as a:
            assert a.welcome["heartbeat_interval"] == 0.2
            assert a.welcome["offline_after"] == 1.5
            assert a.friends == [{"user": "bob", "status": "offline", "last_active_at": None}]
            async with connect(served.ws_url, token=token_bob, device="laptop") as bob:
                event = await a.recv_type("presence")
                assert (event["user"], event["status"]) == ("bob", "online")
                assert (await http.get("/v1/users/bob")).json()["status"] == "online"
                code, _ = await bob.closed()  # bob never heartbeats
                assert code == 4000
            event = await a.recv_type("presence")
            assert (event["user"], event["status"]) == ("bob", "offline")
            metrics = (await http.get("/metrics")).text
            assert "geopresence_connections 1" in metrics

            served.proc.send_signal(signal.SIGTERM)
            code, _ = await a.closed()
            assert code == 1001
    assert served.proc.wait(20) == 0


def test_sigint_and_default_data_dir(tmp_path: Path) -> None:
    server = start("--port", "0", "--http-port", "0", cwd=tmp_path)
    try:
        assert (tmp_path / "geopresence-data" / "secret").exists()
        assert (tmp_path / "geopresence-data" / "admin_key").exists()
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(20) == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


async def test_in_memory_needs_no_writable_data_dir(tmp_path: Path) -> None:
    """--in-memory keeps generated secrets in memory: a data dir that cannot even be
    created (its parent is a file) is no obstacle, and nothing is written anywhere."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    data_dir = blocker / "data"
    for mode in ("--insecure", "--in-memory"):
        args = ["--port", "0", "--http-port", "0", "--in-memory", "--data-dir", str(data_dir)]
        server = start(*args, *([mode] if mode == "--insecure" else []), cwd=tmp_path)
        try:
            printed = "".join(server.output)
            if mode == "--insecure":
                async with connect(server.ws_url, user="alice") as alice:
                    assert alice.welcome["user"] == "alice"
            else:
                key = re.search(r"admin key \(this process only\): (\S+)", printed)
                assert key is not None, printed
                async with httpx.AsyncClient(
                    base_url=server.http_url, headers={"authorization": f"Bearer {key[1]}"}
                ) as http:
                    token = (await http.post("/v1/tokens", json={"user": "bob"})).json()["token"]
                async with connect(server.ws_url, token=token) as bob:
                    assert bob.welcome["user"] == "bob"
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(20) == 0
        finally:
            if server.proc.poll() is None:
                server.proc.kill()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_port_in_use_is_a_clear_error(served: ServerProcess, tmp_path: Path) -> None:
    """A start-up failure: one line naming the flag and the port, exit status 1."""
    ws_port = served.ws_url.rsplit(":", 1)[1].split("/")[0]
    http_port = served.http_url.rsplit(":", 1)[1]
    for flags, named in (
        (("--port", ws_port, "--http-port", "0"), f"--port {ws_port}: already in use"),
        (("--port", "0", "--http-port", http_port), f"--http-port {http_port}: already in use"),
    ):
        result = geopresence("serve", *flags, "--data-dir", str(tmp_path / "other"), cwd=tmp_path)
        assert result.returncode == 1
        assert result.stderr.startswith(f"geopresence: {named}"), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_usage_errors_are_one_line_naming_the_flag(tmp_path: Path) -> None:
    """Exit status 2 and one line, not the usage block (the full list: tests/test_flags.py)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    for flags, line in (
        (
            ("--heartbeat-interval", "5", "--offline-after", "1"),
            "geopresence serve: --offline-after 1: must be longer than --heartbeat-interval "
            "(5 s), or every client times out",
        ),
        (("--host", "999.1.1.1"), "geopresence serve: --host 999.1.1.1: not an IP address"),
        (("--data-dir", str(blocker)), f"geopresence serve: --data-dir {blocker}: is a file"),
    ):
        result = geopresence("serve", *flags, cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.startswith(line), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing written


def test_the_environment_sets_flags_and_a_flag_beats_it(tmp_path: Path) -> None:
    env = {"GEOPRESENCE_OFFLINE_AFTER": "1", "GEOPRESENCE_PORT": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "geopresence", "serve"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env={**os.environ, **env},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith(
        "geopresence serve: GEOPRESENCE_OFFLINE_AFTER=1: must be longer than"
    ), result.stderr
    server = start(
        "--http-port", "0", "--offline-after", "40", "--data-dir", str(tmp_path / "d"),
        "--insecure", cwd=tmp_path, env=env,
    )  # fmt: skip
    try:
        assert server.ws_url != "ws://127.0.0.1:8765/ws"  # GEOPRESENCE_PORT=0: a free port
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(20) == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


async def test_drain_over_http_ends_the_process(served: ServerProcess, tmp_path: Path) -> None:
    key = (tmp_path / "data" / "admin_key").read_text().strip()
    async with connect(served.ws_url, token=await _token(served, key), device="d") as alice:
        async with httpx.AsyncClient(
            base_url=served.http_url, headers={"authorization": f"Bearer {key}"}, timeout=10
        ) as http:
            response = await http.post("/v1/drain")
            assert response.status_code == 202
            assert response.json() == {"draining": True, "connections": 1}
        assert (await alice.closed())[0] == 1001
    code = await trio.to_thread.run_sync(lambda: served.proc.wait(30))
    assert code == 0


async def _token(served: ServerProcess, key: str) -> str:
    async with httpx.AsyncClient(
        base_url=served.http_url, headers={"authorization": f"Bearer {key}"}, timeout=10
    ) as http:
        token: str = (await http.post("/v1/tokens", json={"user": "alice"})).json()["token"]
        return token


def test_a_data_dir_in_use_names_the_flag(served: ServerProcess, tmp_path: Path) -> None:
    second = geopresence(
        "serve", "--port", "0", "--http-port", "0", "--data-dir", str(tmp_path / "data"),
        cwd=tmp_path,
    )  # fmt: skip
    assert second.returncode == 1
    [line] = second.stderr.strip().splitlines()
    assert line.startswith(f"geopresence: --data-dir {tmp_path / 'data'}: ")
    assert "one geopresence process per data dir" in line


def test_the_token_hint_names_where_the_secret_comes_from(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from types import SimpleNamespace

    from geopresence import Config
    from geopresence.announce import announce_serve

    running: Any = SimpleNamespace(
        ws_url="ws://x/ws", http_url="http://x", admin_key="k", host="x", ws_port=1, http_port=2
    )
    monkeypatch.delenv("GEOPRESENCE_SECRET", raising=False)
    announce_serve(running, config=Config(data_dir=tmp_path / "node2"))
    assert f"mint a token:  geopresence token USER --data-dir {tmp_path / 'node2'}\n" in (
        capsys.readouterr().out
    )
    # A second node started with the first one's secret in its environment: its data dir
    # holds no secret, so the command needs the same one.
    monkeypatch.setenv("GEOPRESENCE_SECRET", "s" * 32)
    announce_serve(running, config=Config(data_dir=tmp_path / "node2"))
    out = capsys.readouterr().out
    assert "geopresence token USER with this server's --secret or GEOPRESENCE_SECRET" in out
    assert "--data-dir" not in out
