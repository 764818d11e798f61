"""What the strangers part publishes on geohash-cell channels, and on which (sans-I/O).

A visible user is published to the channels of every prefix of its cell (one per precision,
``cell_channels``), so watchers of any cover precision hear it; a move between cells goes to
the old cells' channels as well, so that watchers there see it leave. With several nodes the
events travel between them (``geopresence.cluster.channel_events``).
"""

from __future__ import annotations

import attrs

from geopresence.core.locations import Location
from geopresence.model.geocells import MAX_PRECISION
from geopresence.wire.server_messages import StrangerGoneReason


def cell_channel(cell: str) -> str:
    """The channel of one geohash cell."""
    return f"cell:{cell}"


def cell_channels(*codes: str | None) -> set[str]:
    """The channels of every prefix (precision 1..MAX_PRECISION) of the given cells (None:
    none)."""
    return {cell_channel(code[:p]) for code in codes if code for p in range(1, MAX_PRECISION + 1)}


@attrs.frozen(slots=True)
class StrangerEvent:
    """Published on cell channels when a visible user enters a coarse cell; ``location`` is
    that cell's centre (never the exact position) and the ``ts`` of the update that entered
    it; ``now``: when it was published (server seconds)."""

    user: str
    location: Location
    now: float


@attrs.frozen(slots=True)
class StrangerGoneEvent:
    """Published on cell channels when a visible user stops being visible."""

    user: str
    reason: StrangerGoneReason
