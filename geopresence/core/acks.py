"""The journal as the hub writes it, and the acks that wait for it (sans-I/O).

Every durable change is given to the ``Journal`` in the order it is applied (one sequence
number each). A reply that acknowledges a change (``sent``, ``settings``) must not reach the
client before the change is durable: it waits here until the journal's ``durable_seq``
reaches the last record written when the reply was made, in its place in the connection's
line (``Replies``): later replies to that connection go out after it.
"""

from __future__ import annotations

from collections import deque

from geopresence.core.broker import ConnId
from geopresence.core.fanout import Fanout
from geopresence.core.journal import Journal
from geopresence.core.replies import Place, Replies
from geopresence.model.records import Record
from geopresence.wire.outgoing import Outgoing


class Acks:
    """Journals the hub's records and holds the replies waiting for them to be durable."""

    def __init__(self, journal: Journal, replies: Replies, fanout: Fanout) -> None:
        self.journal = journal
        self.replies = replies
        self._fanout = fanout
        self.last_seq = journal.durable_seq
        """Sequence number of the last record given to the journal."""
        self._replies: deque[tuple[int, Place, Outgoing]] = deque()

    def journal_append(self, record: Record) -> int:
        """Give ``record`` to the journal; returns its sequence number. A change applied from
        another node's feed is not journaled again (its origin wrote it)."""
        if self._fanout.replaying:
            return self.last_seq
        self.last_seq = self.journal.append(record)
        return self.last_seq

    def reply_when_durable(self, conn: ConnId, message: Outgoing) -> None:
        """Send ``message`` (an ack to ``conn``'s latest request) once every record
        journaled so far is durable; until then later replies to ``conn`` wait behind it."""
        if self.journal.durable_seq >= self.last_seq:
            self.replies.reply(conn, message)
        else:
            self._replies.append((self.last_seq, self.replies.place(conn), message))

    def journal_advanced(self) -> None:
        """The journal made more records durable: send the replies that waited for them."""
        durable = self.journal.durable_seq
        replies = self._replies
        while replies and replies[0][0] <= durable:
            _, place, message = replies.popleft()
            self.replies.fill(place, message)
