"""Where the hub's channel publishes go, and the frames' coalesce keys (sans-I/O).

Every publish of the hub and its features goes through one ``Fanout``, whose scope says how
far it reaches (``PublishScope``). The scope is set for the length of one step (``scoped``):
applying another node's change publishes nothing and journals nothing (its origin did both),
and events every node derives itself (expiry, presence transitions from the feed) reach this
node's subscribers only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Set
from contextlib import contextmanager
from typing import Literal

from geopresence.core.broker import Broker, ConnId
from geopresence.core.nearby_views import NEARBY_TAG
from geopresence.core.stranger_queries import STRANGER_TAG

PublishScope = Literal["all", "local", "none"]
"""Where the hub's publishes go: every node, this node's subscribers only (events every node
derives itself), or nowhere (applying another node's change, whose origin published them)."""


def presence_key(user: str) -> tuple[str, str]:
    """Coalesce key of frames that carry ``user``'s presence state."""
    return ("presence", user)


def keys_about(user: str) -> tuple[tuple[str, str], ...]:
    """Every coalesce key of frames about ``user``: a friendship change seals them all, so no
    later presence or position can be delivered ahead of it."""
    return (presence_key(user), (NEARBY_TAG, user), (STRANGER_TAG, user))


class Fanout:
    """Publishes on ``broker`` as far as the current scope allows."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._scope: PublishScope = "all"

    def publish(
        self, channels: Iterable[str], event: object, exclude: Set[ConnId] = frozenset()
    ) -> None:
        """Publish a channel event, as far as the current scope allows (``PublishScope``)."""
        scope = self._scope
        if scope == "all":
            self.broker.publish(channels, event, exclude)
        elif scope == "local":
            self.broker.publish_local(channels, event, exclude)

    @property
    def replaying(self) -> bool:
        """True while applying another node's change (``RemoteChanges.apply_feed``): nothing is
        published, journaled or refused for a limit again (the origin did that)."""
        return self._scope == "none"

    @contextmanager
    def scoped(self, scope: PublishScope) -> Iterator[None]:
        """Publish within ``scope`` until the block ends (inside a "none" block, still
        nowhere)."""
        previous = self._scope
        self._scope = "none" if previous == "none" else scope
        try:
            yield
        finally:
            self._scope = previous
