"""Micro-benchmarks of the sans-I/O core (no sockets, no event loop).

    python benchmarks/bench_core.py [--quick]

Prints one line per figure: heartbeat cost, presence fan-out cost per subscriber, location
fan-out, codec decode/encode, geohash cover and grid query, Snowflake ids, chat send (1:1 and
to a group) and sync pages, and a move another node publishes, as a node of several applies it.
The shell's socket costs are not in these numbers (see the load benchmark of the benchmarks
issue); these say what the core itself adds per operation.
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from collections.abc import Callable
from typing import TypeVar

import orjson

from geopresence.cluster.channel_events import Envelope, decode_envelope, encode_envelope
from geopresence.core.broker import ConnId, user_channel
from geopresence.core.grid import StrangerGrid
from geopresence.core.hub import Hub, HubSettings
from geopresence.core.locations import Location
from geopresence.core.nearby import LocationEvent
from geopresence.core.presence import PresenceChange
from geopresence.core.replication import LocationSet
from geopresence.core.store import MemoryStore
from geopresence.model.geocells import cover
from geopresence.model.snowflake import SnowflakeGenerator
from geopresence.wire.client_messages import Heartbeat, LocationUpdate, Send, Sync
from geopresence.wire.outbox import Outbox
from geopresence.wire.outgoing import Outgoing
from geopresence.wire.protocol import decode, decode_text, encode
from geopresence.wire.server_messages import Presence

T = TypeVar("T")


def timed(label: str, unit: str, count: int, run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    per = elapsed / count
    print(f"{label:<48} {per * 1e6:9.2f} µs/{unit}   ({count / elapsed:,.0f} {unit}/s)")
    return per


def each(count: int, run: Callable[[T], object], argument: T) -> None:
    """``run(argument)`` ``count`` times, keeping no result."""
    for _ in range(count):
        run(argument)


class CountingSink:
    def __init__(self, depth: int) -> None:
        self.outboxes: dict[ConnId, Outbox] = {}
        self.depth = depth

    def send(self, conn: ConnId, message: Outgoing) -> None:
        box = self.outboxes.get(conn)
        if box is None:
            box = self.outboxes[conn] = Outbox(self.depth)
        if not box.push(message):
            box.pop_all()

    def close(self, conn: ConnId, code: int, reason: str) -> None:
        self.outboxes.pop(conn, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts (CI smoke run)")
    args = parser.parse_args()
    scale = 1 if args.quick else 20
    print(f"python {platform.python_version()} on {platform.machine()}, {platform.processor()}")

    sink = CountingSink(depth=1024)
    hub = Hub(HubSettings(), MemoryStore(), sink)
    users = 1000 * scale
    for i in range(users):
        hub.open_session(i, f"u{i}", "phone", now=0.0)
    beats = 10_000 * scale

    def heartbeats() -> None:
        for n in range(beats):
            hub.handle(n % users, Heartbeat(), now=1.0 + n * 1e-6)

    timed(f"heartbeat ({users:,} sessions)", "op", beats, heartbeats)

    friends = 5000
    fan_hub = Hub(HubSettings(max_friends=friends), MemoryStore(), sink)
    for i in range(friends):
        fan_hub.membership.add_friendship("star", f"f{i}", 0.0)
        fan_hub.open_session(10_000 + i, f"f{i}", "phone", now=0.0)
    rounds = 10 * scale
    change = PresenceChange("star", "online", 1.0)

    def fan_out() -> None:
        for _ in range(rounds):
            fan_hub.lifecycle.publish_presence(change)

    per = timed(f"presence event to {friends:,} online friends", "event", rounds, fan_out)
    print(f"{'  = per subscriber (encode once, queue each)':<48} {per / friends * 1e9:9.0f} ns")
    logins = 2 * scale
    t = [2.0]

    def login() -> None:
        for _ in range(logins):
            fan_hub.open_session(1, "star", "phone", now=t[0])
            fan_hub.close_session(1)
            t[0] += 1

    timed(f"login of a user with {friends:,} friends", "login", logins, login)

    loc_hub = Hub(HubSettings(offline_after=1e9, location_ttl=1e9), MemoryStore(), sink)
    friends_of_mover = 400
    loc_hub.open_session(1, "mover", "phone", now=0.0)
    for i in range(friends_of_mover):
        loc_hub.membership.add_friendship("mover", f"m{i}", 0.0)
        loc_hub.open_session(50_000 + i, f"m{i}", "phone", now=0.0)
        # one friend in ten within 5 miles, the others 10-60 km away
        north = 0.02 * (i % 7) / 7 if i % 10 == 0 else 0.1 + 0.4 * (i % 13) / 13
        loc_hub.handle(50_000 + i, LocationUpdate(lat=37.5 + north, lon=127.0), 0.0)
    moves = 200 * scale

    def location_fan_out() -> None:
        for k in range(moves):
            loc_hub.handle(1, LocationUpdate(lat=37.5, lon=127.0 + (k % 10) * 1e-5), 1.0 + k)

    per = timed(
        f"location update, {friends_of_mover} online friends (10% near)", "update", moves,
        location_fan_out,
    )  # fmt: skip
    label = "  = per subscriber (distance check + queue)"
    print(f"{label:<48} {per / friends_of_mover * 1e9:9.0f} ns")

    frames = 20_000 * scale
    # Results are dropped, as in the server where a decoded frame dies at once: a list
    # holding them all would time the garbage collector walking this process's big heap.
    text = '{"type":"heartbeat","id":17}'
    timed("decode heartbeat frame", "frame", frames, lambda: each(frames, decode, text))
    # As benchmarks/load.py sends it: lat, lon and ts written by orjson.
    where = {"type": "location", "lat": 37.56651234, "lon": 126.97812345, "ts": 1767225600.123456}
    located = orjson.dumps(where)
    located_text = located.decode()
    timed("decode location frame", "frame", frames, lambda: each(frames, decode, located_text))
    timed(
        "decode location frame (UTF-8 bytes)", "frame", frames,
        lambda: each(frames, decode_text, located),
    )  # fmt: skip
    event = Presence(user="alice", status="online", last_active_at=1_700_000_000.25)
    timed("encode presence event", "frame", frames, lambda: [encode(event) for _ in range(frames)])

    covers = 2_000 * scale
    rng = random.Random(3)
    points = [(rng.uniform(-60, 60), rng.uniform(-180, 180)) for _ in range(covers)]
    timed(
        "geohash cover of a 5-mile radius",
        "cover",
        covers,
        lambda: [cover(lat, lon, 8046.72) for lat, lon in points],
    )
    grid = StrangerGrid()
    members = 10_000 * scale
    for i in range(members):  # 50 km x 50 km around Seoul
        lat, lon = 37.3 + rng.random() * 0.45, 126.7 + rng.random() * 0.56
        grid.place(f"p{i}", Location(lat, lon, 0.0))
    queries = 50 * scale
    centre = Location(37.52, 126.98, 0.0)
    timed(
        f"grid query, 5 miles, {members:,} members (page + total)",
        "query",
        queries,
        lambda: [grid.query(centre, 8046.72, frozenset(), 20) for _ in range(queries)],
    )

    generator = SnowflakeGenerator(node_id=1)
    ids = 100_000 * scale
    timed(
        "snowflake id", "id", ids, lambda: [generator.next_id(1.8e9 + n * 1e-7) for n in range(ids)]
    )

    chat_hub = Hub(HubSettings(), MemoryStore(), sink)
    chat_hub.membership.add_friendship("alice", "bob", 0.0)
    members = 100
    chat_hub.membership.set_group("team", [f"t{i}" for i in range(members)])
    for conn, (user, device) in enumerate(
        [("alice", "phone"), ("alice", "laptop"), ("bob", "phone"), ("bob", "laptop")]
        + [(f"t{i}", "phone") for i in range(members)],
        start=200_000,
    ):
        chat_hub.open_session(conn, user, device, now=0.0)
    sends = 5_000 * scale
    send = Send(to="bob", text="on my way, see you at the station in 10 minutes")

    def one_to_one() -> None:
        for n in range(sends):
            chat_hub.handle(200_000, send, now=1.0 + n * 1e-4)

    timed("chat send 1:1 (ack + 3 devices)", "message", sends, one_to_one)
    group_sends = 500 * scale
    to_group = Send(group="team", text="standup in 5")

    def group_send() -> None:
        for n in range(group_sends):
            chat_hub.handle(200_004, to_group, now=100.0 + n * 1e-4)

    per = timed(f"chat send to a group, {members} online", "message", group_sends, group_send)
    print(f"{'  = per member (membership check + queue)':<48} {per / members * 1e9:9.0f} ns")
    syncs = 200 * scale
    page = Sync(after=0, limit=100)

    def sync_pages() -> None:
        for _ in range(syncs):
            chat_hub.handle(200_002, page, 200.0)

    timed("sync page of 100 messages", "page", syncs, sync_pages)

    # Several nodes: a mover's 40 near friends on one node (its own fan-out) against 10 of
    # them on this node, the mover on another (its move arrives as an envelope: decoded,
    # applied to the location cache, delivered to the channel's local subscribers). What
    # the Python costs per move received; the wake-up and the socket read are not in it.
    channels = (user_channel("mover"),)
    count = 2_000 * scale
    lons = [127.0 + (k % 10) * 1e-5 for k in range(count)]
    sent = [  # the publishing node's encode is not this node's work
        encode_envelope(Envelope(2, k, channels, LocationEvent("mover", Location(37.5, lon, k), k)))
        for k, lon in enumerate(lons)
    ]
    cases = (("own move, 40 near friends on this node", 40, False),
             ("another node's move, 10 near friends here", 10, True))  # fmt: skip
    for label, sessions, remote in cases:
        node = Hub(HubSettings(offline_after=1e9, location_ttl=1e9), MemoryStore(), sink)
        if not remote:
            node.open_session(1, "mover", "phone", now=0.0)
        for i in range(sessions):
            node.membership.add_friendship("mover", f"n{i}", 0.0)
            node.open_session(70_000 + i, f"n{i}", "phone", now=0.0)
            node.handle(70_000 + i, LocationUpdate(lat=37.5 + 0.0005 * i, lon=127.0), 0.0)

        def move_each(node: Hub = node, remote: bool = remote) -> None:
            for k, lon in enumerate(lons):
                at = 1.0 + k
                if not remote:
                    node.handle(1, LocationUpdate(lat=37.5, lon=lon), at)
                    continue
                envelope = decode_envelope(sent[k])
                node.apply_feed(LocationSet("mover", 37.5, lon, at, at), at)
                node.broker.publish(envelope.channels, envelope.event)

        timed(label, "move", count, move_each)


if __name__ == "__main__":
    main()
