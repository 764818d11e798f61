"""Who is online, as this node answers it (sans-I/O).

With one node, this node's ``PresenceTable`` is the truth. With several, each user's status
is decided once for the whole cluster (``geopresence.cluster.redis_presence``), and a node
holds the statuses its connections need: those of the users whose channels it listens to
(its sessions' friends, the co-members of their small groups), read from Redis as it starts
listening and kept current by the transitions published there (``geopresence.cluster.
covered``). Its own table then only counts its devices and their activity. An answer about
anyone else (the HTTP API, a big group's presence) reads Redis first and lays what it read
over the held statuses for that one answer (``overlay``).

``last_active_at`` with several nodes: activity stays on the node that holds the device
(heartbeats are not shared), so no node knows an online user's latest activity elsewhere.
What every node knows is that an online user has a device alive: active within
``offline_after``, within one heartbeat interval while connected. So every node answers an
online user's ``last_active_at`` with the time of the answer (``now``): the same on every
node, at most ``offline_after`` (one heartbeat while connected) after the real one. At each
transition it is exact: the online event carries the activity that made the user online,
the offline event the latest activity of the user the cluster was told (each device's end
reports its node's last activity; a dead node's devices, its last lease renewal).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TypeAlias

from geopresence.core.broker import ConnId
from geopresence.core.presence import PresenceTable, UserPresence
from geopresence.core.state import DurableState
from geopresence.wire.errors import ProtocolError
from geopresence.wire.server_messages import FriendStatus, Status

Held: TypeAlias = tuple[Status, float | None, int]
"""A user's cluster-wide (status, last_active_at in epoch seconds, version)."""


class Statuses:
    """Users' presence: ``presence`` (this node's devices) and, when ``clustered``, the
    cluster-wide (status, last_active_at, version) of the users this node keeps current."""

    def __init__(
        self, presence: PresenceTable[ConnId], state: DurableState, *, clustered: bool
    ) -> None:
        self.presence = presence
        self.state = state
        self.clustered = clustered
        self._statuses: dict[str, Held] = {}
        """With other nodes: the cluster-wide statuses this node keeps current."""
        self._forgotten: set[str] = set()
        """Forgotten users not online since: the offline transition their forget's logout
        decides in Redis, arriving after it, must not bring their presence back."""

    def set_status(
        self, user: str, status: Status, last_active_at: float | None, version: int
    ) -> bool:
        """Hold ``user``'s cluster-wide status; False if the one held is as new or newer."""
        if not self._admits(user, status, version, self._statuses.get(user)):
            return False
        self._forgotten.discard(user)  # back online: a new fact
        self._statuses[user] = (status, last_active_at, version)
        return True

    def _admits(self, user: str, status: Status, version: int, held: Held | None) -> bool:
        """Whether ``status`` at ``version`` replaces ``held``: not a forgotten user's offline
        (its forget's own logout, arriving after it), not an older transition arriving late."""
        if user in self._forgotten and status == "offline":
            return False
        return held is None or held[2] < version

    def drop(self, user: str) -> None:
        """No longer keep ``user``'s status (nothing here listens to it any more): an
        answer about it reads Redis again."""
        self._statuses.pop(user, None)

    @property
    def kept(self) -> int:
        """How many cluster-wide statuses this node keeps."""
        return len(self._statuses)

    def known(self, user: str) -> bool:
        """True if this node can answer ``user``'s status itself: always with one node; with
        several, if it keeps it."""
        return not self.clustered or user in self._statuses

    def holds(self, user: str) -> bool:
        """True if this node keeps ``user``'s cluster-wide status."""
        return user in self._statuses

    @contextmanager
    def overlay(self, read: Mapping[str, Held]) -> Iterator[None]:
        """For one synchronous answer: statuses just read from Redis, over the held ones
        where newer; the held ones are back as they were at the end (no await inside:
        nothing else runs meanwhile)."""
        saved = {user: self._statuses.get(user) for user in read}
        try:
            for user, held in read.items():
                if self._admits(user, held[0], held[2], saved[user]):
                    self._statuses[user] = held
            yield
        finally:
            for user, before in saved.items():
                if before is None:
                    self._statuses.pop(user, None)
                else:
                    self._statuses[user] = before

    def forget(self, user: str) -> None:
        """Drop ``user``'s presence (logged out first): an unknown user is offline, ``null``."""
        self.presence.forget(user)
        if self.clustered:
            self._statuses.pop(user, None)
            self._forgotten.add(user)

    def status_of(self, user: str, now: float) -> tuple[Status, float | None]:
        """The user's (status, last_active_at) at ``now``: this node's table with one node,
        the cluster-wide status kept here with several (last_active_at: ``now`` while online,
        see above; once offline, the later of the kept one and this node's own)."""
        local = self.presence.get(user)
        if not self.clustered:
            return local.status, local.last_active_at
        status, last, _ = self._statuses.get(user, ("offline", None, 0))
        if status == "online":
            return status, now
        if local.last_active_at is not None and (last is None or local.last_active_at > last):
            last = local.last_active_at
        return status, last

    def is_online(self, user: str) -> bool:
        """True if ``user`` is online (in the whole cluster with several nodes)."""
        if not self.clustered:
            return self.presence.is_online(user)
        held = self._statuses.get(user)
        return held is not None and held[0] == "online"

    def status_version(self, user: str) -> int:
        """The version of ``user``'s cluster-wide status this node holds (0: none)."""
        held = self._statuses.get(user)
        return 0 if held is None else held[2]

    def online_count(self) -> int:
        """Users online now with a device (alive, or in its grace window) on this node: with
        several nodes, the cluster's figure is the sum over the nodes (a user with devices
        on two nodes counts twice)."""
        return self.presence.online_count

    def user_presence(self, user: str, now: float) -> UserPresence:
        """The user's presence at ``now``; ``devices`` counts its alive devices on this
        node."""
        local = self.presence.get(user)
        if not self.clustered:
            return local
        status, last_active_at = self.status_of(user, now)
        return UserPresence(user, status, last_active_at, local.devices)

    def friend_status(self, user: str, now: float) -> FriendStatus:
        """``user``'s presence as a friend sees it at ``now``."""
        status, last_active_at = self.status_of(user, now)
        return FriendStatus(user=user, status=status, last_active_at=last_active_at)

    def friends_presence(self, user: str, now: float) -> list[FriendStatus]:
        """The user's friends, sorted by id, with their presence at ``now``."""
        friends = sorted(self.state.users.friends_of(user))
        return [self.friend_status(f, now) for f in friends]

    def group_online(self, group: str) -> tuple[list[str], int]:
        """Sorted online members of ``group`` and its member count; not_found if none."""
        members = self.state.users.group_members(group)
        if members is None:
            raise ProtocolError("not_found", f"group {group!r} does not exist")
        online = sorted(m for m in members if self.is_online(m))
        return online, len(members)
