"""The HTTP API (the design's "API server"): a small ASGI app served by hypercorn on trio.

Routes are a table of (method, path pattern, handler); each handler is a plain function of a
parsed ``Request`` that calls the hub and returns ``(status, JSON body)``. Errors are JSON
``{"error": CODE, "message": ...}`` with the matching HTTP status. The browser's pages (the
console, the admin view, geopresence.js) are routes too, without the key (``shell.console``).
"""

from __future__ import annotations

import hmac
import inspect
import logging
import math
import re
from typing import Any, Final
from urllib.parse import unquote

import attrs
import orjson
import trio

from geopresence.core.membership import GROUP_SLICE, BulkError
from geopresence.model.ids import id_problem
from geopresence.model.records import Befriended, MemberAdded, MemberRemoved, Unfriended
from geopresence.shell.auth import DEFAULT_TOKEN_TTL, mint_token
from geopresence.shell.console import Asset, Console
from geopresence.shell.control import Control as Control
from geopresence.shell.control import holding, statuses_of
from geopresence.shell.http_routing import (
    HttpError,
    Receive,
    Request,
    Response,
    Route,
    Scope,
    Send,
    Streamed,
    lifespan,
    path_pattern,
    read_body,
    send_streamed,
    status_for,
)
from geopresence.shell.http_users import UserData
from geopresence.wire.errors import ProtocolError

log = logging.getLogger("geopresence.http")

MAX_BULK_PAIRS: Final = 10_000
MAX_TOKEN_TTL: Final = 365 * 24 * 3600.0


def _user_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list):
        raise HttpError(400, "bad_request", f"{what} must be an array of user ids")
    for item in value:
        problem = id_problem(item, f"each of {what}")
        if problem is not None:
            raise HttpError(400, "bad_request", problem)
    return value


def _exactly(path: str) -> re.Pattern[str]:
    """A route pattern matching ``path`` and nothing else (its dots are dots)."""
    return re.compile(f"^{re.escape(path)}$")


class HttpApi:
    """ASGI application over a running ``Server``."""

    def __init__(self, server: Control) -> None:
        self.server = server
        self.hub = server.hub
        self._group_writes = trio.Lock()
        route = Route
        console = Console(server.config, lambda: server.ws_port)
        users = UserData(server)
        self.routes: list[Route] = [
            route("GET", path_pattern("/healthz"), self.healthz, admin=False),
            route("GET", _exactly("/"), console.page, admin=False),
            route("GET", _exactly("/admin"), console.page, admin=False),
            route("GET", _exactly("/client/geopresence.js"), console.client_module, admin=False),
            route("GET", _exactly("/console/config.json"), console.config_json, admin=False),
            route("GET", path_pattern("/console/{name}"), console.asset, admin=False),
            route("GET", path_pattern("/metrics"), self.metrics),
            route("PUT", path_pattern("/v1/friendships/{a}/{b}"), self.put_friendship),
            route("DELETE", path_pattern("/v1/friendships/{a}/{b}"), self.delete_friendship),
            route("POST", path_pattern("/v1/friendships"), self.bulk_friendships),
            route("GET", path_pattern("/v1/users/{user}"), self.get_user),
            route("GET", path_pattern("/v1/users/{user}/friends"), self.get_friends),
            route("POST", path_pattern("/v1/users/{user}/logout"), self.logout),
            route("DELETE", path_pattern("/v1/users/{user}"), users.forget),
            route("GET", path_pattern("/v1/users/{user}/export"), users.export),
            route("POST", path_pattern("/v1/tokens"), self.create_token),
            route("PUT", path_pattern("/v1/groups/{group}"), self.put_group),
            route("GET", path_pattern("/v1/groups/{group}"), self.get_group),
            route("DELETE", path_pattern("/v1/groups/{group}"), self.delete_group),
            route("PUT", path_pattern("/v1/groups/{group}/members/{user}"), self.put_member),
            route("DELETE", path_pattern("/v1/groups/{group}/members/{user}"), self.delete_member),
            route("POST", path_pattern("/v1/snapshot"), self.snapshot),
            route("POST", path_pattern("/v1/drain"), self.drain),
        ]

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            # The WebSocket endpoint is on the other port; refuse cleanly (HTTP 403).
            await receive()
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        headers: list[tuple[bytes, bytes]] = []
        try:
            status, payload = await self._respond(scope, receive)
        except HttpError as exc:
            status, payload = exc.status, {"error": exc.code, "message": exc.message}
            headers = exc.headers
        except Exception:
            log.exception("HTTP %s %s failed", scope.get("method"), scope.get("path"))
            status, payload = 500, {"error": "internal", "message": "internal error"}
        self.server.metrics.http_requests[status] += 1
        if status >= 400 and isinstance(payload, dict) and "error" in payload:
            self.server.metrics.errors[payload["error"]] += 1
        if isinstance(payload, Streamed):
            try:
                await send_streamed(send, status, payload)
            except Exception:
                log.exception("HTTP %s %s failed part way", scope.get("method"), scope["path"])
                raise  # the server cuts the response off: never a truncated "whole" body
            return
        if isinstance(payload, Asset):
            body, content_type = payload.body, payload.content_type
            headers = [*headers, *payload.headers]
        elif isinstance(payload, str):
            body, content_type = payload.encode(), b"text/plain; version=0.0.4; charset=utf-8"
        else:
            body, content_type = orjson.dumps(payload), b"application/json"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _respond(self, scope: Scope, receive: Receive) -> Response:
        method: str = scope["method"]
        if method == "HEAD":
            method = "GET"  # same answer; hypercorn drops the body of a HEAD response
        # Route on the path as sent: a percent-encoded "/" inside an id must not become a
        # path separator (PUT /v1/friendships/x%2Fy is an invalid id, not x and y).
        raw = scope.get("raw_path")
        path: str = raw.decode("latin-1").split("?", 1)[0] if raw else scope["path"]
        allowed: list[str] = []
        for route in self.routes:
            match = route.pattern.match(path)
            if match is None:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            if route.admin:
                self._authorize(scope)
            params = {name: unquote(value) for name, value in match.groupdict().items()}
            for name, value in params.items():
                problem = id_problem(value, name)
                if problem is not None:
                    raise HttpError(400, "bad_request", problem)
            body = await read_body(receive)
            before = self.hub.acks.last_seq
            try:
                result = route.handler(Request(method, path, params, body))
                if inspect.isawaitable(result):
                    result = await result
            except ProtocolError as exc:
                await self._durable_since(before, method)
                raise HttpError(status_for(exc.code), exc.code, exc.message) from None
            except HttpError:
                # A refused bulk import may have created some of its pairs.
                await self._durable_since(before, method)
                raise
            await self._durable_since(before, method)
            return result
        if not any(not route.admin and route.pattern.match(path) for route in self.routes):
            # Without the key, 404 and 405 would map the admin API's routes.
            self._authorize(scope)
        if allowed:
            raise HttpError(
                405,
                "bad_request",
                f"{method} not allowed; use {', '.join(allowed)}",
                [(b"allow", ", ".join(allowed).encode())],
            )
        raise HttpError(404, "not_found", f"no such endpoint: {path}")

    async def _durable_since(self, before: int, method: str) -> None:
        """A response to a change waits until the journal made it durable. Every write
        method waits for everything journaled so far, so that a retried request that finds
        its change already applied (``created: false``) is not answered before the original
        is durable. Reads never wait."""
        after = self.hub.acks.last_seq
        if after > before or method not in ("GET", "HEAD"):
            await self.server.durable(after)

    def _authorize(self, scope: Scope) -> None:
        key = self.server.admin_key
        if key is None:  # --insecure
            return
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization":
                scheme, _, given = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and hmac.compare_digest(
                    given.strip().encode(), key.encode()
                ):
                    return
                raise HttpError(401, "unauthorized", "wrong admin key")
        raise HttpError(401, "unauthorized", "missing 'Authorization: Bearer ADMIN_KEY' header")

    # ------------------------------------------------------------------ handlers

    def drain(self, request: Request) -> Response:
        """Begin a graceful shutdown (what SIGTERM does): stop accepting, close every client
        with 1001 so it reconnects elsewhere, wait up to drain_timeout, snapshot, exit."""
        connections = self.hub.sessions.count
        self.server.stop()
        return 202, {"draining": True, "connections": connections}

    async def snapshot(self, request: Request) -> Response:
        """Write a snapshot now (409 without persistence) and describe it."""
        if self.server.persistence == "redis":
            raise HttpError(
                409, "bad_request", "this node keeps its state in Redis: snapshot Redis instead"
            )
        if self.server.persistence == "memory":
            raise HttpError(409, "bad_request", "this server keeps its state in memory only")
        info = await self.server.take_snapshot(force=True)
        return 200, info

    def healthz(self, request: Request) -> Response:
        return 200, {"status": "ok"}

    def metrics(self, request: Request) -> Response:
        return 200, self.server.metrics.render()

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

    async def get_user(self, request: Request) -> Response:
        user = request.params["user"]
        devices = await self.server.devices_held(user)
        read = await statuses_of(self.server, (user,))
        with self.hub.statuses.overlay(read):
            p = self.hub.statuses.user_presence(user, self.server.now())
        return 200, {
            "user": p.user,
            "status": p.status,
            "last_active_at": p.last_active_at,
            "devices": len(devices),
        }

    async def get_friends(self, request: Request) -> Response:
        user = request.params["user"]
        async with holding(self.server, (user,)):
            read = await statuses_of(self.server, self.hub.store.friends_of(user))
            with self.hub.statuses.overlay(read):
                presence = self.hub.statuses.friends_presence(user, self.server.now())
        friends = [attrs.asdict(f) for f in presence]
        return 200, {"user": user, "friends": friends}

    async def logout(self, request: Request) -> Response:
        user = request.params["user"]
        device = request.json_object().get("device")
        if device is not None:
            problem = id_problem(device, "device")
            if problem is not None:
                raise HttpError(400, "bad_request", problem)
        # On every node, as the logout is made (the devices it ends, wherever they are).
        held = await self.server.devices_held(user)
        self.hub.lifecycle.logout(user, device)
        ended = len(held) if device is None else int(device in held)
        if self.server.persistence == "redis":
            # The devices ended in Redis (whichever node holds them): answer with the result.
            with trio.move_on_after(self.server.config.drain_timeout):
                await self.server.flush_cluster_presence()
        read = await statuses_of(self.server, (user,))
        with self.hub.statuses.overlay(read):
            p = self.hub.statuses.user_presence(user, self.server.now())
        return 200, {"user": user, "devices_logged_out": ended, "status": p.status}

    def create_token(self, request: Request) -> Response:
        body = request.json_object()
        user = body.get("user")
        problem = id_problem(user, "user")
        if problem is not None or not isinstance(user, str):
            raise HttpError(400, "bad_request", problem or "user must be a string")
        ttl = body.get("ttl", DEFAULT_TOKEN_TTL)
        if (
            isinstance(ttl, bool)
            or not isinstance(ttl, int | float)
            or not 0 < ttl <= MAX_TOKEN_TTL
        ):
            raise HttpError(400, "bad_request", f"ttl must be a number in (0, {MAX_TOKEN_TTL:.0f}]")
        now = self.server.now()
        token = mint_token(self.server.secret, user, ttl, now)
        return 200, {"token": token, "user": user, "expires_at": math.ceil(now + ttl)}

    async def put_group(self, request: Request) -> Response:
        group = request.params["group"]
        members = request.json_object().get("members", [])
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


async def serve_http(server: Control, *, task_status: trio.TaskStatus[int]) -> None:
    """Serve ``HttpApi(server)`` with hypercorn's trio worker; reports the bound port."""
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve as hypercorn_serve

    config = server.config
    hconfig = HypercornConfig()
    hconfig.bind = [f"{bind_host(config.host)}:{config.http_port}"]
    hconfig.accesslog = None
    # hypercorn announces "Running on ..." at INFO; the CLI prints its own listening line.
    errorlog = logging.getLogger("geopresence.http.server")
    errorlog.setLevel(max(errorlog.getEffectiveLevel(), logging.WARNING))
    hconfig.errorlog = errorlog
    hconfig.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(hypercorn_serve, HttpApi(server), hconfig)
        task_status.started(int(binds[0].rsplit(":", 1)[1]))


def bind_host(host: str) -> str:
    """``host`` as it stands before ``:port`` (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
