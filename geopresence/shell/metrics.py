"""Counters and gauges rendered in the Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from geopresence.cluster.link import ClusterLink
    from geopresence.core.hub import Hub

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


def register_hub_metrics(metrics: Metrics, hub: Hub) -> None:
    """The core's counters and gauges (the core keeps plain numbers and knows no metrics)."""
    metrics.gauge(
        "users_online",
        "Users online now (with --redis: with a device on this node; sum over the nodes).",
        lambda: hub.online_count(),
    )  # fmt: skip
    metrics.gauge(
        "friendships",
        "Friendships in this node's graph (several nodes: those with a held user at one end).",
        hub.store.friendship_count,
    )
    if hub.replicator is not None:
        metrics.gauge(
            "statuses_kept",
            "Users whose cluster-wide status this node keeps (its sessions' users, their "
            "friends and small groups' members).",
            lambda: hub.statuses.kept,
        )
        metrics.gauge(
            "settings_kept",
            "Users whose settings this node keeps (its sessions' users and their friends).",
            hub.store.settings_count,
        )
    nearby = hub.nearby
    metrics.gauge(
        "locations", "Users with a live location in the cache.", lambda: len(nearby.locations)
    )
    metrics.counter(
        "location_updates_total",
        "Location updates by result (ignored: older than the stored one).",
        lambda: [
            ('{result="accepted"}', nearby.updates_accepted),
            ('{result="ignored"}', nearby.updates_ignored),
        ],
    )
    metrics.counter(
        "rate_limited_total",
        "Client messages refused by the per-connection rate limit.",
        lambda: [("", hub.rate_limited)],
    )
    chat = hub.chat
    metrics.gauge(
        "chat_messages_stored",
        "Chat messages held in memory (0 with several nodes: Redis holds them).",
        lambda: len(chat.store),
    )
    metrics.counter(
        "chat_messages_total",
        "Chat sends by result (duplicate: a resend answered with the stored message).",
        lambda: [('{result="stored"}', chat.sent), ('{result="duplicate"}', chat.duplicates)],
    )
    metrics.counter(
        "users_forgotten_total",
        "Users forgotten on this node (DELETE /v1/users/{user}, or another node's).",
        lambda: [("", hub.forgetting.forgotten)],
    )


def register_cluster_metrics(metrics: Metrics, cluster: ClusterLink) -> None:
    """The node's Redis side (multi-node), once it has joined (its broker exists)."""
    broker = cluster.broker
    assert broker is not None
    metrics.counter(
        "redis_envelopes_total",
        "Channel publishes: received from other nodes, dropped (Redis queue full), or "
        "failed (Redis unreachable; pub/sub commands included).",
        lambda: [
            ('{result="received"}', broker.received),
            ('{result="dropped"}', broker.dropped),
            ('{result="failed"}', broker.failed),
        ],
    )
    metrics.gauge(
        "redis_pending",
        "Commands queued for Redis.",
        lambda: (
            broker.pending
            + cluster.journal.pending
            + cluster.presence.pending
            + cluster.strangers.pending
        ),
    )
    assert cluster.holdings is not None
    slices, groups = cluster.holdings.friends, cluster.holdings.groups
    metrics.gauge(
        "users_held",
        "Users whose friendships this node holds (a session or request of theirs is here).",
        lambda: len(slices),
    )
    metrics.gauge(
        "groups_held",
        "Groups this node holds (a member's session or a request about it is here).",
        lambda: len(groups),
    )
    metrics.counter(
        "redis_feed_applied_total",
        "Changes of other nodes applied here.",
        lambda: [("", cluster.journal.feed.applied)],
    )
    metrics.counter(
        "presence_transitions_decided_total",
        "Online/offline transitions this node decided.",
        lambda: [("", cluster.presence.transitions)],
    )
    metrics.counter(
        "redis_errors_total",
        "Failed Redis round trips: retried (journal: acks wait; presence: reports wait) or "
        "not (strangers: positions dropped, a nearby_people answered with an error).",
        lambda: [
            ('{part="journal"}', cluster.journal.write_errors),
            ('{part="presence"}', cluster.presence.errors),
            ('{part="strangers"}', cluster.strangers.errors),
        ],
    )
    metrics.counter(
        "presence_swept_total",
        "Devices of nodes whose lease lapsed ended by this node's sweeper.",
        lambda: [("", cluster.presence.swept)],
    )
