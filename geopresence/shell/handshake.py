"""Opening a session (shell): the WebSocket path, the page's origin, the hello and its token,
and refusals.

A connection is refused before its session (an ``error`` frame, then a close) for a wrong
path (HTTP 404), an ``Origin`` that ``--allowed-origins`` does not allow (HTTP 403,
``shell.origins``), no hello within ``hello_timeout`` (1008), a first message that is not a
valid hello (1008), a bad token or a refused device (1008) or a ping flood (4008); the
transport itself closes one with a message over ``max_message_bytes`` (1009).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import attrs
import trio

from geopresence.config import Config
from geopresence.core.hub import Hub
from geopresence.model.snowflake import CLOCK_SKEW_S, min_id_at
from geopresence.shell.auth import AuthError, verify_token
from geopresence.shell.metrics import Metrics
from geopresence.shell.origins import OriginPolicy
from geopresence.shell.transport import Closed, Connection
from geopresence.shell.transport_handshake import Request
from geopresence.wire.client_messages import Hello as HelloMessage
from geopresence.wire.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    CLOSE_REASONS,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
    ProtocolError,
    RequestId,
)
from geopresence.wire.protocol import decode, encode
from geopresence.wire.server_messages import Error

if TYPE_CHECKING:
    from geopresence.cluster.link import ClusterLink

log = logging.getLogger("geopresence")


@attrs.frozen
class Hello:
    """A valid hello: who connected, and the messages that came in the same read."""

    user: str
    device: str
    request_id: RequestId
    rest: list[str | bytes]


WS_PATH = "/ws"


class Handshake:
    """From an accepted transport to a known user and device, or a refusal.

    Times are seconds; ``now`` is the server clock (epoch seconds, token expiry)."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        hub: Hub,
        now: Callable[[], float],
        *,
        secret: str,
        cluster: ClusterLink | None,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._hub = hub
        self._now = now
        self._secret = secret
        self._cluster = cluster
        self.origins = OriginPolicy(config.allowed_origins, config.host)
        """The ``Origin`` check; the server sets its ``http_port`` once the HTTP API listens."""

    @property
    def http_port(self) -> int | None:
        """The bound HTTP port (the console's origin); None until the HTTP API listens."""
        return self.origins.http_port

    @http_port.setter
    def http_port(self, port: int) -> None:
        self.origins.http_port = port

    def accept_request(self, request: Request) -> Connection | None:
        """Complete the opening handshake on ``/ws``; any other path gets a 404, an
        ``Origin`` that may not connect a 403."""
        path = request.path.split("?", 1)[0]
        if path != WS_PATH:
            request.reject(404, body=b"geopresence: the WebSocket endpoint is /ws\n")
            return None
        refusal = self.origins.refusal(request.header_values("origin"), _header(request, "host"))
        if refusal is not None:
            log.debug("WebSocket handshake refused: %s", refusal)
            self._metrics.errors["forbidden"] += 1
            request.reject(403, body=f"geopresence: {refusal}\n".encode())
            return None
        return request.accept()

    async def read_hello(self, ws: Connection) -> Hello | None:
        """Wait for a valid hello; refuse (1008) anything else, and a ping flood (4008).

        Returns the user, device, the hello's id and the messages that arrived right after
        it, or None once the connection is refused."""
        config = self._config
        # Before hello there is no session to charge: up to rate_burst pings are answered,
        # the next abuse_limit ignored, and one more ends the connection with 4008.
        flooded = False

        def admit_ping() -> bool:
            nonlocal flooded
            if config.rate_limit <= 0 or ws.pings <= config.rate_burst:
                return True
            if ws.pings > config.rate_burst + config.abuse_limit:
                flooded = True
                hello_scope.cancel()
            return False

        ws.admit_ping = admit_ping
        with trio.move_on_after(config.hello_timeout) as hello_scope:
            try:
                frames = await ws.receive()
            except Closed:
                self.count_transport_close(ws)
                return None
            self._metrics.messages_in += 1
            try:
                message = decode(frames[0])
                if not isinstance(message, HelloMessage):
                    raise ProtocolError(
                        "bad_request",
                        "the first message must be a hello",
                        getattr(message, "id", None),
                    )
                user, device, request_id = self._authenticate(message)
                return Hello(user, device, request_id, frames[1:])
            except ProtocolError as exc:
                await self.refuse(ws, exc, CLOSE_POLICY)
                return None
        if flooded:
            self._hub.rate_limited += 1
            refusal = ProtocolError("rate_limited", "too many pings before hello")
            await self.refuse(ws, refusal, CLOSE_SLOW_CONSUMER)
            return None
        await self.refuse(ws, ProtocolError("unauthorized", "no hello in time"), CLOSE_POLICY)
        return None

    def _authenticate(self, hello: HelloMessage) -> tuple[str, str, RequestId]:
        if hello.token is not None:
            try:
                user = verify_token(self._secret, hello.token, self._now())
            except AuthError as exc:
                raise ProtocolError("unauthorized", str(exc), hello.id) from None
        elif self._config.insecure and hello.user is not None:
            user = hello.user
        elif self._config.insecure:
            raise ProtocolError("unauthorized", "hello needs a token or a user", hello.id)
        else:
            raise ProtocolError("unauthorized", "hello needs a token", hello.id)
        refusal = self._hub.session_refusal(user, hello.device, hello.id)
        if refusal is not None:
            raise refusal
        return user, hello.device, hello.id

    async def hold_in_cluster(self, ws: Connection, user: str) -> bool:
        """Before the session: this node holds every friendship of the user, read from
        Redis unless a session or request here holds them already (``FriendSlices``). The
        session needs them all (its friends' channels, ``friends_presence``): if Redis does
        not answer within the hello timeout, the connection is closed with 1013 (try again
        later) and no error frame, so that clients reconnect as after any drop, and False
        is returned. Multi-node only; ``released_in_cluster`` undoes it."""
        if self._cluster is None:
            return True
        with trio.move_on_after(self._config.hello_timeout):
            try:
                await self._cluster.hold([user])
                return True
            except Exception as exc:
                log.warning("redis: the friends of %s could not be read (%s)", user, exc)
        await self._try_again_later(ws, "friends could not be read: try again")
        return False

    async def _try_again_later(self, ws: Connection, reason: str) -> None:
        """Close with 1013 (try again later) and no error frame: clients reconnect as after
        any drop."""
        self._metrics.closes[CLOSE_TRY_AGAIN_LATER] += 1
        with trio.move_on_after(self._config.close_timeout):
            await ws.close(CLOSE_TRY_AGAIN_LATER, reason)

    def released_in_cluster(self, user: str) -> None:
        """A session ``hold_in_cluster`` held for has ended."""
        if self._cluster is not None:
            self._cluster.release([user])

    async def alive_in_cluster(self, ws: Connection, user: str, device: str) -> float | None:
        """Before the welcome: the device is held here in Redis (two round trips), so nothing
        the client does after the welcome can reach Redis ahead of it. If Redis is slow or
        down, the session starts anyway and the queued report catches up. Returns when the
        session opens (epoch seconds), or None if Redis refused the device (a logout made
        meanwhile on another node, 4001; a newer connection elsewhere, 4002): the
        connection is then closed so, without a welcome."""
        now = self._now()
        if self._cluster is None:
            return now
        with trio.move_on_after(self._config.hello_timeout):
            try:
                code = await self._cluster.presence.alive_now(user, device, now)
                if code is not None:
                    self._metrics.closes[code] += 1
                    with trio.move_on_after(self._config.close_timeout):
                        await ws.close(code, CLOSE_REASONS[code])
                    return None
            except Exception as exc:
                log.warning("redis: %s/%s not yet alive in Redis (%s)", user, device, exc)
        return now

    async def own_in_cluster(self, ws: Connection, user: str) -> bool:
        """Before the session: with several nodes, this node listens to the user's own
        channel and keeps its settings (read from Redis unless kept already). Without them
        the session would decide with the wrong ones: if Redis does not give them within the
        hello timeout, the connection is closed with 1013, as ``hold_in_cluster`` does, and
        False is returned. Call ``left_cluster`` after it, whatever it returned."""
        if self._cluster is None:
            return True
        with trio.move_on_after(self._config.hello_timeout):
            try:
                await self._cluster.own(user)
                return True
            except Exception as exc:
                log.warning("redis: the settings of %s could not be read (%s)", user, exc)
        await self._try_again_later(ws, "settings could not be read: try again")
        return False

    @contextlib.asynccontextmanager
    async def covering_in_cluster(self, user: str) -> AsyncIterator[None]:
        """Open the session in this block: with several nodes, the statuses of the user's
        friends and small groups' members are kept here first, and the friends' settings
        (``Covered.covering``: read from Redis once this node listens to their changes), so
        that its ``friends_presence`` is right, and its chat channels are in Redis, so
        that a message sent after its ``welcome`` reaches it live. Bounded by the hello
        timeout: if Redis is slow, the session opens anyway, the friends' next transitions
        correct it, and the chat its channels may have missed is read back."""
        if self._cluster is None:
            yield
            return
        since = min_id_at(self._now() - CLOCK_SKEW_S)  # below any id issued from now on
        covered = False
        async with contextlib.AsyncExitStack() as stack:
            with trio.move_on_after(self._config.hello_timeout):
                try:
                    await stack.enter_async_context(self._cluster.covering(user))
                    covered = True
                except Exception as exc:
                    log.warning("redis: the friends' statuses of %s were not read (%s)", user, exc)
            yield
            if not covered:
                self._cluster.unconfirmed(user, since)

    async def view_in_cluster(self, user: str) -> None:
        """After the welcome, before the client's first message is read: this node listens
        to the user's own channel and holds the live locations of the user and its online
        friends (read from Redis; the node heard of none of them if no session here needed
        them). Bounded by the hello timeout: if Redis is slow, the session goes on and the
        friends' next moves fill the view. Multi-node only; it holds nothing of its own
        (``left_cluster`` undoes ``own_in_cluster``)."""
        if self._cluster is None:
            return
        with trio.move_on_after(self._config.hello_timeout):
            try:
                await self._cluster.open_view(user)
            except Exception as exc:
                log.warning("redis: the friends' locations of %s were not read (%s)", user, exc)

    def left_cluster(self, user: str) -> None:
        """A session ``own_in_cluster`` was called for has ended."""
        if self._cluster is not None:
            self._cluster.close_view(user)

    # ------------------------------------------------------------------ refusals and closes

    async def refuse(self, ws: Connection, error: ProtocolError, code: int) -> None:
        """Send ``error``, then close with ``code`` (the peer has ``close_timeout`` to
        answer)."""
        log.debug("connection refused before its session (%s), close %d", error.message, code)
        self._metrics.errors[error.code] += 1
        self._metrics.closes[code] += 1
        ws.send(encode(Error(re=error.re, code=error.code, message=error.message)))
        with trio.move_on_after(self._config.close_timeout):
            await ws.close(code, error.message[:120])

    def close_quietly(self, ws: Connection, code: int) -> None:
        """Close a connection that has no session (at shutdown: 1001): its reader sees the
        peer's answer."""
        self._metrics.closes[code] += 1
        ws.start_close(code, CLOSE_REASONS[CLOSE_GOING_AWAY])

    def count_transport_close(self, ws: Connection) -> None:
        """Count the close the transport made by itself (1002, 1007, 1009), once closed: no
        other part counted it."""
        code = ws.failed_with
        if code is not None:
            self._metrics.closes[code] += 1
            if code == CLOSE_TOO_BIG:
                self._metrics.errors["too_large"] += 1


def _header(request: Request, name: str) -> str | None:
    """Header ``name``'s value when it appears exactly once, else None."""
    values = request.header_values(name)
    return values[0] if len(values) == 1 else None
