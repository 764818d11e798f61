"""Snowflake-style 64-bit message ids: time-ordered, unique per server (sans-I/O).

Layout (most significant first), like Twitter's Snowflake and Discord's ids::

    1 bit  always 0, so an id is a positive signed 64-bit integer
    41 bits milliseconds since ``EPOCH_MS`` (2020-01-01T00:00:00Z; lasts until 2089)
    10 bits node id, 0..1023 (``--node-id``; distinct per node of one population)
    12 bits sequence within the millisecond (4096 ids per ms per node)

Ids are strictly increasing per generator even when the wall clock steps backwards (an NTP
correction, a VM migration) or more than 4096 are asked for in one millisecond: the
generator then keeps counting on its own logical millisecond, which runs ahead of the clock
until the clock catches up. Order therefore matches creation order, and matches wall time
whenever the clock only moves forward. Ids travel as decimal strings (JavaScript numbers lose
digits above 2**53).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

EPOCH_MS: Final = 1_577_836_800_000
"""2020-01-01T00:00:00Z in Unix milliseconds: the zero of an id's time field."""

NODE_BITS: Final = 10
SEQUENCE_BITS: Final = 12
TIME_BITS: Final = 41
MAX_NODE_ID: Final = (1 << NODE_BITS) - 1
MAX_SEQUENCE: Final = (1 << SEQUENCE_BITS) - 1
MAX_ID: Final = (1 << (TIME_BITS + NODE_BITS + SEQUENCE_BITS)) - 1
_TIME_SHIFT: Final = NODE_BITS + SEQUENCE_BITS

CLOCK_SKEW_S: Final = 0.05
"""Seconds by which another node's clock may run ahead of this one's (node clocks agree
through NTP, docs/cluster.md): an id issued anywhere before a moment is below
``min_id_at(moment + CLOCK_SKEW_S)``."""


class SnowflakeGenerator:
    """Issues strictly increasing ids for one node.

    ``next_id(now)`` takes the current time in Unix epoch seconds. Times before ``EPOCH_MS``
    (tests that start their clock at 0) count as the epoch itself, so ids stay valid and
    increasing. ``observe(message_id)`` raises the high-water mark, for a restart that must
    never issue an id at or below one it issued before.
    """

    def __init__(self, node_id: int = 0) -> None:
        if not 0 <= node_id <= MAX_NODE_ID:
            raise ValueError(f"node id must be in 0..{MAX_NODE_ID}, got {node_id}")
        self.node_id = node_id
        # Logical millisecond (since EPOCH_MS) and sequence of the last id issued. Starting
        # at (0, 0) marks id 0 as used: it is the "from the beginning" sync cursor.
        self._last_ms = 0
        self._sequence = 0
        self._last_id = 0
        self.cluster_clock: Callable[[], float] | None = None
        """Several nodes: the node's clock (epoch seconds). Ids other nodes issued are not
        all seen here, so ``mark`` bounds them by time."""

    def mark(self) -> int:
        """An id at or above every id issued so far, here and (``cluster_clock``) on any
        node: where a membership begins, or a forget ends (with one node, ``last_id``, and
        every later id is above it). With several nodes an id this node issues within
        ``CLOCK_SKEW_S`` after may fall at or below it, as another node's may: a send at
        the moment of a join is on either side of it. It is not taken as issued: ids never
        run ahead of the clock (what ``CLOCK_SKEW_S`` bounds)."""
        if self.cluster_clock is None:
            return self._last_id
        return max(self._last_id, min_id_at(self.cluster_clock() + CLOCK_SKEW_S) - 1)

    @property
    def last_id(self) -> int:
        """The highest id issued or observed so far (0 before any)."""
        return self._last_id

    def next_id(self, now: float) -> int:
        """A new id, greater than every id issued or observed before."""
        ms = max(int(now * 1000) - EPOCH_MS, 0)
        if ms > self._last_ms:
            self._last_ms = ms
            self._sequence = 0
        elif self._sequence < MAX_SEQUENCE:
            self._sequence += 1  # same millisecond, or the clock went back: keep counting
        else:
            self._last_ms += 1  # 4096 ids in one logical ms: borrow the next millisecond
            self._sequence = 0
        if self._last_ms >= 1 << TIME_BITS:
            raise OverflowError("the Snowflake time field is exhausted (year 2089)")
        message_id = (self._last_ms << _TIME_SHIFT) | (self.node_id << SEQUENCE_BITS)
        message_id |= self._sequence
        self._last_id = message_id
        return message_id

    def observe(self, message_id: int) -> None:
        """Never issue an id at or below ``message_id`` (restored state, another node's id)."""
        if not 0 <= message_id <= MAX_ID:
            raise ValueError(f"not a 64-bit message id: {message_id}")
        if message_id <= self._last_id:
            return
        self._last_id = message_id
        ms = message_id >> _TIME_SHIFT
        # Continue after it: within its millisecond if its sequence leaves room, else next.
        sequence = message_id & MAX_SEQUENCE
        node = (message_id >> SEQUENCE_BITS) & MAX_NODE_ID
        if node > self.node_id:
            # Our ids in that ms sort below it whatever the sequence: move to the next ms.
            self._last_ms, self._sequence = ms, MAX_SEQUENCE
        elif node < self.node_id:
            # Any of our ids in that ms sorts above it; start that ms afresh.
            self._last_ms, self._sequence = ms - 1, MAX_SEQUENCE
        else:
            self._last_ms, self._sequence = ms, sequence


def id_time(message_id: int) -> float:
    """The Unix time (seconds) encoded in ``message_id``'s time field."""
    return ((message_id >> _TIME_SHIFT) + EPOCH_MS) / 1000


def min_id_at(unix_seconds: float) -> int:
    """The smallest id any node can issue at ``unix_seconds`` (for time-based cursors)."""
    ms = max(int(unix_seconds * 1000) - EPOCH_MS, 0)
    return ms << _TIME_SHIFT
