"""The parts of a running node (cluster): what it holds for its sessions, and what routes to
them what reaches it, built and wired to each other, the hub, the broker and the journal
once the link runs (``wire_parts``; ``ClusterLink.run`` then starts them in order).

A node holds only the friendships and groups of the users it serves (``Holdings``: read
from Redis as a session or request needs them, and again when a notice on the users' inbox
or the group's channel says they changed). The feed carries only forgets and
watermarks. A node holds the locations, statuses and settings its
sessions need (``.views``, ``.covered``, ``.kept_settings``); moves arrive on the users'
channels (``Arrivals``). Strangers are searched in Redis (``RedisStrangers``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from geopresence.cluster.announcing import Announcer
from geopresence.cluster.arrivals import Arrivals
from geopresence.cluster.chat_gaps import ChatGaps
from geopresence.cluster.chat_reads import ChatReads
from geopresence.cluster.covered import Covered
from geopresence.cluster.holdings import Holdings
from geopresence.cluster.kept_settings import KeptSettings
from geopresence.cluster.views import Views
from geopresence.cluster.watermarks import Watermarks
from geopresence.core.chat_message_wire import ChatEvent, channels_of

if TYPE_CHECKING:
    from geopresence.cluster.redis_broker import RedisBroker
    from geopresence.cluster.redis_keys import Keys
    from geopresence.cluster.redis_nodes import NodeLease
    from geopresence.cluster.redis_state import RedisJournal
    from geopresence.cluster.redis_strangers import RedisStrangers
    from geopresence.core.hub import Hub


@attrs.frozen
class NodeParts:
    """A running node's parts (``wire_parts``), one set per ``ClusterLink.run``."""

    settings: KeptSettings
    covered: Covered
    views: Views
    holdings: Holdings
    announcer: Announcer
    """Tells a transition decided here (``RedisPresence``'s announce)."""
    chat: ChatReads
    """A user's messages read from Redis: a node keeps none."""
    watermarks: Watermarks
    arrivals: Arrivals
    chat_gaps: ChatGaps

    def start(self, nursery: trio.Nursery) -> None:
        """Start the parts' tasks in ``nursery`` (the link's, once its broker runs)."""
        nursery.start_soon(self.views.run)
        nursery.start_soon(self.covered.run)
        nursery.start_soon(self.holdings.run)
        self.announcer.nursery = nursery
        nursery.start_soon(self.chat_gaps.run)


def wire_parts(
    hub: Hub,
    client: Any,
    keys: Keys,
    broker: RedisBroker,
    journal: RedisJournal,
    lease: NodeLease,
    strangers: RedisStrangers,
    clock: Callable[[], float],
    now: Callable[[], float],
) -> NodeParts:
    """Build a node's parts for ``hub`` and wire them to it, to each other, to ``broker`` and
    to ``journal`` (``clock``: the cluster's clock; ``now``: the link's, which reads it)."""
    settings = KeptSettings(client, keys, broker, hub, now)
    covered = Covered(client, keys, broker, hub, settings)
    views = Views(client, keys, broker, hub, now, covered.read_missing)
    holdings = Holdings(
        hub,
        client,
        keys,
        journal.written,
        broker,
        lambda op: arrivals.change(op),  # (built below: it routes to the holdings)
    )
    groups = holdings.groups
    groups.on_loaded = covered.regroup
    announcer = Announcer(hub, broker, client, keys, groups.holds_user, covered.announced)
    # Chat reaches the other nodes as the journal writes it (``chat_writes``: in order
    # with the feed's watermarks), not as the hub publishes it once stable.
    broker.travels = lambda event: not isinstance(event, ChatEvent)
    journal.chat.publications = lambda message: broker.publications(
        channels_of(message), ChatEvent(message)
    )
    hub.chat.keeps_messages = False
    chat = ChatReads(client, keys, hub, groups.holds)
    # Other nodes' ids are not all seen here: join and forget marks bound them by time.
    hub.state.ids.cluster_clock = clock
    journal.on_stored_before = hub.chat.stored_elsewhere
    # A watermark counts once every connection answered: never on a timeout (what
    # a stuck connection carried would be passed; it is read back once it reopens).
    patient = functools.partial(broker.subscribed, timeout=math.inf)
    watermarks = Watermarks(journal, hub, clock, lease.lease, patient)
    arrivals = Arrivals(hub, broker, covered, views, holdings, watermarks, strangers, now)
    broker.on_remote = arrivals.on_remote
    broker.on_gap = arrivals.gap
    chat_gaps = arrivals.chat_gaps = ChatGaps(client, keys, hub, broker, clock, watermarks.hurry)
    watermarks.on_gone = chat_gaps.node_gone
    broker.on_released = arrivals.released
    return NodeParts(
        settings, covered, views, holdings, announcer, chat, watermarks, arrivals, chat_gaps
    )
