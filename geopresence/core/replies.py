"""Replies to a connection in the order of its requests (sans-I/O).

docs/protocol.md: "Replies on one connection come in order." Most replies are made while
their request is handled and go out at once. Some must wait: ``sent`` and ``settings`` until
the journal made the change durable (``Chat``, ``Acks``), ``sent`` with several nodes until
the chat horizon passed the message (``chat_horizon``), and the shell's answers that read
Redis first (``shell.cluster_answers``). Such a reply takes a *place* in its connection's
*line* while its request is handled (``place``), and fills it once made (``fill``); a reply
made meanwhile to that connection (``reply``) queues behind it, and the line goes out from
its head as its places are filled. A reply never overtakes the reply to an earlier request.

Frames that answer no request (events: presence, positions, messages) go through ``send``:
they never wait for a place, but never overtake a reply already made either: while the line
holds one, they queue behind it (a ``nearby_friends`` reply is a snapshot that a later
``friend_location`` must follow, see ``Outgoing.seals``).

A connection has a line only while a reply to it waits: otherwise a frame costs one dict
lookup on its way to the sink (with the in-memory journal on one node, no reply ever
waits). A line holds at most ``max_frames`` frames and ``max_chars`` characters made and
waiting, as the connection's send queue would: past that the connection is a slow consumer,
closed with 4008 as when its queue is full (its session ends when the shell reports the
close). ``forget`` (the session ended) sends what the line holds that was made, in order,
and drops the rest: the replies still waiting are never made for this connection.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import attrs

from geopresence.core.broker import ConnId
from geopresence.wire.errors import CLOSE_REASONS, CLOSE_SLOW_CONSUMER
from geopresence.wire.outgoing import Outgoing

__all__ = ["Place", "Replies", "ReplyTo", "Sink"]


class Sink(Protocol):
    """Where the hub's output goes. Both methods must return without blocking.

    ``send`` queues a frame for a connection (the shell closes it with 4008 if its queue is
    full); ``close`` asks for a connection to be closed with ``code`` after the frames already
    queued for it. After ``close`` the hub has forgotten the connection, unless ``Replies``
    closed it as a slow consumer (its line of replies outgrew its bound): the hub forgets
    that one when the shell reports it closed, as when the shell's own queue is full.
    """

    def send(self, conn: ConnId, message: Outgoing) -> None: ...

    def close(self, conn: ConnId, code: int, reason: str) -> None: ...


class _Line:
    """One connection's replies, the first still waiting (places, oldest first), with the
    count and size of the frames made among them."""

    __slots__ = ("answering", "chars", "made", "places")

    def __init__(self) -> None:
        self.places: deque[Place] = deque()
        self.made = 0
        self.chars = 0
        self.answering: Place | None = None
        """The place of a request answered now (``Replies.answering``)."""


@attrs.define(slots=True, eq=False)
class Place:
    """A reply's place in its connection's line, filled once (``Replies.fill``)."""

    conn: ConnId
    line: _Line = attrs.field(repr=False)
    frame: Outgoing | None = None
    filled: bool = False


ReplyTo = ConnId | Place
"""Where a reply goes: a connection (made now: behind what waits) or a place kept for it."""


class Replies:
    """Every connection's line of replies, in front of ``sink``; a ``Sink`` itself (``send``
    for events, ``close``)."""

    def __init__(self, sink: Sink, *, max_frames: int, max_chars: int) -> None:
        self.sink = sink
        self.max_frames = max_frames
        self.max_chars = max_chars
        self._lines: dict[ConnId, _Line] = {}

    def __len__(self) -> int:
        """Connections with a reply waiting."""
        return len(self._lines)

    # ---------------------------------------------------------------- frames made now

    def send(self, conn: ConnId, message: Outgoing) -> None:
        """An event for ``conn``: at once, unless a reply made before it waits."""
        line = self._lines.get(conn)
        if line is None or not line.made:
            self.sink.send(conn, message)
        else:
            self._hold(conn, line, message)

    def close(self, conn: ConnId, code: int, reason: str) -> None:
        self.sink.close(conn, code, reason)

    def reply(self, conn: ConnId, message: Outgoing) -> None:
        """A reply to ``conn``'s latest request, made now: at once, unless an earlier one
        still waits (then behind it)."""
        line = self._lines.get(conn)
        if line is None:
            self.sink.send(conn, message)
        elif line.answering is not None:
            place, line.answering = line.answering, None
            self.fill(place, message)
        else:
            self._hold(conn, line, message)

    # ---------------------------------------------------------------- replies made later

    def place(self, conn: ConnId) -> Place:
        """Keep a place for a reply to ``conn``'s latest request, to be made later: every
        reply made for ``conn`` until it is filled waits behind it. ``conn`` must have a
        live session (its end calls ``forget``). Fill it exactly once, if only with None."""
        line = self._lines.get(conn)
        if line is None:
            line = self._lines[conn] = _Line()
        elif line.answering is not None:
            place, line.answering = line.answering, None
            return place
        place = Place(conn, line)
        line.places.append(place)
        return place

    def fill(self, place: Place, message: Outgoing | None) -> None:
        """``place``'s reply is ``message`` (None: there is none): sent, with whatever
        waited behind it, once the places before it are filled. Ignored if the connection
        was forgotten meanwhile, or the place filled already."""
        if place.filled:
            return
        place.frame, place.filled = message, True
        line = place.line
        if self._lines.get(place.conn) is not line:
            return
        if message is not None:
            line.made += 1
            line.chars += len(message.text)
        if line.places[0] is place:
            self._flush(place.conn, line)
        else:
            self._check(place.conn, line)

    def answer(self, to: ReplyTo, message: Outgoing) -> None:
        """``message`` for ``to``: ``fill`` a place, ``reply`` to a connection."""
        if isinstance(to, Place):
            self.fill(to, message)
        else:
            self.reply(to, message)

    def hold(self, to: ReplyTo) -> Place:
        """A place for the reply ``to`` stands for: ``to`` itself, or a new one."""
        return to if isinstance(to, Place) else self.place(to)

    @contextmanager
    def answering(self, place: Place) -> Iterator[None]:
        """Answer ``place``'s request now, though it came earlier (the shell read Redis
        first): inside, the first reply made for its connection fills ``place`` (``reply``),
        or a reply that must wait further takes ``place`` over (``place``). None made: the
        place is given up on leaving (filled with None)."""
        line = place.line
        if place.filled or self._lines.get(place.conn) is not line:
            yield
            return
        line.answering = place
        try:
            yield
        finally:
            if line.answering is place:
                line.answering = None
                self.fill(place, None)

    # ---------------------------------------------------------------- the line

    def forget(self, conn: ConnId) -> None:
        """``conn``'s session ended: send what its line holds made, in order; the places
        still waiting will never be filled for it."""
        line = self._lines.pop(conn, None)
        if line is None:
            return
        for place in line.places:
            if place.frame is not None:
                self.sink.send(conn, place.frame)

    def _hold(self, conn: ConnId, line: _Line, message: Outgoing) -> None:
        line.places.append(Place(conn, line, message, True))
        line.made += 1
        line.chars += len(message.text)
        self._check(conn, line)

    def _check(self, conn: ConnId, line: _Line) -> None:
        if line.made > self.max_frames or line.chars > self.max_chars:
            del self._lines[conn]  # its places, filled later, are ignored
            self.sink.close(conn, CLOSE_SLOW_CONSUMER, CLOSE_REASONS[CLOSE_SLOW_CONSUMER])

    def _flush(self, conn: ConnId, line: _Line) -> None:
        places, send = line.places, self.sink.send
        while places and places[0].filled:
            frame = places.popleft().frame
            if frame is not None:
                line.made -= 1
                line.chars -= len(frame.text)
                send(conn, frame)
        if not places:
            del self._lines[conn]
