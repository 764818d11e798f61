"""The hub's settings: domain limits and timings, read from ``Config`` (sans-I/O)."""

from __future__ import annotations

from typing import Any

import attrs

from geopresence.config import Config


def _config_default(name: str) -> Any:
    """``Config``'s default of field ``name``: the one place that says what it is."""
    return attrs.fields_dict(Config)[name].default


@attrs.frozen(kw_only=True)
class HubSettings:
    """Domain limits and timings (seconds, metres): the ``Config`` fields the hub reads
    (``from_config``), with ``Config``'s defaults for a hub built without one (tests)."""

    heartbeat_interval: float = _config_default("heartbeat_interval")
    offline_after: float = _config_default("offline_after")
    location_ttl: float = _config_default("location_ttl")
    default_radius: float = attrs.field(
        default=_config_default("radius"), metadata={"config": "radius"}
    )
    max_radius: float = _config_default("max_radius")
    strangers_query_burst: int = _config_default("strangers_query_burst")
    strangers_query_interval: float = _config_default("strangers_query_interval")
    presence_fanout_limit: int = _config_default("presence_fanout_limit")
    max_friends: int = _config_default("max_friends")
    max_group_size: int = _config_default("max_group_size")
    node_id: int = _config_default("node_id")
    max_devices_per_user: int = _config_default("max_devices_per_user")
    max_connections_per_user: int = _config_default("max_connections_per_user")
    rate_limit: float = _config_default("rate_limit")
    rate_burst: int = _config_default("rate_burst")
    abuse_limit: int = _config_default("abuse_limit")
    queue_size: int = _config_default("queue_size")
    state_queue_size: int = _config_default("state_queue_size")
    queue_bytes: int = _config_default("queue_bytes")
    """These three bound a connection's line of replies too (``Replies``)."""

    @classmethod
    def from_config(cls, config: Config) -> HubSettings:
        """The settings ``config`` gives the hub (each field of the same name, ``radius``
        for ``default_radius``)."""
        return cls(
            **{
                field.name: getattr(config, field.metadata.get("config", field.name))
                for field in attrs.fields(cls)
            }
        )
