"""Nearby settings on the hub without an event loop: the radius a user's views are judged on."""

from __future__ import annotations

from typing import Any

from geopresence.core.hub import Hub, HubSettings
from geopresence.core.store import MemoryStore, UserSettings
from geopresence.wire.client_messages import LocationUpdate, NearbyFriendsQuery, SettingsUpdate
from tests.helpers import RecordingSink

KM_PER_DEGREE = 111.195  # of latitude, on the contract's sphere


def make_hub(store: MemoryStore, **settings: Any) -> tuple[Hub, RecordingSink]:
    sink = RecordingSink()
    return Hub(HubSettings(offline_after=10_000, **settings), store, sink), sink


def test_a_radius_kept_from_a_larger_max_radius_is_capped_at_the_current_one() -> None:
    # alice set 50 km on a server started with --max-radius 50000; it restarted with 10000.
    store = MemoryStore()
    store.put_settings("alice", UserSettings(radius_m=50_000.0))
    hub, sink = make_hub(store, max_radius=10_000.0, default_radius=5_000.0)
    hub.membership.add_friendship("alice", "bob", 0)
    hub.open_session(1, "alice", "phone", 0)
    hub.open_session(2, "bob", "phone", 0)
    hub.handle(2, LocationUpdate(lat=20 / KM_PER_DEGREE, lon=0.0), 1)  # 20 km north
    hub.handle(1, NearbyFriendsQuery(id=1, lat=0.0, lon=0.0), 2)
    hub.handle(1, SettingsUpdate(id=2), 3)
    replies = sink.take(1, "nearby_friends", "settings", "friend_location")
    assert replies[0]["total"] == 0 and replies[0]["friends"] == []
    assert replies[1]["radius_m"] == 10_000.0
    hub.handle(2, LocationUpdate(lat=19 / KM_PER_DEGREE, lon=0.0), 4)  # bob moves, 19 km
    assert sink.take(1) == []
