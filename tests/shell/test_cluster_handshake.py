"""The handshake's cluster step (shell): a device Redis refuses (a logout made after its
connection opened reached Redis first, 4001; a newer connection holds it elsewhere, 4002)
is not welcomed: the connection closes so; else the session opens at the time its device
was reported."""

from __future__ import annotations

from typing import Any

from geopresence.config import Config
from geopresence.core.hub import Hub
from geopresence.core.settings import HubSettings
from geopresence.core.store import MemoryStore
from geopresence.shell.handshake import Handshake
from geopresence.shell.metrics import Metrics
from geopresence.wire.errors import CLOSE_LOGGED_OUT, CLOSE_REPLACED, CLOSE_TRY_AGAIN_LATER
from tests.helpers import RecordingSink


class Presence:
    def __init__(self, refused: int | None) -> None:
        self.refused = refused
        self.asked: list[tuple[str, str, float]] = []

    async def alive_now(self, user: str, device: str, at: float) -> int | None:
        self.asked.append((user, device, at))
        return self.refused


class Cluster:
    def __init__(self, refused: int | None) -> None:
        self.presence = Presence(refused)


class Socket:
    def __init__(self) -> None:
        self.closed: list[tuple[int, str]] = []

    async def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))


def handshake(cluster: Any, metrics: Metrics) -> Handshake:
    hub = Hub(HubSettings(), MemoryStore(), RecordingSink())
    return Handshake(Config(), metrics, hub, lambda: 100.0, secret="s", cluster=cluster)


async def test_a_device_redis_refuses_is_closed_before_its_welcome() -> None:
    metrics, ws = Metrics(), Socket()
    for code in (CLOSE_LOGGED_OUT, CLOSE_REPLACED):
        refused = handshake(Cluster(refused=code), metrics)
        assert await refused.alive_in_cluster(ws, "alice", "phone") is None  # type: ignore[arg-type]
    assert ws.closed == [
        (CLOSE_LOGGED_OUT, "logged out"),
        (CLOSE_REPLACED, "replaced by a newer connection"),
    ]
    assert metrics.closes[CLOSE_LOGGED_OUT] == metrics.closes[CLOSE_REPLACED] == 1


async def test_a_session_opens_at_the_time_its_device_was_reported() -> None:
    cluster, ws = Cluster(refused=None), Socket()
    assert await handshake(cluster, Metrics()).alive_in_cluster(ws, "bob", "phone") == 100.0  # type: ignore[arg-type]
    assert cluster.presence.asked == [("bob", "phone", 100.0)]
    assert await handshake(None, Metrics()).alive_in_cluster(ws, "bob", "phone") == 100.0  # type: ignore[arg-type]
    assert ws.closed == []


class Unreadable:
    """A cluster whose Redis gives neither friendships nor settings."""

    async def hold(self, users: list[str]) -> None:
        raise ConnectionError("redis down")

    async def own(self, user: str) -> None:
        raise ConnectionError("redis down")


async def test_a_session_redis_cannot_start_is_told_what_could_not_be_read() -> None:
    metrics, ws = Metrics(), Socket()
    refused = handshake(Unreadable(), metrics)
    assert await refused.hold_in_cluster(ws, "alice") is False  # type: ignore[arg-type]
    assert await refused.own_in_cluster(ws, "alice") is False  # type: ignore[arg-type]
    assert ws.closed == [
        (CLOSE_TRY_AGAIN_LATER, "friends could not be read: try again"),
        (CLOSE_TRY_AGAIN_LATER, "settings could not be read: try again"),
    ]
    assert metrics.closes[CLOSE_TRY_AGAIN_LATER] == 2
