"""What strangers learn of *when*: a user's updates inside its cell, and a watcher's changes.

docs/security.md, "What strangers can learn": moves inside a cell, and their timing, are not
seen; a watcher's own moves and radius changes reach its strangers view at most once per
``--strangers-query-interval``. Two holes an adversarial review found (issue: location
privacy, the timing of moves):

- every accepted update restarted the location's TTL, and strangers' views ended with it,
  so the moment of ``stranger_gone`` ``expired`` was exactly a TTL after the user's last
  update, one inside its cell included. Strangers now stop seeing a user on a deadline of
  their own (``core.stranger_expiry``): a TTL after the update that entered its cell, then
  renewed by updates only in quarter-TTL steps of the clock, at most half a TTL ahead;
- turning ``watch_strangers`` off and on took the current radius and position at once, so
  every re-watch was a fresh radius probe. What a user's watches were brought to now
  outlives the watch for the interval (``core.stranger_pacing``).

The first test of each is the review's, as it reported it, against a server.
"""

from __future__ import annotations

from typing import Any

import trio
from trio.testing import MockClock

from geopresence.core.broker import ConnId
from geopresence.core.hub import Hub, HubSettings
from geopresence.core.store import MemoryStore
from geopresence.testing import open_server
from geopresence.wire.client_messages import (
    LocationUpdate,
    NearbyFriendsQuery,
    NearbyPeopleQuery,
    SettingsUpdate,
    WatchStrangers,
)
from tests.helpers import RecordingSink
from tests.shell.test_server_nearby import at, move
from tests.shell.test_server_strangers import visible

Json = dict[str, Any]

# ---------------------------------------------------------------------- the review's cases


async def _what_a_watcher_sees_of_zoe(move_inside_cell: bool) -> list[tuple[float, Json]]:
    """What watcher w sees of the visible stranger zoe over 20 minutes; zoe enters a cell at
    t~0 and, if ``move_inside_cell``, sends one more update at t=300 from the SAME spot (a move
    inside its coarse cell, which security.md says strangers cannot see, not even its timing)."""
    seen: list[tuple[float, Json]] = []
    async with (
        open_server() as server,
        server.connect("w", heartbeat=True) as w,
        server.connect("zoe", heartbeat=True) as zoe,
    ):
        await move(w, at(0))
        await w.request("watch_strangers", on=True)
        await visible(zoe)
        await move(zoe, at(1_000))
        start = trio.current_time()

        async def record() -> None:
            while True:
                frame = await w.recv()
                if frame["type"].startswith("stranger"):
                    if "ts" in frame:
                        frame["ts"] = round(frame["ts"] - start, 3)
                    seen.append((round(trio.current_time() - start, 3), frame))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(record)
            for t in range(0, 1_200, 60):  # w keeps its own location fresh (same spot)
                await trio.sleep_until(start + t)
                await move(w, at(0))
                if move_inside_cell and t == 300:
                    await move(zoe, at(1_000))
            await trio.sleep_until(start + 1_200)
            nursery.cancel_scope.cancel()
    return seen


async def test_a_stranger_s_expiry_does_not_time_its_moves_inside_a_cell(
    autojump_clock: MockClock,
) -> None:
    """The TTL restarts on every accepted update, unpublished ones included: strangers'
    views ended exactly 600 s after zoe's last (unpublished) update, 900 s here. Now both
    runs look the same: zoe leaves 600 s after she entered her cell."""
    still = await _what_a_watcher_sees_of_zoe(move_inside_cell=False)
    moved = await _what_a_watcher_sees_of_zoe(move_inside_cell=True)
    assert still == moved, (still, moved)
    assert [(t, f["type"], f.get("reason")) for t, f in still] == [
        (0.0, "stranger_nearby", None),
        (600.0, "stranger_gone", "expired"),
    ]


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
"""A multiple of every step below (150 s), as the server clock's epoch seconds."""
TTL = 600.0
HERE = (37.5665, 126.978)
NEAR = (37.5665 + 0.009, 126.978)  # ~1 km north: another cell, within the default radius


def make_hub() -> tuple[Hub, RecordingSink]:
    """carol (1) watches from HERE; zoe (2) is visible to strangers; bob (3) is zoe's
    friend. Locations live 600 s."""
    sink = RecordingSink()
    settings = HubSettings(strangers_query_interval=10.0, location_ttl=TTL, offline_after=1e9)
    hub = Hub(settings, MemoryStore(), sink)
    hub.membership.add_friendship("zoe", "bob", T0)
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


def run(
    hub: Hub, sink: RecordingSink, until: float, updates: dict[float, tuple[float, float]]
) -> list[tuple[float, str, str | None]]:
    """Advance second by second from T0 to ``until``: zoe sends ``updates`` (time -> spot),
    carol and bob keep their own locations live (every 100 s); what carol is told of zoe,
    (time - T0, type, reason)."""
    told = []
    now = T0
    while now <= until:
        hub.expire(now)
        if now in updates:
            locate(hub, 2, updates[now], now)
        if (now - T0) % 100 == 0:
            locate(hub, 1, HERE, now)
            locate(hub, 3, HERE, now)
        for frame in sink.take(1, "stranger_nearby", "stranger_gone"):
            told.append((now - T0, frame["type"], frame.get("reason")))
        now += 1.0
    return told


def test_when_a_stranger_leaves_says_only_in_which_quarter_step_its_last_update_came() -> None:
    """zoe enters a cell at T0 and sends more updates from the same spot. Any in the first
    half of the TTL: she leaves at T0 + TTL, as without them. Later ones: at the latest
    multiple of TTL / 4 not after the last update + TTL / 2, never on the location's own
    deadline; updates anywhere in one quarter-TTL step look the same. One that comes when
    her view has ended is a new entry, shown as such."""
    gone_at = {}
    cases: list[tuple[float, ...]] = [
        (), (1,), (150,), (299,), (300,), (449,), (450,), (599,), (450, 700), (450, 749), (600,)
    ]  # fmt: skip
    for later in cases:
        hub, sink = make_hub()
        updates = {T0: NEAR} | {T0 + t: NEAR for t in later}
        told = run(hub, sink, T0 + 2_000, updates)
        entries = [t for t, kind, _ in told if kind == "stranger_nearby"]
        gone_at[later] = [t for t, kind, why in told if (kind, why) == ("stranger_gone", "expired")]
        assert entries == [0.0] + [600.0] * (later == (600,)), (later, told)
    assert gone_at == {
        (): [600.0],
        (1,): [600.0],
        (150,): [600.0],
        (299,): [600.0],
        (300,): [600.0],
        (449,): [600.0],
        (450,): [750.0],
        (599,): [750.0],
        (450, 700): [900.0],
        (450, 749): [900.0],
        (600,): [600.0, 1200.0],  # sent as her view ended: a new entry, a TTL from it
    }


def test_a_stranger_who_keeps_sending_from_one_spot_stays_seen() -> None:
    """zoe sends an update every TTL / 4 (150 s) from the same spot for two hours, at an
    odd phase: never gone, found by nearby_people throughout, shown once."""
    hub, sink = make_hub()
    updates = {T0: NEAR} | {T0 + 7 + 150 * k: NEAR for k in range(48)}
    told = run(hub, sink, T0 + 7_200, updates)
    assert told == [(0.0, "stranger_nearby", None)]
    hub.handle(1, NearbyPeopleQuery(page=0), T0 + 7_200)
    [reply] = sink.take(1, "nearby_people")
    assert [p["user"] for p in reply["people"]] == ["zoe"]


def test_nearby_people_drops_a_stranger_on_its_strangers_deadline_not_its_location_s() -> None:
    """zoe's update inside her cell at T0 + 500 keeps her location live until T0 + 1100
    (her friend bob still sees her), but strangers only until T0 + 750: nearby_people drops
    her then, as the watchers' views do; her next update shows her again, with its ts."""
    hub, sink = make_hub()
    run(hub, sink, T0 + 760, {T0: NEAR, T0 + 500: NEAR})
    hub.handle(1, NearbyPeopleQuery(page=0), T0 + 760)
    [reply] = sink.take(1, "nearby_people")
    assert reply["people"] == []
    hub.handle(3, NearbyFriendsQuery(page=0), T0 + 760)
    [friends] = sink.take(3, "nearby_friends")
    assert [f["user"] for f in friends["friends"]] == ["zoe"]
    locate(hub, 2, NEAR, T0 + 800)
    [back] = sink.take(1, "stranger_nearby")
    assert (back["user"], back["ts"]) == ("zoe", T0 + 800)


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


def test_visible_again_is_seen_for_a_ttl_after_the_update_shown() -> None:
    """zoe hides and turns visible again inside her cell: strangers are shown her latest
    update, and see her until a TTL after it (her location's own deadline), not after the
    moment she turned visible."""
    hub, sink = make_hub()
    locate(hub, 2, NEAR, T0)
    hub.handle(2, SettingsUpdate(visible_to_strangers=False), T0 + 100)
    locate(hub, 2, NEAR, T0 + 200)
    hub.handle(2, SettingsUpdate(visible_to_strangers=True), T0 + 300)
    frames = sink.take(1, "stranger_nearby", "stranger_gone")
    assert [(f["type"], f.get("ts"), f.get("reason")) for f in frames] == [
        ("stranger_nearby", T0, None),
        ("stranger_gone", None, "hidden"),
        ("stranger_nearby", T0 + 200, None),
    ]
    hub.expire(T0 + 799)
    assert sink.take(1, "stranger_gone") == []
    hub.expire(T0 + 800)
    assert [f["reason"] for f in sink.take(1, "stranger_gone")] == ["expired"]
