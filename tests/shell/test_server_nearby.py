"""Nearby friends over real sessions (in-memory transport, virtual time).

Positions are built from metre offsets around a base point; expected distances are the
contract's haversine, computed independently of the server's code path.
"""

from __future__ import annotations

import math
import subprocess
import sys

import orjson
import pytest
import trio
from trio.testing import MockClock

from geopresence.client import Client, connect_stream
from geopresence.model.geo import EARTH_RADIUS_M, haversine_m
from geopresence.storage.history import history_dir, read_history
from geopresence.testing import TestServer, open_server
from tests.shell.test_peer_misbehaviour import RawPeer, raw_peer

BASE = (37.5665, 126.978)  # Seoul City Hall


def at(north_m: float, east_m: float = 0.0, base: tuple[float, float] = BASE) -> dict[str, float]:
    """A position ``north_m`` / ``east_m`` metres from ``base`` (small-offset approximation)."""
    lat = base[0] + math.degrees(north_m / EARTH_RADIUS_M)
    lon = base[1] + math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(base[0]))))
    return {"lat": lat, "lon": lon}


async def move(client: Client, position: dict[str, float], **extra: float) -> None:
    await client.send({"type": "location", **position, **extra})


async def nothing_for(client: Client, seconds: float = 1.0) -> None:
    """Assert no nearby frame (or reply) arrives; presence traffic is not this file's topic."""
    with trio.move_on_after(seconds):
        while True:
            message = await client.recv()
            if message["type"] not in ("presence", "friends_presence"):
                pytest.fail(f"unexpected message {message}")


async def befriend_all(server: TestServer, *pairs: tuple[str, str]) -> None:
    await server.admin.befriend_many(list(pairs))


async def greet(peer: RawPeer, user: str) -> None:
    """A raw peer's hello as ``user``, read up to the welcome and friends_presence."""
    from wsproto.events import TextMessage

    await peer.send(
        TextMessage(orjson.dumps({"type": "hello", "user": user, "device": "d"}).decode())
    )
    await peer.until(TextMessage)  # welcome
    await peer.until(TextMessage)  # friends_presence


async def next_frame(peer: RawPeer) -> dict[str, object]:
    """The next text frame a raw peer reads, parsed."""
    from wsproto.events import TextMessage

    event = await peer.until(TextMessage)
    assert isinstance(event, TextMessage)
    frame: dict[str, object] = orjson.loads(event.data)
    return frame


async def send_at_once(peer: RawPeer, *texts: str) -> None:
    """Text frames in one write: the server reads them at once, as from a client that runs
    ahead of it."""
    from wsproto.events import TextMessage

    await peer.stream.send_all(b"".join(peer.ws.send(TextMessage(t)) for t in texts))


async def test_fan_out_only_within_the_viewers_radius(
    server: TestServer, autojump_clock: MockClock
) -> None:
    await befriend_all(server, ("alice", "bob"), ("carol", "bob"))
    async with (
        server.connect("alice", heartbeat=True) as alice,
        server.connect("bob", heartbeat=True) as bob,
        server.connect("carol", heartbeat=True) as carol,
    ):
        await move(alice, at(0))
        await move(carol, at(20_000))  # 20 km north: beyond 5 miles
        await trio.sleep(1)
        await move(bob, at(1_000), ts=0.5)
        event = await alice.recv_type("friend_location")
        expected = haversine_m(*at(0).values(), *at(1_000).values())
        assert event == {
            "type": "friend_location",
            "user": "bob",
            **at(1_000),
            "ts": 0.5,
            "distance_m": pytest.approx(expected, abs=1e-6),
        }
        assert event["distance_m"] == pytest.approx(1_000, abs=0.5)
        await nothing_for(carol)
        await nothing_for(bob)  # no reply to the mover


async def test_out_of_range_once_then_back(server: TestServer, autojump_clock: MockClock) -> None:
    await befriend_all(server, ("alice", "bob"))
    async with (
        server.connect("alice", heartbeat=True) as alice,
        server.connect("bob", heartbeat=True) as bob,
    ):
        await move(alice, at(0))
        await move(bob, at(2_000))
        assert (await alice.recv_type("friend_location"))["user"] == "bob"
        await move(bob, at(9_000))
        assert await alice.recv_type("friend_gone", "friend_location") == {
            "type": "friend_gone",
            "user": "bob",
            "reason": "out_of_range",
        }
        await move(bob, at(12_000))
        await nothing_for(alice)  # gone only once
        await move(bob, at(3_000))
        assert (await alice.recv_type("friend_location"))["distance_m"] == pytest.approx(
            3_000, abs=1
        )


async def test_radius_belongs_to_each_viewer(server: TestServer, autojump_clock: MockClock) -> None:
    await befriend_all(server, ("alice", "bob"), ("carol", "bob"))
    async with (
        server.connect("alice", heartbeat=True) as alice,
        server.connect("bob", heartbeat=True) as bob,
        server.connect("carol", heartbeat=True) as carol,
    ):
        reply = await alice.request("settings", radius_m=500)
        assert reply == {
            "type": "settings",
            "re": reply["re"],
            "share_location": True,
            "radius_m": 500,
            "visible_to_strangers": False,
        }
        await move(alice, at(0))
        await move(carol, at(0))
        await move(bob, at(1_000))
        assert (await carol.recv_type("friend_location"))["user"] == "bob"
        await nothing_for(alice)
        # widening the radius shows bob at once; narrowing it again takes him away
        await alice.request("settings", radius_m=2_000)
        assert (await alice.recv_type("friend_location"))["user"] == "bob"
        await alice.request("settings", radius_m=100)
        gone = await alice.recv_type("friend_gone")
        assert gone["reason"] == "out_of_range"


async def test_friend_exactly_at_the_radius(server: TestServer, autojump_clock: MockClock) -> None:
    await befriend_all(server, ("alice", "bob"))
    async with (
        server.connect("alice", heartbeat=True) as alice,
        server.connect("bob", heartbeat=True) as bob,
    ):
        here, there = at(0), at(3_000, 4_000)
        exact = haversine_m(here["lat"], here["lon"], there["lat"], there["lon"])
        await alice.request("settings", radius_m=exact)
        await move(alice, here)
        await move(bob, there)
        event = await alice.recv_type("friend_location")
        assert event["distance_m"] == pytest.approx(exact)
        await alice.request("settings", radius_m=exact - 1)
        assert (await alice.recv_type("friend_gone"))["reason"] == "out_of_range"


async def test_antimeridian_neighbours(server: TestServer, autojump_clock: MockClock) -> None:
    await befriend_all(server, ("alice", "bob"))
    async with (
        server.connect("alice", heartbeat=True) as alice,
        server.connect("bob", heartbeat=True) as bob,
    ):
        await move(alice, {"lat": 10.0, "lon": 179.99})
        await move(bob, {"lat": 10.0, "lon": -179.99})
        event = await alice.recv_type("friend_location")
        assert event["distance_m"] == pytest.approx(haversine_m(10, 179.99, 10, -179.99))
        assert event["distance_m"] < 2_200
        reply = await bob.request("nearby_friends")
        assert [f["user"] for f in reply["friends"]] == ["alice"]


async def test_expired_at_exact_time(server: TestServer, autojump_clock: MockClock) -> None:
    await befriend_all(server, ("alice", "bob"))
    async with (
        server.connect("alice", heartbeat=True) as alice,
        server.connect("bob", heartbeat=True) as bob,
    ):
        await move(alice, at(0))
        await trio.sleep(100)
        await move(bob, at(500))  # t=100
        await alice.recv_type("friend_location")
        await trio.sleep(100)
        await move(alice, at(0))  # t=200: alice's own location outlives bob's
        gone = await alice.recv_type("friend_gone")
        assert gone == {"type": "friend_gone", "user": "bob", "reason": "expired"}
        assert trio.current_time() == 700  # bob's update at t=100 + location_ttl 600
        assert (await alice.request("nearby_friends"))["friends"] == []


async def test_offline_hidden_unfriended(server: TestServer, autojump_clock: MockClock) -> None:
    await befriend_all(server, ("alice", "bob"), ("alice", "carol"), ("alice", "dave"))
    async with server.connect("alice", heartbeat=True) as alice:
        await move(alice, at(0))
        async with (
            server.connect("bob", heartbeat=True) as bob,
            server.connect("carol", heartbeat=True) as carol,
            server.connect("dave", heartbeat=True) as dave,
        ):
            for friend, north in ((bob, 100), (carol, 200), (dave, 300)):
                await move(friend, at(north))
                await alice.recv_type("friend_location")
            # hidden
            reply = await carol.request("settings", share_location=False)
            assert reply["share_location"] is False
            assert await alice.recv_type("friend_gone") == {
                "type": "friend_gone",
                "user": "carol",
                "reason": "hidden",
            }
            await move(carol, at(250))
            await nothing_for(alice)  # hidden users are not fanned out
            assert [f["user"] for f in (await alice.request("nearby_friends"))["friends"]] == [
                "bob",
                "dave",
            ]
            await carol.request("settings", share_location=True)
            assert (await alice.recv_type("friend_location"))["user"] == "carol"
            # unfriended
            await server.admin.unfriend("dave", "alice")
            assert await alice.recv_type("friend_gone") == {
                "type": "friend_gone",
                "user": "dave",
                "reason": "unfriended",
            }
            assert (await dave.recv_type("friend_removed"))["user"] == "alice"
            # offline (logout is immediate)
            await bob.logout()
            assert (await alice.recv_type("presence"))["status"] == "offline"
            assert await alice.recv_type("friend_gone") == {
                "type": "friend_gone",
                "user": "bob",
                "reason": "offline",
            }


async def test_nearby_friends_query_pages_and_client_init(
    server: TestServer, autojump_clock: MockClock
) -> None:
    friends = [f"f{i:02d}" for i in range(25)]
    await befriend_all(server, *[("alice", f) for f in friends], ("alice", "far"))
    async with server.connect("alice", heartbeat=True) as alice:
        error = await alice.request("nearby_friends")
        assert error["code"] == "no_location"
        for i, name in enumerate(reversed(friends)):  # f24 nearest ... f00 farthest
            async with server.connect(name) as friend:
                await move(friend, at(100 + 10 * i))
        async with server.connect("far") as far:
            await move(far, at(30_000))
        first = await alice.request("nearby_friends", page=0, **at(0))  # client-init form
        assert (first["page"], first["page_size"], first["total"]) == (0, 20, 25)
        names = [f["user"] for f in first["friends"]]
        assert names == [f"f{i:02d}" for i in range(24, 4, -1)]
        distances = [f["distance_m"] for f in first["friends"]]
        assert distances == sorted(distances)
        assert set(first["friends"][0]) == {"user", "lat", "lon", "ts", "distance_m"}
        second = await alice.request("nearby_friends", page=1)
        assert [f["user"] for f in second["friends"]] == ["f04", "f03", "f02", "f01", "f00"]
        beyond = await alice.request("nearby_friends", page=7)
        assert (beyond["friends"], beyond["total"]) == ([], 25)


async def test_client_init_publishes_to_friends(
    server: TestServer, autojump_clock: MockClock
) -> None:
    await befriend_all(server, ("alice", "bob"))
    async with (
        server.connect("alice", heartbeat=True) as alice,
        server.connect("bob", heartbeat=True) as bob,
    ):
        await move(bob, at(0))
        reply = await alice.request("nearby_friends", **at(700))
        assert [f["user"] for f in reply["friends"]] == ["bob"]
        event = await bob.recv_type("friend_location")
        assert event["user"] == "alice"
        assert event["distance_m"] == pytest.approx(700, abs=0.5)


async def test_timestamps_stale_and_future(server: TestServer, autojump_clock: MockClock) -> None:
    await befriend_all(server, ("alice", "bob"))
    async with (
        server.connect("alice", heartbeat=True) as alice,
        server.connect("bob", heartbeat=True) as bob,
    ):
        await trio.sleep(100)
        await move(alice, at(0))
        await move(bob, at(500), ts=90)
        assert (await alice.recv_type("friend_location"))["ts"] == 90
        await move(bob, at(900), ts=80)  # older than the stored one: ignored
        await nothing_for(alice)
        [entry] = (await alice.request("nearby_friends"))["friends"]
        assert (entry["ts"], entry["distance_m"]) == (90, pytest.approx(500, abs=0.5))
        now = server.now()
        await bob.send({"type": "location", **at(600), "ts": now + 60.5, "id": 5})
        error = await bob.recv_type("error")
        assert (error["re"], error["code"]) == (5, "bad_request")
        assert "ahead" in error["message"]
        await move(bob, at(600), ts=now + 60)  # 60 s ahead is still fine
        assert (await alice.recv_type("friend_location"))["ts"] == now + 60
        await move(bob, at(700))  # no ts: the server's clock, which is older than 160
        await nothing_for(alice)


@pytest.mark.parametrize(
    "message",
    [
        {"type": "location", "lat": 91, "lon": 0},
        {"type": "location", "lat": 0, "lon": -180.01},
        {"type": "location", "lat": "1", "lon": 0},
        {"type": "location", "lat": True, "lon": 0},
        {"type": "location", "lon": 0},
        {"type": "location", "lat": 0, "lon": 0, "ts": "now"},
        {"type": "nearby_friends", "lat": 1},
        {"type": "nearby_friends", "page": -1},
        {"type": "nearby_friends", "page": 1.5},
        {"type": "settings", "radius_m": 0},
        {"type": "settings", "radius_m": 50_001},
        {"type": "settings", "share_location": "yes"},
    ],
)
async def test_invalid_nearby_messages(
    message: dict[str, object], server: TestServer, autojump_clock: MockClock
) -> None:
    async with server.connect("alice") as alice:
        await alice.send({**message, "id": "x"})
        reply = await alice.recv()
        assert (reply["type"], reply["re"], reply["code"]) == ("error", "x", "bad_request")
        await alice.send_raw('{"type":"location","lat":1e999,"lon":0}')
        assert (await alice.recv())["code"] == "bad_request"
        assert (await alice.request("heartbeat"))["type"] == "heartbeat"


async def test_new_friendship_shows_both_sides_at_once(
    server: TestServer, autojump_clock: MockClock
) -> None:
    async with (
        server.connect("alice", heartbeat=True) as alice,
        server.connect("bob", heartbeat=True) as bob,
    ):
        await move(alice, at(0))
        await move(bob, at(400))
        await nothing_for(alice)
        await server.admin.befriend("alice", "bob")
        assert (await alice.recv_type("friend_location"))["user"] == "bob"
        assert (await bob.recv_type("friend_location"))["user"] == "alice"


async def test_slow_watcher_gets_latest_position(autojump_clock: MockClock) -> None:
    async with open_server(queue_size=4) as server:
        await server.admin.befriend("watcher", "runner")
        stream = server.open_memory_connection(lockstep=True)
        async with connect_stream(stream, user="watcher", device="d") as watcher:
            await move(watcher, at(0))
            async with server.connect("runner", heartbeat=True) as runner:
                for step in range(1, 51):
                    await move(runner, at(step * 10))
                last = None
                with trio.move_on_after(1):
                    while True:
                        last = await watcher.recv_type("friend_location")
                assert last is not None
                assert last["distance_m"] == pytest.approx(500, abs=0.5)
        metrics = await server.admin.metrics()
        assert 'geopresence_closes_total{code="4008"}' not in metrics


async def test_history_file_and_command(server: TestServer, autojump_clock: MockClock) -> None:
    async with server.connect("alice") as alice:
        await move(alice, at(0), ts=0)
        await move(alice, at(100), ts=0)
        await move(alice, at(200), ts=-5)  # ignored: not recorded
        await trio.sleep(2)  # the history is flushed within a second
        entries = list(read_history(history_dir(server.config.data_dir), "alice"))
        assert [(e.lat, e.lon, e.ts) for e in entries] == [
            (at(0)["lat"], at(0)["lon"], 0.0),
            (at(100)["lat"], at(100)["lon"], 0.0),
        ]
    result = subprocess.run(
        [sys.executable, "-m", "geopresence", "history", "alice", "--json", "--data-dir",
         str(server.config.data_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [line["lat"] for line in lines] == [at(0)["lat"], at(100)["lat"]]


async def test_location_metrics(server: TestServer, autojump_clock: MockClock) -> None:
    async with server.connect("alice") as alice:
        await move(alice, at(0), ts=5)
        await move(alice, at(0), ts=1)
        await alice.request("heartbeat")
        metrics = await server.admin.metrics()
        assert "geopresence_locations 1" in metrics
        assert 'geopresence_location_updates_total{result="accepted"} 1' in metrics
        assert 'geopresence_location_updates_total{result="ignored"} 1' in metrics
        assert "geopresence_history_records_total 1" in metrics


async def test_viewer_moving_away_drops_shown_friends_at_once(
    server: TestServer, autojump_clock: MockClock
) -> None:
    await befriend_all(server, ("alice", "bob"))
    async with (
        server.connect("alice", heartbeat=True) as alice,
        server.connect("bob", heartbeat=True) as bob,
    ):
        await move(bob, at(0))
        await move(alice, at(1_000))
        assert (await bob.recv_type("friend_location"))["user"] == "alice"
        reply = await alice.request("nearby_friends")
        assert [f["user"] for f in reply["friends"]] == ["bob"]
        await move(alice, at(20_000))  # alice walks away: both views drop the other
        assert await bob.recv_type("friend_gone") == {
            "type": "friend_gone",
            "user": "alice",
            "reason": "out_of_range",
        }
        assert await alice.recv_type("friend_gone") == {
            "type": "friend_gone",
            "user": "bob",
            "reason": "out_of_range",
        }


async def test_negative_ts_is_refused(server: TestServer, autojump_clock: MockClock) -> None:
    async with server.connect("alice") as alice:
        await alice.send({"type": "location", **at(0), "ts": -1e300, "id": 1})
        error = await alice.recv()
        assert (error["re"], error["code"]) == (1, "bad_request")


async def test_broken_history_disk_costs_history_only(
    server: TestServer, autojump_clock: MockClock
) -> None:
    """A history that cannot be written is logged and counted; updates still fan out."""
    await befriend_all(server, ("alice", "bob"))
    history = server.running.server.history
    history.directory = server.config.data_dir / "not-a-dir"
    history.directory.write_text("a file where the history directory should be")
    async with (
        server.connect("alice", heartbeat=True) as alice,
        server.connect("bob", heartbeat=True) as bob,
    ):
        await move(alice, at(0))
        await move(bob, at(100))
        assert (await alice.recv_type("friend_location"))["user"] == "bob"
        await trio.sleep(2)
        metrics = await server.admin.metrics()
        assert "geopresence_history_errors_total 2" in metrics


async def test_moves_read_at_once_fan_out_only_the_newest(
    server: TestServer, autojump_clock: MockClock
) -> None:
    await befriend_all(server, ("alice", "bob"))
    async with server.connect("bob", heartbeat=True) as bob, raw_peer(server) as alice:
        await greet(alice, "alice")
        await move(bob, at(0))
        frames = [{"type": "location", **at(100 * i), "id": i} for i in (1, 2, 3)]
        frames.insert(2, {"type": "location", "lat": 91, "lon": 0, "id": 9})  # refused
        await send_at_once(alice, *(orjson.dumps(f).decode() for f in frames))
        shown = await bob.recv_type("friend_location")
        assert shown["distance_m"] == pytest.approx(300, abs=0.5)  # the newest
        await nothing_for(bob)
        error = await next_frame(alice)
        assert (error["type"], error["re"]) == ("error", 9)
        await trio.sleep(2)  # the history is flushed within a second
        history = read_history(history_dir(server.config.data_dir), "alice")
        assert [round(e.lat, 6) for e in history] == [
            round(at(100 * i)["lat"], 6) for i in (1, 2, 3)
        ]
        # No frame made for the two older moves: none was replaced in bob's queue.
        assert server.running.server.metrics.coalesced == 0


def location_text(position: dict[str, float]) -> str:
    return orjson.dumps({"type": "location", **position}).decode()


async def test_a_bug_showing_moves_read_at_once_costs_one_error_reply(
    server: TestServer, autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsproto.events import TextMessage

    from geopresence.core.nearby import Nearby

    def broken(self: Nearby, *, keep_deferring: bool = False) -> None:
        raise RuntimeError("a bug")

    async with raw_peer(server) as alice:
        await greet(alice, "alice")
        monkeypatch.setattr(Nearby, "show_moves", broken)
        await send_at_once(alice, location_text(at(100)), location_text(at(200)))
        error = await next_frame(alice)
        assert (error["type"], error["code"]) == ("error", "internal")
        monkeypatch.undo()
        await alice.send(TextMessage('{"type":"heartbeat","id":3}'))  # still served
        reply = await next_frame(alice)
        assert (reply["type"], reply["re"]) == ("heartbeat", 3)


async def test_a_bug_checking_moves_before_an_error_reply_costs_one_reply(
    server: TestServer, autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error reply first checks the sender's views against the moves read before it
    (``Sessions.before_error``): a bug there costs one reply, as any bug handling a message,
    and the rest of the read is still served."""
    from geopresence.core.nearby_views import FriendViews

    def broken(self: FriendViews, viewer: str, now: float) -> None:
        raise RuntimeError("a bug")

    async with raw_peer(server) as alice:
        await greet(alice, "alice")
        monkeypatch.setattr(FriendViews, "recheck", broken)
        heartbeat = '{"type":"heartbeat","id":3}'
        await send_at_once(alice, location_text(at(100)), "not json", heartbeat)
        error = await next_frame(alice)
        assert (error["type"], error["code"]) == ("error", "internal")
        reply = await next_frame(alice)
        assert (reply["type"], reply["re"]) == ("heartbeat", 3)


async def test_a_message_the_shell_answers_itself_follows_the_moves_before_it(
    server: TestServer, autojump_clock: MockClock
) -> None:
    """With several nodes the shell answers some messages after a Redis read (``later``);
    what the moves read before such a message make goes out before it is taken, as
    ``Hub.handle`` does for the others (``Hub.settle``)."""
    from wsproto.events import TextMessage

    from geopresence.wire.client_messages import ClientMessage, Heartbeat

    running = server.running.server
    views_when_taken: list[set[str]] = []

    def later(conn: int, message: ClientMessage) -> bool:
        if isinstance(message, Heartbeat) and message.id == 5:
            views_when_taken.append(set(running.hub.nearby.views._shown.get(conn, ())))
        return False  # handled as usual

    running.handler.later = later
    await befriend_all(server, ("alice", "bob"))
    async with server.connect("bob", heartbeat=True) as bob, raw_peer(server) as alice:
        await greet(alice, "alice")
        await move(bob, at(0))
        await alice.send(TextMessage(location_text(at(100))))
        await bob.recv_type("friend_location")
        await move(bob, at(0))
        shown = await next_frame(alice)
        assert (shown["type"], shown["user"]) == ("friend_location", "bob")
        await send_at_once(alice, location_text(at(20_000)), '{"type":"heartbeat","id":5}')
        gone = await next_frame(alice)
        assert (gone["type"], gone["user"]) == ("friend_gone", "bob")
        reply = await next_frame(alice)
        assert (reply["type"], reply["re"]) == ("heartbeat", 5)
    assert views_when_taken == [set()]
