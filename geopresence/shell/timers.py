"""The node's timers (shell): the reaper and the garbage-collection loop (the history's are
in ``geopresence.shell.history``).

Each is a task the server starts in its root nursery; none of them touches a connection.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from typing import TYPE_CHECKING

import trio

from geopresence.config import Config
from geopresence.shell.clock import ServerClock

if TYPE_CHECKING:
    from geopresence.core.hub import Hub

log = logging.getLogger("geopresence")

GC_THRESHOLDS = (20_000, 50, 100)
"""``gc.set_threshold`` of a serving process (see ``gc_loop``)."""


class Reaper:
    """Expires heartbeat deadlines and location TTLs exactly when they fall due.

    The hub reports its earliest deadline (``Hub.next_deadline``, epoch seconds); the reaper
    sleeps until it, so every rule runs on virtual time in tests."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._wakeup = trio.Event()
        self._target = math.inf
        """The deadline ``run`` sleeps until (epoch seconds; inf: none)."""

    def deadline_may_have_moved(self) -> None:
        """Wake the reaper if the hub's earliest deadline is now before the one it sleeps to
        (an O(1) check, so it is cheap after every message)."""
        deadline = self._hub.next_deadline()
        if deadline is not None and deadline < self._target:
            self._wakeup.set()

    async def run(self, clock: ServerClock) -> None:
        hub = self._hub
        while True:
            deadline = hub.next_deadline()
            self._wakeup = trio.Event()
            if deadline is None:
                self._target = math.inf
                await self._wakeup.wait()
                continue
            self._target = deadline
            with trio.move_on_at(clock.to_trio(deadline)) as scope:
                await self._wakeup.wait()
            if scope.cancelled_caught:
                # max(): float rounding must never leave a due deadline unexpired.
                hub.expire(max(clock.now(), deadline))


async def gc_loop(config: Config) -> None:
    """Keep full garbage collections short (see ``Config.gc_freeze_interval``)."""
    # Fewer, larger young collections: CPython's default (700 allocations) runs one every
    # few fan-outs and promotes short-lived frames into older generations whose
    # collections then walk far more objects (measured: p99 104-166 ms -> 37 ms at
    # 2,000 users, benchmarks/RESULTS.md).
    thresholds = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLDS[0], GC_THRESHOLDS[1], GC_THRESHOLDS[2])
    gc.freeze()  # the restored state and everything set up so far
    last_full = trio.current_time()
    try:
        while True:
            await trio.sleep(config.gc_freeze_interval)
            if trio.current_time() - last_full >= config.gc_full_interval:
                gc.unfreeze()
                started = time.perf_counter()
                found = gc.collect()
                log.info(
                    "full garbage collection: %d unreachable objects in %.0f ms",
                    found,
                    (time.perf_counter() - started) * 1000,
                )
                last_full = trio.current_time()
            gc.freeze()
    finally:
        # The server stops; an embedder's process goes on with its collector as it was.
        gc.unfreeze()
        gc.set_threshold(*thresholds)
