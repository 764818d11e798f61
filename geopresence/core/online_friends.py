"""Which of a user's friends have a live connection on this node (sans-I/O).

On a single node a location or presence change of U goes to the live connections of U's
friends (``Sessions.connections_of_friends``, the derived ``user:U`` channel). Finding them by
looking at every friend touches every friend's id string: with 400 friends of whom 40 are
online that is 400 objects scattered over the heap per move, each a cache miss and, while
a forked snapshot runs, each a page copied on write (CPython writes a reference count on
every object it reads). Measured in issue 16 at 10,000 users: a fifth of the server's CPU,
and the snapshot's copy-on-write storm.

So the node keeps, for each user with a connection, the set of its friends that have one
too, updated where those facts change: a user's first connection and last disconnection,
a friendship made or ended. A move then visits only online friends. For a user with no
connection (a friend told of its going offline, a location expiring) the answer is
computed from the friendship graph as before.

Each user's online friends are a list, not a set: 8 bytes an entry against ~40 (a user
with 400 friends all online would otherwise carry 16 KB of set table). A list's ``remove``
is linear, but it runs only when a friend goes offline or a friendship ends, in C, and a
move, the frequent event, iterates a list faster than a set. A login visits the user's
friends once; a logout removes the user from each online friend's list.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from typing import Final

_EMPTY: Final[tuple[str, ...]] = ()


class OnlineFriends:
    """For each online user, its online friends (``of``); the graph is ``friends_of``.

    The owner calls ``came_online``/``went_offline`` at a user's first connection and last
    disconnection, and ``befriended``/``unfriended`` after the friendship graph changed.
    """

    def __init__(self, friends_of: Callable[[str], Collection[str]]) -> None:
        self._friends_of = friends_of
        self._of: dict[str, list[str]] = {}
        """Online user -> its online friends, each once."""

    def of(self, user: str) -> Collection[str]:
        """``user``'s friends that are online; not copied: iterate it at once."""
        online = self._of.get(user)
        if online is not None:
            return online
        # An offline user (told to its friends as it leaves, or its location expiring):
        # a set intersection in C, which walks the smaller side.
        return self._of.keys() & self._friends_of(user)

    def came_online(self, user: str) -> None:
        """``user``'s first connection on this node (call once per transition)."""
        online = list(self._of.keys() & self._friends_of(user))
        for friend in online:
            self._of[friend].append(user)
        self._of[user] = online

    def went_offline(self, user: str) -> None:
        """``user``'s last connection on this node closed."""
        for friend in self._of.pop(user, _EMPTY):
            _remove(self._of[friend], user)

    def befriended(self, a: str, b: str) -> None:
        """``a`` and ``b`` became friends (a new friendship: call once)."""
        of_a, of_b = self._of.get(a), self._of.get(b)
        if of_a is not None and of_b is not None:
            of_a.append(b)
            of_b.append(a)

    def unfriended(self, a: str, b: str) -> None:
        """``a`` and ``b`` are friends no more."""
        of_a, of_b = self._of.get(a), self._of.get(b)
        if of_a is not None and of_b is not None:
            _remove(of_a, b)
            _remove(of_b, a)


def _remove(friends: list[str], friend: str) -> None:
    # Both sides are online whenever an entry exists (came_online and befriended add
    # pairs, went_offline and unfriended remove them), so the entry is there; a miss
    # would be a bug that must not cost the caller's event its delivery.
    with contextlib.suppress(ValueError):
        friends.remove(friend)
