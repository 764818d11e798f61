"""The ``Broker`` contract (geopresence.core.broker), run against every implementation."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from geopresence.cluster.redis_broker import RedisBroker
from geopresence.core.broker import Broker, ConnId, Deliver, MemoryBroker
from geopresence.wire.outgoing import Outgoing

IMPLEMENTATIONS: dict[str, Callable[[Deliver], Broker]] = {
    "memory": MemoryBroker,
    # Local semantics of the Redis broker (its Redis commands are queued, not sent, here;
    # tests/cluster/test_redis_broker.py runs several of them against a real Redis).
    "redis": lambda deliver: RedisBroker(deliver, client=None, node_id=1),
}


class Recorder:
    def __init__(self) -> None:
        self.got: list[tuple[ConnId, str]] = []

    def __call__(self, conn: ConnId, message: Outgoing) -> None:
        self.got.append((conn, message.text))


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def factory(request: pytest.FixtureRequest) -> Callable[[Deliver], Broker]:
    return IMPLEMENTATIONS[request.param]


@pytest.fixture
def pair(factory: Callable[[Deliver], Broker]) -> tuple[Broker, Recorder]:
    recorder = Recorder()
    return factory(recorder), recorder


def test_publish_reaches_subscribers_once(pair: tuple[Broker, Recorder]) -> None:
    broker, rec = pair
    broker.subscribe("user:a", 1)
    broker.subscribe("user:a", 1)  # idempotent
    broker.subscribe("group:g", 1)
    broker.subscribe("group:g", 2)
    n = broker.publish(["user:a", "group:g"], Outgoing("m1"))
    assert n == 2
    assert sorted(rec.got) == [(1, "m1"), (2, "m1")]


def test_exclude_and_unknown_channels(pair: tuple[Broker, Recorder]) -> None:
    broker, rec = pair
    broker.subscribe("user:a", 1)
    broker.subscribe("user:a", 2)
    assert broker.publish(["user:a"], Outgoing("m"), frozenset({2})) == 1
    assert broker.publish(["user:nobody"], Outgoing("x")) == 0
    assert rec.got == [(1, "m")]


def test_publish_local_reaches_this_process_s_subscribers_as_publish_does(
    pair: tuple[Broker, Recorder],
) -> None:
    broker, rec = pair
    broker.subscribe("user:a", 1)
    broker.subscribe("group:g", 1)
    broker.subscribe("group:g", 2)
    broker.subscribe("group:g", 3)
    assert broker.publish_local(["user:a", "group:g"], Outgoing("m"), frozenset({3})) == 2
    assert broker.publish_local(["user:nobody"], Outgoing("x")) == 0
    assert sorted(rec.got) == [(1, "m"), (2, "m")]


def test_unsubscribe_and_unsubscribe_all(pair: tuple[Broker, Recorder]) -> None:
    broker, rec = pair
    broker.subscribe("c1", 1)
    broker.subscribe("c2", 1)
    broker.subscribe("c2", 2)
    broker.unsubscribe("c2", 1)
    broker.unsubscribe("c2", 1)  # no-op
    broker.unsubscribe("never", 7)  # no-op
    assert set(broker.channels_of(1)) == {"c1"}
    broker.unsubscribe_all(2)
    assert set(broker.subscribers("c2")) == set()
    assert set(broker.channels_of(2)) == set()
    broker.publish(["c1", "c2"], Outgoing("m"))
    assert rec.got == [(1, "m")]


def test_order_follows_publish_order(pair: tuple[Broker, Recorder]) -> None:
    broker, rec = pair
    broker.subscribe("c", 1)
    for i in range(5):
        broker.publish(["c"], Outgoing(str(i)))
    assert [text for _, text in rec.got] == ["0", "1", "2", "3", "4"]


def test_delivery_may_unsubscribe_during_publish(factory: Callable[[Deliver], Broker]) -> None:
    """A subscriber dropped while a publish is under way (slow consumer) does not break it."""
    seen: list[ConnId] = []
    broker_holder: list[Broker] = []

    def deliver(conn: ConnId, message: Outgoing) -> None:
        seen.append(conn)
        broker_holder[0].unsubscribe_all(conn)

    broker = factory(deliver)
    broker_holder.append(broker)
    for conn in (1, 2, 3):
        broker.subscribe("c", conn)
    assert broker.publish(["c"], Outgoing("m")) == 3
    assert sorted(seen) == [1, 2, 3]
    assert set(broker.subscribers("c")) == set()
