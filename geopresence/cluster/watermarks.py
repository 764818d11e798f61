"""This node's part in the chat horizon over the feed (shell; ``geopresence.core.chat_horizon``).

Every feed entry this node writes carries its watermark (``RedisJournal.watermark``); the
other nodes' entries tell theirs (``RedisFeed.on_watermark``), which feed the hub's
``Horizon``; with nothing to write for a while this node writes a ``Watermark`` entry alone
(``run``), often while chat goes on, rarely otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import trio

from geopresence.cluster.redis_state import RedisJournal
from geopresence.core.chat_horizon import (
    CHAT_ACTIVE,
    QUIET_WATERMARK_INTERVAL,
    WATERMARK_INTERVAL,
    Horizon,
)
from geopresence.core.hub import Hub
from geopresence.core.replication import Watermark
from geopresence.model.snowflake import min_id_at

LEFT: Final = -1
"""The watermark of a node's last entry as it stops cleanly."""


class Watermarks:
    """Connects the journal, the feed reader and the hub's chat. ``lease``: seconds after
    which a silent node is gone (its lease has lapsed)."""

    def __init__(
        self, journal: RedisJournal, hub: Hub, clock: Callable[[], float], lease: float
    ) -> None:
        self._journal = journal
        self._chat = hub.chat
        self.chat_at = float("-inf")
        """``trio.current_time()`` of the last chat message read off the feed."""
        # A node silent this long is gone for the horizon: its lease lapsed, and it would
        # have written a watermark meanwhile (at least every QUIET_WATERMARK_INTERVAL).
        silence = max(lease, 3 * QUIET_WATERMARK_INTERVAL)
        self.horizon = hub.chat.horizon = Horizon(clock, silence=silence)
        journal.watermark = lambda: min_id_at(clock())
        journal.feed.on_watermark = self.heard

    def heard(self, node: int, watermark: int) -> None:
        """Another node's feed entry carried ``watermark`` (``LEFT``: that node stopped)."""
        if watermark == LEFT:
            self.horizon.left(node)
        else:
            self.horizon.heard(node, watermark)
        self._chat.release()

    async def leave(self) -> None:
        """This node stops (its sessions are closed, its journal flushed): a last entry tells
        the others not to wait for it, instead of holding their chat until it counts as
        silent. A restart under the same id writes watermarks again."""
        self._journal.watermark = lambda: LEFT
        self._journal.replicate(Watermark())
        await self._journal.flush()

    async def start(self) -> None:
        """Put this node's first watermark on the feed before it serves: every node reads it
        before any message this one could commit (the feed is one ordered stream)."""
        self._journal.replicate(Watermark())
        await self._journal.flush()

    async def run(self) -> None:
        """A node with nothing for the feed for ``WATERMARK_INTERVAL`` (while chat goes on;
        ``QUIET_WATERMARK_INTERVAL`` otherwise) writes its watermark alone, so the others'
        chat never waits on it for longer; and what waited on this node's own clock is
        released as it advances. Until cancelled."""
        journal = self._journal
        while True:
            await trio.sleep(WATERMARK_INTERVAL)
            now = trio.current_time()
            chatting = now - max(self.chat_at, journal.chat_queued_at) < CHAT_ACTIVE
            interval = WATERMARK_INTERVAL if chatting else QUIET_WATERMARK_INTERVAL
            if now - journal.queued_at >= interval:
                journal.replicate(Watermark())
            self._chat.release()
