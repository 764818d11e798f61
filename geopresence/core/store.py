"""The user database seam: friendships and groups (the design's "user DB").

``Store`` is the contract every implementation honours; ``tests/seams/test_store_conformance.py``
runs the same suite against each of them. ``MemoryStore`` is the embedded default.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Set
from typing import Protocol

import attrs


@attrs.frozen
class UserSettings:
    """A user's nearby settings. ``radius_m`` None means the server's default radius."""

    share_location: bool = True
    radius_m: float | None = None
    visible_to_strangers: bool = False


DEFAULT_SETTINGS = UserSettings()


class Store(Protocol):
    """Friendships (mutual, between two distinct users) and groups (named member sets).

    Contract:
    - Methods are synchronous and never block on I/O: they are called from the core while
      it holds no lock and must finish in bounded time. An implementation backed by a remote
      engine keeps a local replica and writes through in the background.
    - ``add_friendship(a, b)`` makes a and b friends of each other and returns True if they
      were not already; ``remove_friendship`` undoes it and returns True if they were. Both
      are symmetric in their arguments. A user is never its own friend (ValueError).
    - ``friends_of(u)`` is the set of u's friends (empty for an unknown user); the returned
      set is a read-only view the caller must not keep across mutations.
      ``friendship_count()`` is how many friendships there are, in constant time.
    - A group exists from ``set_group`` (possibly empty) or the first ``add_member`` until
      ``delete_group``. ``group_members(g)`` is None for a group that does not exist.
      ``groups_of(u)`` lists the groups u is a member of.
    - ``set_group(g, members)`` replaces the membership and returns (added, removed).
    - ``get_settings(u)`` is u's last ``put_settings`` value, ``DEFAULT_SETTINGS`` before any.
    - ``friendships()`` yields every friendship once, as a pair (either order); ``groups()``
      every existing group with its members; ``settings_items()`` every user whose settings
      differ from ``DEFAULT_SETTINGS``. They are for snapshots: the caller consumes them
      before the next mutation.
    """

    def add_friendship(self, a: str, b: str) -> bool: ...

    def remove_friendship(self, a: str, b: str) -> bool: ...

    def are_friends(self, a: str, b: str) -> bool: ...

    def friends_of(self, user: str) -> Set[str]: ...

    def friendship_count(self) -> int: ...

    def set_group(self, group: str, members: Iterable[str]) -> tuple[set[str], set[str]]: ...

    def delete_group(self, group: str) -> set[str] | None: ...

    def add_member(self, group: str, user: str) -> bool: ...

    def remove_member(self, group: str, user: str) -> bool: ...

    def group_members(self, group: str) -> Set[str] | None: ...

    def groups_of(self, user: str) -> Set[str]: ...

    def get_settings(self, user: str) -> UserSettings: ...

    def put_settings(self, user: str, settings: UserSettings) -> None: ...

    def friendships(self) -> Iterator[tuple[str, str]]: ...

    def groups(self) -> Iterator[tuple[str, Set[str]]]: ...

    def settings_items(self) -> Iterator[tuple[str, UserSettings]]: ...


_EMPTY: frozenset[str] = frozenset()


class MemoryStore:
    """In-process ``Store``: adjacency sets in dicts."""

    def __init__(self) -> None:
        self._friends: dict[str, set[str]] = {}
        self._groups: dict[str, set[str]] = {}
        self._groups_of: dict[str, set[str]] = {}
        self._settings: dict[str, UserSettings] = {}
        self._friendships = 0

    def add_friendship(self, a: str, b: str) -> bool:
        if a == b:
            raise ValueError("a user cannot be its own friend")
        friends_of_a = self._friends.setdefault(a, set())
        if b in friends_of_a:
            return False
        friends_of_a.add(b)
        self._friends.setdefault(b, set()).add(a)
        self._friendships += 1
        return True

    def remove_friendship(self, a: str, b: str) -> bool:
        friends_of_a = self._friends.get(a)
        if friends_of_a is None or b not in friends_of_a:
            return False
        friends_of_a.discard(b)
        self._friends[b].discard(a)
        for user in (a, b):
            if not self._friends[user]:
                del self._friends[user]
        self._friendships -= 1
        return True

    def are_friends(self, a: str, b: str) -> bool:
        return b in self._friends.get(a, _EMPTY)

    def friends_of(self, user: str) -> Set[str]:
        return self._friends.get(user, _EMPTY)

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
        return self._settings.get(user, DEFAULT_SETTINGS)

    def put_settings(self, user: str, settings: UserSettings) -> None:
        if settings == DEFAULT_SETTINGS:
            self._settings.pop(user, None)  # defaults cost no memory
        else:
            self._settings[user] = settings

    def friendships(self) -> Iterator[tuple[str, str]]:
        for user, friends in self._friends.items():
            for friend in friends:
                if user < friend:
                    yield user, friend

    def groups(self) -> Iterator[tuple[str, Set[str]]]:
        yield from self._groups.items()

    def settings_items(self) -> Iterator[tuple[str, UserSettings]]:
        yield from self._settings.items()

    def _leave(self, group: str, user: str) -> None:
        groups = self._groups_of.get(user)
        if groups is not None:
            groups.discard(group)
            if not groups:
                del self._groups_of[user]
