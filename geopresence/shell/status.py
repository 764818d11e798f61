"""One status line a minute at INFO, so that a serving node is not silent while used.

    status: 12 connections, 10 users online, 3.2 msg/s in, 8.1 msg/s out (last 60 s)

with ``, journal lag N records`` added while records wait to become durable (written and,
under ``--fsync always``, fsynced; with Redis, stored there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import trio

from geopresence.shell.metrics import Metrics

STATUS_INTERVAL: Final = 60.0
"""Seconds between two status lines."""

log = logging.getLogger("geopresence.status")


class StatusLine:
    """The numbers of one status line, as rates over the time since the previous one."""

    def __init__(
        self,
        metrics: Metrics,
        connections: Callable[[], int],
        users_online: Callable[[], int],
        journal_lag: Callable[[], int] | None = None,
    ) -> None:
        self._metrics = metrics
        self._connections = connections
        self._users_online = users_online
        self._journal_lag = journal_lag
        self._last: tuple[float, int, int] | None = None

    def start(self, now: float) -> None:
        self._last = (now, self._metrics.messages_in, self._metrics.messages_out)

    def line(self, now: float) -> str:
        """The status at ``now``; the rates cover the time since the previous call."""
        if self._last is None:
            self.start(now)
        assert self._last is not None
        since, messages_in, messages_out = self._last
        self.start(now)
        elapsed = max(now - since, 1e-9)
        rate_in = (self._metrics.messages_in - messages_in) / elapsed
        rate_out = (self._metrics.messages_out - messages_out) / elapsed
        text = (
            f"status: {self._connections()} connections, {self._users_online()} users online, "
            f"{rate_in:.1f} msg/s in, {rate_out:.1f} msg/s out (last {elapsed:.0f} s)"
        )
        lag = self._journal_lag() if self._journal_lag is not None else 0
        if lag > 0:
            text += f", journal lag {lag} records"
        return text

    async def run(self, interval: float = STATUS_INTERVAL) -> None:
        """Log a status line every ``interval`` seconds until cancelled."""
        self.start(trio.current_time())
        while True:
            await trio.sleep(interval)
            log.info("%s", self.line(trio.current_time()))
