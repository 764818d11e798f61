"""One encoded server frame, as the hub hands it to a connection (sans-I/O).

A frame is encoded once and shared by every recipient of a fan-out; its coalesce key and
seals tell the connection's queue (``outbox``) which undelivered frames it may replace.
"""

from __future__ import annotations

from collections.abc import Hashable

import attrs

from geopresence.wire.protocol import encode
from geopresence.wire.server_messages import ServerMessage

KeyPrefix = tuple[Hashable, ...]


@attrs.define(slots=True)
class Outgoing:
    """One encoded server frame.

    ``text`` is the frame's JSON, encoded once and shared by every recipient of a fan-out.
    ``coalesce_key`` (a tuple) is set for state updates where only the latest matters.
    ``seals`` lists key prefixes: undelivered frames whose key starts with one of them can no
    longer be replaced, so a newer state about the same thing is queued *after* this frame. A
    snapshot (a ``nearby_friends`` reply, a friendship change) seals the updates queued before
    it, so a later update can never jump ahead of the snapshot it follows.
    """

    text: str
    coalesce_key: tuple[Hashable, ...] | None = None
    seals: tuple[KeyPrefix, ...] = ()
    framed: bytes | None = attrs.field(default=None, init=False, eq=False, repr=False)
    """The frame as the transport writes it, made by the first recipient's transport and
    reused by the others (a fan-out is framed once). Set by the shell only."""


def out(
    message: ServerMessage,
    coalesce_key: tuple[Hashable, ...] | None = None,
    seals: tuple[KeyPrefix, ...] = (),
) -> Outgoing:
    """``message`` encoded as a frame (``coalesce_key``: latest-wins slot, None: queued;
    ``seals``: see ``Outgoing``)."""
    return Outgoing(encode(message), coalesce_key, seals)
