"""A small async client for geopresence (trio): WebSocket sessions and the HTTP admin API.

Used by the tests, the examples and the benchmarks; handy in other people's test suites::

    async with connect("ws://127.0.0.1:8765/ws", user="alice", device="phone") as alice:
        print(alice.friends)                      # friends_presence after welcome
        event = await alice.recv_type("presence")
        await alice.location(37.5665, 126.978)    # or alice.send({...}) for any frame
        reply = await alice.nearby_friends()

    admin = AdminClient("http://127.0.0.1:8766", admin_key="...")
    await admin.befriend("alice", "bob")
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    open_websocket_url,
    wrap_client_stream,
)

from geopresence.shell.aio import collapse_exception_groups

Json = dict[str, Any]


class SessionRefused(Exception):
    """The server refused the hello: ``error`` is its error frame (if any), ``close_code``
    the WebSocket close code (1008 for a bad or missing token)."""

    def __init__(self, error: Json | None, close_code: int | None) -> None:
        super().__init__(f"session refused (close {close_code}): {error}")
        self.error = error
        self.close_code = close_code


class Client:
    """An authenticated session. ``welcome`` and ``friends`` hold the server's greeting.

    ``recv()`` returns server messages in order; ``request()`` sends a message with a fresh
    ``id`` and returns the reply carrying it as ``re`` (an ``error`` reply is returned, not
    raised), keeping every other message for ``recv()``.
    """

    def __init__(self, ws: WebSocketConnection, welcome: Json, friends: list[Json]) -> None:
        self.ws = ws
        self.welcome = welcome
        self.friends = friends
        self.user: str = welcome["user"]
        self.device: str = welcome["device"]
        self._pending: deque[Json] = deque()
        self._ids = itertools.count(1)

    async def send(self, message: Json) -> None:
        await self.ws.send_message(orjson.dumps(message).decode())

    async def send_raw(self, frame: str | bytes) -> None:
        """Send a frame as is (for testing the server's handling of bad input)."""
        await self.ws.send_message(frame)

    async def _next(self) -> Json:
        message = await self.ws.get_message()
        decoded: Json = orjson.loads(message)
        return decoded

    async def recv(self) -> Json:
        """The next server message. Raises ``ConnectionClosed`` once the session ended."""
        if self._pending:
            return self._pending.popleft()
        return await self._next()

    async def recv_type(self, *types: str) -> Json:
        """The next message whose ``type`` is one of ``types``; others are discarded."""
        while True:
            message = await self.recv()
            if message.get("type") in types:
                return message

    async def request(self, kind: str, **fields: Any) -> Json:
        """Send ``{"type": kind, "id": N, **fields}`` and return the reply with ``re`` N."""
        request_id = next(self._ids)
        await self.send({"type": kind, "id": request_id, **fields})
        while True:
            message = await self._next()
            if message.get("re") == request_id:
                return message
            self._pending.append(message)

    async def heartbeat(self) -> None:
        await self.send({"type": "heartbeat"})

    async def send_message(
        self,
        text: str,
        *,
        to: str | None = None,
        group: str | None = None,
        client_msg_id: str | None = None,
    ) -> Json:
        """Send a chat message to a friend (``to``) or a ``group``; returns the ``sent`` ack
        (or the ``error`` reply)."""
        fields: Json = {"text": text}
        for key, value in (("to", to), ("group", group), ("client_msg_id", client_msg_id)):
            if value is not None:
                fields[key] = value
        return await self.request("send", **fields)

    async def location(self, lat: float, lon: float, ts: float | None = None) -> None:
        """Report this user's location (degrees; ``ts`` epoch seconds, None: the server's
        clock). No reply on success; an error comes as an ``error`` frame."""
        fields: Json = {"type": "location", "lat": lat, "lon": lon}
        if ts is not None:
            fields["ts"] = ts
        await self.send(fields)

    async def nearby_friends(
        self, page: int = 0, *, lat: float | None = None, lon: float | None = None
    ) -> Json:
        """One page of friends within this user's radius, nearest first (the
        ``nearby_friends`` reply, or an ``error``: ``no_location`` before any location).
        With ``lat`` and ``lon``, they are first applied as a location update."""
        fields: Json = {"page": page}
        if lat is not None and lon is not None:
            fields.update(lat=lat, lon=lon)
        return await self.request("nearby_friends", **fields)

    async def settings(self, **changes: bool | float) -> Json:
        """Change any of ``share_location``, ``radius_m``, ``visible_to_strangers`` (none:
        read them); returns every current setting (or an ``error``)."""
        return await self.request("settings", **changes)

    async def watch_strangers(self, on: bool = True) -> Json:
        """Start (or stop) ``stranger_nearby`` events for visible non-friends nearby."""
        return await self.request("watch_strangers", on=on)

    async def nearby_people(self, page: int = 0) -> Json:
        """One page of visible non-friends nearby (distances rounded to 100 m)."""
        return await self.request("nearby_people", page=page)

    async def group_presence(self, group: str) -> Json:
        """Which members of ``group`` are online now (the way to know it for a group too
        large for presence events)."""
        return await self.request("group_presence", group=group)

    async def sync(self, after: str = "0", limit: int = 100) -> Json:
        """One page of this user's messages after message id ``after`` (the ``messages``
        reply, or an ``error``)."""
        return await self.request("sync", after=after, limit=limit)

    async def sync_all(self, after: str = "0", limit: int = 100) -> list[Json]:
        """Every message after ``after``: pages of ``sync`` until ``more`` is false (the
        catch-up step of a device that was offline)."""
        messages: list[Json] = []
        while True:
            reply = await self.sync(after, limit)
            if reply.get("type") != "messages":
                raise RuntimeError(f"sync failed: {reply}")
            messages.extend(reply["messages"])
            if not reply["more"] or not reply["messages"]:
                return messages
            after = reply["messages"][-1]["message_id"]

    async def logout(self) -> None:
        await self.send({"type": "logout"})

    async def closed(self) -> tuple[int | None, str | None]:
        """Wait until the server closes the session, discarding messages; (code, reason)."""
        try:
            while True:
                await self.recv()
        except ConnectionClosed as exc:
            reason = exc.reason
            return (reason.code, reason.reason) if reason is not None else (None, None)

    async def aclose(self, code: int = 1000) -> None:
        await self.ws.aclose(code)


async def _greet(ws: WebSocketConnection, hello: Json) -> Client:
    await ws.send_message(orjson.dumps(hello).decode())
    error: Json | None = None
    try:
        first: Json = orjson.loads(await ws.get_message())
        if first.get("type") != "welcome":
            error = first
            await ws.get_message()  # the server closes right after its error frame
            raise SessionRefused(error, None)
        friends: Json = orjson.loads(await ws.get_message())
    except ConnectionClosed as exc:
        code = exc.reason.code if exc.reason is not None else None
        raise SessionRefused(error, code) from None
    return Client(ws, first, friends.get("friends", []))


def _hello(user: str | None, token: str | None, device: str) -> Json:
    hello: Json = {"type": "hello", "device": device}
    if token is not None:
        hello["token"] = token
    if user is not None:
        hello["user"] = user
    return hello


@asynccontextmanager
async def _session(ws: WebSocketConnection, hello: Json, heartbeat: bool) -> AsyncIterator[Client]:
    client = await _greet(ws, hello)
    with collapse_exception_groups():
        async with trio.open_nursery() as nursery:
            if heartbeat:
                nursery.start_soon(_heartbeat_loop, client)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()


async def _heartbeat_loop(client: Client) -> None:
    interval = float(client.welcome.get("heartbeat_interval", 5))
    interval = interval if math.isfinite(interval) and interval > 0 else 5.0
    try:
        while True:
            await trio.sleep(interval)
            await client.heartbeat()
    except ConnectionClosed:
        return


@asynccontextmanager
async def connect(
    url: str,
    *,
    user: str | None = None,
    token: str | None = None,
    device: str = "default",
    heartbeat: bool = False,
) -> AsyncIterator[Client]:
    """Open a session at ``url`` (``ws://HOST:PORT/ws``) with a token (or, against an
    ``--insecure`` server, a bare user). ``heartbeat=True`` sends heartbeats in the
    background at the interval the server asks for. Raises ``SessionRefused``."""
    async with (
        open_websocket_url(url) as ws,
        _session(ws, _hello(user, token, device), heartbeat) as client,
    ):
        yield client


@asynccontextmanager
async def connect_stream(
    stream: trio.abc.Stream,
    *,
    user: str | None = None,
    token: str | None = None,
    device: str = "default",
    heartbeat: bool = False,
) -> AsyncIterator[Client]:
    """Like ``connect`` over an already open stream (e.g. an in-memory one from
    ``geopresence.testing.open_memory_connection``)."""
    with collapse_exception_groups():
        async with trio.open_nursery() as nursery:
            # Typed for sockets, but any trio Stream works (in-memory ones included).
            ws = await wrap_client_stream(nursery, stream, "localhost", "/ws")  # type: ignore[arg-type]
            try:
                async with _session(ws, _hello(user, token, device), heartbeat) as client:
                    yield client
            finally:
                with trio.move_on_after(5) as cleanup:
                    cleanup.shield = True
                    await ws.aclose()
                nursery.cancel_scope.cancel()


class ApiError(Exception):
    """An HTTP API error: ``status``, wire ``code`` and ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _segment(value: str) -> str:
    """An id as one path segment: percent-encoded, its dots too when it is only dots (``.``
    and ``..`` are valid ids, which the HTTP client would otherwise resolve as dot segments:
    ``/v1/groups/g/members/..`` is ``/v1/groups/g``)."""
    segment = quote(value, safe="")
    return segment.replace(".", "%2E") if not segment.strip(".") else segment


class AdminClient:
    """The HTTP API. ``transport`` lets tests talk to the ASGI app in memory."""

    def __init__(
        self,
        base_url: str,
        admin_key: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        headers = {"authorization": f"Bearer {admin_key}"} if admin_key else {}
        self.http = httpx.AsyncClient(
            base_url=base_url, headers=headers, transport=transport, timeout=timeout
        )

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request; returns the decoded JSON (or text) body, raises ``ApiError``."""
        content = None if body is None else orjson.dumps(body)
        response = await self.http.request(method, path, content=content)
        if response.status_code >= 400:
            try:
                payload = response.json()
                code, message = payload["error"], payload["message"]
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", response.text
            raise ApiError(response.status_code, code, message)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    async def befriend(self, a: str, b: str) -> Json:
        result: Json = await self.call("PUT", f"/v1/friendships/{_segment(a)}/{_segment(b)}")
        return result

    async def unfriend(self, a: str, b: str) -> Json:
        result: Json = await self.call("DELETE", f"/v1/friendships/{_segment(a)}/{_segment(b)}")
        return result

    async def befriend_many(self, pairs: list[tuple[str, str]]) -> int:
        result = await self.call("POST", "/v1/friendships", {"pairs": [list(p) for p in pairs]})
        return int(result["created"])

    async def user(self, user: str) -> Json:
        result: Json = await self.call("GET", f"/v1/users/{_segment(user)}")
        return result

    async def friends(self, user: str) -> list[Json]:
        result = await self.call("GET", f"/v1/users/{_segment(user)}/friends")
        return list(result["friends"])

    async def logout(self, user: str, device: str | None = None) -> Json:
        body = {} if device is None else {"device": device}
        result: Json = await self.call("POST", f"/v1/users/{_segment(user)}/logout", body)
        return result

    async def token(self, user: str, ttl: float | None = None) -> str:
        """A token for ``user`` valid ``ttl`` seconds (None: the server's default, 24 h)."""
        body: Json = {"user": user} if ttl is None else {"user": user, "ttl": ttl}
        result = await self.call("POST", "/v1/tokens", body)
        return str(result["token"])

    async def set_group(self, group: str, members: list[str]) -> Json:
        result: Json = await self.call("PUT", f"/v1/groups/{_segment(group)}", {"members": members})
        return result

    async def group(self, group: str) -> Json:
        result: Json = await self.call("GET", f"/v1/groups/{_segment(group)}")
        return result

    async def delete_group(self, group: str) -> Json:
        result: Json = await self.call("DELETE", f"/v1/groups/{_segment(group)}")
        return result

    async def add_member(self, group: str, user: str) -> Json:
        result: Json = await self.call(
            "PUT", f"/v1/groups/{_segment(group)}/members/{_segment(user)}"
        )
        return result

    async def remove_member(self, group: str, user: str) -> Json:
        result: Json = await self.call(
            "DELETE", f"/v1/groups/{_segment(group)}/members/{_segment(user)}"
        )
        return result

    async def forget(self, user: str) -> Json:
        """``DELETE /v1/users/{user}``: everything held about ``user`` is deleted."""
        result: Json = await self.call("DELETE", f"/v1/users/{_segment(user)}")
        return result

    async def export(self, user: str) -> Json:
        """``GET /v1/users/{user}/export``: everything held about ``user``."""
        result: Json = await self.call("GET", f"/v1/users/{_segment(user)}/export")
        return result

    async def health(self) -> Json:
        result: Json = await self.call("GET", "/healthz")
        return result

    async def metrics(self) -> str:
        return str(await self.call("GET", "/metrics"))
