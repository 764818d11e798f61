"""The HTTP API's routes about one user's data: forget it, export it (shell).

``DELETE /v1/users/{user}`` answers once the forget is durable (journal, or Redis), the
location history files hold no line of the user and, with a journal, the snapshots and
segments written before it are deleted. ``GET /v1/users/{user}/export`` streams one JSON
document (``geopresence.shell.export``). docs/protocol.md has the shapes; docs/security.md
what is held and for how long.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from geopresence.core.store import DEFAULT_SETTINGS
from geopresence.shell.api_host import (
    ApiHost,
    holding,
    messages_count_of,
    settings_of,
    statuses_of,
)
from geopresence.shell.export import export_document
from geopresence.shell.http_routing import HttpError, Request, Response, Streamed


class UserData:
    """The handlers of the two routes over ``server``."""

    def __init__(self, server: ApiHost) -> None:
        self.server = server

    async def forget(self, request: Request) -> Response:
        """Forget the user; 500 if the history or the snapshot could not be rewritten
        (the forget itself is applied and durable; the history is retried)."""
        user = request.params["user"]
        # Several nodes: this node may not keep the user's settings; Redis has them.
        stored = await settings_of(self.server, user)
        counted = await messages_count_of(self.server, user)
        async with holding(self.server, (user,)):  # the report counts its friends
            report, problem = await self.server.forget_user(user)
        if problem is not None:
            raise HttpError(500, "internal", f"{user} is forgotten, but {problem}")
        settings = report.settings if stored is None else stored != DEFAULT_SETTINGS
        return 200, {
            "user": user,
            "forgotten": True,
            "friends": report.friends,
            "groups": report.groups,
            "messages": report.messages if counted is None else counted,
            "settings": settings,
            "location": report.location,
            "devices_logged_out": report.devices,
        }

    async def export(self, request: Request) -> Response:
        user = request.params["user"]
        server = self.server
        keeper = server.history_keeper
        read = await statuses_of(server, (user,))
        settings = await settings_of(server, user)
        async with holding(server, (user,)):
            # Its friends and groups (with its join marks, which the messages read takes
            # now), read while they are all here. The head is made before the generator's
            # first await: nothing else runs while the overlay is on.
            chunks = export_document(
                server.hub,
                user,
                server.now(),
                keeper.directory,
                keeper.run_sync,
                settings,
                server.messages_of(user),
            )
            with server.hub.statuses.overlay(read):
                head = await anext(chunks)
        return 200, Streamed(_after(head, chunks))


async def _after(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk
