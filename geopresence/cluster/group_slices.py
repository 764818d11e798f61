"""Which groups a node holds (cluster): those of the users it serves, read from Redis.

With several nodes no node holds every group. A node holds a group (its members and their
join marks, ``gp:group:{G}``) while it holds one of its members (a session or an HTTP request
about the user, as ``FriendSlices``: ``hold_users``), or an HTTP request about the group
(``hold_groups``). That is everything the hub does with groups for the users it serves: a
member's channels and sync marks, the membership check of a send, pushes to the offline
members of a group a sender here writes to, ``group_presence``.

``hold_users`` reads each user's groups (``gp:groups_of:{U}``), then the groups it lacks, in
pipelines, once this node's own journaled writes are in Redis (read your writes). Group
changes reach every node on the feed; ``admit`` lets through those of a held group, and
those that add a held user to a group not held yet (a member's session here must join it
live), whose full membership is then read (``run``). As for friendships, a read can be older
than a change this node heard of, so every group change heard or made here is kept a few
seconds (``RecentChanges``) and applied again, in order and silently, to the groups each
read brought in. ``release_*`` drops the groups no held user and no request needs any more.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING

import trio

from geopresence.cluster.recent_changes import InFlight, RecentChanges
from geopresence.core.replication import FeedOp
from geopresence.model.records import (
    GroupDeleted,
    GroupSet,
    MemberAdded,
    MemberRemoved,
    UserForgotten,
)

if TYPE_CHECKING:
    from geopresence.core.hub import Hub
    from geopresence.core.state import DurableState

GroupOp = GroupSet | GroupDeleted | MemberAdded | MemberRemoved
Recent = GroupOp | UserForgotten

ReadGroupsOf = Callable[[list[str]], Awaitable[dict[str, list[str]]]]
"""Each user's groups as Redis has them (``redis_load.read_groups_of``)."""
ReadGroups = Callable[[list[str]], Awaitable[dict[str, dict[str, int]]]]
"""Each group's members with their join marks; a group that does not exist is missing
(``redis_load.read_groups``)."""


class GroupSlices:
    """The groups this node holds, for the users and requests that hold them.

    ``written`` returns once this node's journaled changes are in Redis; ``now`` is a
    monotonic clock (seconds)."""

    def __init__(
        self,
        hub: Hub,
        read_groups_of: ReadGroupsOf,
        read_groups: ReadGroups,
        written: Callable[[], Awaitable[None]],
        now: Callable[[], float] = trio.current_time,
    ) -> None:
        self._hub = hub
        self._read_groups_of = read_groups_of
        self._read_groups = read_groups
        self._written = written
        self._user_holders: Counter[str] = Counter()
        self._users: set[str] = set()
        """Users whose every group is held here."""
        self._group_holders: Counter[str] = Counter()
        """Groups held by requests about them."""
        self._loaded: set[str] = set()
        """Groups whose membership this node holds (or knows does not exist)."""
        self._reading: InFlight[str] = InFlight()
        """Groups being read."""
        self._reading_users: InFlight[str] = InFlight()
        """Users whose groups are being read."""
        self._recent: RecentChanges[Recent] = RecentChanges(now)
        """Group changes heard or made here lately."""
        self._incomplete: set[str] = set()
        """Groups an admitted change brought in, whose full membership ``run`` reads."""
        self._forgotten: dict[str, set[str]] = {}
        """The groups of users being forgotten, to let go once the forget is applied."""
        self._wakeup = trio.Event()
        self.on_loaded: Callable[[str], None] = lambda group: None
        """Called with each group read in (``Covered.regroup``: what its channel carries)."""

    def __len__(self) -> int:
        return len(self._loaded)

    def holds(self, group: str) -> bool:
        """True while ``group``'s membership (or its absence) is held here."""
        return group in self._loaded

    # ---------------------------------------------------------------- holding

    async def hold_users(self, users: Collection[str]) -> None:
        """Have every group of ``users`` here until ``release_users(users)``; raises (and
        holds nothing) if Redis cannot be read."""
        wanted = set(users)
        self._user_holders.update(wanted)
        try:
            await self._reading_users.until_done(
                lambda: [user for user in wanted if user not in self._users], self._read_users
            )
        except BaseException:
            self.release_users(wanted)
            raise

    def release_users(self, users: Collection[str]) -> None:
        """The end of one ``hold_users(users)``: the groups no one needs any more go."""
        for user in set(users):
            self._user_holders[user] -= 1
            if self._user_holders[user] > 0:
                continue
            del self._user_holders[user]
            self._users.discard(user)
            left = set(self._hub.store.groups_of(user)) | self._forgotten.pop(user, set())
            for group in left:
                self._maybe_unload(group)

    async def hold_groups(self, groups: Collection[str]) -> None:
        """Have ``groups`` here until ``release_groups(groups)`` (an HTTP request about
        them); raises (and holds nothing) if Redis cannot be read."""
        wanted = set(groups)
        self._group_holders.update(wanted)
        try:
            await self._load(wanted)
        except BaseException:
            self.release_groups(wanted)
            raise

    def release_groups(self, groups: Collection[str]) -> None:
        for group in set(groups):
            self._group_holders[group] -= 1
            if self._group_holders[group] <= 0:
                del self._group_holders[group]
                self._maybe_unload(group)

    # ---------------------------------------------------------------- changes

    def admit(self, op: FeedOp) -> bool:
        """Whether the hub should apply a feed op: a change of a group held here, or one
        that adds a held user (or one being read) to a group (read in full next, ``run``);
        other groups' changes are left out. Not a group change: True."""
        self.made_here(op)
        if not isinstance(op, GroupOp):
            return True
        group = op.group
        if group in self._loaded:
            return True
        if isinstance(op, MemberAdded):
            joins = self._wanted(op.user)
        elif isinstance(op, GroupSet):
            joins = any(self._wanted(user) for user in op.members)
        else:
            joins = False
        if joins:
            self._loaded.add(group)
            self._incomplete.add(group)
            self._wakeup.set()
        return joins

    def _wanted(self, user: str) -> bool:
        """Whether ``user``'s groups are held here, or being read."""
        return user in self._users or user in self._reading_users

    def applied(self, op: FeedOp) -> None:
        """After the hub applied a change (made here or admitted): a group that lost its
        last held member, or was deleted, goes; so do a forgotten user's."""
        if isinstance(op, GroupSet | MemberRemoved | GroupDeleted):
            self._maybe_unload(op.group)
        elif isinstance(op, UserForgotten):
            for group in self._forgotten.pop(op.user, set()):
                self._maybe_unload(group)

    def made_here(self, op: FeedOp) -> None:
        """A change this node heard of or made, before the hub applies it: a group change
        or a forget, kept to be applied again over the reads in flight
        (``RecentChanges``); a forget's groups, to let go once it is applied."""
        if isinstance(op, UserForgotten):
            groups = set(self._hub.store.groups_of(op.user))
            if groups:
                self._forgotten.setdefault(op.user, set()).update(groups)
        elif not isinstance(op, GroupOp):
            return
        self._recent.add(op)

    async def run(self) -> None:
        """Read in full the groups an admitted change brought in (a held user joined a
        group not held here); a failed read is tried again a second later."""
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            groups = sorted(g for g in self._incomplete & self._loaded if g not in self._reading)
            try:
                await self._read_in(groups)
            except Exception:
                await trio.sleep(1.0)
                self._wakeup.set()
            for group in groups:
                self._maybe_unload(group)  # its member left during the read

    # ---------------------------------------------------------------- reading

    async def _read_users(self, users: list[str]) -> None:
        with self._reading_users.reading(users):
            with self._recent.reading() as recent:
                await self._written()
                found = await self._read_groups_of(users)
                groups = {group for user in users for group in found.get(user, ())}
                # A group one of them joined that the read was too early to list.
                groups |= {group for group, user in _joins(recent()) if user in users}
                await self._load(groups)
            for user in users:
                if self._user_holders[user] > 0:  # else its holder gave up meanwhile
                    self._users.add(user)
            for group in groups:
                self._maybe_unload(group)  # the users' holders gave up meanwhile

    async def _load(self, groups: set[str]) -> None:
        """Have ``groups`` loaded in full (read those not, unless being read)."""
        await self._reading.until_done(
            lambda: [g for g in groups if g not in self._loaded or g in self._incomplete],
            self._read_in,
        )

    async def _read_in(self, groups: list[str]) -> None:
        if not groups:
            return
        with self._reading.reading(groups):
            with self._recent.reading() as recent:
                await self._written()
                found = await self._read_groups(groups)
                state = self._hub.state
                for group in groups:
                    load_group(state, group, found.get(group))
                self._loaded.update(groups)
                # Applied again, in order and silently, over what was just read.
                _replay(state, set(groups), recent())
                self._incomplete.difference_update(groups)
            for group in groups:
                self.on_loaded(group)

    def _maybe_unload(self, group: str) -> None:
        """Drop ``group`` unless a request or a held member still needs it."""
        if group not in self._loaded or self._group_holders[group] > 0:
            return
        if group in self._reading or group in self._incomplete:
            return
        members: Iterable[str] = self._hub.store.group_members(group) or ()
        if any(user in self._users or self._user_holders[user] > 0 for user in members):
            return
        self._loaded.discard(group)
        unload_group(self._hub.state, group)


def _replay(state: DurableState, read: set[str], changes: Iterable[Recent]) -> None:
    """Apply ``changes`` again, in order and silently, to the groups just ``read``."""
    for op in changes:
        if isinstance(op, UserForgotten):
            for group in read & state.users.groups_of(op.user):
                state.apply(MemberRemoved(group, op.user))
        elif op.group in read:
            state.apply(op)


def _joins(changes: Iterable[Recent]) -> set[tuple[str, str]]:
    """(group, user) of each user ``changes`` added to a group."""
    joins = set()
    for op in changes:
        if isinstance(op, MemberAdded):
            joins.add((op.group, op.user))
        elif isinstance(op, GroupSet):
            joins.update((op.group, user) for user in op.members)
    return joins


def load_group(state: DurableState, group: str, marks: Mapping[str, int] | None) -> None:
    """``group``'s members with their join marks as read (None: it does not exist),
    replacing what the state had of it. Silent: nothing journaled, no frame."""
    if marks is None:
        unload_group(state, group)
        return
    _, removed = state.users.set_group(group, marks)
    for user in removed:
        state.chat.leave(group, user)
    for user, mark in marks.items():
        state.chat.leave(group, user)  # the mark read replaces one applied before
        state.chat.join(group, user, mark)
        state.ids.observe(mark)


def unload_group(state: DurableState, group: str) -> None:
    """Drop ``group`` from the state, silently (this node no longer needs it)."""
    for user in state.users.delete_group(group) or ():
        state.chat.leave(group, user)
