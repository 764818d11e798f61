"""Whose presence a node keeps (cluster): the users its connections hear about.

A node keeps a user's cluster-wide status (``Statuses``) while it listens to a channel that
carries the user's transitions: the user's own channel (a session here is a friend of the
user, or the user itself) or the channel of one of the user's groups small enough to carry
presence (``presence_fanout_limit``). The node that decides a transition
(``redis_presence``) publishes it there as a ``PresenceSet``; a node applies one only if it
is newer than the status it keeps (versions), so transitions arriving out of order or twice
change nothing.

As a session opens (``covering``, before its ``welcome`` and ``friends_presence``) the node
listens to the channels of the user's friends and small groups (and to its chat channels),
waits until Redis has the subscriptions, and only then reads the statuses it does not keep
yet: a transition decided meanwhile arrives on a channel, or is in what is read. A status no
channel here carries any more is dropped (``released``); an answer about anyone else reads
Redis first (``read``, laid over the kept statuses with ``Statuses.overlay``). Pub/sub is at
most once: when a connection to Redis was lost, or a Cluster moved channels, the statuses
those channels carry are read again (``resync``). A group's change (members, size, deletion)
changes which of its members its channel carries: those no longer carried are dropped, the
new ones read (``changed``). The settings of the users whose own channels are listened to
are read and dropped alongside (``KeptSettings``).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Collection, Iterable
from typing import TYPE_CHECKING, Any

import trio

from geopresence.cluster.kept_settings import KeptSettings
from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.redis_load import read_kept, read_statuses
from geopresence.core.broker import (
    group_channel,
    group_of_channel,
    inbox_channel,
    user_channel,
    user_of_channel,
)
from geopresence.core.replication import FeedOp, PresenceSet
from geopresence.core.statuses import Held
from geopresence.model.records import GroupDeleted, GroupSet, MemberAdded, MemberRemoved

if TYPE_CHECKING:
    from geopresence.cluster.redis_broker import RedisBroker
    from geopresence.core.hub import Hub

log = logging.getLogger("geopresence.redis")

NEVER_ONLINE: Held = ("offline", None, 0)
"""What a user without a presence hash in Redis is kept as (any transition is newer)."""

COVERING_ROUNDS = 5
"""Passes of ``covering`` at most: a friendship or group made during one adds a pass."""


class Covered:
    """The statuses this node keeps, read and dropped as its channels come and go."""

    def __init__(
        self, client: Any, keys: Keys, broker: RedisBroker, hub: Hub, settings: KeptSettings
    ) -> None:
        self.settings = settings
        self._client = client
        self._keys = keys
        self._broker = broker
        self._hub = hub
        self._resync_users: set[str] = set()
        self._regroup: set[str] = set()
        self._missing: set[str] = set()
        """Users a group's channel carries now whose statuses could not be read yet."""
        self._announce_later: set[str] = set()
        """Users a session opened without (Redis failed as it opened): read, then told."""
        self._settings_later: set[str] = set()
        """Users whose settings a session opened without (Redis failed as it opened)."""
        self._resync_queued = trio.Event()
        self._confirming: Counter[str] = Counter()
        """Channels a ``covering`` holds while it waits for Redis to confirm them: listened
        to here, not yet in Redis (another ``covering`` of them must wait too)."""
        self._group_carried: dict[str, set[str]] = {}
        """Per small group whose channel this node listens to: the members whose statuses
        it was taken to carry (a member removed since is dropped through it)."""

    # ---------------------------------------------------------------- which channels

    def channels_of(self, user: str) -> list[str]:
        """The channels a session of ``user`` listens to: its friends' (transitions), its
        inbox and its groups' (chat; a small group's carries transitions too). Its chat
        channels are among them so that they are in place before its ``welcome``: a
        message sent after the client saw it reaches it live."""
        store = self._hub.store
        channels = [user_channel(friend) for friend in store.friends_of(user)]
        channels.append(inbox_channel(user))
        channels.extend(group_channel(g) for g in store.groups_of(user))
        return channels

    def carried_by(self, channels: Iterable[str]) -> set[str]:
        """The users whose transitions ``channels`` carry."""
        users: set[str] = set()
        small = self._hub.lifecycle.carries_presence
        for channel in channels:
            user, group = user_of_channel(channel), group_of_channel(channel)
            if user is not None:
                users.add(user)
            elif group is not None and small(group):
                users.update(self._hub.store.group_members(group) or ())
        return users

    def covers(self, user: str) -> bool:
        """True if a channel this node listens to carries ``user``'s transitions."""
        listening = self._broker.subscribers
        if listening(user_channel(user)):
            return True
        small = self._hub.lifecycle.carries_presence
        groups = self._hub.store.groups_of(user)
        return any(listening(group_channel(g)) and small(g) for g in groups)

    # ---------------------------------------------------------------- keeping statuses

    @contextlib.asynccontextmanager
    async def covering(self, user: str) -> AsyncIterator[None]:
        """For the block: this node listens to the channels of ``user``'s friends and small
        groups, and keeps the statuses they carry and the friends' settings (read from Redis
        once the subscriptions are in place). Open the session inside the block: its own
        subscriptions keep the channels after it. Raises if Redis does not answer (the
        channels are let go)."""
        broker = self._broker
        statuses = self._hub.statuses
        held: list[str] = []
        covered = False
        try:
            for _ in range(COVERING_ROUNDS):
                # Again after each read: a friendship or group made meanwhile adds channels.
                # The last pass finds none new, and the session opens with no await after it.
                wanted = set(held)
                channels = [c for c in self.channels_of(user) if c not in wanted]
                if not channels:
                    break
                confirming = self._confirming
                listened = all(broker.subscribers(c) and c not in confirming for c in channels)
                for channel in channels:
                    broker.hold(channel)
                    held.append(channel)
                carried = self.carried_by(channels)
                kept = all(statuses.holds(u) for u in carried)
                if listened and kept and not self.settings.missing(carried):
                    continue  # kept current already: nothing to wait for or read
                confirming.update(channels)
                try:
                    await broker.subscribed()
                finally:
                    confirming -= Counter(channels)  # (keeps positive counts only)
                await self.read_missing(carried)
            for channel in held:
                self._note_group(channel)
            covered = True
            yield
        finally:
            if not covered:  # Redis failed or was too slow: the session opens without them
                later = {u for u in self.carried_by(held) if not statuses.holds(u)}
                self._announce_later |= later  # once read, told like transitions
                self._settings_later |= self.carried_by(held)
                self._resync_queued.set()
            for channel in held:
                broker.release(channel)

    async def read_missing(self, users: Collection[str]) -> None:
        """Read and keep the statuses and settings of those of ``users`` not kept here yet
        (their channels are listened to already: the caller waited for ``subscribed``), in
        one round trip. Nothing is told: no connection here was shown what this node did not
        keep."""
        statuses = self._hub.statuses
        missing = sorted(u for u in users if not statuses.holds(u) and self.covers(u))
        settings = self.settings.missing(users)
        if not (missing or settings):
            return
        with self.settings.reading(settings):
            read, settings_read = await read_kept(self._client, self._keys, missing, settings)
            self.settings.keep(settings_read)
        for user in missing:
            if self.covers(user):  # not let go meanwhile (nobody would keep it current)
                # Never online: offline at version 0, so that it is not read again.
                status, last_active_at, version = read.get(user, NEVER_ONLINE)
                statuses.set_status(user, status, last_active_at, version)

    def _apply(self, read: dict[str, Held]) -> None:
        """Keep what was read again for the users still covered; a newer status than kept
        is told like a transition, to the connections here that missed it."""
        hub = self._hub
        for user, (status, last_active_at, version) in read.items():
            if self.covers(user):
                hub.announce_presence(PresenceSet(user, status, last_active_at, version))

    def _note_group(self, channel: str) -> None:
        group = group_of_channel(channel)
        carried = self.carried_by([channel]) if group is not None else set()
        if group is not None and carried:  # a big group's channel carries no transitions
            # Merged: a member removed whose regroup is still queued must stay to be dropped.
            self._group_carried[group] = self._group_carried.get(group, set()) | carried

    def announced(self, transition: PresenceSet) -> None:
        """A transition was announced here (decided here, or heard on a channel): a status
        no channel here carries is not kept (this node decided it for a user it does not
        cover)."""
        if not self.covers(transition.user):
            self._hub.statuses.drop(transition.user)

    def released(self, channel: str) -> None:
        """This node no longer listens to ``channel``: drop the statuses it alone carried,
        and the settings of the user whose channel it is."""
        user = user_of_channel(channel)
        if user is not None:
            self.settings.released(user)
        carried = self.carried_by([channel])
        group = group_of_channel(channel)
        if group is not None:
            carried |= self._group_carried.pop(group, set())
        self._drop_uncovered(carried)

    def _drop_uncovered(self, users: Iterable[str]) -> None:
        statuses = self._hub.statuses
        for user in users:
            if statuses.holds(user) and not self.covers(user):
                statuses.drop(user)

    def changed(self, op: FeedOp) -> None:
        """A change made here or on another node: one of a group's (members, size, deletion)
        changes which members its channel carries (``run``)."""
        if isinstance(op, GroupSet | GroupDeleted | MemberAdded | MemberRemoved):
            self.regroup(op.group)

    def regroup(self, group: str) -> None:
        """``group``'s channel may carry other members' transitions now (``run``)."""
        self._regroup.add(group)
        self._resync_queued.set()

    def _regrouped(self, groups: set[str]) -> set[str]:
        """Drop the statuses the groups' channels no longer carry; returns the members they
        carry now, to read."""
        wanted: set[str] = set()
        for group in groups:
            channel = group_channel(group)
            before = self._group_carried.pop(group, set())
            now = self.carried_by([channel]) if self._broker.subscribers(channel) else set()
            if now:
                self._group_carried[group] = now
            self._drop_uncovered(before - now)
            wanted |= now - before
        return wanted

    # ---------------------------------------------------------------- answers and gaps

    async def read(self, users: Collection[str]) -> dict[str, Held]:
        """The statuses of ``users`` as Redis has them now, for one answer (``overlay``)."""
        return await read_statuses(self._client, self._keys, sorted(users))

    def resync(self, channels: Iterable[str]) -> None:
        """``channels`` may have missed transitions (their Redis connection was lost, or a
        Cluster moved them): read the statuses they carry again (``run``)."""
        self._resync_users.update(self.carried_by(channels))
        self._resync_queued.set()

    async def run(self) -> None:
        """Read again what ``resync`` and ``regroup`` asked for, once the subscriptions
        are in place."""
        while True:
            await self._resync_queued.wait()
            self._resync_queued = trio.Event()
            await self._broker.subscribed()
            users, self._resync_users = self._resync_users, set()
            groups, self._regroup = self._regroup, set()
            missing, self._missing = self._missing | self._regrouped(groups), set()
            statuses = self._hub.statuses
            wanted = sorted({u for u in users if statuses.holds(u)} | self._announce_later)
            self._announce_later = set()
            later, self._settings_later = self._settings_later, set()
            try:
                if missing:
                    await self.read_missing(missing)
                if wanted:
                    self._apply(await read_statuses(self._client, self._keys, wanted))
                await self.settings.read_missing(later)
                await self.settings.reread(users)
            except Exception as exc:  # Redis unreachable: try again
                log.warning("could not read statuses or settings (%s); retrying", exc)
                self._announce_later.update(wanted)
                self._missing |= missing
                self._settings_later |= later
                self._resync_users |= users
                self._resync_queued.set()
                await trio.sleep(1.0)
