"""What a server does differently as one node of several (shell, ``--redis``).

``ClusterFacing`` is the part of ``Server`` that faces the other nodes: the ``ApiHost``
methods whose answer, with several nodes, comes from Redis (holding friend lists and groups,
reading statuses, settings and messages, the devices held anywhere), and the node's link to
Redis, its joining and its leaving. With one node (``cluster`` None) each has nothing to
hold or read and answers from this node alone. ``Server`` (``shell.server``) builds the
parts these read.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import trio

from geopresence.config import Config
from geopresence.core.hub import Hub
from geopresence.core.statuses import Held
from geopresence.core.store import UserSettings
from geopresence.model.chat_message import ChatMessage
from geopresence.model.records import Record
from geopresence.shell.history import HistoryKeeper
from geopresence.shell.metrics import Metrics, register_cluster_metrics

if TYPE_CHECKING:
    from geopresence.cluster.link import ClusterLink

log = logging.getLogger("geopresence")


class ClusterFacing:
    """``Server``'s dealings with the other nodes; one node: none (see the module)."""

    config: Config
    secret: str
    admin_key: str | None
    hub: Hub
    metrics: Metrics
    history_keeper: HistoryKeeper
    cluster: ClusterLink | None
    """This node's Redis side when it is one of several (``--redis``)."""
    now: Callable[[], float]
    """Server time, epoch seconds."""

    # ------------------------------------------------------------------ ApiHost (HTTP API)

    async def hold(self, users: Collection[str], groups: Collection[str] = ()) -> None:
        if self.cluster is not None:
            await self.cluster.hold(users, groups)

    def release(self, users: Collection[str], groups: Collection[str] = ()) -> None:
        if self.cluster is not None:
            self.cluster.release(users, groups)

    def unchanged(self, op: Record) -> None:
        if self.cluster is not None:
            self.cluster.unchanged(op)

    def replacing(self, group: str) -> AbstractContextManager[None]:
        return nullcontext() if self.cluster is None else self.cluster.replacing(group)

    async def read_statuses(self, users: Collection[str]) -> Mapping[str, Held]:
        if self.cluster is None or not users:
            return {}
        return await self.cluster.read_statuses(users)

    async def read_settings(self, user: str) -> UserSettings | None:
        if self.cluster is None:
            return None
        return (await self.cluster.read_settings([user]))[user]

    async def count_messages(self, user: str) -> int | None:
        if self.cluster is None or self.cluster.chat is None:
            return None
        return await self.cluster.chat.count(user)

    def messages_of(self, user: str) -> AsyncIterator[list[ChatMessage]] | None:
        if self.cluster is None or self.cluster.chat is None:
            return None
        return self.cluster.chat.messages_of(user)

    async def _online_in_cluster(self, user: str) -> bool:
        """Whether ``user`` is online on any node, as Redis says (False if it cannot)."""
        with trio.move_on_after(self.config.push_timeout):
            try:
                read = await self.read_statuses((user,))
            except Exception:  # push rather than stay silent
                return False
            return user in read and read[user][0] == "online"
        return False

    async def devices_held(self, user: str) -> set[str]:
        here = set(self.hub.presence.device_names(user))
        if self.cluster is None:
            return here
        with trio.move_on_after(0.5):
            try:
                # A device whose report has not reached Redis yet is still here.
                return here | await self.cluster.devices_held(user)
            except Exception:  # Redis unreachable: this node's
                pass
        return here

    async def flush_cluster_presence(self) -> None:
        """Multi-node: return once this node's presence reports reached Redis."""
        if self.cluster is not None:
            await self.cluster.presence.flush()

    # ------------------------------------------------------------------ linking, joining, leaving

    def _link_to_cluster(self) -> ClusterLink:
        """This node's Redis side (``--redis``), before it joins (``_join_cluster``)."""
        from geopresence.cluster.joining import address_of, connect  # coredis
        from geopresence.cluster.link import ClusterLink

        config = self.config
        return ClusterLink(
            connect(config),
            node_id=config.node_id,
            sharded=bool(config.redis_cluster),
            prefix=config.redis_prefix,
            # Every node must accept the others' tokens and admin key (an --insecure
            # node, for development, takes no part in the check).
            shared_keys={}
            if config.insecure
            else {"secret": self.secret, "admin_key": self.admin_key or ""},
            lease=config.redis_lease,
            sweep_interval=config.redis_sweep_interval,
            offline_after=config.offline_after,  # the hub's settings come from the same config
            location_ttl=config.location_ttl,
            address=address_of(config),
        )

    async def _join_cluster(self, nursery: trio.Nursery, cluster: ClusterLink) -> None:
        """Load the shared state from Redis and start the node's Redis side."""
        started = trio.current_time()
        counts: dict[str, int] = await nursery.start(cluster.run, self.hub, self.now)
        log.info(
            "node %d joined %s: %s loaded in %.2f s",
            self.config.node_id,
            self.config.redis or ",".join(self.config.redis_cluster),
            ", ".join(f"{n} {name}" for name, n in counts.items()),
            trio.current_time() - started,
        )
        register_cluster_metrics(self.metrics, cluster)
        await self.history_keeper.catch_up(cluster.forgotten_since)

    async def _leave_cluster(self, cluster: ClusterLink) -> None:
        """At shutdown, once the connections are closed: flush what this node owes Redis
        (at most ``drain_timeout`` seconds), then leave."""
        with trio.move_on_after(self.config.drain_timeout) as waited:
            await cluster.flush()  # acked writes and device reports reach Redis
        if waited.cancelled_caught:  # say what is given up on, and that no ack is among it
            log.warning(
                "shutting down: %d changes not written to Redis after %g s are dropped (none "
                "was acknowledged); the other nodes end this node's devices once its lease "
                "lapses",
                cluster.journal.pending,
                self.config.drain_timeout,
            )
        # Tasks cancelled under an unresponsive Redis make coredis log each attempt.
        logging.getLogger("coredis").setLevel(logging.CRITICAL)
        with trio.move_on_after(2):  # Redis may be unresponsive: the lease expires
            await cluster.leave()
