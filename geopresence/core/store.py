"""The user database seam: friendships and groups (the design's "user DB").

``Store`` is the contract every implementation honours; ``tests/seams/test_store_conformance.py``
runs the same suite against each of them. ``MemoryStore`` is the embedded default.
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence, Set
from typing import Protocol

import attrs


@attrs.frozen
class UserSettings:
    """A user's nearby settings. ``radius_m`` None means the server's default radius."""

    share_location: bool = True
    radius_m: float | None = None
    visible_to_strangers: bool = False


DEFAULT_SETTINGS = UserSettings()

PRIVATE_SETTINGS = UserSettings(share_location=False, visible_to_strangers=False)
"""What a store that keeps only some users' settings (``MemoryStore(partial_settings=True)``,
several nodes) answers for a user it was not given: nothing shared until they are known."""


class Store(Protocol):
    """Friendships (mutual, between two distinct users) and groups (named member sets).

    Contract:
    - Methods are synchronous and never block on I/O: they are called from the core while
      it holds no lock and must finish in bounded time. An implementation backed by a remote
      engine keeps a local replica and writes through in the background.
    - ``add_friendship(a, b)`` makes a and b friends of each other and returns True if they
      were not already; ``remove_friendship`` undoes it and returns True if they were. Both
      are symmetric in their arguments. A user is never its own friend (ValueError).
    - ``friends_of(u)`` is u's friends in ascending order, each once (empty for an unknown
      user); a read-only view the caller must not keep across mutations.
      ``friendship_count()`` is how many friendships there are, in constant time.
    - A group exists from ``set_group`` (possibly empty) or the first ``add_member`` until
      ``delete_group``. ``group_members(g)`` is None for a group that does not exist.
      ``groups_of(u)`` lists the groups u is a member of.
    - ``set_group(g, members)`` replaces the membership and returns (added, removed).
    - ``get_settings(u)`` is u's last ``put_settings`` value, ``DEFAULT_SETTINGS`` before any;
      a store of partial settings (several nodes: a node keeps only those its sessions need)
      answers ``PRIVATE_SETTINGS`` instead, until given them. ``settings_kept(u)`` is False
      only there, for a user whose settings it was not given (or dropped with
      ``drop_settings``, which a store of every user's settings ignores).
      ``settings_count()`` is how many users' settings it holds (partial: those it keeps;
      otherwise those that differ from ``DEFAULT_SETTINGS``).
    - ``friendships()`` yields every friendship once, as a pair (either order); ``groups()``
      every existing group with its members; ``settings_items()`` every user whose settings
      differ from ``DEFAULT_SETTINGS``. They are for snapshots: the caller consumes them
      before the next mutation.
    """

    def add_friendship(self, a: str, b: str) -> bool: ...

    def remove_friendship(self, a: str, b: str) -> bool: ...

    def are_friends(self, a: str, b: str) -> bool: ...

    def friends_of(self, user: str) -> Sequence[str]: ...

    def friendship_count(self) -> int: ...

    def set_group(self, group: str, members: Iterable[str]) -> tuple[set[str], set[str]]: ...

    def delete_group(self, group: str) -> set[str] | None: ...

    def add_member(self, group: str, user: str) -> bool: ...

    def remove_member(self, group: str, user: str) -> bool: ...

    def group_members(self, group: str) -> Set[str] | None: ...

    def groups_of(self, user: str) -> Set[str]: ...

    def get_settings(self, user: str) -> UserSettings: ...

    def put_settings(self, user: str, settings: UserSettings) -> None: ...

    def settings_kept(self, user: str) -> bool: ...

    def drop_settings(self, user: str) -> None: ...

    def settings_count(self) -> int: ...

    def friendships(self) -> Iterator[tuple[str, str]]: ...

    def groups(self) -> Iterator[tuple[str, Set[str]]]: ...

    def settings_items(self) -> Iterator[tuple[str, UserSettings]]: ...


_EMPTY: frozenset[str] = frozenset()
_NO_FRIENDS: tuple[str, ...] = ()


class MemoryStore:
    """In-process ``Store``: adjacency lists and sets in dicts.

    A user's friends are a sorted list of interned ids, not a set: a set costs ~80 bytes an
    entry (its hash table, and each pair's own copy of the id strings), a sorted list of
    shared strings 8 bytes. With 400 friends a user, that is 107 KB against 7 KB of graph
    per user (tests/core/test_memory_store.py, benchmarks/RESULTS.md); a lookup is a
    bisection (~9 string comparisons) instead of a hash probe, and no lookup is on the
    per-delivery path.

    With ``partial_settings`` (several nodes) it keeps only the settings it is given, and
    answers ``PRIVATE_SETTINGS`` for the others: a missing entry must never mean sharing."""

    def __init__(self, *, partial_settings: bool = False) -> None:
        self._friends: dict[str, list[str]] = {}
        self._groups: dict[str, set[str]] = {}
        self._groups_of: dict[str, set[str]] = {}
        self._settings: dict[str, UserSettings] = {}
        self._partial = partial_settings
        self._unknown = PRIVATE_SETTINGS if partial_settings else DEFAULT_SETTINGS
        self._friendships = 0

    def add_friendship(self, a: str, b: str) -> bool:
        if a == b:
            raise ValueError("a user cannot be its own friend")
        # Interned: every list that names a user shares one string (ids arrive decoded
        # from JSON, a new string each time).
        a, b = sys.intern(a), sys.intern(b)
        if not _insert(self._friends, a, b):
            return False
        _insert(self._friends, b, a)
        self._friendships += 1
        return True

    def remove_friendship(self, a: str, b: str) -> bool:
        if not _delete(self._friends, a, b):
            return False
        _delete(self._friends, b, a)
        self._friendships -= 1
        return True

    def are_friends(self, a: str, b: str) -> bool:
        friends = self._friends.get(a, _NO_FRIENDS)
        i = bisect_left(friends, b)
        return i < len(friends) and friends[i] == b

    def friends_of(self, user: str) -> Sequence[str]:
        return self._friends.get(user, _NO_FRIENDS)

    def friendship_count(self) -> int:
        return self._friendships

    def set_group(self, group: str, members: Iterable[str]) -> tuple[set[str], set[str]]:
        new = set(members)
        old = self._groups.get(group, set())
        added, removed = new - old, old - new
        self._groups[group] = new
        for user in added:
            self._groups_of.setdefault(user, set()).add(group)
        for user in removed:
            self._leave(group, user)
        return added, removed

    def delete_group(self, group: str) -> set[str] | None:
        members = self._groups.pop(group, None)
        if members is None:
            return None
        for user in members:
            self._leave(group, user)
        return members

    def add_member(self, group: str, user: str) -> bool:
        members = self._groups.setdefault(group, set())
        if user in members:
            return False
        members.add(user)
        self._groups_of.setdefault(user, set()).add(group)
        return True

    def remove_member(self, group: str, user: str) -> bool:
        members = self._groups.get(group)
        if members is None or user not in members:
            return False
        members.discard(user)
        self._leave(group, user)
        return True

    def group_members(self, group: str) -> Set[str] | None:
        return self._groups.get(group)

    def groups_of(self, user: str) -> Set[str]:
        return self._groups_of.get(user, _EMPTY)

    def get_settings(self, user: str) -> UserSettings:
        return self._settings.get(user, self._unknown)

    def put_settings(self, user: str, settings: UserSettings) -> None:
        if settings == DEFAULT_SETTINGS and not self._partial:
            self._settings.pop(user, None)  # defaults cost no memory
        else:
            self._settings[user] = settings

    def settings_kept(self, user: str) -> bool:
        return not self._partial or user in self._settings

    def drop_settings(self, user: str) -> None:
        if self._partial:
            self._settings.pop(user, None)

    def settings_count(self) -> int:
        return len(self._settings)

    def friendships(self) -> Iterator[tuple[str, str]]:
        for user, friends in self._friends.items():
            for friend in friends:
                if user < friend:
                    yield user, friend

    def groups(self) -> Iterator[tuple[str, Set[str]]]:
        yield from self._groups.items()

    def settings_items(self) -> Iterator[tuple[str, UserSettings]]:
        for item in self._settings.items():
            if item[1] != DEFAULT_SETTINGS:
                yield item

    def _leave(self, group: str, user: str) -> None:
        groups = self._groups_of.get(user)
        if groups is not None:
            groups.discard(group)
            if not groups:
                del self._groups_of[user]


def _insert(lists: dict[str, list[str]], user: str, friend: str) -> bool:
    """Add ``friend`` to ``user``'s sorted list; False if it is there already."""
    friends = lists.get(user)
    if friends is None:
        lists[user] = [friend]
        return True
    i = bisect_left(friends, friend)
    if i < len(friends) and friends[i] == friend:
        return False
    friends.insert(i, friend)
    return True


def _delete(lists: dict[str, list[str]], user: str, friend: str) -> bool:
    """Take ``friend`` out of ``user``'s sorted list (and the list once empty); False if
    it was not there."""
    friends = lists.get(user)
    if friends is None:
        return False
    i = bisect_left(friends, friend)
    if i == len(friends) or friends[i] != friend:
        return False
    del friends[i]
    if not friends:
        del lists[user]
    return True
