"""The handshake's cluster step (shell): a device that Redis says was logged out after its
connection opened (a logout through another node reached Redis first) is not welcomed: the
connection closes with 4001, and the session opens at the time its device was reported."""

from __future__ import annotations

from typing import Any

from geopresence.config import Config
from geopresence.core.hub import Hub
from geopresence.core.settings import HubSettings
from geopresence.core.store import MemoryStore
from geopresence.shell.handshake import Handshake
from geopresence.shell.metrics import Metrics
from geopresence.wire.errors import CLOSE_LOGGED_OUT
from tests.helpers import RecordingSink


class Presence:
    def __init__(self, alive: bool) -> None:
        self.alive = alive
        self.asked: list[tuple[str, str, float]] = []

    async def alive_now(self, user: str, device: str, at: float) -> bool:
        self.asked.append((user, device, at))
        return self.alive


class Cluster:
    def __init__(self, alive: bool) -> None:
        self.presence = Presence(alive)


class Socket:
    def __init__(self) -> None:
        self.closed: list[tuple[int, str]] = []

    async def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))


def handshake(cluster: Any, metrics: Metrics) -> Handshake:
    hub = Hub(HubSettings(), MemoryStore(), RecordingSink())
    return Handshake(Config(), metrics, hub, lambda: 100.0, secret="s", cluster=cluster)


async def test_a_device_logged_out_first_is_closed_4001_before_its_welcome() -> None:
    metrics, ws = Metrics(), Socket()
    refused = handshake(Cluster(alive=False), metrics)
    assert await refused.alive_in_cluster(ws, "alice", "phone") is None  # type: ignore[arg-type]
    assert ws.closed == [(CLOSE_LOGGED_OUT, "logged out")]
    assert metrics.closes[CLOSE_LOGGED_OUT] == 1


async def test_a_session_opens_at_the_time_its_device_was_reported() -> None:
    cluster, ws = Cluster(alive=True), Socket()
    assert await handshake(cluster, Metrics()).alive_in_cluster(ws, "bob", "phone") == 100.0  # type: ignore[arg-type]
    assert cluster.presence.asked == [("bob", "phone", 100.0)]
    assert await handshake(None, Metrics()).alive_in_cluster(ws, "bob", "phone") == 100.0  # type: ignore[arg-type]
    assert ws.closed == []
