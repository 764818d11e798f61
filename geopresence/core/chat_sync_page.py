"""One page of a ``sync`` reply (sans-I/O): a user's messages after its cursor, bounded.

A page holds at most the request's ``limit`` messages and stops before its messages would pass
a byte budget (``more`` is then true; it always holds one message). Each entry is encoded once
and spliced into the encoded reply: the page is serialized once, whether ``Chat`` read it from
its store or the cluster read it from Redis.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import orjson

from geopresence.core.chat_message_wire import message_frame
from geopresence.model.chat_message import ChatMessage
from geopresence.wire.client_messages import MAX_SYNC_LIMIT, Sync
from geopresence.wire.protocol import encode, unstructure
from geopresence.wire.server_messages import MessagesReply

SYNC_PAGE_MAX_BYTES: Final = 512 * 1024
"""A ``messages`` reply stops before its messages would pass this many bytes (``more`` is then
true; it always holds one message): replies stay below common client frame limits (1 MiB,
trio-websocket's and many browsers' default)."""


def sync_page(user: str, message: Sync, found: Iterable[ChatMessage], max_bytes: int) -> str:
    """The ``messages`` reply to ``user``'s ``message`` with the first page of ``found`` (its
    messages after its cursor, ascending by id): at most ``limit`` messages and ``max_bytes``
    of them, ``more`` if ``found`` holds more."""
    limit = min(message.limit, MAX_SYNC_LIMIT)
    budget = max_bytes
    parts: list[bytes] = []
    more = False
    for stored in found:
        if len(parts) == limit:
            more = True
            break
        part = orjson.dumps(unstructure(message_frame(stored, own=stored.sender == user)))
        budget -= len(part) + 1
        if budget < 0 and parts:
            more = True
            break
        parts.append(part)
    # Splice the entries into the encoded empty list, so the page is serialized once. The
    # key cannot occur inside a string value there: its quotes would be escaped.
    head = encode(MessagesReply(re=message.id, messages=[], more=more))
    entries = b",".join(parts).decode()
    return head.replace('"messages":[]', f'"messages":[{entries}]', 1)
