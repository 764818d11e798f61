"""Chat messages on their way to disk (sans-I/O): in the journal, not yet durable.

Nobody sees a message, nor is told it was sent, before it is durable (``Chat``); until then
it waits here with the acks it owes, in journal (= id) order, and can be found by its
sender's ``client_msg_id``: a resend meanwhile is acked with it, not made a second message.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import attrs

from geopresence.core.broker import ConnId
from geopresence.core.replies import ReplyTo
from geopresence.model.chat_message import ChatMessage
from geopresence.wire.errors import RequestId


@attrs.define(slots=True, eq=False)
class Pending:
    """A message in the journal, not yet durable: acks wait here (a resend adds one), each
    for its place among its connection's replies (``Replies``), or for a connection when
    the message commits while its ``send`` is handled."""

    seq: int
    message: ChatMessage
    sender_conn: ConnId
    acks: list[tuple[ReplyTo, RequestId]]
    stored_as: ChatMessage | None = None
    """Set when another node had already stored this ``client_msg_id`` (``stored_elsewhere``)."""
    reused: bool = False
    """Set when its sender had used this ``client_msg_id`` in another conversation."""
    group_deleted: bool = False
    """Set when its group was deleted after it was journaled: acked, never stored (a
    replay of the journal drops it with the group, even if a group of that name is
    created again before it is durable)."""


class PendingMessages:
    """The pending messages in journal order, and by (sender, ``client_msg_id``)."""

    def __init__(self) -> None:
        self._queue: deque[Pending] = deque()
        self._by_client_id: dict[tuple[str, str], Pending] = {}

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Pending]:
        """In journal order."""
        return iter(self._queue)

    def add(self, pending: Pending) -> None:
        """``pending`` was appended to the journal: the last in journal order."""
        self._queue.append(pending)
        message = pending.message
        if message.client_msg_id is not None:
            self._by_client_id[(message.sender, message.client_msg_id)] = pending

    def of_client(self, sender: str, client_msg_id: str) -> Pending | None:
        """``sender``'s pending message with ``client_msg_id`` (None: none)."""
        return self._by_client_id.get((sender, client_msg_id))

    def at(self, seq: int) -> Pending | None:
        """The pending message the journal writes as ``seq`` (None: none)."""
        for pending in self._queue:
            if pending.seq == seq:
                return pending
        return None

    def group_deleted(self, group: str) -> None:
        """``group`` was deleted: its pending messages go with it (``Pending.group_deleted``)."""
        for pending in self._queue:
            if pending.message.group == group:
                pending.group_deleted = True

    def lowest_id(self) -> int | None:
        """The lowest id of the pending messages (None: none)."""
        return self._queue[0].message.message_id if self._queue else None

    def pop_durable(self, durable_seq: int) -> Iterator[Pending]:
        """Take out each message the journal made durable (its seq at most ``durable_seq``),
        in journal order, one at a time: the ones after it are still pending meanwhile."""
        queue = self._queue
        while queue and queue[0].seq <= durable_seq:
            pending = queue.popleft()
            message = pending.message
            if message.client_msg_id is not None:
                del self._by_client_id[(message.sender, message.client_msg_id)]
            yield pending
