"""The bounded, coalescing per-connection queue."""

from __future__ import annotations

import pytest

from geopresence.wire.outbox import Outbox
from geopresence.wire.outgoing import Outgoing


def test_fifo_and_bound() -> None:
    box = Outbox(2)
    assert box.push(Outgoing("1"))
    assert box.push(Outgoing("2"))
    assert not box.push(Outgoing("3"))  # reliable traffic that does not fit
    assert [o.text for o in box.pop_all()] == ["1", "2"]
    assert len(box) == 0


def test_latest_wins_in_place_even_when_full() -> None:
    box = Outbox(3)
    box.push(Outgoing("bob offline", ("presence", "bob")))
    box.push(Outgoing("reply"))
    box.push(Outgoing("carol online", ("presence", "carol")))
    assert box.push(Outgoing("bob online", ("presence", "bob")))  # full, but replaces
    assert [o.text for o in box.pop_all()] == ["bob online", "reply", "carol online"]
    assert box.coalesced == 1
    # after delivery the key is free again
    box.push(Outgoing("bob offline", ("presence", "bob")))
    box.push(Outgoing("bob online", ("presence", "bob")))
    assert [o.text for o in box.pop_all()] == ["bob online"]


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Outbox(0)


def test_a_snapshot_seals_earlier_updates() -> None:
    """An update queued after a snapshot must not jump ahead of it by replacing an older
    update that sits before the snapshot."""
    box = Outbox(10)
    box.push(Outgoing("bob here", ("nearby", "bob")))
    box.push(Outgoing("snapshot: bob, carol", seals=(("nearby",),)))
    box.push(Outgoing("bob gone", ("nearby", "bob")))
    box.push(Outgoing("presence", ("presence", "bob")))
    box.push(Outgoing("presence 2", ("presence", "bob")))  # other tags still coalesce
    assert [o.text for o in box.pop_all()] == [
        "bob here",
        "snapshot: bob, carol",
        "bob gone",
        "presence 2",
    ]


def test_state_frames_have_their_own_bound() -> None:
    box = Outbox(2, max_state=1000)
    for i in range(1000):  # a burst of distinct friends' presence
        assert box.push(Outgoing(f"p{i}", ("presence", f"u{i}")))
    assert not box.push(Outgoing("p1000", ("presence", "u1000")))
    assert box.push(Outgoing("reply 1"))
    assert box.push(Outgoing("reply 2"))
    assert not box.push(Outgoing("reply 3"))
    assert len(box.pop_all()) == 1002


def test_exact_key_seal() -> None:
    box = Outbox(10)
    box.push(Outgoing("bob offline", ("presence", "bob")))
    box.push(Outgoing("carol offline", ("presence", "carol")))
    box.push(Outgoing("bob is no longer a friend", seals=(("presence", "bob"),)))
    box.push(Outgoing("bob online", ("presence", "bob")))
    box.push(Outgoing("carol online", ("presence", "carol")))
    assert [o.text for o in box.pop_all()] == [
        "bob offline",
        "carol online",
        "bob is no longer a friend",
        "bob online",
    ]


def test_the_character_bound_limits_large_frames_but_one_always_fits() -> None:
    box = Outbox(100, max_chars=1000)
    assert box.push(Outgoing("x" * 5000))  # alone in the queue: a big reply still goes out
    assert not box.push(Outgoing("y"))  # nothing more fits behind it
    box.pop_all()
    assert box.push(Outgoing("a" * 600))
    assert not box.push(Outgoing("b" * 600))
    assert box.push(Outgoing("c" * 400))
    assert box.push(Outgoing("s", coalesce_key=("presence", "u")))  # state frames: by count
    assert [item.text[0] for item in box.pop_all()] == ["a", "c", "s"]
