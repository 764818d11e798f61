"""The chat horizon (several nodes): what is held back, and what releases it."""

from __future__ import annotations

from geopresence.core.chat_horizon import Horizon
from geopresence.model.snowflake import min_id_at
from tests.helpers import SettableClock

NOW = 1_800_000_000.0


def test_stable_below_is_the_lowest_bound_of_every_live_node() -> None:
    clock = SettableClock(NOW)
    horizon = Horizon(clock, silence=5.0)
    # Alone: what it can still issue, or its own lowest pending id.
    assert horizon.stable_below(None) == min_id_at(NOW)
    assert horizon.stable_below(min_id_at(NOW - 1)) == min_id_at(NOW - 1)
    # Another node's watermark holds it back; a later one moves it, an older one does not.
    horizon.heard(2, min_id_at(NOW - 2))
    assert horizon.stable_below(None) == min_id_at(NOW - 2)
    horizon.heard(2, min_id_at(NOW - 0.5))
    horizon.heard(2, min_id_at(NOW - 3))
    assert horizon.stable_below(None) == min_id_at(NOW - 0.5)
    # A node silent for longer than ``silence`` is gone: it holds nobody back.
    clock.now += 5.5
    assert horizon.stable_below(None) == min_id_at(clock.now)


def test_what_waits_is_released_in_id_order_once_stable() -> None:
    clock = SettableClock(NOW)
    horizon = Horizon(clock, silence=5.0)
    horizon.heard(2, min_id_at(NOW - 1))
    done: list[int] = []
    low, mid, high = min_id_at(NOW - 2), min_id_at(NOW - 0.6), min_id_at(NOW - 0.3)
    horizon.when_stable(high, None, lambda: done.append(high))
    horizon.when_stable(mid, None, lambda: done.append(mid))
    horizon.when_stable(low, None, lambda: done.append(low))
    assert done == [low] and horizon.held == 2  # node 2 may still commit below mid
    horizon.heard(2, min_id_at(NOW - 0.5))
    horizon.release(None)
    assert done == [low, mid]
    # This node's own pending message holds back what is above it, whatever the others say.
    horizon.heard(2, min_id_at(NOW))
    horizon.release(min_id_at(NOW - 0.4))
    assert done == [low, mid]
    horizon.release(None)
    assert done == [low, mid, high] and horizon.held == 0


def test_a_node_that_left_holds_nobody_back_until_it_writes_again() -> None:
    clock = SettableClock(NOW)
    horizon = Horizon(clock, silence=5.0)
    horizon.heard(2, min_id_at(NOW - 1))
    horizon.left(2)
    assert horizon.stable_below(None) == min_id_at(NOW)
    horizon.heard(2, min_id_at(NOW - 2))  # the same id, started again
    assert horizon.stable_below(None) == min_id_at(NOW - 2)


def test_a_hold_keeps_back_what_is_above_it_until_it_ends() -> None:
    """A node catching up on messages a pub/sub gap lost (``ChatGaps``) holds the horizon
    where it stood: nothing above is shown before the messages read back, and
    ``committed_below`` (what the catch-up waits for) still moves."""
    clock = SettableClock(NOW)
    horizon = Horizon(clock, silence=5.0)
    horizon.heard(2, min_id_at(NOW - 1))
    token = horizon.hold(min_id_at(NOW - 1.5))
    assert horizon.stable_below(None) == min_id_at(NOW - 1.5)
    done: list[int] = []
    low, above = min_id_at(NOW - 2), min_id_at(NOW - 1.2)
    horizon.when_stable(above, None, lambda: done.append(above))
    horizon.when_stable(low, None, lambda: done.append(low))
    horizon.heard(2, min_id_at(NOW))
    horizon.release(None)
    assert done == [low]
    assert horizon.committed_below(None) == min_id_at(NOW)
    horizon.unhold(token, None)
    assert done == [low, above]
    assert horizon.stable_below(None) == min_id_at(NOW)


def test_a_node_whose_entries_are_read_is_not_silent_while_its_watermark_waits() -> None:
    """A watermark applies only after a pub/sub round trip (``Watermarks``): while that
    waits (a stuck connection), the node's entries still read keep it from counting as
    gone, and what it holds back stays held."""
    clock = SettableClock(NOW)
    horizon = Horizon(clock, silence=5.0)
    horizon.heard(2, min_id_at(NOW - 1))
    clock.now += 4
    horizon.alive(2)
    clock.now += 4
    assert horizon.stable_below(None) == min_id_at(NOW - 1)
    horizon.alive(3)  # never heard: nothing to keep
    clock.now += 6
    assert horizon.stable_below(None) == min_id_at(clock.now)


def test_a_node_silent_too_long_is_gone_even_if_it_speaks_again() -> None:
    """Nothing asked the horizon while the node was silent: its next word still reports
    the death first (``on_gone``), with the watermark it died at."""
    clock = SettableClock(NOW)
    horizon = Horizon(clock, silence=5.0)
    gone: list[tuple[int, int]] = []
    horizon.on_gone = lambda node, mark: gone.append((node, mark))
    horizon.heard(2, min_id_at(NOW - 1))
    clock.now += 6
    horizon.alive(2)
    assert gone == [(2, min_id_at(NOW - 1))]
    horizon.heard(2, min_id_at(clock.now))
    assert horizon.stable_below(None) == min_id_at(clock.now)
    assert len(gone) == 1
