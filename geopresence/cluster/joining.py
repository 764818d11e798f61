"""Joining the other nodes (cluster): the Redis client, what a node must share with the
others before it may serve (the token secret and admin key, compared by fingerprint), and
its node id's lease (``join``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Final

from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.redis_subscriber import RedisAddress
from geopresence.config import Config

if TYPE_CHECKING:
    from geopresence.cluster.redis_nodes import NodeLease


class ClusterError(RuntimeError):
    """This node cannot join the others (a message for the operator)."""


class NodeIdInUse(ClusterError):
    """Another live node holds this node id."""


class KeyMismatch(ClusterError):
    """This node's token secret or admin key differs from the other nodes'."""


FINGERPRINT_LABEL: Final = b"geopresence: the key every node of a deployment shares, v1"
SHARED_KEY_NAMES: Final = {
    "secret": "token secret (--secret, GEOPRESENCE_SECRET, DATA_DIR/secret)",
    "admin_key": "admin key (--admin-key, GEOPRESENCE_ADMIN_KEY, DATA_DIR/admin_key)",
}


def fingerprint(key: str) -> str:
    """HMAC-SHA256 of a fixed label keyed by ``key``: equal keys give equal fingerprints, and
    the key cannot be recovered from one (what Redis holds, never the key)."""
    return hmac.new(key.encode(), FINGERPRINT_LABEL, hashlib.sha256).hexdigest()


def connect(config: Config) -> Any:
    """A coredis client for ``--redis`` (standalone) or ``--redis-cluster``."""
    import coredis  # only a node of several needs it (0.3 s of start-up otherwise)
    from coredis.connection import TCPLocation

    # coredis logs each retry at INFO; our own log lines say what failed.
    logging.getLogger("coredis").setLevel(logging.WARNING)
    # No runtime validation of each command's arguments (its documented switch): ours
    # are checked by mypy, and the validators cost CPU on every location write.
    coredis.Config.optimized = True

    if config.redis_cluster:
        nodes = []
        for address in config.redis_cluster:
            host, _, port = address.rpartition(":")
            nodes.append(TCPLocation(host, int(port)))
        return coredis.RedisCluster(startup_nodes=nodes, connect_timeout=5.0)
    assert config.redis is not None
    return coredis.Redis.from_url(config.redis, connect_timeout=5.0)


def address_of(config: Config) -> RedisAddress | None:
    """The standalone Redis of ``--redis`` (the broker's subscriber connects to it itself);
    None with ``--redis-cluster`` (its slots tell where each channel lives)."""
    return None if config.redis is None else RedisAddress.from_url(config.redis)


async def check_shared_keys(client: Any, keys: Keys, shared_keys: Mapping[str, str]) -> None:
    """The first node stores the fingerprint of each shared key (SET NX); every later
    one must have the same, or it refuses to start: its tokens and admin key would be
    rejected by the other nodes (and theirs by it)."""
    from coredis import PureToken

    for name, key in sorted(shared_keys.items()):
        redis_key = keys.of("fingerprint", name)
        mine = fingerprint(key)
        if await client.set(redis_key, mine, condition=PureToken.NX):
            continue
        stored = await client.get(redis_key)
        if isinstance(stored, bytes):
            stored = stored.decode()
        if stored is not None and stored != mine:
            what = SHARED_KEY_NAMES.get(name, name)
            raise KeyMismatch(
                f"this node's {what} differs from the other nodes' sharing this Redis "
                f"(key prefix {keys.prefix}): give every node the same; to change it "
                f"on purpose, stop every node and delete the Redis key {redis_key}"
            )


async def join(
    stack: AsyncExitStack,
    client: Any,
    keys: Keys,
    shared_keys: Mapping[str, str],
    lease: NodeLease,
    sharded: bool,
) -> None:
    """Connect ``client`` (until ``stack`` closes), check the keys every node must share
    (``check_shared_keys``) and take this node's ``lease``; raises ``ClusterError`` (a
    message for the operator) if this node may not join (``sharded``: a Redis Cluster)."""
    try:
        # A cluster client connects on entry (it reads the slot map).
        await stack.enter_async_context(client)
        await check_shared_keys(client, keys, shared_keys)
        left = await lease.take()
        if left:
            raise NodeIdInUse(
                f"node id {lease.node_id} is in use by another live node (its lease ends in "
                f"{left:.0f} s if that node stopped): give each node its own --node-id (0..1023)"
            )
    except ClusterError:
        raise
    except Exception as exc:  # unreachable, refused, wrong password...
        target = "a Redis Cluster" if sharded else "Redis"
        raise ClusterError(f"cannot reach {target}: {exc}") from exc
