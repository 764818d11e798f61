"""What a node holds for the users and groups its sessions and requests need (cluster):
their friendships (``FriendSlices``) and groups (``GroupSlices``), held and let go together."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

from geopresence.cluster.friend_slices import FriendSlices
from geopresence.cluster.group_slices import GroupSlices
from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.redis_load import read_friends, read_groups, read_groups_of

if TYPE_CHECKING:
    from geopresence.core.hub import Hub


class Holdings:
    """The friendships and groups of the users held here, and the groups held by requests
    about them, read from Redis once ``written`` says this node's own writes are in."""

    def __init__(
        self, hub: Hub, client: Any, keys: Keys, written: Callable[[], Awaitable[None]]
    ) -> None:
        self.friends = FriendSlices(hub, lambda users: read_friends(client, keys, users), written)
        self.groups = GroupSlices(
            hub,
            lambda users: read_groups_of(client, keys, users),
            lambda groups: read_groups(client, keys, groups),
            written,
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
