"""What the HTTP API needs of the node it serves (shell): the ``ApiHost`` protocol, which
``shell.server.Server`` implements; the routes (``shell.http_api``, ``shell.http_membership``,
``shell.http_users``) depend on it, not on the server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import AbstractContextManager
from typing import Literal, Protocol, TypeVar

import trio

from geopresence.config import Config
from geopresence.core.forget import ForgetReport
from geopresence.core.hub import Hub
from geopresence.core.statuses import Held
from geopresence.core.store import UserSettings
from geopresence.model.chat_message import ChatMessage
from geopresence.model.records import Record
from geopresence.shell.history import HistoryKeeper
from geopresence.shell.http_routing import HttpError
from geopresence.shell.metrics import Metrics


class ApiHost(Protocol):
    """What the HTTP API needs of the node it serves (``Server`` is one)."""

    hub: Hub
    metrics: Metrics
    config: Config
    admin_key: str | None
    """None: --insecure, no key needed."""
    secret: str
    ws_port: int | None
    """The bound WebSocket port (None before it listens): the console connects to it."""
    history_keeper: HistoryKeeper
    """The location history files (exports read them)."""

    @property
    def persistence(self) -> Literal["memory", "disk", "redis"]:
        """Where the durable state is kept (``POST /v1/snapshot`` needs ``disk``)."""
        ...

    def now(self) -> float:
        """Server time, epoch seconds."""
        ...

    async def durable(self, seq: int) -> None:
        """Return once journal record ``seq`` is durable."""

    async def flush_cluster_presence(self) -> None:
        """Multi-node: return once this node's presence reports reached Redis."""

    async def hold(self, users: Collection[str], groups: Collection[str] = ()) -> None:
        """Multi-node: every friendship and group of ``users``, and ``groups``, are held
        here until ``release`` (read from Redis if need be; raises if they cannot be). One
        node: nothing to do."""

    def release(self, users: Collection[str], groups: Collection[str] = ()) -> None:
        """The end of one ``hold(users, groups)``."""

    def unchanged(self, op: Record) -> None:
        """Multi-node: an admin write found its change already made (perhaps by a node that
        died before announcing it): written again, harmlessly, and announced. One node:
        nothing."""

    def replacing(self, group: str) -> AbstractContextManager[None]:
        """Multi-node: for the block, ``group`` (held) is replaced here in slices, so that
        no change heard meanwhile is applied over half of it. One node: nothing."""

    async def read_statuses(self, users: Collection[str]) -> Mapping[str, Held]:
        """Multi-node: ``users``' cluster-wide statuses as Redis has them (for
        ``Statuses.overlay``; raises if Redis does not answer). One node: none to read."""
        ...

    async def read_settings(self, user: str) -> UserSettings | None:
        """Multi-node: ``user``'s settings as Redis has them (a node keeps only those its
        sessions need; raises if Redis does not answer). One node: None (the hub's)."""
        ...

    async def count_messages(self, user: str) -> int | None:
        """Multi-node: how many messages a forget of ``user`` deletes in Redis (raises if
        Redis does not answer). One node: None (the forget's report counts them)."""
        ...

    def messages_of(self, user: str) -> AsyncIterator[list[ChatMessage]] | None:
        """Multi-node: every message of ``user`` in Redis, ascending, in batches (a node
        keeps none; the reads raise if Redis does not answer). One node: None (the hub's)."""
        ...

    async def devices_held(self, user: str) -> set[str]:
        """``user``'s alive devices: this node's, and with several nodes every node's as
        Redis says (within half a second; this node's alone if it does not answer)."""

    async def take_snapshot(self, *, force: bool = False) -> dict[str, object]:
        """Write a snapshot now and describe it."""
        ...

    async def forget_user(self, user: str) -> tuple[ForgetReport, str | None]:
        """Forget ``user`` and return once it is durable and gone from the files (the
        report, and what failed: None if nothing)."""
        ...

    def stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""


@contextlib.asynccontextmanager
async def holding(
    server: ApiHost, users: Collection[str], groups: Collection[str] = ()
) -> AsyncIterator[None]:
    """``server.hold(users, groups)`` for the block: a request that reads or changes the
    friends or groups of ``users``, or ``groups`` (with several nodes, a node holds only
    its own users' friendships and groups). 503 ``internal`` if Redis does not give them
    within the hello timeout."""
    try:
        with trio.fail_after(server.config.hello_timeout):
            await server.hold(users, groups)
    except Exception as exc:
        cause = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
        problem = f"the friend lists or groups could not be read from Redis ({cause})"
        raise HttpError(503, "internal", f"{problem}: try again") from None
    try:
        yield
    finally:
        server.release(users, groups)


async def statuses_of(server: ApiHost, users: Collection[str]) -> Mapping[str, Held]:
    """``server.read_statuses(users)`` for an answer about users no session on this node
    may need (with several nodes, a node keeps only the statuses its sessions need): lay it
    over the kept ones with ``hub.statuses.overlay`` around the synchronous answer. 503
    ``internal`` if Redis does not answer within the hello timeout."""
    return await _from_redis(server, "statuses", lambda: server.read_statuses(users))


async def settings_of(server: ApiHost, user: str) -> UserSettings | None:
    """``server.read_settings(user)``, for an answer about a user no session on this node
    may need; 503 ``internal`` as ``statuses_of``."""
    return await _from_redis(server, "settings", lambda: server.read_settings(user))


async def messages_count_of(server: ApiHost, user: str) -> int | None:
    """``server.count_messages(user)``; 503 ``internal`` as ``statuses_of``."""
    return await _from_redis(server, "messages", lambda: server.count_messages(user))


T = TypeVar("T")


async def _from_redis(server: ApiHost, what: str, read: Callable[[], Awaitable[T]]) -> T:
    """``read()``, or 503 ``internal`` if Redis does not answer within the hello timeout."""
    try:
        with trio.fail_after(server.config.hello_timeout):
            return await read()
    except Exception as exc:
        cause = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
        raise HttpError(
            503, "internal", f"the {what} could not be read from Redis ({cause}): try again"
        ) from None
