"""What the server holds about one user, as one JSON document written in pieces (shell).

``export_document`` yields the bytes of ``GET /v1/users/{user}/export`` (docs/protocol.md):
first what is small (presence, settings, friends, groups, the live location), then the
messages in batches of ``MESSAGE_BATCH`` (the event loop runs between them), then the
location history, read from the files ``HISTORY_BATCH`` records at a time in a worker
thread. So neither a long chat nor years of history is ever held whole, and a slow reader
holds back only its own response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import orjson
import trio

from geopresence.core.chat_message_wire import message_frame
from geopresence.core.hub import Hub
from geopresence.core.store import UserSettings
from geopresence.model.chat_message import ChatMessage
from geopresence.storage.history import HistoryCursor
from geopresence.wire.protocol import unstructure

MESSAGE_BATCH: Final = 500
HISTORY_BATCH: Final = 5_000


def _head(hub: Hub, user: str, now: float, settings: UserSettings | None) -> dict[str, Any]:
    store, chat = hub.state.users, hub.state.chat
    presence = hub.statuses.user_presence(user, now)
    settings = store.get_settings(user) if settings is None else settings
    location = hub.nearby.location_of(user, now)
    groups = []
    for group in sorted(store.groups_of(user)):
        members = store.group_members(group) or ()
        mark = chat.joined_after(group, user)
        groups.append(
            {
                "group": group,
                "members": len(members),
                # Message ids are strings on the wire (JavaScript-safe).
                "joined_after": None if mark is None else str(mark),
            }
        )
    return {
        "user": user,
        "exported_at": now,
        "presence": {
            "status": presence.status,
            "last_active_at": presence.last_active_at,
            "devices": presence.devices,
        },
        "settings": {
            "share_location": settings.share_location,
            "radius_m": settings.radius_m,
            "visible_to_strangers": settings.visible_to_strangers,
        },
        "friends": sorted(store.friends_of(user)),
        "groups": groups,
        "location": None
        if location is None
        else {"lat": location.lat, "lon": location.lon, "ts": location.ts},
    }


async def _kept_messages(hub: Hub, user: str) -> AsyncIterator[list[ChatMessage]]:
    """``user``'s messages in the hub's store, ``MESSAGE_BATCH`` at a time."""
    chat = hub.state.chat
    ids = chat.ids_of(user, hub.state.users.groups_of(user))
    for start in range(0, len(ids), MESSAGE_BATCH):
        found = (chat.get(message_id) for message_id in ids[start : start + MESSAGE_BATCH])
        yield [message for message in found if message is not None]  # not deleted meanwhile


async def export_document(
    hub: Hub,
    user: str,
    now: float,
    history: Path,
    run_sync: Callable[..., Awaitable[Any]] = trio.to_thread.run_sync,
    settings: UserSettings | None = None,
    messages: AsyncIterator[list[ChatMessage]] | None = None,
) -> AsyncIterator[bytes]:
    """The export of ``user`` as of ``now`` (epoch seconds), in pieces; ``history`` is the
    history directory, read through ``run_sync`` (a worker thread: ``HistoryKeeper``'s);
    ``settings`` and ``messages`` the user's, if the hub does not keep them (several nodes:
    read from Redis). Raises part way if a history file (``OSError``) or Redis cannot be
    read (the response is then cut off, never completed as if whole)."""
    head = orjson.dumps(_head(hub, user, now, settings))
    yield head[:-1] + b',"messages":['
    separator = b""
    async for batch in _kept_messages(hub, user) if messages is None else messages:
        parts = [
            orjson.dumps(unstructure(message_frame(message, own=message.sender == user)))
            for message in batch
        ]
        if parts:
            yield separator + b",".join(parts)
            separator = b","
        await trio.sleep(0)
    yield b'],"history":['
    cursor = HistoryCursor(history, user)
    separator = b""
    try:
        while True:
            batch = await run_sync(cursor.next_batch, HISTORY_BATCH)
            if not batch:
                break
            rows = orjson.dumps([{"lat": e.lat, "lon": e.lon, "ts": e.ts} for e in batch])
            yield separator + rows[1:-1]
            separator = b","
    finally:
        cursor.close()
    yield b"]}"
