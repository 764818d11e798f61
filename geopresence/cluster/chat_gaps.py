"""Chat messages a node may have missed while a pub/sub connection was cut (cluster).

Messages reach a node on channels (``chat_writes``), and pub/sub delivers at most once: a
connection to Redis lost and opened again (a restart, a failover, a Cluster moving slots)
loses what was published meanwhile (``Subscriber.on_gap`` names the channels). Without a
catch-up, a device would get the later messages live and skip the lost ones at its next
``sync`` (its cursor passed them). So, for the chat channels in a gap (``inbox:U``,
``group:G`` with connections here):

1. the chat horizon is held where it stands (``Horizon.hold``): nothing above it is shown,
   since what was lost can only be above it (below it, every message was received: the
   watermarks wait for a round trip on every pub/sub connection, ``Watermarks``);
2. once the subscriptions are in place again, and every message published before then is
   committed (the horizon, unheld, passed that moment), their conversations are read from
   Redis from the held point on, and each message is heard as if it had arrived
   (``Chat.heard``: those already heard are not shown twice);
3. the hold ends: what waited is shown in id order.

A member added to a group while connected here may have missed what was published on the
group's channel before this node subscribed to it: the group is read back from the join.
A node that died can leave the same kind of hole: messages it stored in Redis but did not
get to publish (it died between the two). When the horizon stops waiting for a silent node
(``Horizon.on_gone``), every chat channel with a connection here is caught up the same way,
from that node's last watermark.

Chat on this node waits meanwhile (a round trip or two; longer while Redis is down).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import trio

from geopresence.cluster.chat_reads import read_range
from geopresence.cluster.redis_keys import Keys, strings
from geopresence.cluster.redis_load import pipelined
from geopresence.core.broker import group_of_channel, inbox_channel
from geopresence.core.hub import Hub
from geopresence.model.snowflake import CLOCK_SKEW_S, min_id_at

if TYPE_CHECKING:
    from geopresence.cluster.redis_broker import RedisBroker

log = logging.getLogger("geopresence.redis")

_INBOX = inbox_channel("")


class ChatGaps:
    """Catches up on the chat messages lost in pub/sub gaps. ``clock``: epoch seconds;
    ``hurry``: ask the other nodes for their watermarks soon (``Watermarks.hurry``)."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        hub: Hub,
        broker: RedisBroker,
        clock: Callable[[], float],
        hurry: Callable[[], None],
    ) -> None:
        self._client = client
        self._keys = keys
        self._hub = hub
        self._broker = broker
        self._clock = clock
        self._hurry = hurry
        self._users: set[str] = set()
        """Users whose 1:1 conversations to read (their inbox channel had a gap)."""
        self._groups: set[str] = set()
        self._since = 0
        """Every message below this id was received: where the reads start."""
        self._tokens: list[int] = []
        """The horizon's holds while a catch-up is due."""
        self._queued = trio.Event()

    @property
    def catching_up(self) -> bool:
        return bool(self._tokens)

    def gap(self, channels: list[str]) -> None:
        """``channels`` may have missed events: hold the horizon and catch up (``run``)."""
        chat = self._hub.chat
        if chat.horizon is None:
            return
        below = chat.stable_below()  # the lowest hold, if one stands: shown below it
        assert below is not None
        self._catch_up_from(below, *self._listened(channels))

    def unconfirmed(self, user: str, since: int) -> None:
        """A session of ``user`` opened before Redis confirmed its chat channels (a slow
        Redis, the hello timeout): what they carried from ``since`` (an id issued before it
        asked for them) is read back once they are."""
        self._catch_up_from(since, {user}, set(self._hub.store.groups_of(user)))

    def node_gone(self, node: int, mark: int) -> None:
        """The horizon stops waiting for ``node``, silent since its watermark ``mark``: what
        it stored without publishing is read back for every chat channel here."""
        hub = self._hub
        users = hub.sessions.users()  # each connection listens to its user's inbox and groups
        groups = {group for user in users for group in hub.store.groups_of(user)}
        self._catch_up_from(mark, set(users), groups)

    def joined(self, group: str, users: Iterable[str], mark: int) -> None:
        """``users`` joined ``group`` after id ``mark``: if one has a session here, the
        group's messages after ``mark`` are read back (this node may have subscribed to
        the group's channel only now), before anything later is shown."""
        if any(self._hub.sessions.has_connections(user) for user in users):
            self._catch_up_from(mark, set(), {group})

    def _listened(self, channels: list[str]) -> tuple[set[str], set[str]]:
        """The users and groups of the chat ``channels`` a connection here listens to."""
        users, groups = set(), set()
        broker = self._broker
        for channel in channels:
            if not any(conn for conn in broker.subscribers(channel)):  # NODE is 0
                continue
            if channel.startswith(_INBOX):
                users.add(channel[len(_INBOX) :])
            elif (group := group_of_channel(channel)) is not None:
                groups.add(group)
        return users, groups

    def _catch_up_from(self, since: int, users: set[str], groups: set[str]) -> None:
        horizon = self._hub.chat.horizon
        if (not users and not groups) or horizon is None:
            return
        if not self._tokens or since < self._since:
            # Holds take their minimum; they all end together (never released here: this
            # may run inside the horizon's own computation, ``node_gone``).
            self._since = since
            self._tokens.append(horizon.hold(since))
        self._users |= users
        self._groups |= groups
        self._queued.set()

    async def run(self) -> None:
        """Catch up after each gap, until cancelled."""
        while True:
            await self._queued.wait()
            self._queued = trio.Event()
            # Taken: a gap meanwhile (even of the same channels) queues another round.
            users, groups, since = self._users, self._groups, self._since
            self._users, self._groups = set(), set()
            try:
                await self._catch_up(users, groups, since)
            except Exception as exc:  # Redis unreachable: the hold stays, tried again
                log.warning("could not read the chat messages a gap may have lost: %s", exc)
                self._users |= users
                self._groups |= groups
                self._queued.set()
                await trio.sleep(1.0)
                continue
            if self._since < since:  # all again, from the lower point (queued)
                self._users |= users
                self._groups |= groups
            if not self._queued.is_set() and self._tokens:
                tokens, self._tokens = self._tokens, []
                chat = self._hub.chat
                assert chat.horizon is not None
                for token in tokens:
                    chat.horizon.unhold(token, chat.lowest_pending())

    async def _catch_up(self, users: set[str], groups: set[str], since: int) -> None:
        await self._broker.subscribed()  # what is published from now on arrives
        until = min_id_at(self._clock() + CLOCK_SKEW_S)
        chat = self._hub.chat
        horizon = chat.horizon
        assert horizon is not None
        while horizon.committed_below(chat.lowest_pending()) <= until:
            self._hurry()
            await trio.sleep(0.05)
        keys = self._keys
        names = sorted(users)
        read = await pipelined(
            self._client, names, lambda pipe, user: pipe.smembers(keys.of("chats_of", user))
        )
        conversations = {c for found in read for c in strings(found)}
        conversations |= {f"g:{group}" for group in groups}
        found = await read_range(self._client, keys, sorted(conversations), since - 1, until)
        for message in found:
            chat.heard(message)
