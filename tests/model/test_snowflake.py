"""Snowflake ids: unique, strictly increasing, time-ordered, whatever the clock does."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geopresence.model.snowflake import (
    CLOCK_SKEW_S,
    EPOCH_MS,
    MAX_ID,
    MAX_SEQUENCE,
    SnowflakeGenerator,
    id_time,
    min_id_at,
)

T0 = EPOCH_MS / 1000 + 200_000_000  # a time in 2026


def test_layout_encodes_time_node_and_sequence() -> None:
    gen = SnowflakeGenerator(node_id=5)
    first = gen.next_id(T0)
    second = gen.next_id(T0)
    assert id_time(first) == pytest.approx(T0, abs=0.001)
    assert (first >> 12) & 1023 == 5
    assert first & MAX_SEQUENCE == 0
    assert second == first + 1
    assert gen.next_id(T0 + 1) >= min_id_at(T0 + 1) > second
    assert 0 < first <= MAX_ID


def test_node_id_is_checked() -> None:
    with pytest.raises(ValueError):
        SnowflakeGenerator(node_id=1024)
    with pytest.raises(ValueError):
        SnowflakeGenerator(node_id=-1)


def test_clock_stepping_back_keeps_ids_increasing_and_on_the_logical_time() -> None:
    gen = SnowflakeGenerator()
    before = gen.next_id(T0 + 10)
    after_step_back = gen.next_id(T0)  # the clock went back 10 s
    assert after_step_back > before
    assert id_time(after_step_back) == id_time(before)  # stays on the logical millisecond
    assert gen.next_id(T0 + 11) > after_step_back


def test_more_than_4096_ids_in_one_millisecond_borrow_the_next() -> None:
    gen = SnowflakeGenerator()
    ids = [gen.next_id(T0) for _ in range(MAX_SEQUENCE + 3)]
    assert ids == sorted(set(ids))
    assert id_time(ids[-1]) == pytest.approx(id_time(ids[0]) + 0.001)


def test_times_before_the_epoch_still_give_valid_increasing_ids() -> None:
    gen = SnowflakeGenerator()
    ids = [gen.next_id(t) for t in (0.0, 0.5, 1.0, -5.0)]
    assert ids == sorted(set(ids)) and ids[0] > 0  # 0 is the "from the beginning" cursor


@pytest.mark.parametrize("other_node", [0, 3, 7])
def test_observe_never_issues_at_or_below_an_observed_id(other_node: int) -> None:
    theirs = SnowflakeGenerator(node_id=other_node)
    high = theirs.next_id(T0 + 100)
    gen = SnowflakeGenerator(node_id=3)
    gen.observe(high)
    assert gen.last_id == high
    assert gen.next_id(T0) > high  # even with a clock far behind the observed id
    gen.observe(5)  # lower: no effect
    assert gen.next_id(T0) > high


@given(
    steps=st.lists(
        st.one_of(
            st.floats(min_value=-5_000, max_value=5_000).map(lambda d: ("tick", d)),
            # Observed ids up to ~12 days ahead (a restored high-water mark, another node).
            st.integers(min_value=0, max_value=min_id_at(T0 + 1e6)).map(lambda i: ("observe", i)),
        ),
        max_size=200,
    ),
    node=st.integers(min_value=0, max_value=1023),
)
def test_ids_strictly_increase_under_a_clock_that_jumps_around(
    steps: list[tuple[str, float]], node: int
) -> None:
    gen = SnowflakeGenerator(node_id=node)
    now = T0
    last = 0
    for kind, value in steps:
        if kind == "observe":
            gen.observe(int(value))
            last = max(last, int(value))
            continue
        now += value / 1000 if abs(value) < 10 else value  # small jitter and big jumps
        for _ in range(3):
            issued = gen.next_id(now)
            assert issued > last
            assert (issued >> 12) & 1023 == node
            last = issued


def test_a_mark_bounds_the_ids_other_nodes_issued_by_the_clock() -> None:
    now = 1_800_000_000.0
    """Several nodes: a join or forget mark must be above every id issued anywhere so far,
    including ids this node never saw, and below every id it issues from then on."""
    alone = SnowflakeGenerator(node_id=1)
    first = alone.next_id(now)
    assert alone.mark() == first  # one node: the last id issued
    other = SnowflakeGenerator(node_id=2)
    unseen = other.next_id(now + 1)
    here = SnowflakeGenerator(node_id=1)
    here.cluster_clock = lambda: now + 1
    mark = here.mark()
    assert mark >= unseen
    # Not taken as issued: its ids keep to its clock (a send at the join's very moment is
    # on either side of the mark, as another node's would be).
    assert here.next_id(now + 1) < mark < here.next_id(now + 1 + 2 * CLOCK_SKEW_S)


def test_an_id_issued_after_a_mark_stays_below_the_skew_bound() -> None:
    """``CLOCK_SKEW_S``: an id issued anywhere before a moment is below
    ``min_id_at(moment + CLOCK_SKEW_S)``; a mark (a join, a forget) does not move ids ahead."""
    t = 1_800_000_000.0
    ids = SnowflakeGenerator(3)
    ids.cluster_clock = lambda: t
    ids.next_id(t)
    ids.mark()
    assert ids.next_id(t) < min_id_at(t + CLOCK_SKEW_S)  # a send in the same millisecond
