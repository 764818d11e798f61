"""Which groups a node holds (cluster): those of the users it serves, read from Redis and read
again whenever they change.

With several nodes no node holds every group. A node holds a group (its members and their
join marks, ``gp:group:{G}``) while it holds one of its members (a session or an HTTP request
about the user, as ``FriendSlices``: ``hold_users``), or an HTTP request about the group
(``hold_groups``). That is everything the hub does with groups for the users it serves: a
member's channels and sync marks, the membership check of a send, pushes to the offline
members of a group a sender here writes to, ``group_presence``.

``hold_users`` listens to each user's ``inbox:U``, then reads the user's groups
(``gp:groups_of:{U}``) and the groups it lacks, each after listening to ``group:G``, once
this node's own journaled writes are in Redis (read your writes). The node that writes a
group change publishes ``Reread`` notices once Redis has it (``RedisJournal.notices``): on the
group's channel, and on the inbox of each member it adds. A notice marks the group (or the
user) *stale*: ``run`` reads it again and applies the difference to the hub as
``MemberAdded``, ``MemberRemoved`` and ``GroupDeleted`` (``apply``: events for the sessions
here); a group a held user joined is read in whole, silently but for the held users it
adds. Membership itself always comes from the group's read (a user's groups only say which
groups to read). As for friendships, a read of a key touched while it ran is dropped and
read again (``in_flight``). A group being replaced here in slices (``replacing``: a large
``PUT``) is read again only once the replacement is journaled. ``release_*`` drops the
groups no held user and no request needs any more.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

import trio

from geopresence.cluster.group_state import differences, load_group, remark, unload_group
from geopresence.cluster.in_flight import InFlight, Listener, Retries, Touches
from geopresence.core.broker import group_channel, inbox_channel
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

log = logging.getLogger("geopresence.redis")

ReadGroupsOf = Callable[[list[str]], Awaitable[dict[str, list[str]]]]
"""Each user's groups as Redis has them (``redis_load.read_groups_of``)."""
ReadGroups = Callable[[list[str]], Awaitable[dict[str, dict[str, int]]]]
"""Each group's members with their join marks; a group that does not exist is missing
(``redis_load.read_groups``)."""

RETRY_S = 1.0
"""Seconds before a failed read again is tried again."""


class GroupSlices:
    """The groups this node holds, for the users and requests that hold them.

    ``written`` returns once this node's journaled changes are in Redis; ``apply`` applies a
    change found by a read again to the hub (``Arrivals.change``)."""

    def __init__(
        self,
        hub: Hub,
        read_groups_of: ReadGroupsOf,
        read_groups: ReadGroups,
        written: Callable[[], Awaitable[None]],
        listener: Listener,
        apply: Callable[[FeedOp], None],
    ) -> None:
        self._hub = hub
        self._read_groups_of = read_groups_of
        self._read_groups = read_groups
        self._written = written
        self._listener = listener
        self._apply = apply
        self._user_holders: Counter[str] = Counter()
        self._users: set[str] = set()
        """Users whose every group is held here."""
        self._group_holders: Counter[str] = Counter()
        """Groups held by requests about them."""
        self._loaded: set[str] = set()
        """Groups whose membership this node holds (or knows does not exist)."""
        self._listening: set[str] = set()
        """Groups whose channel this node listens to (loaded, or being read)."""
        self._reading: InFlight[str] = InFlight()
        """Groups being read."""
        self._reading_users: InFlight[str] = InFlight()
        """Users whose groups are being read."""
        self._user_touches: Touches[str] = Touches()
        self._group_touches: Touches[str] = Touches()
        self._user_retries: Retries[str] = Retries()
        self._group_retries: Retries[str] = Retries()
        self._stale_users: set[str] = set()
        self._stale_groups: set[str] = set()
        self._replacing: Counter[str] = Counter()
        """Groups being replaced here in slices (``replacing``)."""
        self._deferred: set[str] = set()
        """Stale groups being replaced: read again once the replacement is journaled."""
        self._forgotten: dict[str, set[str]] = {}
        """The groups of users being forgotten, to let go once the forget is applied."""
        self._wakeup = trio.Event()
        self.on_loaded: Callable[[str], None] = lambda group: None
        """Called with each group read in (``Covered.regroup``: what its channel carries)."""

    def __len__(self) -> int:
        return len(self._loaded)

    def holds_user(self, user: str) -> bool:
        """True while every group of ``user`` is held here."""
        return user in self._users

    def holds(self, group: str) -> bool:
        """True while ``group``'s membership (or its absence) is held here."""
        return group in self._loaded

    # ---------------------------------------------------------------- holding

    async def hold_users(self, users: Collection[str]) -> None:
        """Have every group of ``users`` here until ``release_users(users)``; raises (and
        holds nothing) if Redis cannot be read."""
        wanted = set(users)
        for user in wanted:
            if not self._user_holders[user]:
                self._listener.hold(inbox_channel(user))
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
            self._listener.release(inbox_channel(user))
            self._users.discard(user)
            self._stale_users.discard(user)
            self._user_retries.done(user)
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

    @contextlib.contextmanager
    def replacing(self, group: str) -> Iterator[None]:
        """For the block, ``group`` (held) is being replaced here in slices (a large
        ``PUT``, journaled only at its end): a read again of it meanwhile would undo the
        slices applied so far, so it waits for the block's end."""
        self._replacing[group] += 1
        try:
            yield
        finally:
            self._replacing[group] -= 1
            if self._replacing[group] <= 0:
                del self._replacing[group]
                if group in self._deferred:
                    self._deferred.discard(group)
                    self.stale((), (group,))

    # ---------------------------------------------------------------- changes

    def touched(self, users: Collection[str], groups: Collection[str]) -> None:
        """A change made (or applied) here: reads in flight of ``users``' groups or of
        ``groups`` may be older, so they are not applied (they are read again)."""
        self._user_touches.touch(users)
        self._group_touches.touch(groups)

    def stale(self, users: Collection[str], groups: Collection[str]) -> None:
        """``users``' groups or ``groups`` changed in Redis (a notice, a gap): the held ones
        are read again, and reads in flight are not applied."""
        self.touched(users, groups)
        self._stale_users.update(user for user in users if user in self._users)
        self._stale_groups.update(group for group in groups if group in self._loaded)
        if self._stale_users or self._stale_groups:
            self._wakeup.set()

    def forgetting(self, user: str) -> set[str]:
        """Before a forget is applied: ``user``'s groups are let go once it is
        (``applied``), and any read in flight may still name the user. Returns the groups
        held here that had the user: a forget heard on the feed may come after a notice
        of a later change (it rejoined), so the caller reads them again after it."""
        self._user_touches.touch_everything()
        self._group_touches.touch_everything()
        groups = set(self._hub.store.groups_of(user))
        if groups:
            self._forgotten.setdefault(user, set()).update(groups)
        return groups

    def applied(self, op: FeedOp) -> None:
        """After the hub applied a change: a group that lost its last held member, or was
        deleted, goes; so do a forgotten user's."""
        if isinstance(op, GroupSet | MemberRemoved | GroupDeleted):
            self._maybe_unload(op.group)
        elif isinstance(op, UserForgotten):
            for group in self._forgotten.pop(op.user, set()):
                self._maybe_unload(group)

    async def run(self) -> None:
        """Read the stale users' groups and the stale groups again and apply what changed,
        until cancelled; a failed read is tried again ``RETRY_S`` later."""
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            users = sorted(self._stale_users & self._users)
            self._stale_users.clear()
            groups: list[str] = []
            try:
                if users:
                    await self._read_users_again(users)
                groups = sorted(self._stale_groups & self._loaded)
                self._stale_groups.clear()
                if groups:
                    await self._read_groups_again(groups)
            except Exception as exc:
                log.warning("reading groups again failed (%s): retrying", exc)
                self._stale_users.update(user for user in users if user in self._users)
                self._stale_groups.update(group for group in groups if group in self._loaded)
                await trio.sleep(RETRY_S)
                self._wakeup.set()

    # ---------------------------------------------------------------- first reads

    async def _read_users(self, users: list[str]) -> None:
        groups: set[str] = set()
        with self._reading_users.reading(users):
            with self._user_touches.reading(users) as untouched:
                await self._listener.subscribed()
                await self._written()
                found = await self._read_groups_of(users)
                fresh = [u for u in users if untouched(u) or not self._user_retries.retry(u)]
                groups = {group for user in fresh for group in found.get(user, ())}
                await self._load(groups)
                for user in fresh:
                    if self._user_holders[user] > 0:  # else its holder gave up meanwhile
                        self._users.add(user)
                    if untouched(user):
                        self._user_retries.done(user)
                    else:  # applied all the same (too many tries): read again after
                        self.stale((user,), ())
        for group in groups:
            self._maybe_unload(group)  # the users' holders gave up meanwhile

    async def _load(self, groups: set[str]) -> None:
        """Have ``groups`` loaded in full (read those not, unless being read)."""
        await self._reading.until_done(
            lambda: [group for group in groups if group not in self._loaded], self._read_in
        )

    async def _read_in(self, groups: list[str]) -> None:
        """The first read of ``groups``: loaded silently, but for the held users it adds
        (a user who joined since its groups were read: ``MemberAdded``, with events)."""
        for group in groups:
            if group not in self._listening:
                self._listening.add(group)
                self._listener.hold(group_channel(group))
        done = []
        try:
            with self._reading.reading(groups), self._group_touches.reading(groups) as untouched:
                await self._listener.subscribed()
                await self._written()
                found = await self._read_groups(groups)
                state = self._hub.state
                for group in groups:
                    touched = not untouched(group)
                    if touched and self._group_retries.retry(group):
                        continue  # read again (``_load``)
                    marks = found.get(group)
                    joining = {u: m for u, m in (marks or {}).items() if u in self._users}
                    others = (
                        None
                        if marks is None
                        else {u: m for u, m in marks.items() if u not in joining}
                    )
                    load_group(state, group, others)
                    self._loaded.add(group)
                    done.append(group)
                    for user, mark in sorted(joining.items()):
                        self._apply(MemberAdded(group, user, mark))
                    self._settled(group, touched)
        finally:
            for group in groups:
                if group not in done:
                    self._maybe_unload(group)  # its channel, if nothing reads it again
        for group in done:
            self.on_loaded(group)

    # ---------------------------------------------------------------- reads again

    async def _read_users_again(self, users: list[str]) -> None:
        """Held ``users``' groups after a notice: a group joined is read in (with events for
        the held users it adds), a group left is read again."""
        with self._reading_users.reading(users), self._user_touches.reading(users) as untouched:
            await self._written()
            found = await self._read_groups_of(users)
            joined: set[str] = set()
            for user in users:
                if user not in self._users:
                    continue
                touched = not untouched(user)
                if touched and self._user_retries.retry(user):
                    self._stale_users.add(user)
                    self._wakeup.set()
                    continue
                now = set(found.get(user, ()))
                had = self._hub.store.groups_of(user)
                joined |= {group for group in now - had if group not in self._loaded}
                self._stale_groups.update((now ^ had) & self._loaded)
                if touched:
                    self.stale((user,), ())
                else:
                    self._user_retries.done(user)
            await self._load(joined)
        for group in joined:
            self._maybe_unload(group)

    async def _read_groups_again(self, groups: list[str]) -> None:
        """Held ``groups`` after a notice: the difference applied, with events."""
        with self._reading.reading(groups), self._group_touches.reading(groups) as untouched:
            await self._written()
            found = await self._read_groups(groups)
            for group in groups:
                if group not in self._loaded:
                    continue
                if self._replacing[group] > 0:
                    self._deferred.add(group)  # read again after it (``replacing``)
                    continue
                touched = not untouched(group)
                if touched and self._group_retries.retry(group):
                    self._stale_groups.add(group)
                    self._wakeup.set()
                    continue
                self._reconcile(group, found.get(group))
                self._settled(group, touched)
        for group in groups:
            self._maybe_unload(group)

    def _settled(self, group: str, touched: bool) -> None:
        """A read of ``group`` was applied: if a change touched it (``MAX_TOUCHED_READS``
        in a row), it is read again to correct what it may have missed."""
        if touched:
            self.stale((), (group,))
        else:
            self._group_retries.done(group)

    def _reconcile(self, group: str, marks: Mapping[str, int] | None) -> None:
        """Apply to the hub what turns its ``group`` into the one read: the changes, with
        events; the marks of members who left and joined again, silently."""
        state = self._hub.state
        for op in differences(state, group, marks):
            self._apply(op)
        if marks is not None:
            remark(state, group, marks)

    def _maybe_unload(self, group: str) -> None:
        """Drop ``group`` (and its channel) unless a request or a held member needs it."""
        if self._group_holders[group] > 0 or group in self._reading:
            return
        if group in self._loaded:
            members: Iterable[str] = self._hub.store.group_members(group) or ()
            if any(user in self._users or self._user_holders[user] > 0 for user in members):
                return
            self._loaded.discard(group)
            self._stale_groups.discard(group)
            self._group_retries.done(group)
            unload_group(self._hub.state, group)
        if group in self._listening:
            self._listening.discard(group)
            self._listener.release(group_channel(group))
