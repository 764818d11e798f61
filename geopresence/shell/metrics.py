"""Counters and gauges rendered in the Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

PREFIX = "geopresence_"


class Metrics:
    """Process-wide counters, plus gauges read from live state at render time."""

    def __init__(self) -> None:
        self.messages_in = 0
        self.messages_out = 0
        self.connections_total = 0
        self.errors: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()
        self.coalesced = 0
        self.history_errors = 0
        self.connection_failures = 0
        self.http_requests: Counter[int] = Counter()
        self._gauges: list[tuple[str, str, Callable[[], float]]] = []
        self._counters: list[tuple[str, str, Callable[[], list[tuple[str, float]]]]] = []

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Register a gauge whose value ``read()`` returns when rendered."""
        self._gauges.append((name, help_text, read))

    def counter(
        self, name: str, help_text: str, read: Callable[[], list[tuple[str, float]]]
    ) -> None:
        """Register a counter family kept elsewhere (e.g. by the core): ``read()`` returns
        ``(labels, value)`` samples, labels as ``{key="value"}`` or ``""``."""
        self._counters.append((name, help_text, read))

    def render(self) -> str:
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {PREFIX}{name} {help_text}")
            lines.append(f"# TYPE {PREFIX}{name} {kind}")
            for labels, value in samples:
                lines.append(f"{PREFIX}{name}{labels} {_number(value)}")

        for name, help_text, read in self._gauges:
            family(name, "gauge", help_text, [("", read())])
        for name, help_text, read_samples in self._counters:
            family(name, "counter", help_text, read_samples())
        family(
            "sessions_opened_total",
            "counter",
            "WebSocket sessions opened (valid hellos).",
            [("", self.connections_total)],
        )
        family(
            "messages_in_total",
            "counter",
            "WebSocket frames received from clients.",
            [("", self.messages_in)],
        )
        family(
            "messages_out_total",
            "counter",
            "WebSocket frames sent to clients.",
            [("", self.messages_out)],
        )
        family(
            "errors_total",
            "counter",
            "Error replies and refusals, by error code.",
            [(f'{{code="{code}"}}', n) for code, n in sorted(self.errors.items())],
        )
        family(
            "closes_total",
            "counter",
            "Connections closed by the server, by close code.",
            [(f'{{code="{code}"}}', n) for code, n in sorted(self.closes.items())],
        )
        family(
            "coalesced_total",
            "counter",
            "Queued frames replaced by a newer state before delivery.",
            [("", self.coalesced)],
        )
        family(
            "history_errors_total",
            "counter",
            "Location history writes that failed (disk full, permissions).",
            [("", self.history_errors)],
        )
        family(
            "connection_failures_total",
            "counter",
            "Connection tasks that failed with an unexpected error (a bug: see the log).",
            [("", self.connection_failures)],
        )
        family(
            "http_requests_total",
            "counter",
            "HTTP API requests, by status.",
            [(f'{{status="{s}"}}', n) for s, n in sorted(self.http_requests.items())],
        )
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))
