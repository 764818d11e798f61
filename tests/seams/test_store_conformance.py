"""The ``Store`` contract (geopresence.core.store), run against every implementation."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from geopresence.core.store import (
    DEFAULT_SETTINGS,
    PRIVATE_SETTINGS,
    MemoryStore,
    Store,
    UserSettings,
)

IMPLEMENTATIONS: dict[str, tuple[Callable[[], Store], UserSettings]] = {
    # With several nodes the store is each node's replica (a MemoryStore as well, keeping
    # only the settings its sessions need); what reaches Redis goes through the Journal
    # seam (tests/cluster/test_redis_state.py). Each with the settings of a user not given.
    "memory": (MemoryStore, DEFAULT_SETTINGS),
    "memory-partial": (lambda: MemoryStore(partial_settings=True), PRIVATE_SETTINGS),
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def implementation(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(implementation: str) -> Store:
    return IMPLEMENTATIONS[implementation][0]()


@pytest.fixture
def unknown(implementation: str) -> UserSettings:
    """The settings the store answers for a user it was not given."""
    return IMPLEMENTATIONS[implementation][1]


def test_friendship_is_mutual_and_idempotent(store: Store) -> None:
    assert store.add_friendship("a", "b")
    assert not store.add_friendship("b", "a")
    assert store.friendship_count() == 1
    assert store.are_friends("a", "b") and store.are_friends("b", "a")
    assert set(store.friends_of("a")) == {"b"}
    assert set(store.friends_of("b")) == {"a"}
    assert store.remove_friendship("b", "a")
    assert not store.remove_friendship("a", "b")
    assert store.friendship_count() == 0
    assert not store.are_friends("a", "b")
    assert set(store.friends_of("a")) == set()


def test_friends_come_in_ascending_order_each_once(store: Store) -> None:
    for friend in ["m", "c", "x", "a", "c", "q"]:
        store.add_friendship("me", friend)
    assert list(store.friends_of("me")) == ["a", "c", "m", "q", "x"]
    store.remove_friendship("q", "me")
    store.remove_friendship("me", "zz")  # not a friend: nothing changes
    assert list(store.friends_of("me")) == ["a", "c", "m", "x"]
    assert [f for f in "acmqx" if store.are_friends("me", f)] == ["a", "c", "m", "x"]
    assert not store.are_friends("me", "b") and not store.are_friends("me", "zzz")


def test_no_self_friendship(store: Store) -> None:
    with pytest.raises(ValueError):
        store.add_friendship("a", "a")


def test_unknown_user_has_no_friends_or_groups(store: Store) -> None:
    assert set(store.friends_of("nobody")) == set()
    assert set(store.groups_of("nobody")) == set()
    assert store.group_members("nothing") is None


def test_groups_lifecycle(store: Store) -> None:
    added, removed = store.set_group("g", ["a", "b"])
    assert (added, removed) == ({"a", "b"}, set())
    assert set(store.group_members("g") or ()) == {"a", "b"}
    added, removed = store.set_group("g", ["b", "c"])
    assert (added, removed) == ({"c"}, {"a"})
    assert set(store.groups_of("a")) == set()
    assert set(store.groups_of("c")) == {"g"}
    assert store.add_member("g", "d")
    assert not store.add_member("g", "d")
    assert store.remove_member("g", "b")
    assert not store.remove_member("g", "b")
    assert not store.remove_member("nope", "b")
    assert store.delete_group("g") == {"c", "d"}
    assert store.group_members("g") is None
    assert set(store.groups_of("d")) == set()
    assert store.delete_group("g") is None


def test_empty_group_exists(store: Store) -> None:
    store.set_group("empty", [])
    assert store.group_members("empty") is not None
    assert set(store.group_members("empty") or ()) == set()
    assert store.add_member("new", "a")  # add_member creates the group
    assert set(store.group_members("new") or ()) == {"a"}


def test_settings_default_and_roundtrip(store: Store, unknown: UserSettings) -> None:
    assert store.get_settings("a") == unknown
    custom = UserSettings(share_location=False, radius_m=1000.0, visible_to_strangers=True)
    store.put_settings("a", custom)
    assert store.get_settings("a") == custom
    assert store.get_settings("b") == unknown
    store.put_settings("a", DEFAULT_SETTINGS)
    assert store.get_settings("a") == DEFAULT_SETTINGS
    assert store.settings_kept("a")


def test_settings_kept_and_dropped(store: Store, unknown: UserSettings) -> None:
    """A store of every user's settings keeps them all; a partial one only those given,
    and answers ``unknown`` (nothing shared) for the others, a dropped one included."""
    partial = unknown != DEFAULT_SETTINGS
    assert store.settings_kept("a") is not partial
    store.put_settings("a", DEFAULT_SETTINGS)
    store.put_settings("b", UserSettings(radius_m=10.0))
    assert store.settings_kept("a") and store.settings_kept("b")
    assert store.settings_count() == (2 if partial else 1)  # defaults cost nothing
    store.drop_settings("a")
    store.drop_settings("b")
    assert store.settings_count() == (0 if partial else 1)
    assert store.settings_kept("a") is not partial
    assert store.get_settings("a") == (unknown if partial else DEFAULT_SETTINGS)
    assert store.get_settings("b") == (unknown if partial else UserSettings(radius_m=10.0))


def test_iteration_for_snapshots(store: Store) -> None:
    store.add_friendship("a", "b")
    store.add_friendship("c", "a")
    store.add_friendship("x", "y")
    store.remove_friendship("x", "y")
    pairs = {frozenset(pair) for pair in store.friendships()}
    assert pairs == {frozenset("ab"), frozenset("ac")}
    assert len(list(store.friendships())) == 2  # each friendship once
    store.set_group("g", ["a", "b"])
    store.set_group("empty", [])
    store.add_member("h", "c")
    store.delete_group("h")
    assert {g: set(m) for g, m in store.groups()} == {"g": {"a", "b"}, "empty": set()}
    custom = UserSettings(share_location=False)
    store.put_settings("a", custom)
    store.put_settings("b", DEFAULT_SETTINGS)
    assert dict(store.settings_items()) == {"a": custom}
