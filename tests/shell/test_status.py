"""A serving node says what it is doing: one status line a minute at INFO, sessions opened
and closed at DEBUG. Under a MockClock, so a minute takes no time."""

from __future__ import annotations

import logging
import re

import pytest
import trio
import trio.testing

from geopresence.shell.status import STATUS_INTERVAL
from geopresence.testing import open_server

STATUS = re.compile(
    r"^status: (?P<conns>\d+) connections, (?P<online>\d+) users online, "
    r"(?P<rate_in>[\d.]+) msg/s in, (?P<rate_out>[\d.]+) msg/s out \(last 60 s\)$"
)


def status_lines(caplog: pytest.LogCaptureFixture) -> list[re.Match[str]]:
    lines = [r.getMessage() for r in caplog.records if r.name == "geopresence.status"]
    matches = [STATUS.match(line) for line in lines]
    assert all(matches), lines
    return [m for m in matches if m is not None]


async def test_one_status_line_a_minute(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="geopresence")
    async with open_server(heartbeat_interval=100, offline_after=200) as server:
        await server.admin.befriend("alice", "bob")
        async with server.connect("alice") as alice, server.connect("bob"):
            await trio.sleep(1)
            for _ in range(60):  # 60 heartbeats in, 60 acks out, within the minute
                await alice.send({"type": "heartbeat"})
            await trio.sleep(STATUS_INTERVAL - 1 + 0.5)
            [line] = status_lines(caplog)
            assert (line["conns"], line["online"]) == ("2", "2")
            # 2 hellos + 60 heartbeats in, per second; out: welcomes and presence.
            metrics = server.running.server.metrics
            assert (metrics.messages_in, float(line["rate_in"])) == (62, 1.0)
            assert float(line["rate_out"]) == round(metrics.messages_out / 60, 1) > 0
        await trio.sleep(STATUS_INTERVAL)
        second = status_lines(caplog)[1]
        # Disconnected, but online until offline_after (200 s) passes.
        assert (second["conns"], second["online"], second["rate_in"]) == ("0", "2", "0.0")
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name.endswith("status"))


async def test_sessions_opened_and_closed_at_debug(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="geopresence")
    async with open_server() as server:
        async with server.connect("alice", "phone") as alice:
            await alice.send({"type": "logout"})
            await alice.closed()
        await trio.sleep(1)
    events = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.DEBUG and "session" in r.getMessage()
    ]
    assert events == [
        "conn 1: session opened: user alice, device phone",
        "conn 1: session closed: user alice, device phone, close code 4001",
    ]


async def test_the_status_line_tells_the_journal_lag() -> None:
    from geopresence.shell.metrics import Metrics
    from geopresence.shell.status import StatusLine

    metrics = Metrics()
    status = StatusLine(metrics, lambda: 3, lambda: 2, lambda: 7)
    status.start(0.0)
    metrics.messages_in, metrics.messages_out = 120, 300
    assert status.line(60.0) == (
        "status: 3 connections, 2 users online, 2.0 msg/s in, 5.0 msg/s out (last 60 s), "
        "journal lag 7 records"
    )
