"""Nearby friends: alice, bob and carol move around Seoul and see each other come and go.

Run it as is; it starts a server in-process (default radius 5 miles = 8046.72 m) and is done in
about two seconds::

    python examples/nearby_friends.py

The story: the three are friends. alice stands at Seoul City Hall, bob at Gyeongbokgung palace
(1.5 km north) and carol at N Seoul Tower (1.9 km south): each sees the friends within ITS OWN
radius as ``friend_location`` events with a distance. alice asks for her ``nearby_friends``
page. bob walks to Seoul Station (still near both), then takes the subway to Gangnam, 8.8 km
from alice: alice gets ``friend_gone`` with reason ``out_of_range``, while carol, 6.9 km away,
still sees him. carol turns ``share_location`` off: everyone who was shown her gets
``friend_gone`` with reason ``hidden``, and alice's nearby list is empty. Last, bob's recorded
track is read back from the location history on disk (what ``geopresence history bob`` prints).

Every step is checked: the script exits with a message if the server does anything else.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import trio

from geopresence.client import Client, Json
from geopresence.storage.history import history_dir, read_history
from geopresence.testing import TestServer, open_server

CITY_HALL = (37.5665, 126.978)
GYEONGBOKGUNG = (37.5796, 126.977)
N_SEOUL_TOWER = (37.5512, 126.9882)
SEOUL_STATION = (37.5547, 126.9707)
GANGNAM_STATION = (37.4979, 127.0276)

TIMEOUT = 2.0
"""How long to wait for an expected frame before giving up."""


class Story:
    """Prints what each friend receives, with times relative to the start of the story."""

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.started = trio.current_time()

    def say(self, text: str) -> None:
        print(f"[{trio.current_time() - self.started:5.2f}s] {text}", flush=True)

    def frame(self, who: Client, message: Json) -> None:
        self.say(f"{who.user} <- {json.dumps(message, separators=(',', ':'))}")

    async def place(self, who: Client, where: tuple[float, float], name: str) -> None:
        """Send a location, then a heartbeat with an id: ``location`` has no reply, and the
        heartbeat's reply tells that the server has handled everything sent before it."""
        lat, lon = where
        self.say(f"{who.user} -> location at {name} ({lat}, {lon})")
        await who.send({"type": "location", "lat": lat, "lon": lon})
        await who.request("heartbeat")

    async def expect(self, who: Client, kind: str, user: str, reason: str | None = None) -> Json:
        """Wait for ``who``'s next nearby event (presence traffic is skipped) and check it."""
        with trio.move_on_after(TIMEOUT):
            event = await who.recv_type("friend_location", "friend_gone")
            self.frame(who, event)
            if (event["type"], event["user"], event.get("reason")) != (kind, user, reason):
                sys.exit(f"expected {kind} {user} {reason or ''} for {who.user}, got {event}")
            return event
        sys.exit(f"{who.user}: no {kind} about {user} within {TIMEOUT} s")

    async def expect_nothing(self, who: Client, quiet: float = 0.2) -> None:
        with trio.move_on_after(quiet):
            event = await who.recv_type("friend_location", "friend_gone")
            sys.exit(f"{who.user}: expected no nearby event, got {event}")
        self.say(f"{who.user} <- (no nearby event)")

    async def nearby(self, who: Client) -> Json:
        reply = await who.request("nearby_friends", page=0)
        self.say(
            f"{who.user} <- nearby_friends page {reply['page']}: {reply['total']} friend(s) "
            f"within {self.server.config.radius:g} m"
        )
        for friend in reply["friends"]:
            self.say(
                f"    {friend['user']:6} {friend['distance_m']:7.0f} m  "
                f"({friend['lat']:.4f}, {friend['lon']:.4f})"
            )
        return reply

    async def run(self, alice: Client, bob: Client, carol: Client) -> None:
        self.say("alice is first: nobody else has a location yet, so nobody is told")
        await self.place(alice, CITY_HALL, "Seoul City Hall")
        await self.expect_nothing(bob)

        self.say("bob shows up 1.5 km north of alice")
        await self.place(bob, GYEONGBOKGUNG, "Gyeongbokgung")
        event = await self.expect(alice, "friend_location", "bob")
        self.say(f"  alice sees bob {event['distance_m']:.0f} m away")
        await self.expect_nothing(carol)  # carol has no location yet: no distance to compare

        self.say("carol shows up on Namsan")
        await self.place(carol, N_SEOUL_TOWER, "N Seoul Tower")
        await self.expect(alice, "friend_location", "carol")
        await self.expect(bob, "friend_location", "carol")

        reply = await self.nearby(alice)
        if [f["user"] for f in reply["friends"]] != ["bob", "carol"]:
            sys.exit(f"expected bob then carol (nearest first), got {reply}")

        self.say("bob walks to Seoul Station")
        await self.place(bob, SEOUL_STATION, "Seoul Station")
        await self.expect(alice, "friend_location", "bob")
        await self.expect(carol, "friend_location", "bob")

        self.say("bob takes the subway to Gangnam: beyond alice's 8046.72 m, within carol's")
        await self.place(bob, GANGNAM_STATION, "Gangnam Station")
        await self.expect(alice, "friend_gone", "bob", "out_of_range")
        event = await self.expect(carol, "friend_location", "bob")
        self.say(f"  carol still sees bob, {event['distance_m']:.0f} m away")

        self.say("carol stops sharing her location")
        settings = await carol.request("settings", share_location=False)
        self.frame(carol, settings)
        await self.expect(alice, "friend_gone", "carol", "hidden")
        await self.expect(bob, "friend_gone", "carol", "hidden")

        reply = await self.nearby(alice)
        if reply["total"] != 0:
            sys.exit(f"expected nobody near alice, got {reply}")

        # The history file is flushed within a second of a write.
        await trio.sleep(self.server.config.history_flush_interval + 0.2)
        directory = history_dir(self.server.config.data_dir)
        track = list(read_history(directory, "bob"))
        self.say(f"bob's track in {directory.name}/ (geopresence history bob):")
        for entry in track:
            self.say(f"    ts={entry.ts:.3f}  {entry.lat:.4f}, {entry.lon:.4f}")
        if len(track) != 3:
            sys.exit(f"expected 3 recorded locations for bob, got {track}")


async def main(argv: Sequence[str] | None = None) -> None:
    # No options: the story needs the in-process server (it reads its history on disk).
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None).parse_args(
        argv
    )
    # time_origin=None: epoch timestamps (open_server's default, 0, suits MockClock tests).
    async with open_server(time_origin=None) as server:
        print(f"in-process server: {server.ws_url} {server.http_url}", flush=True)
        created = await server.admin.befriend_many(
            [("alice", "bob"), ("alice", "carol"), ("bob", "carol")]
        )
        print(f"POST /v1/friendships -> {json.dumps({'created': created})}", flush=True)
        async with (
            server.connect("alice", device="phone") as alice,
            server.connect("bob", device="phone") as bob,
            server.connect("carol", device="phone") as carol,
        ):
            await Story(server).run(alice, bob, carol)


if __name__ == "__main__":
    trio.run(main)
