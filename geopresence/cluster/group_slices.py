"""Which groups a node holds (cluster): those of the users it serves, read from Redis.

With several nodes no node holds every group. A node holds a group (its members and their
join marks, ``gp:group:{G}``) while it holds one of its members (a session or an HTTP request
about the user, as ``FriendSlices``: ``hold_users``), or an HTTP request about the group
(``hold_groups``). That is everything the hub does with groups for the users it serves: a
member's channels and sync marks, the membership check of a send, pushes to the offline
members of a group a sender here writes to, ``group_presence``.

``hold_users`` reads each user's groups (``gp:groups_of:{U}``), then the groups it lacks, in
pipelines, once this node's own writes are in Redis and it listens to the groups' channels,
where a group change is published as it is written (a member added or removed also on the
member's channel, which a node holding the user listens to). ``admit`` lets through the
changes of a held group, and those that add a held user to a group not held yet (its
sessions here join it live; the whole group is read next, ``run``). A read can be older
than a change heard, so changes are kept a few seconds (``RecentChanges``) and applied again
over each read; after a pub/sub gap the groups are read again and the differences applied.
``release_*`` drops the groups no held user and no request needs any more.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from typing import TYPE_CHECKING

import trio

from geopresence.cluster.group_state import (
    GroupOp,
    Recent,
    joins,
    load_group,
    replay,
    replay_onto,
    unload_group,
)
from geopresence.cluster.recent_changes import RECENT_S, RecentChanges
from geopresence.core.broker import group_of_channel, user_of_channel
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
        self._reading: dict[str, trio.Event] = {}
        """Groups (and users, prefixed ``@``) being read, set once read (or failed)."""
        self._recent: RecentChanges[Recent] = RecentChanges(
            now, lambda op: isinstance(op, UserForgotten)
        )
        """Group changes heard or made here lately."""
        self._incomplete: set[str] = set()
        """Groups an admitted change brought in, whose full membership ``run`` reads."""
        self._forgotten: dict[str, set[str]] = {}
        """The groups of users being forgotten, to let go once the forget is applied."""
        self._wakeup = trio.Event()
        self.on_loaded: Callable[[str], None] = lambda group: None
        """Called with each group read in (``Covered.regroup``: what its channel carries)."""
        self.hold_channel: Callable[[str], None] = lambda group: None
        """Listen to a group's channel (its changes are published there once written)."""
        self.release_channel: Callable[[str], None] = lambda group: None
        self.subscribed: Callable[[], Awaitable[None]] = _settled
        """Return once every subscription asked for is in place in Redis."""
        self._channels: set[str] = set()
        """Groups whose channel this node listens to for them."""
        self._stale: set[str] = set()
        """Groups to read again (a pub/sub gap; a member forgotten lately joined)."""
        self._stale_users: set[str] = set()
        """Held users whose channel had a gap: their groups are read again."""
        self._now = now
        self._forgotten_at: dict[str, float] = {}
        """Users forgotten lately, with when (a join of theirs heard then is checked)."""

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
            while missing := [user for user in wanted if user not in self._users]:
                reading = [self._reading[f"@{u}"] for u in missing if f"@{u}" in self._reading]
                if reading:
                    for event in reading:
                        await event.wait()
                    continue
                await self._read_users(missing)
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

    @contextlib.asynccontextmanager
    async def holding_groups(self, groups: Collection[str]) -> AsyncIterator[None]:
        await self.hold_groups(groups)
        try:
            yield
        finally:
            self.release_groups(groups)

    # ---------------------------------------------------------------- changes

    def admit(self, op: FeedOp) -> bool:
        """Whether the hub should apply a feed op: a change of a group held here, or one
        that adds a held user (or one being read) to a group (read in full next, ``run``);
        other groups' changes are left out. Not a group change: True."""
        self.made_here(op)
        if not isinstance(op, GroupOp):
            return True
        group = op.group
        added: Collection[str] = ()
        if isinstance(op, MemberAdded):
            added = (op.user,)
        elif isinstance(op, GroupSet):
            added = op.members
        if any(map(self._forgotten_lately, added)):
            # Made before the forget or after it? Redis says (``run``).
            self._stale.add(group)
            self._wakeup.set()
        if group in self._loaded:
            return True
        joins = any(self._wanted(user) for user in added)
        if joins:
            self._loaded.add(group)
            self._incomplete.add(group)
            self._listen(group)
            self._wakeup.set()
        return joins

    def _forgotten_lately(self, user: str) -> bool:
        at = self._forgotten_at.get(user)
        return at is not None and at >= self._now() - RECENT_S

    def gap(self, channels: Collection[str]) -> None:
        """``channels`` may have missed changes (a pub/sub gap): the groups held here that
        they carry, and the groups of the held users whose channels they are, are read
        again (``run``)."""
        for channel in channels:
            group, user = group_of_channel(channel), user_of_channel(channel)
            if group is not None and group in self._loaded:
                self._stale.add(group)
            elif user is not None and (user in self._users or f"@{user}" in self._reading):
                self._stale_users.add(user)
        if self._stale or self._stale_users:
            self._wakeup.set()

    def _wanted(self, user: str) -> bool:
        """Whether ``user``'s groups are held here, or being read."""
        return user in self._users or f"@{user}" in self._reading

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
            now = self._now()
            for user, at in list(self._forgotten_at.items()):
                if at < now - RECENT_S:
                    del self._forgotten_at[user]
            self._forgotten_at[op.user] = now
        elif not isinstance(op, GroupOp):
            return
        self._recent.add(op)

    async def run(self, apply: Callable[[FeedOp], None]) -> None:
        """Read in full the groups an admitted change brought in (a held user joined a
        group not held here), and read again what a gap may have changed, ``apply``-ing
        the differences as changes heard; a failed read is tried again a second later."""
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            groups = sorted((self._incomplete & self._loaded) - self._reading.keys())
            try:
                await self._read_in(groups)
                await self._resync(apply)
            except Exception:
                await trio.sleep(1.0)
                self._wakeup.set()
            for group in groups:
                self._maybe_unload(group)  # its member left during the read

    async def _resync(self, apply: Callable[[FeedOp], None]) -> None:
        users, groups = sorted(self._stale_users), set(self._stale)
        if not users and not groups:
            return
        self._stale_users, self._stale = set(), set()
        try:
            for user in users:  # a first read in flight: after it
                if f"@{user}" in self._reading:
                    await self._reading[f"@{user}"].wait()
            with self._recent.reading() as recent:
                # As a first read: the subscriptions in place again, this node's own
                # changes in Redis.
                await self.subscribed()
                recent.mark()
                await self._written()
                found_of = await self._read_groups_of(users) if users else {}
                for user in users:
                    groups.update(found_of.get(user, ()), self._hub.store.groups_of(user))
                found = await self._read_groups(sorted(groups))
                replay_onto(found, groups, recent())
        except BaseException:
            self._stale_users.update(users)
            self._stale.update(groups)
            raise
        for op in self._differences(groups, found):
            apply(op)

    def _differences(self, groups: set[str], found: dict[str, dict[str, int]]) -> list[FeedOp]:
        """The changes that take the held groups among ``groups`` to what was ``found``,
        and that make the held users the read lists join the groups not held."""
        store, changes = self._hub.store, list[FeedOp]()
        for group in sorted(groups):
            marks = found.get(group)
            if group not in self._loaded:
                for user, mark in sorted((marks or {}).items()):
                    if self._wanted(user):
                        changes.append(MemberAdded(group, user, mark))
                continue
            members = store.group_members(group)
            if marks is None:
                if members is not None:
                    changes.append(GroupDeleted(group))
                continue
            have = set() if members is None else set(members)
            changes += [MemberAdded(group, u, marks[u]) for u in sorted(set(marks) - have)]
            changes += [MemberRemoved(group, u) for u in sorted(have - set(marks))]
        return changes

    # ---------------------------------------------------------------- reading

    async def _read_users(self, users: list[str]) -> None:
        done = trio.Event()
        for user in users:
            self._reading[f"@{user}"] = done
        try:
            with self._recent.reading() as recent:
                # Its users' channels are listened to already (``FriendSlices``).
                await self.subscribed()
                recent.mark()
                await self._written()
                found = await self._read_groups_of(users)
                groups = {group for user in users for group in found.get(user, ())}
                # A group one of them joined that the read was too early to list.
                groups |= {group for group, user in joins(recent()) if user in users}
                await self._load(groups)
            for user in users:
                if self._user_holders[user] > 0:  # else its holder gave up meanwhile
                    self._users.add(user)
            for group in groups:
                self._maybe_unload(group)  # the users' holders gave up meanwhile
        finally:
            for user in users:
                del self._reading[f"@{user}"]
            done.set()

    async def _load(self, groups: set[str]) -> None:
        """Have ``groups`` loaded in full (read those not, unless being read)."""
        while missing := [g for g in groups if g not in self._loaded or g in self._incomplete]:
            reading = [self._reading[group] for group in missing if group in self._reading]
            if reading:
                for event in reading:
                    await event.wait()
                continue
            await self._read_in(missing)

    async def _read_in(self, groups: list[str]) -> None:
        if not groups:
            return
        done = trio.Event()
        for group in groups:
            self._reading[group] = done
            self._listen(group)
        try:
            with self._recent.reading() as recent:
                # Subscribed first: a change written after the read reaches this node.
                await self.subscribed()
                recent.mark()
                await self._written()
                found = await self._read_groups(groups)
                state = self._hub.state
                for group in groups:
                    load_group(state, group, found.get(group))
                self._loaded.update(groups)
                # Applied again, in order and silently, over what was just read.
                replay(state, set(groups), recent())
                self._incomplete.difference_update(groups)
            for group in groups:
                self.on_loaded(group)
        finally:
            for group in groups:
                del self._reading[group]
                if group not in self._loaded:  # the read failed
                    self._unlisten(group)
            done.set()

    def _listen(self, group: str) -> None:
        if group not in self._channels:
            self._channels.add(group)
            self.hold_channel(group)

    def _unlisten(self, group: str) -> None:
        if group in self._channels:
            self._channels.discard(group)
            self.release_channel(group)

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
        self._unlisten(group)
        unload_group(self._hub.state, group)


async def _settled() -> None:
    return None
