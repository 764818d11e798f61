"""Nearby strangers over real sessions: cell subscriptions, opt-in, friends excluded,
rounding, no coordinates anywhere, rate limits.

Strangers see distances between COARSE positions (both parties snapped to the centre of their
~100 m cell), so expected distances are computed with ``seen_distance``, not from the exact
offsets (the privacy rules themselves are tested in test_stranger_privacy.py).
"""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from geopresence.client import Client
from geopresence.core.stranger_events import cell_channel
from geopresence.model.geo import haversine_m
from geopresence.model.geocells import coarse
from geopresence.testing import TestServer

from .test_server_nearby import at, move, nothing_for

COORDINATE_KEYS = {"lat", "lon"}


def seen_distance(a: dict[str, float], b: dict[str, float]) -> int:
    """The distance_m a stranger sees between two positions: haversine between their coarse
    cell centres, rounded to the nearest 100 m (ties to even)."""
    exact = haversine_m(*coarse(a["lat"], a["lon"]), *coarse(b["lat"], b["lon"]))
    return round(exact / 100) * 100


async def visible(client: Client, on: bool = True) -> None:
    reply = await client.request("settings", visible_to_strangers=on)
    assert reply["visible_to_strangers"] is on


def no_coordinates(frame: dict[str, object]) -> None:
    text = str(frame)
    assert not COORDINATE_KEYS & set(frame), frame
    for person in frame.get("people", []):  # type: ignore[attr-defined]
        assert not COORDINATE_KEYS & set(person)
    assert "37.5" not in text


async def test_watcher_sees_visible_strangers_rounded(
    server: TestServer, autojump_clock: MockClock
) -> None:
    async with (
        server.connect("watcher", heartbeat=True) as watcher,
        server.connect("zoe", heartbeat=True) as zoe,
        server.connect("shy", heartbeat=True) as shy,
    ):
        await move(watcher, at(0))
        reply = await watcher.request("watch_strangers", on=True)
        assert reply == {"type": "watch_strangers", "re": reply["re"], "on": True}
        await visible(zoe)
        await move(zoe, at(1_234), ts=3)
        event = await watcher.recv_type("stranger_nearby")
        assert seen_distance(at(0), at(1_234)) == 1_200
        assert event == {"type": "stranger_nearby", "user": "zoe", "distance_m": 1_200, "ts": 3}
        no_coordinates(event)
        await move(shy, at(500))  # never opted in
        await nothing_for(watcher)
        people = await watcher.request("nearby_people")
        assert people == {
            "type": "nearby_people",
            "re": people["re"],
            "page": 0,
            "page_size": 20,
            "total": 1,
            "people": [{"user": "zoe", "distance_m": 1_200, "ts": 3}],
        }
        no_coordinates(people)


async def test_friends_are_never_strangers(server: TestServer, autojump_clock: MockClock) -> None:
    await server.admin.befriend("watcher", "pal")
    async with (
        server.connect("watcher", heartbeat=True) as watcher,
        server.connect("pal", heartbeat=True) as pal,
        server.connect("zoe", heartbeat=True) as zoe,
    ):
        await move(watcher, at(0))
        await watcher.request("watch_strangers", on=True)
        for client in (pal, zoe):
            await visible(client)
            await move(client, at(300))
        assert (await watcher.recv_type("stranger_nearby"))["user"] == "zoe"
        assert [p["user"] for p in (await watcher.request("nearby_people"))["people"]] == ["zoe"]
        # becoming friends takes zoe out of the strangers view at once
        await server.admin.befriend("watcher", "zoe")
        assert await watcher.recv_type("stranger_gone") == {
            "type": "stranger_gone",
            "user": "zoe",
            "reason": "friend",
        }
        people = await watcher.request("nearby_people")
        assert (people["total"], people["people"]) == (0, [])


async def test_opt_out_and_leaving(server: TestServer, autojump_clock: MockClock) -> None:
    async with (
        server.connect("watcher", heartbeat=True) as watcher,
        server.connect("zoe", heartbeat=True) as zoe,
    ):
        await move(watcher, at(0))
        await watcher.request("watch_strangers", on=True)
        await visible(zoe)
        await move(zoe, at(2_000))
        await watcher.recv_type("stranger_nearby")
        await visible(zoe, False)
        assert await watcher.recv_type("stranger_gone") == {
            "type": "stranger_gone",
            "user": "zoe",
            "reason": "hidden",
        }
        assert (await watcher.request("nearby_people"))["total"] == 0
        await move(zoe, at(1_000))
        await nothing_for(watcher)
        await visible(zoe)
        distance = seen_distance(at(0), at(1_000))
        assert (await watcher.recv_type("stranger_nearby"))["distance_m"] == distance
        await move(zoe, at(30_000))  # far away, into cells the watcher does not cover
        gone = await watcher.recv_type("stranger_gone")
        assert gone["reason"] == "out_of_range"


async def test_resubscribes_only_changed_cells(
    server: TestServer, autojump_clock: MockClock
) -> None:
    async with server.connect("watcher", heartbeat=True) as watcher:
        broker = server.running.server.hub.broker
        await move(watcher, at(0))
        await watcher.request("watch_strangers", on=True)
        conn = next(iter(server.running.server.hub.connections_of("watcher")))
        before = {c for c in broker.channels_of(conn) if c.startswith("cell:")}
        assert before
        calls: list[tuple[str, str]] = []
        subscribe, unsubscribe = broker.subscribe, broker.unsubscribe

        def spy_subscribe(channel: str, c: int) -> None:
            calls.append(("+", channel))
            subscribe(channel, c)

        def spy_unsubscribe(channel: str, c: int) -> None:
            calls.append(("-", channel))
            unsubscribe(channel, c)

        broker.subscribe = spy_subscribe  # type: ignore[method-assign, assignment]
        broker.unsubscribe = spy_unsubscribe  # type: ignore[method-assign, assignment]
        await move(watcher, at(3))  # a few metres: same cover, nothing touched
        await watcher.request("heartbeat")
        assert calls == []
        await move(watcher, at(6_000))
        await watcher.request("heartbeat")
        after = {c for c in broker.channels_of(conn) if c.startswith("cell:")}
        assert after != before
        assert {ch for op, ch in calls if op == "+"} == after - before
        assert {ch for op, ch in calls if op == "-"} == before - after
        await watcher.request("watch_strangers", on=False)
        assert not {c for c in broker.channels_of(conn) if c.startswith("cell:")}
        assert cell_channel("x") == "cell:x"


async def test_watcher_moving_meets_strangers_on_their_next_move(
    server: TestServer, autojump_clock: MockClock
) -> None:
    async with (
        server.connect("watcher", heartbeat=True) as watcher,
        server.connect("zoe", heartbeat=True) as zoe,
    ):
        await move(watcher, at(0))
        await watcher.request("watch_strangers", on=True)
        await visible(zoe)
        await move(zoe, at(40_000))
        await nothing_for(watcher)
        await move(watcher, at(39_000))
        await move(zoe, at(40_010))  # inside zoe's coarse cell: not published
        await nothing_for(watcher)
        await move(zoe, at(40_200))  # into another cell: published
        event = await watcher.recv_type("stranger_nearby")
        assert event["distance_m"] == seen_distance(at(39_000), at(40_200)) == 1_200


async def test_nearby_people_is_rate_limited(server: TestServer, autojump_clock: MockClock) -> None:
    async with server.connect("watcher") as watcher:
        await move(watcher, at(0))
        for _ in range(3):
            assert (await watcher.request("nearby_people"))["type"] == "nearby_people"
        limited = await watcher.request("nearby_people")
        assert (limited["type"], limited["code"]) == ("error", "rate_limited")
        assert "retry in" in limited["message"]
        await trio.sleep(10)
        assert (await watcher.request("nearby_people"))["type"] == "nearby_people"
    async with server.connect("watcher", "tablet") as again:  # another device: same bucket
        limited = await again.request("nearby_people")
        assert limited["code"] == "rate_limited"
        metrics = await server.admin.metrics()
        assert 'geopresence_errors_total{code="rate_limited"} 2' in metrics


async def test_nearby_people_needs_a_location_and_pages(
    server: TestServer, autojump_clock: MockClock
) -> None:
    async with server.connect("watcher", heartbeat=True) as watcher:
        assert (await watcher.request("nearby_people"))["code"] == "no_location"
        await move(watcher, at(0))
        for i in range(25):
            async with server.connect(f"s{i:02d}") as stranger:
                await visible(stranger)
                await move(stranger, at(200 * (i + 1)))
        first = await watcher.request("nearby_people", page=0)
        assert first["total"] == 25
        assert [p["user"] for p in first["people"]] == [f"s{i:02d}" for i in range(20)]
        distances = [p["distance_m"] for p in first["people"]]
        assert distances == sorted(distances)
        assert all(d % 100 == 0 for d in distances)
        second = await watcher.request("nearby_people", page=1)
        assert [p["user"] for p in second["people"]] == [f"s{i:02d}" for i in range(20, 25)]


async def test_offline_and_expired_strangers_leave(
    server: TestServer, autojump_clock: MockClock
) -> None:
    async with server.connect("watcher", heartbeat=True) as watcher:
        await move(watcher, at(0))
        await watcher.request("watch_strangers", on=True)
        async with server.connect("zoe") as zoe:
            await visible(zoe)
            await move(zoe, at(100))
            await watcher.recv_type("stranger_nearby")
            await zoe.logout()
        assert (await watcher.recv_type("stranger_gone"))["reason"] == "offline"
        async with server.connect("yan", heartbeat=True) as yan:
            await visible(yan)
            await move(yan, at(100))
            await watcher.recv_type("stranger_nearby")
            await move(watcher, at(0))  # keep the watcher's own location fresh
            gone = await watcher.recv_type("stranger_gone")
            assert gone == {"type": "stranger_gone", "user": "yan", "reason": "expired"}


@pytest.mark.parametrize(
    "message",
    [
        {"type": "watch_strangers"},
        {"type": "watch_strangers", "on": "yes"},
        {"type": "nearby_people", "page": -1},
    ],
)
async def test_invalid_strangers_messages(
    message: dict[str, object], server: TestServer, autojump_clock: MockClock
) -> None:
    async with server.connect("a") as a:
        await a.send({**message, "id": 1})
        reply = await a.recv()
        assert (reply["type"], reply["code"]) == ("error", "bad_request")


async def test_query_keeps_strangers_shown_by_events(
    server: TestServer, autojump_clock: MockClock
) -> None:
    from contextlib import AsyncExitStack

    async with server.connect("watcher", heartbeat=True) as watcher, AsyncExitStack() as stack:
        await move(watcher, at(0))
        await watcher.request("watch_strangers", on=True)
        clients = []
        for i in range(21):
            stranger = await stack.enter_async_context(server.connect(f"s{i:02d}", heartbeat=True))
            clients.append(stranger)
            await visible(stranger)
            await move(stranger, at(100 * (i + 1)))
            await watcher.recv_type("stranger_nearby")
        page = await watcher.request("nearby_people")
        assert [p["user"] for p in page["people"]][-1] == "s19"
        await move(clients[20], at(40_000))  # s20: shown by an event, not on page 0
        gone = await watcher.recv_type("stranger_gone")
        assert (gone["user"], gone["reason"]) == ("s20", "out_of_range")
