"""The feed (multi-node mode): a Redis stream of what every node must hear, in one order.

``RedisJournal`` (``geopresence.cluster.redis_state``) appends forgets and its node's chat
watermarks, in the write's pipeline; every node reads the others' entries and applies them
(``Arrivals.on_feed``). Other changes reach only the nodes that hold what they change, on
channels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

import orjson
import trio

from geopresence.cluster.redis_keys import Keys, string
from geopresence.core.broker import SeenOnce
from geopresence.core.replication import FeedOp, feed_from_json, feed_to_json

log = logging.getLogger("geopresence.redis")

SEEN_ENTRIES: Final = 100_000
"""(node, uid) of recent feed entries remembered, to apply each change once."""
GAP_CHECK_INTERVAL: Final = 10.0
"""Seconds between checks that the feed was not trimmed past what this node read."""
CATCH_UP_BATCH: Final = 1000
"""Entries per read while a starting node reads the feed up to its end."""
FEED_MAXLEN: Final = 1_000_000
"""Feed entries kept (approximately): a node cut off from Redis for longer than it takes
the cluster to make this many changes must be restarted to catch up (it says so)."""


class RedisFeed:
    """The feed: a Redis stream (``gp:feed``) of every change, in one order for all nodes.

    A stream rather than pub/sub: a node that loses its connection reads on from the last
    entry it applied, and a starting node reads from the entry before it loaded the state,
    so no change is ever missed (pub/sub would drop what was published meanwhile).
    """

    def __init__(self, client: Any, keys: Keys, node_id: int) -> None:
        self._client = client
        self.key = keys.feed
        self.node_id = node_id
        self.applied = 0
        """Other nodes' ops applied here (for metrics)."""
        self.lost = False
        """True once this node fell so far behind that entries were trimmed unread."""
        self._seen = SeenOnce(SEEN_ENTRIES)
        self.on_watermark: Callable[[int, int, bool], None] | None = None
        """Called with (node, watermark, chatting) after each other node's entry that
        carries a watermark."""
        self.chatting: Callable[[], bool] = lambda: False
        """Whether this node sent or received chat lately: said on each entry it writes
        (the others then write their watermarks often: ``Watermarks.run``)."""

    def _fields(self, op: FeedOp, uid: int, watermark: int | None) -> dict[str, bytes]:
        fields = {
            "n": str(self.node_id).encode(),
            "u": str(uid).encode(),
            "op": orjson.dumps(feed_to_json(op)),
        }
        if watermark is not None:
            fields["w"] = str(watermark).encode()
            if self.chatting():
                fields["c"] = b"1"
        return fields

    def append_to(self, pipe: Any, op: FeedOp, uid: int, watermark: int | None = None) -> None:
        """Append ``op`` in ``pipe``; ``uid`` (unique per node) lets readers skip the copy a
        retried pipeline appends again; ``watermark``: the smallest message id this node
        could still commit after this entry (``geopresence.core.chat_horizon``)."""
        from coredis import PureToken

        pipe.xadd(
            self.key,
            self._fields(op, uid, watermark),
            trim_strategy=PureToken.MAXLEN,
            trim_operator=PureToken.APPROXIMATELY,
            threshold=FEED_MAXLEN,
        )

    async def append(self, op: FeedOp, uid: int, watermark: int | None = None) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            self.append_to(pipe, op, uid, watermark)

    async def last_id(self) -> str:
        """The id of the newest entry ("0-0" for an empty feed)."""
        entries = await self._client.xrevrange(self.key, count=1)
        return string(entries[0].identifier) if entries else "0-0"

    async def run(
        self,
        apply: Callable[[FeedOp], None],
        after: str,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Hand every other node's op after entry ``after`` to ``apply``, in feed order,
        until cancelled; across connection losses it resumes where it stopped. Started once
        it has read up to the feed's end as it was (a starting node then serves knowing
        every live node's latest chat watermark, not only those read so far)."""
        last = after
        try:
            last = await self._catch_up(apply, after)
        except Exception as exc:  # read on below, retrying
            log.warning("reading the feed up to its end failed (%s); reading on", exc)
        read_one = last != after  # ``last`` is an entry this node read (not a start position)
        task_status.started()
        failing = False
        checked = trio.current_time()
        while True:
            try:
                reply = await self._client.xread({self.key: last}, count=1000, block=1000)
                if read_one and (failing or trio.current_time() - checked > GAP_CHECK_INTERVAL):
                    checked = trio.current_time()
                    await self._check_gap(last)
            except Exception as exc:
                if not failing:
                    log.error("reading the feed failed (%s); retrying from %s", exc, last)
                failing = True
                await trio.sleep(1.0)
                continue
            if failing:
                log.info("reading the feed works again (from %s)", last)
                failing = False
            for entries in (reply or {}).values():
                for entry in entries:
                    last = string(entry.identifier)
                    read_one = True
                    self._apply_entry(last, entry.field_values, apply)

    async def _catch_up(self, apply: Callable[[FeedOp], None], after: str) -> str:
        """Apply every entry after ``after`` up to the feed's end now; the last id read."""
        last = after
        while True:
            reply = await self._client.xread({self.key: last}, count=CATCH_UP_BATCH)
            entries = [entry for found in (reply or {}).values() for entry in found]
            for entry in entries:
                last = string(entry.identifier)
                self._apply_entry(last, entry.field_values, apply)
            if len(entries) < CATCH_UP_BATCH:
                return last

    def _apply_entry(self, entry_id: str, values: Any, apply: Callable[[FeedOp], None]) -> None:
        """Apply one entry unless it is this node's own; a malformed one, or one the hub
        cannot apply, is logged and skipped (the node goes on: one bad entry must not stop
        every later change from reaching it)."""
        try:
            fields = {string(k): v for k, v in values.items()}
            node = int(fields["n"])
            if node == self.node_id:
                return  # its own change: applied when it was made
            if not self._seen.first_time((node, int(fields.get("u", b"0")))):
                return  # a copy appended by a retried write
            op = feed_from_json(orjson.loads(fields["op"]))
            watermark = int(fields["w"]) if "w" in fields else None
            chatting = "c" in fields
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring a malformed feed entry %s: %s", entry_id, exc)
            return
        self.applied += 1
        try:
            apply(op)
        except Exception:
            log.exception("applying feed entry %s (%s) failed", entry_id, type(op).__name__)
        if watermark is not None and self.on_watermark is not None:
            try:
                self.on_watermark(node, watermark, chatting)
            except Exception:
                log.exception("the watermark of feed entry %s failed", entry_id)

    async def _check_gap(self, last: str) -> None:
        """If the entry this node read last is gone from the feed and older entries were
        trimmed past it, entries it never read may have gone too (it was cut off, or lagged,
        for about ``FEED_MAXLEN`` changes): say so once; it may have missed a forget until
        it restarts (which scrubs its history of every forgotten user)."""
        if self.lost or await self._client.xrange(self.key, last, last, count=1):
            return
        oldest = await self._client.xrange(self.key, "-", "+", count=1)
        if oldest and _id_after(string(oldest[0].identifier), last):
            self.lost = True
            log.error(
                "the feed was trimmed past entry %s before this node read on: it may have "
                "missed a forget; restart it to reload the state",
                last,
            )


def earlier_id(entry_id: str, seconds: float) -> str:
    """A stream position ``seconds`` before ``entry_id`` ("0-0" at the earliest)."""
    ms = int(entry_id.partition("-")[0]) - int(seconds * 1000)
    return f"{ms}-0" if ms > 0 else "0-0"


def _id_after(a: str, b: str) -> bool:
    """True if stream id ``a`` comes after ``b``."""
    a_ms, _, a_seq = a.partition("-")
    b_ms, _, b_seq = b.partition("-")
    return (int(a_ms), int(a_seq or 0)) > (int(b_ms), int(b_seq or 0))
