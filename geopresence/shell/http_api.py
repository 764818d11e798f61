"""The HTTP API (the design's "API server"): a small ASGI app served by hypercorn on trio.

Routes are a table of (method, path pattern, handler); each handler is a plain function of a
parsed ``Request`` that calls the hub and returns ``(status, JSON body)``. Errors are JSON
``{"error": CODE, "message": ...}`` with the matching HTTP status. The browser's pages (the
console, the admin view, geopresence.js) are routes too, without the key (``shell.console``).
The friendship and group routes are ``shell.http_membership``'s, forgets and exports
``shell.http_users``'; the node's own (health, metrics, tokens, snapshot, drain) and the
presence reads are here.
"""

from __future__ import annotations

import hmac
import inspect
import logging
import math
import re
from urllib.parse import unquote

import attrs
import orjson
import trio

from geopresence.model.ids import id_problem
from geopresence.shell.api_host import ApiHost as ApiHost
from geopresence.shell.api_host import holding, statuses_of
from geopresence.shell.auth import DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL, mint_token
from geopresence.shell.console import Asset, Console
from geopresence.shell.http_membership import FriendsAndGroups
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


def _route_path(scope: Scope) -> str:
    """The path to route on: as sent, so that a percent-encoded "/" inside an id does not
    become a path separator (PUT /v1/friendships/x%2Fy is an invalid id, not x and y)."""
    raw = scope.get("raw_path")
    path: str = raw.decode("latin-1").split("?", 1)[0] if raw else scope["path"]
    return path


def _exactly(path: str) -> re.Pattern[str]:
    """A route pattern matching ``path`` and nothing else (its dots are dots)."""
    return re.compile(f"^{re.escape(path)}$")


class HttpApi:
    """ASGI application over a running ``Server``."""

    def __init__(self, server: ApiHost) -> None:
        self.server = server
        self.hub = server.hub
        route = Route
        console = Console(server.config, lambda: server.ws_port)
        membership = FriendsAndGroups(server)
        users = UserData(server)
        self.routes: list[Route] = [
            route("GET", path_pattern("/healthz"), self.healthz, admin=False),
            route("GET", _exactly("/"), console.page, admin=False),
            route("GET", _exactly("/admin"), console.page, admin=False),
            route("GET", _exactly("/client/geopresence.js"), console.client_module, admin=False),
            route("GET", _exactly("/console/config.json"), console.config_json, admin=False),
            route("GET", path_pattern("/console/{name}"), console.asset, admin=False),
            route("GET", path_pattern("/metrics"), self.metrics),
            route("PUT", path_pattern("/v1/friendships/{a}/{b}"), membership.put_friendship),
            route("DELETE", path_pattern("/v1/friendships/{a}/{b}"), membership.delete_friendship),
            route("POST", path_pattern("/v1/friendships"), membership.bulk_friendships),
            route("GET", path_pattern("/v1/users/{user}"), self.get_user),
            route("GET", path_pattern("/v1/users/{user}/friends"), self.get_friends),
            route("POST", path_pattern("/v1/users/{user}/logout"), self.logout),
            route("DELETE", path_pattern("/v1/users/{user}"), users.forget),
            route("GET", path_pattern("/v1/users/{user}/export"), users.export),
            route("POST", path_pattern("/v1/tokens"), self.create_token),
            route("PUT", path_pattern("/v1/groups/{group}"), membership.put_group),
            route("GET", path_pattern("/v1/groups/{group}"), membership.get_group),
            route("DELETE", path_pattern("/v1/groups/{group}"), membership.delete_group),
            route("PUT", path_pattern("/v1/groups/{group}/members/{user}"), membership.put_member),
            route(
                "DELETE",
                path_pattern("/v1/groups/{group}/members/{user}"),
                membership.delete_member,
            ),
            route("POST", path_pattern("/v1/snapshot"), self.snapshot),
            route("POST", path_pattern("/v1/drain"), self.drain),
        ]

    # ------------------------------------------------------------------ ASGI

    async def _refuse_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The WebSocket endpoint is on the other port: 403 with the API's error body where
        the ASGI server can send one (its ``websocket.http.response`` extension), else a bare
        403. Where an HTTP request would need the admin key (``/v1/...``), a request without
        a valid one gets 401 first, as for any method."""
        await receive()  # websocket.connect
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008})
            return
        port = "the WebSocket port (--port), path /ws"
        status, payload = 403, {"error": "forbidden", "message": f"WebSocket clients use {port}"}
        path = _route_path(scope)
        if not any(not route.admin and route.pattern.match(path) for route in self.routes):
            try:
                self._authorize(scope)
            except HttpError as exc:
                status, payload = exc.status, {"error": exc.code, "message": exc.message}
        body = orjson.dumps(payload)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await self._refuse_websocket(scope, receive, send)
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
        path = _route_path(scope)
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
                # ``{a}``/``{b}`` are users: the message names the id, which the route's
                # field names would not (``a must be ...``).
                what = "user" if name in ("a", "b") else name
                problem = id_problem(value, f"{what} {value[:80]!r}")
                if problem is not None:
                    raise HttpError(400, "bad_request", problem)
            # A GET (or HEAD) takes no body: none is read (the console's pages face anyone).
            body = b"" if method == "GET" else await read_body(receive)
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
        try:
            info = await self.server.take_snapshot(force=True)
        except OSError as exc:  # a full disk, a writer killed: nothing is lost, say what
            log.error("snapshot failed (the journal still has everything): %s", exc)
            raise HttpError(
                500, "internal", f"snapshot failed (the journal still has everything): {exc}"
            ) from None
        return 200, info

    def healthz(self, request: Request) -> Response:
        return 200, {"status": "ok"}

    def metrics(self, request: Request) -> Response:
        return 200, self.server.metrics.render()

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


async def serve_http(server: ApiHost, *, task_status: trio.TaskStatus[int]) -> None:
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
