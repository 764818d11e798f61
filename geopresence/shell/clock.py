"""The server's notion of time: Unix epoch seconds derived from trio's clock.

All timers run on trio's clock (so a ``MockClock`` drives them), and all times the protocol
shows are epoch seconds. A fixed offset links the two, read from the system clock once at
start: a later step of the system clock (NTP setting the time of a box that booted without
it, a host resumed from suspend) does not move the server's time, which keeps every
deadline sane (a step of an hour would otherwise expire every device at once). What it
costs, times shown that lag the system's and client ``ts`` refused as "ahead", is made
visible instead: ``watch_skew`` logs the difference, and ``clock_skew_seconds`` reports it.
"""

from __future__ import annotations

import logging
import time
from typing import Final

import trio

log = logging.getLogger("geopresence")

SKEW_CHECK_INTERVAL_S: Final = 60.0
"""Seconds between two comparisons of the system clock with the server's."""
SKEW_TOLERANCE_S: Final = 2.0
"""A difference up to this many seconds is drift within NTP's slewing, not a step."""


class ServerClock:
    """``now()`` in epoch seconds; ``to_trio(t)`` converts an epoch time to a trio deadline.

    ``time_origin`` None: the system clock at start (``follows_system``); a number: that
    epoch time is trio time 0 (tests, embedders with a ``MockClock``)."""

    def __init__(self, time_origin: float | None = None) -> None:
        self.follows_system = time_origin is None
        if time_origin is None:
            time_origin = time.time() - trio.current_time()
        self.offset = time_origin

    def now(self) -> float:
        return trio.current_time() + self.offset

    def to_trio(self, epoch_seconds: float) -> float:
        return epoch_seconds - self.offset

    def skew(self) -> float:
        """The system clock minus the server's, in seconds (0 when not ``follows_system``)."""
        return time.time() - self.now() if self.follows_system else 0.0


async def watch_skew(clock: ServerClock, interval: float = SKEW_CHECK_INTERVAL_S) -> None:
    """Compare the system clock with ``clock`` every ``interval`` seconds; WARNING when
    they part by more than ``SKEW_TOLERANCE_S`` (again only if it changes by as much),
    INFO when they agree again. Returns at once for a clock that does not follow the
    system's."""
    if not clock.follows_system:
        return
    told = 0.0
    while True:
        await trio.sleep(interval)
        skew = clock.skew()
        if abs(skew) > SKEW_TOLERANCE_S and abs(skew - told) > SKEW_TOLERANCE_S:
            log.warning(
                "the system clock is %+.1f s from this server's, which it read at start "
                "(NTP set the time, or the host was suspended): the times it shows are off "
                "by as much and client ts are judged by its clock; restart it to take the "
                "system's time",
                skew,
            )
            told = skew
        elif abs(skew) <= SKEW_TOLERANCE_S and told:
            log.info("the system clock agrees with this server's again")
            told = 0.0
