"""The pub/sub seam: channels that publishers write to and connections subscribe to.

The design gives every user a channel that its friends' connections subscribe to (and, for
small groups, a channel per group). ``Broker`` is the contract; ``MemoryBroker`` is the
embedded default; ``tests/seams/test_broker_conformance.py`` holds every implementation to it.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Set
from typing import Any, Protocol

ConnId = int
"""A connection of this server, as the shell numbers them."""

Deliver = Callable[[ConnId, Any], None]
"""Hands one published event to one local subscriber. Must not block: it queues frames into
the subscriber's Outbox (an encoded ``Outgoing``, or a frame computed for that subscriber)."""


class SeenOnce:
    """The last ``size`` keys seen: something that can arrive more than once (on several
    channels, or written again by a retry) is handled the first time only."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._seen: OrderedDict[Hashable, None] = OrderedDict()

    def first_time(self, key: Hashable) -> bool:
        """True (and remembered) if ``key`` is new; False for a repeat."""
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True


_USER_PREFIX = "user:"


def user_channel(user: str) -> str:
    """The channel a user's presence (and later location) is published on."""
    return _USER_PREFIX + user


def user_of_channel(channel: str) -> str | None:
    """The user whose ``user_channel`` this is (None: another kind of channel)."""
    return channel[len(_USER_PREFIX) :] if channel.startswith(_USER_PREFIX) else None


_GROUP_PREFIX = "group:"


def group_channel(group: str) -> str:
    """The channel of a group's members: chat messages, and co-members' presence while the
    group is small enough for presence fan-out."""
    return _GROUP_PREFIX + group


def group_of_channel(channel: str) -> str | None:
    """The group whose ``group_channel`` this is (None: another kind of channel)."""
    return channel[len(_GROUP_PREFIX) :] if channel.startswith(_GROUP_PREFIX) else None


_INBOX_PREFIX = "inbox:"


def inbox_channel(user: str) -> str:
    """The channel a user's own connections subscribe to: 1:1 chat messages for the user
    (and copies of what its other devices send)."""
    return _INBOX_PREFIX + user


def inbox_of_channel(channel: str) -> str | None:
    """The user whose ``inbox_channel`` this is (None: another kind of channel)."""
    return channel[len(_INBOX_PREFIX) :] if channel.startswith(_INBOX_PREFIX) else None


class Broker(Protocol):
    """Channels -> subscribed connections, with exactly-once delivery per publish.

    Contract:
    - ``subscribe(channel, conn)`` is idempotent; ``unsubscribe`` of a pair that is not
      subscribed is a no-op; ``unsubscribe_all(conn)`` leaves every channel.
    - ``publish(channels, message, exclude)`` hands ``message`` to the ``deliver`` callback
      exactly once for every connection subscribed to at least one of ``channels`` and not in
      ``exclude``, even when it is subscribed to several of them; it returns the number of
      local deliveries. It never blocks: local delivery is synchronous and non-blocking.
    - ``publish_local`` is ``publish`` restricted to this process's subscribers: for events
      that every node derives itself from replicated state (a location's TTL ending), which
      must not also travel to the other nodes. With one process the two are the same.
    - Per subscriber, deliveries follow publish order.
    - A channel with no subscribers holds no memory.
    """

    def subscribe(self, channel: str, conn: ConnId) -> None: ...

    def unsubscribe(self, channel: str, conn: ConnId) -> None: ...

    def unsubscribe_all(self, conn: ConnId) -> None: ...

    def publish(self, channels: Iterable[str], message: Any, exclude: Set[ConnId] = ...) -> int: ...

    def publish_local(
        self, channels: Iterable[str], message: Any, exclude: Set[ConnId] = ...
    ) -> int: ...

    def subscribers(self, channel: str) -> Set[ConnId]: ...

    def channels_of(self, conn: ConnId) -> Set[str]: ...


_NONE: frozenset[ConnId] = frozenset()


class MemoryBroker:
    """In-process ``Broker``: channel -> set of conns, and conn -> list of its channels.

    Memory is the point here: a user with 5,000 friends has 5,000 subscriptions per
    connection. Channel names are interned (one string per channel, however many
    subscribers), and a connection's own channels are a list (8 bytes a subscription,
    against ~40 for a set entry); the channel's set answers membership.
    """

    def __init__(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._subscribers: dict[str, set[ConnId]] = {}
        self._channels: dict[ConnId, list[str]] = {}
        self._derived: Callable[[str], Iterable[ConnId]] | None = None

    def derive_user_channels(self, subscribers_of: Callable[[str], Iterable[ConnId]]) -> None:
        """From now on ``user:U``'s subscribers are ``subscribers_of(U)``, asked at each
        publish, and subscribing to a user channel stores nothing.

        For a node that holds every session itself: the hub subscribes each connection to
        every friend's channel, so these subscriptions restate the friendship graph, and
        storing them cost ~350 bytes per friend per connection (mostly for friends that
        are offline and publish nothing). ``subscribers_of(U)`` must yield exactly the
        connections the hub would have subscribed, each once (the live connections of
        U's friends); a publish then visits U's friends instead of U's subscribers.
        """
        self._derived = subscribers_of

    def _is_derived(self, channel: str) -> bool:
        return self._derived is not None and channel.startswith(_USER_PREFIX)

    def subscribe(self, channel: str, conn: ConnId) -> None:
        if self._is_derived(channel):
            return
        channel = sys.intern(channel)  # the one string every list below shares
        subs = self._subscribers.get(channel)
        if subs is None:
            subs = self._subscribers[channel] = set()
        elif conn in subs:
            return
        subs.add(conn)
        self._channels.setdefault(conn, []).append(channel)

    def unsubscribe(self, channel: str, conn: ConnId) -> None:
        if self._is_derived(channel):
            return
        subs = self._subscribers.get(channel)
        if subs is None or conn not in subs:
            return
        subs.discard(conn)
        if not subs:
            del self._subscribers[channel]
        chans = self._channels[conn]
        chans.remove(channel)
        if not chans:
            del self._channels[conn]

    def unsubscribe_all(self, conn: ConnId) -> None:
        for channel in self._channels.pop(conn, ()):
            subs = self._subscribers[channel]
            subs.discard(conn)
            if not subs:
                del self._subscribers[channel]

    def publish(self, channels: Iterable[str], message: Any, exclude: Set[ConnId] = _NONE) -> int:
        channel_list = list(channels)
        if len(channel_list) == 1:
            # The common case (a user with no small groups): no union set to build.
            targets: Iterable[ConnId] = self._targets(channel_list[0])
        else:
            union: set[ConnId] = set()
            for channel in channel_list:
                union.update(self._targets(channel))
            targets = union
        delivered = 0
        for conn in list(targets):
            if conn not in exclude:
                self._deliver(conn, message)
                delivered += 1
        return delivered

    publish_local = publish

    def subscribers(self, channel: str) -> Set[ConnId]:
        targets = self._targets(channel)
        return targets if isinstance(targets, Set) else frozenset(targets)

    def _targets(self, channel: str) -> Iterable[ConnId]:
        """``channel``'s subscribers, each once (derived ones computed, not collected)."""
        if self._derived is not None and channel.startswith(_USER_PREFIX):
            return self._derived(channel[len(_USER_PREFIX) :])
        return self._subscribers.get(channel, _NONE)

    def channels_of(self, conn: ConnId) -> Set[str]:
        """The channels ``conn`` subscribed to (derived user channels not included)."""
        return frozenset(self._channels.get(conn, ()))
