"""Logging never blocks the server: a log reader that stops reading costs dropped (and
counted) records, never a stalled event loop or a process that cannot exit."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from geopresence.client import connect
from geopresence.shell import logs

LISTENING = re.compile(r"^listening ws=(?P<ws>\S+):(?P<wp>\d+) http=(?P<http>\S+):(?P<hp>\d+)$")


@pytest.fixture
def pipe_logging() -> Iterator[tuple[int, int]]:
    """``logs.configure`` writing to a pipe nobody reads yet (yields its two ends); the
    root logger is restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    try:
        yield read_end, write_end
    finally:
        os.set_blocking(read_end, False)
        drain = threading.Thread(target=_read_all, args=(read_end,), daemon=True)
        drain.start()
        logs.stop(1.0)
        root.handlers[:], root.level = saved[0], saved[1]
        os.close(write_end)
        os.close(read_end)


def _fill(fd: int) -> None:
    """Fill the pipe: the next write to it blocks."""
    os.set_blocking(fd, False)
    try:
        while True:
            os.write(fd, b"." * 4096)
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(fd, True)


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return b"".join(chunks)
        except OSError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def test_a_full_pipe_drops_records_instead_of_blocking(pipe_logging: tuple[int, int]) -> None:
    read_end, write_end = pipe_logging
    logs.configure("info", "text", fd=write_end, queue_records=100)
    log = logging.getLogger("geopresence.test")
    log.info("line 0 of a log nobody reads")
    time.sleep(0.1)
    _fill(write_end)
    started = time.monotonic()
    for i in range(1, 20_000):
        log.info("line %d of a log nobody reads %s", i, "x" * 40)
    assert time.monotonic() - started < 5  # never waited for the reader
    assert logs.dropped_records() > 10_000

    # The reader comes back: what was queued arrives, then lines say what was lost.
    got = b""
    deadline = time.monotonic() + 10
    reported = 0
    while reported < logs.dropped_records() and time.monotonic() < deadline:
        got += _read_all(read_end)
        found = re.findall(r"WARNING geopresence: log: (\d+) record\(s\) dropped", got.decode())
        reported = sum(int(n) for n in found)
        log.info("the output moves again")
        time.sleep(0.01)
    assert "line 0 of a log nobody reads" in got.decode()
    assert reported == logs.dropped_records()


def test_tracebacks_and_json_survive_the_queue(pipe_logging: tuple[int, int]) -> None:
    read_end, write_end = pipe_logging
    logs.configure("debug", "json", fd=write_end)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("geopresence").exception("failed %s", "here", extra={"conn": 7})
    assert logs.stop(5.0)
    line = _read_all(read_end).decode().strip()
    assert '"message":"failed here"' in line and '"conn":7' in line
    assert "ValueError: boom" in line and '"exc":' in line


def test_stopping_with_a_stuck_reader_gives_up_in_time(pipe_logging: tuple[int, int]) -> None:
    _, write_end = pipe_logging
    logs.configure("info", "text", fd=write_end, queue_records=50)
    _fill(write_end)
    for i in range(5_000):
        logging.getLogger("geopresence").info("filler %d %s", i, "y" * 100)
    started = time.monotonic()
    assert not logs.stop(0.5)
    assert time.monotonic() - started < 3


async def test_a_server_whose_log_pipe_is_full_still_serves_and_exits(tmp_path: Path) -> None:
    """The review's case: chat to a user without a device (a push line per message, here
    every line at DEBUG), stderr a pipe that is never read. Every send is acknowledged,
    and SIGTERM ends the process at once."""
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "geopresence", "serve", "--port", "0", "--http-port", "0"),
            *("--insecure", "--log-level", "debug", "--rate-limit", "0"),
            *("--data-dir", str(tmp_path / "data")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,  # never read
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        ports = None
        for line in proc.stdout:
            match = LISTENING.match(line.strip())
            if match:
                ports = int(match["wp"]), int(match["hp"])
                break
        assert ports is not None
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{ports[1]}"  # --insecure: no admin key
        ) as http:
            reply = await http.put("/v1/friendships/alice/bob")
            assert reply.status_code in (200, 201)
        with trio.fail_after(30):
            async with connect(f"ws://127.0.0.1:{ports[0]}/ws", user="alice") as alice:
                for batch in range(40):  # 2,000 messages, 50 in flight
                    for i in range(50):
                        text = f"m{batch}-{i}"
                        await alice.send({"type": "send", "id": i, "to": "bob", "text": text})
                    acks = 0
                    while acks < 50:
                        message = await alice.recv()
                        assert message["type"] != "error", message
                        acks += message["type"] == "sent"
                pong = await alice.request("heartbeat")
                assert pong["type"] != "error"
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{ports[1]}"  # --insecure: no admin key
        ) as http:
            text = (await http.get("/metrics")).text
        dropped = re.search(r"^geopresence_log_records_dropped_total (\d+)$", text, re.M)
        assert dropped is not None  # the queue may have held them all: 2,000 lines
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert time.monotonic() - started < 10
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
