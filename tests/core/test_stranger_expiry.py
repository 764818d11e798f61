"""The strangers' deadline of a visible user (``core.stranger_expiry``): never after its
location's, never reached while it sends updates at least every quarter TTL, and moved only
in quarter-TTL steps of the clock, so that strangers cannot time its updates inside a cell."""

from __future__ import annotations

import random

import pytest

from geopresence.core.context import Session
from geopresence.core.locations import Location
from geopresence.core.store import UserSettings
from geopresence.core.stranger_expiry import StrangerExpiry, renewed_until
from geopresence.core.strangers import Strangers
from tests.core.test_features_in_isolation import FakeContext, FakeView

T0 = 1_800_000_000.0
TTL = 600.0


@pytest.mark.parametrize("ttl", [600.0, 3.0, 37.5])
def test_a_renewal_is_a_quarter_step_between_a_quarter_and_half_a_ttl_ahead(ttl: float) -> None:
    rng = random.Random(3)
    step = ttl / 4
    for _ in range(2_000):
        at = T0 + rng.uniform(0, 10 * ttl)
        until = renewed_until(at, ttl)
        assert at + ttl / 4 < until <= at + ttl / 2
        assert until / step == round(until / step)
    # Anywhere in one step, the same deadline: a watcher cannot tell when.
    assert {renewed_until(T0 + t, TTL) for t in (150.0, 200.0, 299.9)} == {T0 + 450}


def test_the_deadline_is_never_after_the_location_s_and_active_users_keep_it() -> None:
    """Random update sequences with gaps up to a quarter TTL (an active user) and past it:
    the deadline is never after the location's (the last update + TTL), and it comes only
    after a gap longer than a quarter TTL."""
    rng = random.Random(11)
    for _ in range(200):
        expiry = StrangerExpiry(TTL)
        at = T0 + rng.uniform(0, TTL)
        until = expiry.entered("zoe", at + TTL)
        for _ in range(30):
            gap = rng.choice([rng.uniform(0, TTL / 4), rng.uniform(0, TTL)])
            if at + gap >= until:  # her view ended before this update: leaves first
                assert gap > TTL / 4
                break
            at += gap
            until = expiry.renewed("zoe", at)
            assert at + TTL / 4 < until <= at + TTL
            assert expiry.until("zoe") == until


def test_a_node_that_did_not_see_the_entry_renews_on_the_steps_alone() -> None:
    """Several nodes: another node's move of zoe, nowhere in this node's grid yet (her
    session just opened here, or it read her location), may be inside a cell she entered
    long before: this node's deadline is the quarter-step rule's, never this update's
    location TTL. A cell change it hears (she was in its grid) is an entry it saw."""
    ctx = FakeContext()
    view = FakeView({"zoe": Location(48.85, 2.35, T0 + 7)})
    strangers = Strangers(ctx, view, location_ttl=TTL, query_burst=3, query_interval=10.0)
    ctx.store.put_settings("zoe", UserSettings(visible_to_strangers=True))
    ctx.sessions[1] = Session(1, "zoe", "phone")
    ctx.replaying = True
    strangers.on_location("zoe", Location(48.85, 2.35, T0 + 7), now=T0 + 7)
    assert strangers.expiry.until("zoe") == renewed_until(T0 + 7, TTL) == T0 + 300
    strangers.on_location("zoe", Location(48.86, 2.35, T0 + 100), now=T0 + 100)  # moved
    assert strangers.expiry.until("zoe") == T0 + 100 + TTL
    ctx.replaying = False
    strangers.tick(T0 + 699.9)
    assert "zoe" in strangers.grid
    strangers.tick(T0 + 700)
    assert "zoe" not in strangers.grid
