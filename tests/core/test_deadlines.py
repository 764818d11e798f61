"""DeadlineIndex against a plain dict model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from geopresence.core.deadlines import DeadlineIndex


def test_pop_due_in_deadline_order_and_moves() -> None:
    index: DeadlineIndex[str] = DeadlineIndex()
    index.set("a", 10)
    index.set("b", 5)
    index.set("c", 7)
    index.set("b", 12)  # moved later
    assert index.next_deadline() == 7
    assert index.pop_due(9) == ["c"]
    assert index.pop_due(12) == ["a", "b"]
    assert len(index) == 0
    assert index.next_deadline() is None


def test_discard_and_ties() -> None:
    index: DeadlineIndex[tuple[str, str]] = DeadlineIndex()
    index.set(("u", "1"), 3)
    index.set(("u", "2"), 3)
    index.discard(("u", "1"))
    index.discard(("nobody", "x"))
    assert ("u", "2") in index
    assert index.get(("u", "2")) == 3
    assert index.pop_due(3) == [("u", "2")]


ops = st.lists(
    st.tuples(
        st.sampled_from(["set", "discard", "pop"]),
        st.integers(0, 5),
        st.integers(0, 50),
    ),
    max_size=60,
)


@given(ops)
def test_matches_dict_model(operations: list[tuple[str, int, int]]) -> None:
    index: DeadlineIndex[int] = DeadlineIndex()
    model: dict[int, float] = {}
    for op, key, t in operations:
        if op == "set":
            index.set(key, t)
            model[key] = t
        elif op == "discard":
            index.discard(key)
            model.pop(key, None)
        else:
            due = index.pop_due(t)
            expected = sorted((d, k) for k, d in model.items() if d <= t)
            assert [model[k] for k in due] == [d for d, _ in expected]
            assert set(due) == {k for _, k in expected}
            for k in due:
                del model[k]
        assert len(index) == len(model)
        assert index.next_deadline() == (min(model.values()) if model else None)
