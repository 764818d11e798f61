"""A node that died (stored without publishing) and came back under its id once its lease
lapsed, before anything on this node asked the horizon: its comeback still counts as a
death (``Horizon.on_gone``), so what the dead run stored is read back."""

from __future__ import annotations

import time

import trio

from geopresence.core.chat_horizon import Horizon


async def test_a_restart_after_a_silence_still_reports_the_old_run_gone() -> None:
    horizon = Horizon(time.time, silence=0.2)
    gone: list[tuple[int, int]] = []
    horizon.on_gone = lambda node, mark: gone.append((node, mark))
    horizon.heard(2, 100)  # node 2's last word, then it dies
    horizon.release(None)  # nothing held: the horizon is not computed
    await trio.sleep(0.3)  # silent longer than ``silence`` (its lease lapses)
    horizon.release(None)  # still nothing held: nothing computed
    # Node 2 restarts under its id: its first entry is read (Watermarks.heard -> alive),
    # then applied after the pub/sub round trip.
    horizon.alive(2)
    horizon.heard(2, 500)
    horizon.stable_below(None)
    assert gone == [(2, 100)]
