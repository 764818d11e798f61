"""What a node holds for the users and groups its sessions and requests need (cluster):
their friendships (``FriendSlices``) and groups (``GroupSlices``), held and let go together,
and read again when a notice says they changed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import trio

from geopresence.cluster.channel_events import Reread
from geopresence.cluster.friend_slices import FriendSlices, users_of
from geopresence.cluster.group_slices import GroupSlices
from geopresence.cluster.group_state import touched_by
from geopresence.cluster.in_flight import Listener
from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.redis_load import read_friends, read_groups, read_groups_of
from geopresence.core.broker import group_of_channel, inbox_of_channel
from geopresence.core.replication import FeedOp
from geopresence.model.records import UserForgotten

if TYPE_CHECKING:
    from geopresence.core.hub import Hub


class Holdings:
    """The friendships and groups of the users held here, and the groups held by requests
    about them, read from Redis once ``written`` says this node's own writes are in.
    ``apply`` applies a change a read again found to the hub (``Arrivals.change``)."""

    def __init__(
        self,
        hub: Hub,
        client: Any,
        keys: Keys,
        written: Callable[[], Awaitable[None]],
        listener: Listener,
        apply: Callable[[FeedOp], None],
    ) -> None:
        self.friends = FriendSlices(
            hub, lambda users: read_friends(client, keys, users), written, listener, apply
        )
        self.groups = GroupSlices(
            hub,
            lambda users: read_groups_of(client, keys, users),
            lambda groups: read_groups(client, keys, groups),
            written,
            listener,
            apply,
        )

    async def hold(self, users: Collection[str], groups: Collection[str] = ()) -> None:
        """Every friendship and group of ``users``, and ``groups``, held here until
        ``release``; raises (and holds nothing) if Redis cannot be read."""
        await self.friends.hold(users)
        try:
            await self.groups.hold_users(users)
            try:
                await self.groups.hold_groups(groups)
            except BaseException:
                self.groups.release_users(users)
                raise
        except BaseException:
            self.friends.release(users)
            raise

    def release(self, users: Collection[str], groups: Collection[str] = ()) -> None:
        """The end of one ``hold(users, groups)``."""
        self.friends.release(users)
        self.groups.release_users(users)
        self.groups.release_groups(groups)

    def replacing(self, group: str) -> AbstractContextManager[None]:
        """For the block, ``group`` (held) is replaced here in slices
        (``GroupSlices.replacing``)."""
        return self.groups.replacing(group)

    def made_here(self, op: FeedOp) -> None:
        """A friendship or group change this node journals (the hub applies it): reads in
        flight of what it changes are not applied."""
        if isinstance(op, UserForgotten):
            self.forgetting(op)  # its groups go once its session here ends
        self.friends.touched(users_of(op))
        self.groups.touched(*touched_by(op))

    def heard(self, notice: Reread) -> None:
        """Another node changed these users' friendships or groups, or these groups."""
        self.friends.stale(notice.friends_of)
        self.groups.stale(notice.groups_of, notice.groups)

    def heard_op(self, op: FeedOp) -> None:
        """A friendship or group change on the feed (from an older version): a notice."""
        users, groups = touched_by(op)
        self.heard(Reread(tuple(users_of(op)), users, groups))

    def gap(self, channels: Collection[str]) -> None:
        """``channels`` may have lost notices: what they announce is read again."""
        users = tuple(u for u in map(inbox_of_channel, channels) if u is not None)
        groups = tuple(g for g in map(group_of_channel, channels) if g is not None)
        if users or groups:
            self.heard(Reread(users, users, groups))

    def forgetting(self, op: UserForgotten) -> Reread:
        """Before a forget is applied: reads in flight may still name the user. Returns
        what to read again once it is applied (``heard``): the user's friends and groups
        held here. A forget heard on the feed can come after the notice of a later change
        (a re-friending, a rejoin), which the forget must not erase here."""
        self.friends.forgotten()
        groups = self.groups.forgetting(op.user)
        friends = self.friends.held_friends(op.user)
        return Reread((op.user, *friends), (op.user,), tuple(sorted(groups)))

    async def run(self) -> None:
        """Read again what notices said changed, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.friends.run)
            nursery.start_soon(self.groups.run)
