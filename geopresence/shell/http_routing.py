"""HTTP plumbing of the admin API (shell): ASGI types, requests and error responses, the route
table's entries, the body reader and the lifespan protocol. ``http_api`` holds the route
table (its handlers there, in ``http_membership`` and in ``http_users``)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, Final

import attrs
import orjson
import trio

from geopresence.wire.errors import ErrorCode

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY_BYTES: Final = 4 * 1024 * 1024
"""Largest request body (a bulk import of 10,000 pairs is well under 1 MiB)."""

BODY_TIMEOUT_S: Final = 30.0
"""Longest wait for a whole request body: a client sending one slowly must not hold a
request (and up to ``MAX_BODY_BYTES`` of memory) for ever."""

STATUS_OF: Final[dict[ErrorCode, int]] = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "too_large": 413,
    "rate_limited": 429,
    "no_location": 404,
    "internal": 500,
}


class HttpError(Exception):
    """An error response: ``status`` with body ``{"error": code, "message": message}``
    and any extra ``headers`` (e.g. ``allow`` on a 405)."""

    def __init__(
        self,
        status: int,
        code: ErrorCode,
        message: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code: ErrorCode = code
        self.message = message
        self.headers = headers or []


@attrs.frozen
class Request:
    """A parsed request: path parameters (validated ids), query string and raw body."""

    method: str
    path: str
    params: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON (an empty body is ``{}``); bad_request if it is not JSON."""
        if not self.body.strip():
            return {}
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise HttpError(400, "bad_request", f"body is not valid JSON: {exc}") from None

    def json_object(self) -> dict[str, Any]:
        body = self.json()
        if not isinstance(body, dict):
            raise HttpError(400, "bad_request", "body must be a JSON object")
        return body


@attrs.frozen
class Streamed:
    """A response body sent as it is made (``more_body`` chunks, HTTP/1.1 chunked): for
    documents too large to hold whole. An error part way cuts the response off."""

    chunks: AsyncIterator[bytes]
    content_type: bytes = b"application/json"


async def send_streamed(send: Send, status: int, body: Streamed) -> None:
    """Send ``body`` as the response, chunk by chunk."""
    headers = [(b"content-type", body.content_type)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    async for chunk in body.chunks:
        if chunk:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


Response = tuple[int, Any]
Handler = Callable[[Request], Response | Awaitable[Response]]


@attrs.frozen
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    admin: bool = True
    """Needs ``Authorization: Bearer ADMIN_KEY`` (unless the server is --insecure)."""


def path_pattern(template: str) -> re.Pattern[str]:
    """``/v1/users/{user}`` -> a regex with a named group per ``{param}`` (one segment)."""
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
    return re.compile(f"^{regex}$")


def status_for(code: ErrorCode) -> int:
    # A domain limit (max_friends, group size) is not an oversized body: 409 Conflict.
    return 409 if code == "too_large" else STATUS_OF[code]


async def read_body(receive: Receive) -> bytes:
    """The request's body, at most ``MAX_BODY_BYTES`` (else 413) within ``BODY_TIMEOUT_S``
    (else 408)."""
    with trio.move_on_after(BODY_TIMEOUT_S):
        return await _read_body(receive)
    raise HttpError(408, "bad_request", f"body not received within {BODY_TIMEOUT_S:g} s")


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HttpError(400, "bad_request", "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HttpError(413, "too_large", f"body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
