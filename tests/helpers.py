"""Helpers shared by the test modules (import them from here, not from another test file)."""

from __future__ import annotations

from typing import Any

import orjson

from geopresence.core.broker import ConnId
from geopresence.wire.outbox import Outgoing


class RecordingSink:
    def __init__(self) -> None:
        self.frames: dict[ConnId, list[dict[str, Any]]] = {}
        self.closed: dict[ConnId, int] = {}

    def send(self, conn: ConnId, message: Outgoing) -> None:
        self.frames.setdefault(conn, []).append(orjson.loads(message.text))

    def close(self, conn: ConnId, code: int, reason: str) -> None:
        assert conn not in self.closed, "closed twice"
        self.closed[conn] = code

    def take(self, conn: ConnId) -> list[dict[str, Any]]:
        return self.frames.pop(conn, [])
