"""This node's part in the chat horizon over the feed (shell; ``geopresence.core.chat_horizon``).

Every feed entry this node writes carries its watermark (``RedisJournal.watermark``); the
other nodes' entries tell theirs (``RedisFeed.on_watermark``), which feed the hub's
``Horizon``; with nothing to write for a while this node writes a ``Watermark`` entry alone
(``run``), often while chat goes on, rarely otherwise.

Messages reach a node on channels, not on the feed (``chat_writes``): each is published
before any later feed entry of its node is written. So a watermark heard is applied only
once this node's pub/sub connections have answered a round trip begun after it was read
(``barrier``): every message below it that a channel here carries has been received by then.
While no chat goes on and nothing waits for the horizon, the watermarks heard wait too (the
first delivery, ack or ``sync`` that waits applies them): a quiet cluster's nodes make no
round trips for them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
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

log = logging.getLogger("geopresence.redis")

LEFT: Final = -1
"""The watermark of a node's last entry as it stops cleanly."""


class Watermarks:
    """Connects the journal, the feed reader, the broker and the hub's chat. ``lease``:
    seconds after which a silent node is gone (its lease has lapsed); ``barrier``: returns
    once the pub/sub connections answered a round trip (``RedisBroker.subscribed``)."""

    def __init__(
        self,
        journal: RedisJournal,
        hub: Hub,
        clock: Callable[[], float],
        lease: float,
        barrier: Callable[[], Awaitable[None]],
    ) -> None:
        self._journal = journal
        self._chat = hub.chat
        self._barrier = barrier
        self._clock = clock
        self.chat_at = float("-inf")
        """``trio.current_time()`` of the last chat message another node sent here."""
        self.others_chat_at = float("-inf")
        """``trio.current_time()`` of the last feed entry of a node that chats."""
        self._heard: dict[int, int] = {}
        """node -> its latest watermark read, not applied yet (waits for ``barrier``)."""
        self._heard_some = trio.Event()
        self._wanted = trio.Event()
        """Set when something waits for the horizon (``wanted``)."""
        self._applying = trio.Lock()
        # A node silent this long is gone for the horizon: its lease lapsed, and it would
        # have written a watermark meanwhile (at least every QUIET_WATERMARK_INTERVAL).
        silence = max(lease, 3 * QUIET_WATERMARK_INTERVAL)
        self.horizon = hub.chat.horizon = Horizon(clock, silence=silence)
        self.horizon.on_wait = self.wanted
        self.horizon.on_gone = self._gone
        self.on_gone: Callable[[int, int], None] | None = None
        """Called with a node found gone and its last watermark (``Horizon.on_gone``)."""
        self._gone_at: dict[int, float] = {}
        """node -> ``trio.current_time()`` it was last found gone."""
        journal.watermark = lambda: min_id_at(clock())
        journal.feed.on_watermark = self.heard
        journal.feed.chatting = self.chatting

    def heard(self, node: int, watermark: int, chatting: bool = False) -> None:
        """Another node's feed entry carried ``watermark`` (``LEFT``: that node stopped),
        applied by ``apply`` after a pub/sub round trip; ``chatting``: that node chats, so
        this one writes its watermarks often too."""
        if chatting:
            self.others_chat_at = trio.current_time()
        if watermark != LEFT:
            self.horizon.alive(node)  # heard now: not silent while its watermark waits
        previous = self._heard.get(node)
        if watermark == LEFT or previous is None or previous == LEFT:
            self._heard[node] = watermark
        else:
            self._heard[node] = max(previous, watermark)
        self._heard_some.set()
        if chatting or watermark == LEFT or not self.horizon.knows(node):
            # Not deferred (``_needed``): a node new to the horizon is bounded by nothing
            # until its first watermark counts; one that left would count as dead once
            # silent; chat is coming.
            self.wanted()

    def _gone(self, node: int, mark: int) -> None:
        """``node`` fell silent: what was heard of it before is no new run's, and must
        not make it live again once applied."""
        self._heard.pop(node, None)
        self._gone_at[node] = trio.current_time()
        if self.on_gone is not None:
            self.on_gone(node, mark)

    def wanted(self) -> None:
        """Something waits for the horizon: the watermarks heard are applied now."""
        self._wanted.set()

    def _needed(self) -> bool:
        """Whether the watermarks heard must be applied as they come: chat goes on here or
        on another node, or something waits for the horizon (else only once ``wanted``)."""
        now = trio.current_time()
        return bool(self.chatting() or now - self.others_chat_at < CHAT_ACTIVE or self.horizon.held)

    async def apply(self) -> None:
        """Apply the watermarks heard, each batch once every message published before them
        on a channel this node listens to has been received; while they are not
        ``_needed``, once ``wanted``. Until cancelled."""
        while True:
            await self._heard_some.wait()
            if not self._needed():
                await self._wanted.wait()
            self._wanted = trio.Event()  # what waits from now on wants the next ones
            await self.apply_heard()

    async def apply_heard(self) -> None:
        """Apply the watermarks heard so far (after a pub/sub round trip), in order with
        ``apply``: a starting node calls it once it has read the feed up to its end."""
        async with self._applying:
            self._heard_some = trio.Event()
            heard, self._heard = self._heard, {}
            if not heard:
                return
            taken = trio.current_time()
            await self._barrier()
            for node, watermark in heard.items():
                if self._gone_at.get(node, -math.inf) >= taken:
                    continue  # found gone meanwhile: heard before it fell silent
                if watermark == LEFT:
                    self.horizon.left(node)
                else:
                    self.horizon.heard(node, watermark)
            self._chat.release()

    def hurry(self) -> None:
        """Something waits for the horizon (a ``sync``): this node counts as chatting, so
        its entries ask the others to write their watermarks often, and writes one now."""
        now = trio.current_time()
        self.chat_at = now
        self.wanted()
        if now - self._journal.queued_at >= WATERMARK_INTERVAL:
            self._journal.replicate(Watermark())

    def chatting(self) -> bool:
        """Whether this node sent or received chat in the last ``CHAT_ACTIVE`` seconds (its
        own chat only: counting the others' would keep every node chatting for ever)."""
        now = trio.current_time()
        return now - max(self.chat_at, self._journal.chat_queued_at) < CHAT_ACTIVE

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

    async def _mark(self) -> None:
        """The journal's head write hangs (a slow Redis, a large forget or group deletion):
        none of its entries, watermarks included, reaches the feed meanwhile, and the other
        nodes would count this live node gone once silent for ``Horizon.silence`` and show
        later ids before the messages it still commits. Its watermark goes on the feed
        ahead of the queue instead: the lowest id it has not written and published yet."""
        mark = min_id_at(self._clock())  # not the journal's: LEFT once leaving
        lowest = self._chat.lowest_pending()
        if lowest is not None:
            mark = min(mark, lowest)
        with trio.move_on_after(1.0):
            try:
                await self._journal.mark(mark)
            except Exception as exc:  # Redis unreachable: its writes retry, and so does this
                log.debug("writing a watermark ahead of the journal failed: %s", exc)

    async def run(self) -> None:
        """A node with nothing for the feed for ``WATERMARK_INTERVAL`` (while chat goes on
        here or on another node; ``QUIET_WATERMARK_INTERVAL`` otherwise) writes its
        watermark alone, so the others' chat never waits on it for longer; and what waited
        on this node's own clock is released as it advances. Until cancelled."""
        journal = self._journal
        while True:
            await trio.sleep(WATERMARK_INTERVAL)
            now = trio.current_time()
            # Its own chat only, in the entry: the others' would keep every node chatting.
            active = self.chatting() or now - self.others_chat_at < CHAT_ACTIVE
            interval = WATERMARK_INTERVAL if active else QUIET_WATERMARK_INTERVAL
            if now - journal.queued_at >= interval:
                journal.replicate(Watermark())
            busy = journal.writing_since
            if busy is not None and now - busy >= interval:
                await self._mark()
            # Every tick, not only when something waits: a node silent for too long is
            # found gone now (``Horizon.on_gone``), not once it is back.
            self.horizon.committed_below(self._chat.lowest_pending())
            self._chat.release()
