"""The node registry (shell): each node's lease in ``gp:nodes``, which is both its Snowflake
node id (two live nodes never share one) and its liveness for the other nodes' sweepers.

A node renews its lease every ``lease / 5`` seconds. A lease that is not renewed for
``lease`` seconds (``Config.redis_lease``) lapses: the node is *gone* (killed, stalled,
or cut off from Redis), and once its devices' grace window has passed, the other nodes'
sweepers end the devices it held (``geopresence.cluster.redis_presence``). A node that finds
its own lease lapsed becomes a new *incarnation* (a new token) and reports its devices again.
The scripts are in ``geopresence.cluster.presence_scripts``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any, Final

import attrs
import trio

from geopresence.cluster.presence_scripts import LAPSE, LEAVE, RENEW, TAKE
from geopresence.cluster.redis_keys import Keys, string

log = logging.getLogger("geopresence.redis")

RENEWALS_PER_LEASE: Final = 5
"""Renewals per lease: a node misses this many in a row (a stall, a slow Redis) before the
others count it gone."""


def incarnation(node_id: int | str, token: str) -> str:
    """The name of one run of node ``node_id`` (the holder written into presence hashes)."""
    return f"{node_id}/{token}"


@attrs.frozen
class Live:
    """A node whose lease is in the registry (lapsed or not: ``expires`` tells)."""

    node_id: str
    token: str
    expires: float
    """Epoch seconds."""


@attrs.frozen
class Gone:
    """An incarnation whose lease lapsed or that left, with devices perhaps still held."""

    incarnation: str
    last_seen: float
    """Its last sign of life (its last renewal, or its leave), epoch seconds: the estimate
    of its devices' last activity."""
    grace_from: float
    """Epoch seconds from which its devices' grace window (``offline_after``) runs: a client
    may reconnect to another node until then plus ``offline_after`` without a flap."""


def _ms(seconds: float) -> str:
    return str(int(seconds * 1000))


class NodeLease:
    """This node's lease. ``take`` it once, then ``renew`` it every ``renew_every`` seconds;
    ``retake`` after a renewal says it was lost; ``leave`` on a clean shutdown."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        node_id: int,
        clock: Callable[[], float],
        lease: float,
    ) -> None:
        self.client = client
        self.keys = keys
        self.node_id = node_id
        self.clock = clock
        self.lease = lease
        """How long this node stays live without renewing its lease (``Config.redis_lease``): a
        killed node's devices are ended this long (plus their grace window, ``offline_after``)
        after its last renewal, and its id is free again after this."""
        self.renew_every = lease / RENEWALS_PER_LEASE
        self.token = secrets.token_hex(8)
        self.held = False
        """True while this node holds its lease (as far as it knows)."""
        self.left = False
        """True once this node left: it never takes its id again."""
        self._steady_since: float | None = None
        self._scripts = {
            name: client.register_script(script)
            for name, script in (("take", TAKE), ("renew", RENEW), ("leave", LEAVE))
        }

    @property
    def incarnation(self) -> str:
        return incarnation(self.node_id, self.token)

    def _args(self) -> list[str]:
        return [str(self.node_id), self.token, _ms(self.clock()), _ms(self.lease)]

    async def take(self) -> float:
        """Take the node id; 0.0 if taken, else the seconds left of another live node's
        lease on it."""
        left = int(await self._scripts["take"](keys=[self.keys.nodes], args=self._args()))
        self.held = not left
        self._steady_since = self.clock() if self.held else None
        return left / 1000

    async def retake(self) -> float:
        """Take the node id again as a new incarnation (the old one is gone: its devices are
        the sweepers' now); as ``take``."""
        self.token = secrets.token_hex(8)
        return await self.take()

    async def renew(self) -> bool:
        """Extend the lease; False if it was lost (lapsed, taken by another node, or lost by
        Redis): call ``retake``."""
        kept = bool(int(await self._scripts["renew"](keys=[self.keys.nodes], args=self._args())))
        self.held = kept
        if not kept:
            self._steady_since = None
        elif self._steady_since is None:
            self._steady_since = self.clock()
        return kept

    def interrupted(self) -> None:
        """A renewal failed (Redis unreachable): this node's view of the others is stale."""
        self._steady_since = None

    def steady(self) -> bool:
        """True once this node has renewed its lease without a failure for a whole lease:
        only then may it judge the others' leases. After an outage every node renews first
        (and reports its devices again if it lost its lease) before any sweeper counts it
        gone for a lease that lapsed only because Redis was away."""
        since = self._steady_since
        return since is not None and self.clock() - since >= self.lease

    async def leave(self) -> None:
        """Free the node id at once; the devices held stay alive for their grace window."""
        self.left = True
        if self.held:
            self.held = False
            await self._scripts["leave"](keys=[self.keys.nodes], args=self._args()[:3])


async def read_registry(client: Any, keys: Keys) -> tuple[list[Live], list[Gone]]:
    """Every lease and every gone incarnation in the registry (one ``HGETALL``)."""
    live: list[Live] = []
    gone: list[Gone] = []
    for raw_field, raw_value in (await client.hgetall(keys.nodes)).items():
        field, value = string(raw_field), string(raw_value).split()
        try:
            if field.startswith("n:") and len(value) == 3:
                live.append(Live(field[2:], value[0], int(value[2]) / 1000))
            elif field.startswith("gone:") and len(value) == 2:
                gone.append(Gone(field[5:], int(value[0]) / 1000, int(value[1]) / 1000))
        except ValueError:
            continue  # not ours to judge; never written by this version
    return live, gone


async def lapse(client: Any, keys: Keys, node: Live, now: float) -> bool:
    """Make ``node``'s lapsed lease gone; False if it was renewed or another sweeper did."""
    script = client.register_script(LAPSE)
    return bool(int(await script(keys=[keys.nodes], args=[node.node_id, node.token, _ms(now)])))


async def forget(client: Any, keys: Keys, gone: Gone) -> None:
    """Drop a gone incarnation whose devices are all ended."""
    await client.hdel(keys.nodes, [f"gone:{gone.incarnation}"])


async def keep_lease(
    lease: NodeLease, refused: Callable[[], None], retaken: Callable[[], None]
) -> None:
    """Renew ``lease`` every ``renew_every`` seconds until it is left. A lease found lost
    (the node was stalled or cut off from Redis for longer than the lease, or Redis lost
    it) means the other nodes count this incarnation gone and will end its devices after
    their grace window: take a new token at once and call ``retaken`` (report every alive
    device again); ``refused`` if another node holds the id meanwhile (and until the lease
    can be taken back)."""
    failing = was_refused = False
    while True:
        await trio.sleep(lease.renew_every)
        if lease.left:  # shutting down: the others sweep what it held
            return
        try:
            if lease.held and await lease.renew():
                failing = False
                continue
            busy_for = await lease.retake()
        except Exception as exc:
            lease.interrupted()
            if not failing:  # once per outage, not every second
                log.error("renewing the node lease failed (retrying quietly): %s", exc)
            failing = True
            continue
        failing = False
        if busy_for:
            refused()
            if not was_refused:
                log.error(
                    "node id %d is now held by another node (this one was stalled or cut "
                    "off from Redis for more than %.0f s?): two nodes issue the same "
                    "message ids; stop one",
                    lease.node_id,
                    lease.lease,
                )
            was_refused = True
            continue
        was_refused = False
        retaken()
