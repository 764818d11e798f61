"""Friendships and groups: who hears whom (sans-I/O).

A change to the user DB is applied to the store, journaled, and applied at once to the live
connections concerned: channel subscriptions (``user:F`` for each friend F, ``group:G`` for
each group), the frames that tell them (``friends_presence``, ``friend_removed``), and the
features that keep per-friend or per-member state (nearby friends, nearby strangers, chat).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator, Iterable
from typing import Final, Protocol

from geopresence.core.acks import Acks
from geopresence.core.broker import group_channel, user_channel
from geopresence.core.fanout import Fanout, keys_about
from geopresence.core.sessions import Sessions
from geopresence.core.settings import HubSettings
from geopresence.core.state import DurableState
from geopresence.core.statuses import Statuses
from geopresence.model.records import (
    Befriended,
    GroupDeleted,
    GroupSet,
    MemberAdded,
    MemberRemoved,
    Unfriended,
)
from geopresence.wire.errors import ErrorCode, ProtocolError
from geopresence.wire.outgoing import out
from geopresence.wire.server_messages import FriendRemoved, FriendsPresence

GROUP_SLICE: Final = 5_000
"""Members per step of ``Membership.set_group_in_slices`` (~20 ms of work)."""


class BulkError(ProtocolError):
    """A pair of a bulk friendship import was refused: ``index`` is its position,
    ``created`` how many friendships the pairs before it created (they stay)."""

    def __init__(self, code: ErrorCode, message: str, index: int, created: int) -> None:
        super().__init__(code, message)
        self.index = index
        self.created = created


class FriendsListener(Protocol):
    """Nearby friends: positions start and stop flowing between new and former friends."""

    def on_friendship_added(self, a: str, b: str, now: float) -> None: ...

    def on_friendship_removed(self, a: str, b: str) -> None: ...


class StrangersListener(Protocol):
    """Nearby strangers: a new friend is no longer shown as a stranger."""

    def on_friendship_added(self, a: str, b: str) -> None: ...


class GroupsListener(Protocol):
    """Group chat: a member reads the group's messages after its join mark."""

    def on_joined(self, group: str, user: str, mark: int) -> None: ...

    def on_left(self, group: str, user: str) -> None: ...

    def on_group_deleted(self, group: str, members: set[str]) -> None: ...


class Membership:
    """Friendships and groups, applied to the store, the journal and the live connections.

    Methods raise ``ProtocolError`` for invalid requests. While applying another node's
    change (``Fanout.replaying``) the limits are not checked again: the origin did.
    """

    def __init__(
        self,
        settings: HubSettings,
        state: DurableState,
        sessions: Sessions,
        fanout: Fanout,
        acks: Acks,
        statuses: Statuses,
        *,
        friends: FriendsListener,
        strangers: StrangersListener,
        groups: GroupsListener,
    ) -> None:
        self.settings = settings
        self.state = state
        self.sessions = sessions
        self.fanout = fanout
        self.acks = acks
        self.statuses = statuses
        self.friends = friends
        self.strangers = strangers
        self.groups = groups
        self.unshown_friends: list[tuple[str, str]] = []
        """Several nodes: (viewer, new friend) pairs whose ``friends_presence`` waits for
        the friend's status, which this node did not keep: the cluster reads it, then
        calls ``tell_new_friends`` (an ``offline`` there would be a flap once read)."""

    # ---------------------------------------------------------------- friendships

    def add_friendship(self, a: str, b: str, now: float) -> bool:
        """Make a and b friends; live connections start hearing each other at once.

        Each side's live connections get a ``friends_presence`` with the other's current
        status, and a ``friend_location`` if the other is within their radius. Returns False
        if they already were friends.
        """
        return bool(self.add_friendships([(a, b)], now))

    def add_friendships(self, pairs: Iterable[tuple[str, str]], now: float) -> int:
        """Create many friendships (a bulk import); returns how many were new.

        Like ``add_friendship`` for each pair, except that each live connection gets ONE
        ``friends_presence`` listing all of its new friends, not one frame per friend. Stops
        with ``BulkError`` at the first invalid pair (the earlier ones stay created).
        """
        sessions = self.sessions
        created: list[tuple[str, str]] = []
        new_friends: dict[str, list[str]] = {}
        try:
            for index, (a, b) in enumerate(pairs):
                try:
                    if not self._befriend(a, b):
                        continue
                except ProtocolError as exc:
                    raise BulkError(exc.code, exc.message, index, len(created)) from None
                created.append((a, b))
                if sessions.online_friends is not None:
                    sessions.online_friends.befriended(a, b)
                for user, friend in ((a, b), (b, a)):
                    conns = sessions.live_connections(user)
                    if conns:
                        new_friends.setdefault(user, []).append(friend)
                        for conn in conns:
                            sessions.broker.subscribe(user_channel(friend), conn)
        finally:
            known = self.statuses.known
            for user, friends in new_friends.items():
                if all(known(f) for f in friends):
                    self.tell_new_friends(user, friends, now)
                else:  # one friends_presence for the call, once every status is known
                    self.unshown_friends.extend((user, f) for f in friends)
            for a, b in created:
                self.strangers.on_friendship_added(a, b)
                self.friends.on_friendship_added(a, b, now)
        return len(created)

    def tell_new_friends(self, user: str, friends: list[str], now: float) -> None:
        """Send ``user``'s live connections one ``friends_presence`` of its new ``friends``."""
        if not friends:
            return
        status = self.statuses.friend_status
        # Seal each friend's pending presence: an event queued earlier must not be replaced
        # by a later one that would then arrive before this snapshot.
        snapshot = out(
            FriendsPresence(friends=[status(f, now) for f in friends]),
            seals=tuple(key for f in friends for key in keys_about(f)),
        )
        sessions = self.sessions
        for conn in sessions.live_connections(user):
            sessions.sink.send(conn, snapshot)

    def tell_waiting(self, friend: str, now: float) -> None:
        """``friend``'s status just became known here (a transition): the viewers whose
        ``friends_presence`` of it waits get theirs now, before the transition's event."""
        self.tell_unshown([pair for pair in self.unshown_friends if pair[1] == friend], now)

    def tell_unshown(self, pairs: Collection[tuple[str, str]], now: float) -> None:
        """Send the waiting ``friends_presence`` of those (viewer, friend) ``pairs`` still in
        ``unshown_friends`` (one per viewer, each friend once, none for a friendship ended
        meanwhile), and take them out of it."""
        waiting = set(self.unshown_friends)
        told: dict[str, dict[str, None]] = {}  # in order, each friend once
        for viewer, friend in pairs:
            if (viewer, friend) in waiting and self.state.users.are_friends(viewer, friend):
                told.setdefault(viewer, {})[friend] = None
        done = set(pairs)
        self.unshown_friends = [pair for pair in self.unshown_friends if pair not in done]
        for viewer, friends in told.items():
            self.tell_new_friends(viewer, list(friends), now)

    def _befriend(self, a: str, b: str) -> bool:
        if a == b:
            raise ProtocolError("bad_request", "a user cannot befriend itself")
        store = self.state.users
        if store.are_friends(a, b):
            return False
        limit = self.settings.max_friends
        for user in () if self.fanout.replaying else (a, b):  # the origin checked
            if len(store.friends_of(user)) >= limit:
                raise ProtocolError("too_large", f"{user} already has max_friends ({limit})")
        store.add_friendship(a, b)
        self.acks.journal_append(Befriended(a, b))
        return True

    def remove_friendship(self, a: str, b: str) -> bool:
        """Unfriend a and b; live connections stop hearing each other at once and get a
        ``friend_removed``. Returns False if they were not friends."""
        if not self.state.users.remove_friendship(a, b):
            return False
        self.acks.journal_append(Unfriended(a, b))
        self.unfriended(a, b)
        return True

    def unfriended(self, a: str, b: str) -> None:
        """The live side of an unfriending already made in the store (also of a forget):
        both sides' connections stop hearing each other and get a ``friend_removed``."""
        sessions = self.sessions
        if sessions.online_friends is not None:
            sessions.online_friends.unfriended(a, b)
        self.friends.on_friendship_removed(a, b)
        for user, friend in ((a, b), (b, a)):
            gone = out(FriendRemoved(user=friend), seals=keys_about(friend))
            for conn in sessions.live_connections(user):
                sessions.broker.unsubscribe(user_channel(friend), conn)
                sessions.sink.send(conn, gone)

    def load_friends(self, user: str, friends: Iterable[str]) -> None:
        """With several nodes: ``user``'s friendships as read from the shared store, added
        to this node's partial graph before a session or request of ``user`` needs them.
        Silent (nothing journaled, no frame): nothing changed, this node only learns it.
        ``user`` has no session here yet; a friend that has one now counts ``user`` in its
        graph (the edges of a user with a session are always all here)."""
        store, online = self.state.users, self.sessions.online_friends
        for friend in friends:
            if friend != user and store.add_friendship(user, friend) and online is not None:
                online.befriended(user, friend)

    def unload_friends(self, user: str, keep: Callable[[str], bool]) -> int:
        """With several nodes: ``user`` no longer needs its friendships here (no session,
        no request): drop each edge whose other side is not ``keep``-ed either. Silent, as
        ``load_friends``. Returns how many edges were dropped."""
        store, online = self.state.users, self.sessions.online_friends
        dropped = [friend for friend in store.friends_of(user) if not keep(friend)]
        for friend in dropped:
            store.remove_friendship(user, friend)
            if online is not None:
                online.unfriended(user, friend)
        return len(dropped)

    # ---------------------------------------------------------------- groups

    def set_group(
        self, group: str, members: Iterable[str], mark: int | None = None
    ) -> tuple[int, int]:
        """Create or replace ``group``'s membership; returns how many were (added, removed).
        New members read messages after ``mark`` (default: the last id issued)."""
        steps = self.set_group_in_slices(group, members, mark, slice_size=0)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                result: tuple[int, int] = done.value
                return result

    def set_group_in_slices(
        self,
        group: str,
        members: Iterable[str],
        mark: int | None = None,
        *,
        slice_size: int = GROUP_SLICE,
    ) -> Generator[None, None, tuple[int, int]]:
        """``set_group`` in steps of ``slice_size`` members (0: one step), so that a caller
        with an event loop can let others run between them (100,000 members take ~0.4 s).
        Returns (added, removed) when exhausted.

        Between steps the membership is part way: other changes may interleave. The
        journal record is written last and holds the membership as it then is, so that a
        replay rebuilds exactly the live state whatever interleaved."""
        wanted = set(members)
        limit = self.settings.max_group_size
        if len(wanted) > limit and not self.fanout.replaying:
            raise ProtocolError("too_large", f"a group has at most {limit} members")
        mark = self.state.ids.mark() if mark is None else mark
        store = self.state.users
        if slice_size <= 0:
            added, removed = store.set_group(group, wanted)
        else:
            current = store.group_members(group)
            if current is None:
                store.set_group(group, ())
                current = frozenset()
            added, removed = wanted - current, set(current) - wanted
        count = 0
        for user in added:
            if slice_size > 0:
                store.add_member(group, user)
            self.groups.on_joined(group, user, mark)
            self.sessions.subscribe_user(group_channel(group), user)
            count += 1
            if count == slice_size:
                count = 0
                yield
        for user in removed:
            if slice_size > 0:
                store.remove_member(group, user)
            self.groups.on_left(group, user)
            self.sessions.unsubscribe_user(group_channel(group), user)
            count += 1
            if count == slice_size:
                count = 0
                yield
        final = store.group_members(group)
        if final is not None:  # None: deleted part way (journaled), and nothing added since
            self.acks.journal_append(GroupSet(group, sorted(final), mark))
        return len(added), len(removed)

    def delete_group(self, group: str) -> None:
        members = self.state.users.delete_group(group)
        if members is None:
            raise ProtocolError("not_found", f"group {group!r} does not exist")
        self.acks.journal_append(GroupDeleted(group))
        self.groups.on_group_deleted(group, members)
        for user in members:
            self.sessions.unsubscribe_user(group_channel(group), user)

    def add_member(self, group: str, user: str, mark: int | None = None) -> bool:
        store = self.state.users
        members = store.group_members(group)
        limit = self.settings.max_group_size
        full = members is not None and user not in members and len(members) >= limit
        if full and not self.fanout.replaying:
            raise ProtocolError("too_large", f"a group has at most {limit} members")
        added = store.add_member(group, user)
        if added:
            mark = self.state.ids.mark() if mark is None else mark
            self.acks.journal_append(MemberAdded(group, user, mark))
            self.groups.on_joined(group, user, mark)
            self.sessions.subscribe_user(group_channel(group), user)
        return added

    def remove_member(self, group: str, user: str) -> bool:
        store = self.state.users
        if store.group_members(group) is None:
            raise ProtocolError("not_found", f"group {group!r} does not exist")
        removed = store.remove_member(group, user)
        if removed:
            self.acks.journal_append(MemberRemoved(group, user))
            self.groups.on_left(group, user)
            self.sessions.unsubscribe_user(group_channel(group), user)
        return removed
