"""The HTTP API's routes about friendships and groups (shell): ``hub.membership`` over HTTP.

``PUT``/``DELETE /v1/friendships/{a}/{b}``, a bulk import (``POST /v1/friendships``),
``PUT``/``GET``/``DELETE /v1/groups/{group}`` and ``PUT``/``DELETE
/v1/groups/{group}/members/{user}``. Each holds the users or the group it reads or changes
(``api_host.holding``: with several nodes, read from Redis first); a change found already
made is announced again (``ApiHost.unchanged``). docs/protocol.md has the shapes.
"""

from __future__ import annotations

from typing import Any, Final

import trio

from geopresence.core.membership import GROUP_SLICE, BulkError
from geopresence.model.ids import id_problem
from geopresence.model.records import Befriended, MemberAdded, MemberRemoved, Unfriended
from geopresence.shell.api_host import ApiHost, holding, statuses_of
from geopresence.shell.http_routing import HttpError, Request, Response, status_for

MAX_BULK_PAIRS: Final = 10_000


def _user_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list):
        raise HttpError(400, "bad_request", f"{what} must be an array of user ids")
    for item in value:
        problem = id_problem(item, f"each of {what}")
        if problem is not None:
            raise HttpError(400, "bad_request", problem)
    return value


class FriendsAndGroups:
    """The handlers of the friendship and group routes over ``server``."""

    def __init__(self, server: ApiHost) -> None:
        self.server = server
        self.hub = server.hub
        self._group_writes = trio.Lock()

    async def put_friendship(self, request: Request) -> Response:
        a, b = request.params["a"], request.params["b"]
        async with holding(self.server, (a, b)):
            created = self.hub.membership.add_friendship(a, b, self.server.now())
            if not created:
                self.server.unchanged(Befriended(a, b))
        return 200, {"friends": [a, b], "created": created}

    async def delete_friendship(self, request: Request) -> Response:
        a, b = request.params["a"], request.params["b"]
        async with holding(self.server, (a, b)):
            deleted = self.hub.membership.remove_friendship(a, b)
            if not deleted:
                self.server.unchanged(Unfriended(a, b))
        return 200, {"friends": [a, b], "deleted": deleted}

    async def bulk_friendships(self, request: Request) -> Response:
        pairs = request.json_object().get("pairs")
        if not isinstance(pairs, list):
            raise HttpError(400, "bad_request", '"pairs" must be an array of [a, b] pairs')
        if len(pairs) > MAX_BULK_PAIRS:
            raise HttpError(413, "too_large", f"at most {MAX_BULK_PAIRS} pairs per call")
        checked: list[tuple[str, str]] = []
        for index, pair in enumerate(pairs):
            if not isinstance(pair, list) or len(pair) != 2:
                raise HttpError(400, "bad_request", f"pairs[{index}] must be [a, b]")
            a, b = _user_list(pair, f"pairs[{index}]")
            if a == b:
                raise HttpError(
                    400, "bad_request", f"pairs[{index}]: a user cannot befriend itself"
                )
            checked.append((a, b))
        # All pairs are valid before any is applied; a limit hit part-way reports how far it got.
        try:
            async with holding(self.server, {user for pair in checked for user in pair}):
                created = self.hub.membership.add_friendships(checked, self.server.now())
        except BulkError as exc:
            raise HttpError(
                status_for(exc.code),
                exc.code,
                f"pairs[{exc.index}]: {exc.message} ({exc.created} created before it)",
            ) from None
        return 200, {"created": created}

    async def put_group(self, request: Request) -> Response:
        group = request.params["group"]
        body = request.json_object()
        if "members" not in body:  # a typo must not empty the group: [] says so
            raise HttpError(400, "bad_request", 'members is required ("members": [] empties it)')
        members = body["members"]
        if not isinstance(members, list):
            raise HttpError(400, "bad_request", "members must be an array of user ids")
        # A large membership is checked and applied in slices that let other clients run;
        # one replacement of a group at a time, so that two cannot interleave their steps.
        for start in range(0, len(members), GROUP_SLICE):
            _user_list(members[start : start + GROUP_SLICE], "members")
            await trio.sleep(0)
        async with self._group_writes, holding(self.server, (), (group,)):
            # With Redis, a change another node makes meanwhile is read after it, not
            # applied over half of it (it is journaled at its end).
            with self.server.replacing(group):
                steps = self.hub.membership.set_group_in_slices(group, members)
                while True:
                    try:
                        next(steps)
                    except StopIteration as done:
                        added, removed = done.value
                        break
                    await trio.sleep(0)
        return 200, {"group": group, "total": len(set(members)), "added": added, "removed": removed}

    async def get_group(self, request: Request) -> Response:
        group = request.params["group"]
        async with holding(self.server, (), (group,)):
            members = self.hub.store.group_members(group)
            if members is None:
                raise HttpError(404, "not_found", f"group {group!r} does not exist")
            read = await statuses_of(self.server, members)
            members = self.hub.store.group_members(group)  # as it is now
            if members is None:
                raise HttpError(404, "not_found", f"group {group!r} does not exist")
            with self.hub.statuses.overlay(read):
                online, total = self.hub.statuses.group_online(group)
        return 200, {"group": group, "members": sorted(members), "online": online, "total": total}

    async def delete_group(self, request: Request) -> Response:
        group = request.params["group"]
        async with holding(self.server, (), (group,)):
            self.hub.membership.delete_group(group)
        return 200, {"group": group, "deleted": True}

    async def put_member(self, request: Request) -> Response:
        group, user = request.params["group"], request.params["user"]
        async with holding(self.server, (), (group,)):
            added = self.hub.membership.add_member(group, user)
            if not added:
                mark = self.hub.chat.store.joined_after(group, user) or 0
                self.server.unchanged(MemberAdded(group, user, mark))
        return 200, {"group": group, "user": user, "added": added}

    async def delete_member(self, request: Request) -> Response:
        group, user = request.params["group"], request.params["user"]
        async with holding(self.server, (), (group,)):
            removed = self.hub.membership.remove_member(group, user)
            if not removed:
                self.server.unchanged(MemberRemoved(group, user))
        return 200, {"group": group, "user": user, "removed": removed}
