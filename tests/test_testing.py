"""``geopresence.testing`` as an embedder's test suite uses it: ``open_server`` under
pytest-trio's ``autojump_clock``, several servers, and misuse that deserves one clear line."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import trio
import trio.testing

import geopresence
from geopresence.testing import open_server


async def test_starting_a_server_does_not_move_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    woke: list[float] = []

    async def sleeper() -> None:
        await trio.sleep(5)
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper)
        await trio.sleep(0)
        async with open_server() as first:
            assert trio.current_time() == 0  # no worker thread let the clock jump to 5
            async with open_server():  # a second one, first's timers pending
                assert trio.current_time() == 0
            assert first.now() == 0
        assert woke == []


async def test_connecting_to_a_stopped_server_says_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_server() as server:
        server.stop()
        await trio.sleep(1)  # drained and stopped
        with pytest.raises(RuntimeError, match=r"^the server is not running"):
            async with server.connect("alice"):
                pass
    with pytest.raises(RuntimeError, match=r"^the server is not running"):
        server.open_memory_connection()

    with trio.move_on_after(1):  # cancelled rather than stopped
        async with open_server() as server:
            await trio.sleep_forever()
    with pytest.raises(RuntimeError, match=r"^the server is not running"):
        server.open_memory_connection()


async def test_serve_gives_the_garbage_collector_back(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """``gc_freeze_interval`` tunes the collector of the serving process; an embedder's
    process gets it back as it was once ``serve`` returns."""
    thresholds = gc.get_threshold()
    config = geopresence.Config(port=0, http_port=0, in_memory=True, data_dir=tmp_path)
    async with trio.open_nursery() as nursery:
        running = await nursery.start(geopresence.serve, config)
        await trio.sleep(1)
        assert gc.get_freeze_count() > 0
        running.stop()
    assert gc.get_threshold() == thresholds
    assert gc.get_freeze_count() == 0


async def test_the_clients_helpers_speak_the_contract(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every typed helper of ``geopresence.client.Client`` sends what PROTOCOL.md says and
    returns the reply."""
    async with open_server() as server:
        await server.admin.befriend("alice", "bob")
        await server.admin.set_group("g1", ["alice", "bob", "carol"])
        async with server.connect("alice") as alice, server.connect("bob") as bob:
            assert (await bob.nearby_friends())["code"] == "no_location"
            await alice.location(37.5665, 126.978, ts=server.now())
            reply = await bob.nearby_friends(lat=37.5796, lon=126.977)
            assert (reply["type"], reply["total"]) == ("nearby_friends", 1)
            assert reply["friends"][0]["user"] == "alice"
            assert reply["friends"][0]["distance_m"] == pytest.approx(1459, abs=2)
            assert (await bob.nearby_friends(page=1))["friends"] == []
            settings = await bob.settings(radius_m=1000, visible_to_strangers=True)
            assert (settings["radius_m"], settings["visible_to_strangers"]) == (1000, True)
            assert (await bob.settings())["share_location"] is True
            assert (await alice.watch_strangers())["on"] is True
            assert (await alice.watch_strangers(on=False))["on"] is False
            people = await alice.nearby_people()
            assert (people["type"], people["total"]) == ("nearby_people", 0)  # bob is a friend
            online = await alice.group_presence("g1")
            assert online["type"] == "group_presence"
            assert sorted(online["online"]) == ["alice", "bob"]
