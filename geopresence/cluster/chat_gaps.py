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

Chat on this node waits meanwhile (a round trip or two; longer while Redis is down).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from geopresence.cluster.chat_reads import read_range
from geopresence.cluster.redis_keys import Keys, strings
from geopresence.cluster.redis_load import pipelined
from geopresence.core.broker import group_of_channel, inbox_channel
from geopresence.core.chat_horizon import CLOCK_SKEW_S
from geopresence.core.hub import Hub
from geopresence.model.snowflake import min_id_at

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
        self._token: int | None = None
        """The horizon's hold while a catch-up is due."""
        self._queued = trio.Event()

    @property
    def catching_up(self) -> bool:
        return self._token is not None

    def gap(self, channels: list[str]) -> None:
        """``channels`` may have missed events: hold the horizon and catch up (``run``)."""
        users, groups = set(), set()
        broker = self._broker
        for channel in channels:
            if not any(conn for conn in broker.subscribers(channel)):  # NODE is 0
                continue
            if channel.startswith(_INBOX):
                users.add(channel[len(_INBOX) :])
            elif (group := group_of_channel(channel)) is not None:
                groups.add(group)
        if not users and not groups:
            return
        chat = self._hub.chat
        horizon = chat.horizon
        if horizon is None:
            return
        if self._token is None:
            below = chat.stable_below()
            assert below is not None
            self._since = below
            self._token = horizon.hold(below)
        self._users |= users
        self._groups |= groups
        self._queued.set()

    async def run(self) -> None:
        """Catch up after each gap, until cancelled."""
        while True:
            await self._queued.wait()
            self._queued = trio.Event()
            users, groups = self._users, self._groups
            try:
                await self._catch_up(users, groups)
            except Exception as exc:  # Redis unreachable: the hold stays, tried again
                log.warning("could not read the chat messages a gap may have lost: %s", exc)
                self._queued.set()
                await trio.sleep(1.0)
                continue
            self._users, self._groups = self._users - users, self._groups - groups
            if not self._queued.is_set() and self._token is not None:
                token, self._token = self._token, None
                chat = self._hub.chat
                assert chat.horizon is not None
                chat.horizon.unhold(token, chat.lowest_pending())

    async def _catch_up(self, users: set[str], groups: set[str]) -> None:
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
        found = await read_range(self._client, keys, sorted(conversations), self._since - 1, until)
        for message in found:
            chat.heard(message)
