"""The server's notion of time: Unix epoch seconds derived from trio's clock.

All timers run on trio's clock (so a ``MockClock`` drives them), and all times the protocol
shows are epoch seconds. A fixed offset links the two.
"""

from __future__ import annotations

import time

import trio


class ServerClock:
    """``now()`` in epoch seconds; ``to_trio(t)`` converts an epoch time to a trio deadline."""

    def __init__(self, time_origin: float | None = None) -> None:
        if time_origin is None:
            time_origin = time.time() - trio.current_time()
        self.offset = time_origin

    def now(self) -> float:
        return trio.current_time() + self.offset

    def to_trio(self, epoch_seconds: float) -> float:
        return epoch_seconds - self.offset
