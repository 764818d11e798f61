"""What strangers learn of *when*: a watcher's changes, re-watching.

docs/security.md, "What strangers can learn": a watcher's own moves and radius changes reach
its strangers view at most once per ``--strangers-query-interval``. A hole an adversarial
review found: turning ``watch_strangers`` off and on took the current radius and position at
once, so every re-watch was a fresh radius probe. What a user's watches were brought to now
outlives the watch for the interval (``core.stranger_pacing``).

The first test is the review's, as it reported it, against a server.
"""

from __future__ import annotations

import trio
from trio.testing import MockClock

from geopresence.core.broker import ConnId
from geopresence.core.hub import Hub, HubSettings
from geopresence.core.store import MemoryStore
from geopresence.testing import open_server
from geopresence.wire.client_messages import (
    LocationUpdate,
    SettingsUpdate,
    WatchStrangers,
)
from tests.helpers import RecordingSink
from tests.shell.test_server_nearby import at, move
from tests.shell.test_server_strangers import visible

# ---------------------------------------------------------------------- the review's case


async def test_rewatching_keeps_a_radius_change_to_its_interval(
    autojump_clock: MockClock,
) -> None:
    """Turning watch_strangers off and on made the new watch take the current radius at
    once (outside the interval), so every re-watch was a fresh radius probe: with one
    connection per device, a sweep tested a new radius at each of the stranger's cell
    changes instead of one per interval."""
    async with (
        open_server(strangers_query_interval=10.0) as server,
        server.connect("w", heartbeat=True) as w,
        server.connect("zoe", heartbeat=True) as zoe,
    ):
        await move(w, at(0))
        await w.request("watch_strangers", on=True)
        await visible(zoe)
        await w.request("settings", radius_m=2_000)  # the first change: applied at once
        await trio.sleep(1)
        await w.request("settings", radius_m=500)  # within the interval: waits until t+10
        await trio.sleep(1)
        await w.request("watch_strangers", on=False)
        await w.request("watch_strangers", on=True)
        await trio.sleep(1)
        await move(zoe, at(1_000))  # 3 s later: the applied radius is still 2,000 m
        await w.request("heartbeat")
        seen = []
        with trio.move_on_after(1):
            while True:
                seen.append(await w.recv())
        assert [f["type"] for f in seen if f["type"].startswith("stranger")] == [
            "stranger_nearby"
        ], seen


# ---------------------------------------------------------------------- the hub (sans-I/O)

T0 = 1_800_000_000.0
"""The server clock, epoch seconds."""
TTL = 600.0
HERE = (37.5665, 126.978)
NEAR = (37.5665 + 0.009, 126.978)  # ~1 km north: another cell, within the default radius


def make_hub() -> tuple[Hub, RecordingSink]:
    """carol (1) watches from HERE; zoe (2) is visible to strangers; bob (3) is zoe's
    friend. Locations live 600 s."""
    sink = RecordingSink()
    settings = HubSettings(strangers_query_interval=10.0, location_ttl=TTL, offline_after=1e9)
    hub = Hub(settings, MemoryStore(), sink)
    hub.add_friendship("zoe", "bob", T0)
    for conn, user in ((1, "carol"), (2, "zoe"), (3, "bob")):
        hub.open_session(conn, user, "phone", T0)
    hub.handle(2, SettingsUpdate(visible_to_strangers=True), T0)
    locate(hub, 1, HERE, T0)
    hub.handle(1, WatchStrangers(on=True), T0)
    locate(hub, 3, HERE, T0)
    for conn in (1, 2, 3):
        sink.take(conn)
    return hub, sink


def locate(hub: Hub, conn: ConnId, point: tuple[float, float], now: float) -> None:
    hub.handle(conn, LocationUpdate(lat=point[0], lon=point[1], ts=now), now)


def test_a_re_watch_another_connection_or_a_reconnect_takes_what_was_applied() -> None:
    """carol's radius change waits for the end of her interval; within it, a re-watch, a
    watch on a second connection and a watch after reconnecting all take the radius applied
    before it, and the change reaches every watch at the interval's end. A change made
    while not watching waits likewise. Past the interval, a new watch takes the current
    radius at once."""
    hub, sink = make_hub()
    locate(hub, 2, NEAR, T0)  # zoe ~1 km away: shown
    assert [f["type"] for f in sink.take(1, "stranger_nearby")] == ["stranger_nearby"]
    hub.handle(1, SettingsUpdate(radius_m=2_000.0), T0 + 1)  # the first change: at once
    hub.handle(1, SettingsUpdate(radius_m=500.0), T0 + 2)  # waits until T0 + 11
    hub.handle(1, WatchStrangers(on=False), T0 + 3)
    hub.handle(1, WatchStrangers(on=True), T0 + 3)
    hub.open_session(4, "carol", "tablet", T0 + 3)
    hub.handle(4, WatchStrangers(on=True), T0 + 3)
    hub.close_session(1)
    hub.open_session(5, "carol", "phone", T0 + 4)  # reconnected
    hub.handle(5, WatchStrangers(on=True), T0 + 4)
    locate(hub, 2, (NEAR[0] + 0.0009, NEAR[1]), T0 + 5)  # ~1.1 km: judged on 2,000 m
    assert [len(sink.take(conn, "stranger_nearby")) for conn in (4, 5)] == [1, 1]
    hub.expire(T0 + 10.9)
    assert sink.take(4, "stranger_gone") == sink.take(5, "stranger_gone") == []
    hub.expire(T0 + 11)  # 500 m reaches both watches
    for conn in (4, 5):
        assert [f["reason"] for f in sink.take(conn, "stranger_gone")] == ["out_of_range"]
    # Not watching: a change waits for the interval all the same.
    hub.handle(4, WatchStrangers(on=False), T0 + 12)
    hub.handle(5, WatchStrangers(on=False), T0 + 12)
    hub.handle(4, SettingsUpdate(radius_m=3_000.0), T0 + 13)
    hub.handle(4, WatchStrangers(on=True), T0 + 14)
    locate(hub, 2, (NEAR[0] + 0.0018, NEAR[1]), T0 + 15)  # ~1.2 km: judged on 500 m
    assert sink.take(4, "stranger_nearby") == []
    hub.expire(T0 + 21)  # 3,000 m from then on
    locate(hub, 2, (NEAR[0] + 0.0027, NEAR[1]), T0 + 22)
    assert [f["type"] for f in sink.take(4, "stranger_nearby")] == ["stranger_nearby"]
    # Past the interval, a watch takes the current radius at once.
    hub.handle(4, WatchStrangers(on=False), T0 + 40)
    hub.handle(4, SettingsUpdate(radius_m=500.0), T0 + 40)
    hub.handle(4, WatchStrangers(on=True), T0 + 40)
    locate(hub, 2, (NEAR[0] + 0.0036, NEAR[1]), T0 + 41)
    assert sink.take(4, "stranger_nearby") == []


def test_a_watch_with_no_location_yet_uses_up_nothing() -> None:
    """The recommended order is a location, then a watch; a client that watches first
    gets its first location applied at once (a watch that covers no cell is no probe)."""
    hub, sink = make_hub()
    hub.open_session(6, "dave", "phone", T0)
    hub.handle(6, WatchStrangers(on=True), T0)
    locate(hub, 6, HERE, T0 + 1)
    locate(hub, 2, NEAR, T0 + 2)
    assert [f["type"] for f in sink.take(6, "stranger_nearby")] == ["stranger_nearby"]
