"""``geopresence demo``: simulated users are ordinary clients that walk, show up on a visitor's
radar and answer its messages; the command prints the console's URL. Real time (a few
seconds), loopback only."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from pathlib import Path

import trio

from geopresence.client import connect
from geopresence.config import Config
from geopresence.demo import (
    FRIENDS,
    ROAM_M,
    SAN_FRANCISCO,
    STRANGERS,
    VISITOR,
    Walker,
    offset_m,
    run_demo,
    walkers,
)
from tests.helpers import LISTENING


def test_walkers_stay_in_the_city() -> None:
    rng = random.Random(7)
    people = walkers(8, SAN_FRANCISCO, rng)
    assert [w.user for w in people] == [*FRIENDS[:8], *STRANGERS]
    walker = Walker("w", SAN_FRANCISCO, 0.0, 30.0)
    farthest = 0.0
    for _ in range(3000):
        walker.step(SAN_FRANCISCO, rng)
        farthest = max(farthest, math.hypot(*offset_m(SAN_FRANCISCO, walker.at)))
    assert ROAM_M < farthest < ROAM_M + 30 * 30  # turns home within a few steps past ROAM_M


async def test_the_visitor_sees_walkers_move_and_gets_answers(tmp_path: Path) -> None:
    config = Config(port=0, http_port=0, insecure=True, in_memory=True, data_dir=tmp_path)
    async with trio.open_nursery() as nursery:
        running = await nursery.start(lambda task_status: run_demo(
            config, users=3, seed=3, task_status=task_status))  # fmt: skip
        with trio.fail_after(15):
            async with connect(running.ws_url, user=VISITOR, device="test") as you:
                assert {f["user"] for f in you.friends} == set(FRIENDS[:3])
                reply = await you.request(
                    "nearby_friends", lat=SAN_FRANCISCO.lat, lon=SAN_FRANCISCO.lon
                )
                assert reply["type"] == "nearby_friends"
                seen: dict[str, int] = {}
                while len(seen) < 2 or max(seen.values()) < 2:  # moving, not just there
                    event = await you.recv_type("friend_location")
                    seen[event["user"]] = seen.get(event["user"], 0) + 1
                online = next(f["user"] for f in you.friends if f["user"] in seen)
                ack = await you.send_message("hi there", to=online)
                assert ack["type"] == "sent"
                while True:
                    message = await you.recv_type("message")
                    if message["from"] == online and message.get("to") == VISITOR:
                        break
        running.stop()


def test_the_command_prints_the_console_url(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "geopresence", "demo", "--port", "0", "--http-port", "0",
         "--users", "2", "--at", "48.8566,2.3522", "--seed", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if LISTENING.match(line.strip()):
                break
    finally:
        proc.terminate()
        proc.wait(15)
    text = "\n".join(lines)
    match = LISTENING.match(lines[-1])
    assert match, text
    assert f"console:    http://127.0.0.1:{match['hp']}/?user=you&at=48.8566,2.3522" in text
    assert f"admin view: http://127.0.0.1:{match['hp']}/admin" in text
    assert proc.returncode == 0, text
    assert list(tmp_path.iterdir()) == []  # a temporary data dir, gone


def test_bad_demo_flags_are_one_line(tmp_path: Path) -> None:
    for flags, complaint in (
        (["--users", "11"], "--users 11: must be 1..10"),
        (["--at", "north"], "--at north: not LAT,LON"),
        (["--at", "91,0"], "--at 91,0: not LAT,LON with lat in [-90, 90]"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "geopresence", "demo", *flags],
            capture_output=True, text=True, cwd=tmp_path, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2 and complaint in done.stderr, done.stderr


def test_the_help_shows_the_demos_own_defaults(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "geopresence", "demo", "--help"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    text = " ".join(done.stdout.split())
    for env in ("GEOPRESENCE_INSECURE", "GEOPRESENCE_IN_MEMORY"):
        assert f"(default: on; env {env})" in text
    assert "(default: off; env GEOPRESENCE_INSECURE)" not in text
