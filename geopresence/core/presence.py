"""The presence table: who is online, per the design's heartbeat rule (sans-I/O).

This is the design's key-value store of ``status`` and ``last_active_at``, kept per device so
that several devices of one user count as one presence. Rules (docs/protocol.md, presence):

- A device is *alive* from its hello until ``offline_after`` seconds after its latest activity,
  or until it logs out. A dropped connection does not end it: the device stays alive until its
  deadline, so a reconnect inside the window (elevator, tunnel) changes nothing.
- A user is ``online`` while at least one of its devices is alive.
- ``last_active_at`` is the time of the user's latest activity; a logout does not touch it.
- Every method that can change a user's status returns the ``PresenceChange`` (at most one per
  user per call), so callers publish exactly one event per user transition.

All times are seconds on the caller's clock (``now``); nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

import attrs

from geopresence.core.deadlines import DeadlineIndex
from geopresence.wire.server_messages import Status

C = TypeVar("C")
"""The caller's connection handle type (the server uses ints)."""


@attrs.frozen
class PresenceChange:
    """A user's transition: ``status`` is the new status."""

    user: str
    status: Status
    last_active_at: float | None


@attrs.frozen
class UserPresence:
    """A user's current presence; ``devices`` counts alive devices."""

    user: str
    status: Status
    last_active_at: float | None
    devices: int


@attrs.frozen
class EndedDevice(Generic[C]):
    """A device that stopped being alive while a connection ``conn`` was still attached."""

    user: str
    device: str
    conn: C


@attrs.frozen
class Connected(Generic[C]):
    """Result of ``connect``: the connection it replaced (same user+device) and the change."""

    replaced: C | None
    change: PresenceChange | None


@attrs.frozen
class Ended(Generic[C]):
    """Result of ``logout`` / ``expire``: connections to close and the users' transitions.
    ``devices`` lists every (user, device) that ended, attached to a connection or not."""

    connections: list[EndedDevice[C]]
    changes: list[PresenceChange]
    devices: list[tuple[str, str]] = attrs.Factory(list)


@attrs.define
class _Device(Generic[C]):
    last_active: float
    conn: C | None
    since: float
    """When its latest connection opened (a logout made elsewhere before ends it)."""


@attrs.define
class _User(Generic[C]):
    devices: dict[str, _Device[C]] = attrs.Factory(dict)
    last_active_at: float | None = None


class PresenceTable(Generic[C]):
    """Per-user, per-device liveness with an O(log n) deadline index."""

    def __init__(self, offline_after: float) -> None:
        if not offline_after > 0:
            raise ValueError("offline_after must be positive")
        self.offline_after = offline_after
        self._users: dict[str, _User[C]] = {}
        self._deadlines: DeadlineIndex[tuple[str, str]] = DeadlineIndex()
        self._online = 0

    @property
    def online_count(self) -> int:
        """Number of users online now."""
        return self._online

    def next_deadline(self) -> float | None:
        """When ``expire`` next has work to do (None: no device is alive)."""
        return self._deadlines.next_deadline()

    def connect(
        self, user: str, device: str, conn: C, now: float, since: float | None = None
    ) -> Connected[C]:
        """A connection authenticated as ``user`` on ``device`` at ``now``, open since
        ``since`` (``now`` if None).

        The device becomes alive (or stays alive) with activity at ``now``. If another
        connection was attached to the same device it is returned as ``replaced``; the caller
        closes it (4002). The user's status changes only if no other device was alive.
        """
        state = self._users.get(user)
        if state is None:
            state = self._users[user] = _User()
        was_online = bool(state.devices)
        entry = state.devices.get(device)
        replaced = None
        if entry is None:
            state.devices[device] = _Device(last_active=now, conn=conn, since=since or now)
        else:
            replaced = entry.conn
            entry.conn = conn
            entry.since = since or now
            entry.last_active = max(entry.last_active, now)
        self._touch(state, user, device, now)
        if was_online:
            return Connected(replaced, None)
        self._online += 1
        return Connected(replaced, PresenceChange(user, "online", state.last_active_at))

    def has_device(self, user: str, device: str) -> bool:
        """True if ``device`` of ``user`` is alive (connected or in its grace window)."""
        state = self._users.get(user)
        return state is not None and device in state.devices

    def connection_of(self, user: str, device: str) -> C | None:
        """The connection attached to ``user``'s ``device`` (None: none, or not alive)."""
        state = self._users.get(user)
        entry = None if state is None else state.devices.get(device)
        return None if entry is None else entry.conn

    def activity(self, user: str, device: str, conn: C, now: float) -> bool:
        """Record activity of ``conn`` at ``now``; False if ``conn`` is not that device's
        current connection (it was replaced, logged out or timed out)."""
        state = self._users.get(user)
        entry = None if state is None else state.devices.get(device)
        if state is None or entry is None or entry.conn != conn:
            return False
        if now > entry.last_active:
            entry.last_active = now
        self._touch(state, user, device, now)
        return True

    def disconnect(self, user: str, device: str, conn: C) -> None:
        """``conn`` went away without logging out: the device stays alive until its deadline.
        A connection that is no longer the device's current one is ignored."""
        state = self._users.get(user)
        entry = None if state is None else state.devices.get(device)
        if entry is not None and entry.conn == conn:
            entry.conn = None

    def logout(self, user: str, device: str | None = None) -> Ended[C]:
        """Log out one device (or every device when ``device`` is None) at once.

        ``last_active_at`` is left as it was. Returns the attached connections to close (4001)
        and the user's change to offline if no device remains alive.
        """
        state = self._users.get(user)
        if state is None or not state.devices:
            return Ended([], [])
        names = list(state.devices) if device is None else [device]
        closed: list[EndedDevice[C]] = []
        ended: list[tuple[str, str]] = []
        for name in names:
            entry = state.devices.pop(name, None)
            if entry is None:
                continue
            self._deadlines.discard((user, name))
            ended.append((user, name))
            if entry.conn is not None:
                closed.append(EndedDevice(user, name, entry.conn))
        return Ended(closed, self._offline_if_empty(user, state), ended)

    def expire(self, now: float) -> Ended[C]:
        """End every device whose deadline (last activity + ``offline_after``) is ``<= now``.

        Returns the still-attached connections of those devices (to close with 4000) and one
        offline change per user left without an alive device.
        """
        closed: list[EndedDevice[C]] = []
        touched: dict[str, _User[C]] = {}
        ended = self._deadlines.pop_due(now)
        for user, device in ended:
            state = self._users[user]
            entry = state.devices.pop(device)
            if entry.conn is not None:
                closed.append(EndedDevice(user, device, entry.conn))
            touched[user] = state
        changes: list[PresenceChange] = []
        for user, state in touched.items():
            changes.extend(self._offline_if_empty(user, state))
        return Ended(closed, changes, ended)

    def get(self, user: str) -> UserPresence:
        """The user's presence; a never-seen user is offline with ``last_active_at`` None."""
        state = self._users.get(user)
        if state is None:
            return UserPresence(user, "offline", None, 0)
        status: Status = "online" if state.devices else "offline"
        return UserPresence(user, status, state.last_active_at, len(state.devices))

    def device_names(self, user: str) -> list[str]:
        """The user's alive devices here (connected or in their grace window)."""
        state = self._users.get(user)
        return [] if state is None else list(state.devices)

    def forget(self, user: str) -> None:
        """Drop what is held about ``user`` (its ``last_active_at``) once it has no alive
        device (call ``logout`` first)."""
        state = self._users.get(user)
        if state is not None and not state.devices:
            del self._users[user]

    def alive_devices(self) -> Iterator[tuple[str, str, float, float]]:
        """Every alive (user, device, last activity, since when its latest connection
        opened): what this node holds, to report it again to the other nodes."""
        for user, state in self._users.items():
            for device, entry in state.devices.items():
                yield user, device, entry.last_active, entry.since

    def since(self, user: str, device: str) -> float | None:
        """When the latest connection of ``user``'s alive ``device`` opened (None: the
        device is not alive here)."""
        state = self._users.get(user)
        entry = None if state is None else state.devices.get(device)
        return None if entry is None else entry.since

    def is_online(self, user: str) -> bool:
        state = self._users.get(user)
        return state is not None and bool(state.devices)

    def _touch(self, state: _User[C], user: str, device: str, now: float) -> None:
        if state.last_active_at is None or now > state.last_active_at:
            state.last_active_at = now
        last = state.devices[device].last_active
        self._deadlines.set((user, device), last + self.offline_after)

    def _offline_if_empty(self, user: str, state: _User[C]) -> list[PresenceChange]:
        if state.devices:
            return []
        self._online -= 1
        return [PresenceChange(user, "offline", state.last_active_at)]
