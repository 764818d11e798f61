"""The server's clock against the system's: a step of the system clock (NTP setting the
time of a box that booted without it) is reported, never silently carried."""

from __future__ import annotations

import logging
import time

import pytest
import trio
from trio.testing import MockClock

from geopresence.shell.clock import SKEW_CHECK_INTERVAL_S, ServerClock, watch_skew
from geopresence.testing import open_server


async def test_a_step_of_the_system_clock_is_logged_once_and_its_end_too(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    step = [0.0]
    start = time.time() - trio.current_time()
    # The system clock, as the mock clock moves, plus whatever NTP sets.
    monkeypatch.setattr(time, "time", lambda: start + trio.current_time() + step[0])
    clock = ServerClock()
    assert clock.follows_system and abs(clock.skew()) < 1
    with caplog.at_level(logging.INFO, logger="geopresence"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_skew, clock)
            await trio.sleep(SKEW_CHECK_INTERVAL_S * 1.5)
            step[0] = 3600.0  # NTP sets the time an hour ahead
            await trio.sleep(SKEW_CHECK_INTERVAL_S * 3)
            assert clock.skew() == pytest.approx(3600, abs=1)
            step[0] = 0.0
            await trio.sleep(SKEW_CHECK_INTERVAL_S)
            nursery.cancel_scope.cancel()
    said = [r.getMessage() for r in caplog.records if r.name == "geopresence"]
    assert len(said) == 2, said
    assert said[0].startswith("the system clock is +3600.0 s from this server's")
    assert "restart it" in said[0]
    assert said[1] == "the system clock agrees with this server's again"


async def test_a_clock_given_its_origin_is_not_watched(autojump_clock: MockClock) -> None:
    clock = ServerClock(time_origin=0.0)
    assert not clock.follows_system and clock.skew() == 0.0
    with trio.fail_after(1):
        await watch_skew(clock)  # returns at once


async def test_the_skew_is_a_metric(autojump_clock: MockClock) -> None:
    async with open_server() as server:
        assert "clock_skew_seconds 0" in await server.admin.metrics()
