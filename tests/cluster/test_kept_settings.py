"""Which settings a node keeps (``KeptSettings``), against a real Redis: never sharing by
default, versions over arrival order, reads in flight, changes made here not stored yet."""

from __future__ import annotations

from typing import Any

import orjson
import trio

from geopresence.cluster.channel_events import SettingsHeard
from geopresence.cluster.covered import Covered
from geopresence.core.replication import LocationSet
from geopresence.core.store import MemoryStore, UserSettings
from geopresence.model.records import SettingsChanged
from geopresence.wire.client_messages import LocationUpdate, SettingsUpdate
from tests.cluster.test_covered import NOW, covered_by, hub_with_bob, online_in_redis
from tests.cluster.test_views import GatedRedis


def alice_near_bob(client: Any, keys: Any, hub: Any, broker: Any) -> Covered:
    """alice's session (2) opens beside bob's (1), both settings kept at version 1 (the
    defaults: sharing), 22 m apart; returns the node's ``Covered``."""
    covered = covered_by(client, keys, hub, broker)
    hub.open_session(2, "alice", "phone", now=NOW)
    covered.settings.keep({"alice": (UserSettings(), 1), "bob": (UserSettings(), 1)})
    hub.handle(2, LocationUpdate(lat=37.5665, lon=126.978), NOW)
    hub.handle(1, LocationUpdate(lat=37.5667, lon=126.978), NOW)
    return covered


async def test_a_friend_s_settings_not_kept_never_mean_sharing() -> None:
    hub, _, broker = hub_with_bob(MemoryStore(partial_settings=True))
    hub.apply_feed(LocationSet("alice", 37.5665, 126.978, NOW, NOW), NOW)  # heard as a move
    hub.apply_feed(LocationSet("bob", 37.5667, 126.978, NOW, NOW), NOW)
    assert hub.nearby.nearby("bob", NOW) == []  # alice's settings are not known here
    async with online_in_redis() as (client, keys):
        covered = covered_by(client, keys, hub, broker)
        await covered.settings.read_missing(["alice", "zoe"])  # nothing listens to zoe
    assert [f.user for f in hub.nearby.nearby("bob", NOW)] == ["alice"]  # her defaults
    assert not hub.store.settings_kept("zoe")


async def test_a_settings_change_heard_while_they_are_read_wins() -> None:
    hub, _, broker = hub_with_bob(MemoryStore(partial_settings=True))
    async with online_in_redis() as (client, keys):
        redis = GatedRedis(client)
        covered = covered_by(redis, keys, hub, broker)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(covered.settings.read_missing, ["alice"])
            await redis.waiting.wait()  # read Redis before her change was written...
            change = SettingsChanged("alice", False, None, False)
            covered.settings.heard(SettingsHeard(change, 1))  # ...then heard
            redis.gate.set()
    assert hub.store.get_settings("alice").share_location is False


async def test_a_gap_reads_settings_again_and_tells_what_was_missed() -> None:
    hub, sink, broker = hub_with_bob(MemoryStore(partial_settings=True))
    hub.store.put_settings("alice", UserSettings())
    hub.store.put_settings("bob", UserSettings())
    hub.handle(1, LocationUpdate(lat=37.5667, lon=126.978), NOW)
    hub.apply_feed(LocationSet("alice", 37.5665, 126.978, NOW, NOW), NOW)
    hub.remote.nearby.show_moves()
    with hub.fanout.scoped("local"):
        hub.nearby.tell_sharing("alice", NOW)  # what her node's publish told bob
    assert [f["user"] for f in sink.take(1, "friend_location")] == ["alice"]
    async with online_in_redis() as (client, keys):
        # She stopped sharing while this node's channel to her was down.
        await client.set(keys.of("settings", "alice"), orjson.dumps(settings_json(False)))
        covered = covered_by(client, keys, hub, broker)
        await covered.settings.reread(["alice", "nobody"])
    assert hub.store.get_settings("alice").share_location is False
    assert [(f["user"], f["reason"]) for f in sink.take(1, "friend_gone")] == [("alice", "hidden")]


async def test_a_session_s_own_settings_are_kept_before_it_opens() -> None:
    hub, _, broker = hub_with_bob(MemoryStore(partial_settings=True))
    async with online_in_redis() as (client, keys):
        await client.set(keys.of("settings", "erin"), orjson.dumps(settings_json(True, 900.0)))
        covered = covered_by(client, keys, hub, broker)
        await covered.settings.own("erin")
    assert hub.store.get_settings("erin") == UserSettings(True, 900.0, False)


def settings_json(share: bool, radius: float | None = None) -> dict[str, Any]:
    """``gp:settings:{U}`` as ``redis_state`` writes it."""
    return {"share_location": share, "radius_m": radius, "visible_to_strangers": False}


# ---------------------------------------------------------------- settings: from a review


async def test_settings_heard_out_of_order_keep_the_newest() -> None:
    """Two devices of alice on two other nodes change her settings: whatever order their
    publishes arrive in, the newest version stays (Redis' order)."""
    hub, _, broker = hub_with_bob(MemoryStore(partial_settings=True))
    async with online_in_redis() as (client, keys):
        covered = covered_by(client, keys, hub, broker)
        covered.settings.keep({"alice": (UserSettings(), 1)})
        newer = SettingsChanged("alice", True, 900.0, False)
        covered.settings.heard(SettingsHeard(newer, 3))
        covered.settings.heard(SettingsHeard(SettingsChanged("alice", False, 100.0, True), 2))
        assert hub.store.get_settings("alice") == UserSettings(True, 900.0, False)


async def test_a_change_heard_while_one_made_here_is_not_stored_yet_is_older() -> None:
    """bob hides on this node; another device's earlier change (radius, still sharing) is
    heard before Redis stored the hide: it is older, and changes nothing here."""
    hub, sink, broker = hub_with_bob(MemoryStore(partial_settings=True))
    async with online_in_redis() as (client, keys):
        covered = alice_near_bob(client, keys, hub, broker)
        assert [f["user"] for f in sink.take(2, "friend_location")] == ["bob"]
        hub.handle(1, SettingsUpdate(share_location=False), NOW)
        hidden = SettingsChanged("bob", False, None, False)
        covered.settings.changing(hidden)  # as Arrivals.on_record, for the journal
        assert [f["user"] for f in sink.take(2, "friend_gone")] == ["bob"]
        covered.settings.heard(SettingsHeard(SettingsChanged("bob", True, 900.0, False), 2))
        hub.handle(1, LocationUpdate(lat=37.5668, lon=126.978), NOW + 1)
        assert sink.take(2, "friend_location") == []
        covered.settings.wrote(hidden, 3)
        assert hub.store.get_settings("bob") == UserSettings(False, None, False)
        covered.settings.heard(SettingsHeard(SettingsChanged("bob", True, 900.0, False), 2))
        assert hub.store.get_settings("bob").share_location is False


async def test_a_read_begun_before_a_channel_was_let_go_is_not_kept() -> None:
    """From a review: a change published while nobody here listened to her channel is
    not in a read begun before; kept, it would stay (nothing reads it again)."""
    hub, _, broker = hub_with_bob(MemoryStore(partial_settings=True))
    async with online_in_redis() as (client, keys):
        shared = b'{"v":1,"share_location":true,"radius_m":null,"visible_to_strangers":false}'
        hidden = b'{"v":2,"share_location":false,"radius_m":null,"visible_to_strangers":false}'
        await client.set(keys.of("settings", "alice"), shared)
        slow = GatedRedis(client, replies_held=True)
        covered = covered_by(slow, keys, hub, broker)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(covered.settings.read_missing, ["alice"])
            await slow.waiting.wait()
            hub.close_session(1)
            covered.released("user:alice")
            await client.set(keys.of("settings", "alice"), hidden)
            hub.open_session(2, "bob", "phone", now=NOW)
            slow.gate.set()
        await covered_by(client, keys, hub, broker).read_missing(["alice", "bob"])
    assert hub.store.get_settings("alice").share_location is False


# ---------------------------------------------------------------- from a third review


async def test_own_settings_come_back_when_a_session_reopens_while_its_change_is_pending() -> None:
    hub, _, broker = hub_with_bob(MemoryStore(partial_settings=True))
    async with online_in_redis() as (client, keys):
        covered = covered_by(client, keys, hub, broker)
        covered.settings.keep({"bob": (UserSettings(), 1)})
        hub.handle(1, SettingsUpdate(radius_m=900.0), NOW)
        change = SettingsChanged("bob", True, 900.0, False)
        covered.settings.changing(change)  # as Arrivals.on_record, for the journal
        hub.close_session(1)
        covered.released("user:bob")  # nobody here listens to bob's channel any more
        older = {"v": 4, "share_location": True, "radius_m": None, "visible_to_strangers": False}
        await client.set(keys.of("settings", "bob"), orjson.dumps(older))
        await covered.settings.own("bob")  # bob's new session opens here, reads v4
        hub.open_session(2, "bob", "phone", now=NOW)
        assert hub.store.get_settings("bob") == UserSettings(True, None, False)
        covered.settings.wrote(change, 5)  # then his change is stored
    assert hub.store.get_settings("bob") == UserSettings(True, 900.0, False)


async def test_a_newer_change_heard_before_this_node_s_own_is_stored_wins() -> None:
    hub, _, broker = hub_with_bob(MemoryStore(partial_settings=True))
    async with online_in_redis() as (client, keys):
        covered = covered_by(client, keys, hub, broker)
        hub.open_session(2, "alice", "phone", now=NOW)  # her friend's channel: kept here
        covered.settings.keep({"bob": (UserSettings(), 1)})
        hub.handle(1, SettingsUpdate(radius_m=500.0), NOW)
        mine = SettingsChanged("bob", True, 500.0, False)
        covered.settings.changing(mine)
        theirs = SettingsChanged("bob", False, None, False)  # he hid on his other device
        covered.settings.heard(SettingsHeard(theirs, 3))  # stored after his change here...
        assert hub.store.get_settings("bob") == UserSettings(True, 500.0, False)
        covered.settings.wrote(mine, 2)  # ...which Redis stored first
    assert hub.store.get_settings("bob") == UserSettings(False, None, False)


async def test_a_hide_on_another_node_hides_a_user_with_a_session_here_too() -> None:
    """bob hides on node B; his session here keeps its own position, which his friend
    alice, here too, must neither find nor see move from then on."""
    hub, sink, broker = hub_with_bob(MemoryStore(partial_settings=True))
    async with online_in_redis() as (client, keys):
        covered = alice_near_bob(client, keys, hub, broker)
        sink.take(2)
        covered.settings.hidden("bob")  # as Arrivals.on_remote, for his gone "hidden"
        found = [f.user for f in hub.nearby.nearby("alice", NOW)]
        hub.handle(1, LocationUpdate(lat=37.5668, lon=126.978), NOW + 1)  # he moves here
        told = [f["user"] for f in sink.take(2, "friend_location")]
        assert hub.nearby.location_of("bob", NOW + 1) is not None  # his own, kept
    assert (found, told) == ([], [])
