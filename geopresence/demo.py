"""``geopresence demo``: a server and a handful of simulated users, for a first look.

The command is ``geopresence.cli``'s (with every flag of ``serve``); its own flags, their
parsing and what it prints are here.

The simulated users are ordinary WebSocket clients of the server (``geopresence.client``
over TCP): they walk around a city (sped up, so the radar moves), share their position,
go offline (mostly by logging out, sometimes by dropping) and come back, and chat a little,
answering the visitor. The visitor signs in to the console as ``you``: friends with each
walker, in the group ``walkers`` with some of them, and a stranger to two users who are
visible to people nearby.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import random
from typing import Final

import attrs
import trio

from geopresence.client import AdminClient, Client, connect
from geopresence.config import Config
from geopresence.shell.server import RunningServer, serve

log = logging.getLogger("geopresence.demo")

VISITOR: Final = "you"
DEMO_DEFAULTS: Final = {"insecure": True, "in_memory": True}
"""``serve`` flags the demo turns on unless told otherwise (``--no-insecure``, ...)."""
GROUP: Final = "walkers"
FRIENDS: Final = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan",
                  "judy")  # fmt: skip
STRANGERS: Final = ("zoe", "yuki")
"""Not the visitor's friends, visible to people nearby: what "people nearby" shows."""
STEP: Final = 1.0
"""Seconds between a walker's moves (each sends a location)."""
ROAM_M: Final = 6000.0
"""Walkers turn back towards the centre beyond this distance (inside the 5-mile radius)."""
CHAT_EVERY: Final = 20.0
"""Seconds between chat messages, all walkers together, on average."""
LINES: Final = (
    "anyone up for coffee?", "the view from here is great", "running 5 min late",
    "found a nice bookshop", "lunch at the usual place?", "it's windy today!",
    "who's near the park?", "heading downtown", "just saw a sea lion", "on my way",
)  # fmt: skip
REPLIES: Final = (
    "hey!", "sounds good", "ha, same here", "see you soon", "hi there", "on my way",
    "I'm near the ferry building", "give me 10 min", "count me in", "where are you?",
    "just passed you, I think", "good idea",
)  # fmt: skip
EARTH_RADIUS_M: Final = 6_371_008.8


@attrs.frozen
class Place:
    lat: float
    lon: float


SAN_FRANCISCO: Final = Place(37.7880, -122.4075)


def destination(start: Place, heading: float, metres: float) -> Place:
    """The point ``metres`` from ``start`` at ``heading`` (radians clockwise from north)."""
    d = metres / EARTH_RADIUS_M
    p1, l1 = math.radians(start.lat), math.radians(start.lon)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(heading))
    l2 = l1 + math.atan2(
        math.sin(heading) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
    )
    return Place(math.degrees(p2), (math.degrees(l2) + 540) % 360 - 180)


def offset_m(origin: Place, point: Place) -> tuple[float, float]:
    """(east, north) metres from ``origin`` to ``point`` (flat: fine within a city)."""
    north = math.radians(point.lat - origin.lat) * EARTH_RADIUS_M
    east = (
        math.radians(point.lon - origin.lon) * EARTH_RADIUS_M * math.cos(math.radians(origin.lat))
    )
    return east, north


@attrs.define
class Walker:
    """One simulated user: where it is, where it heads and how fast (m/s, sped up)."""

    user: str
    at: Place
    heading: float
    speed: float
    stranger: bool = False
    friends: tuple[str, ...] = ()
    """The walkers it is friends with (its neighbours in the ring): whom it may chat with."""

    def step(self, centre: Place, rng: random.Random) -> None:
        """Walk ``STEP`` seconds: the heading drifts, and turns home when far out."""
        east, north = offset_m(centre, self.at)
        if math.hypot(east, north) > ROAM_M:
            home = math.atan2(-east, -north)
            self.heading += (home - self.heading + math.pi) % (2 * math.pi) - math.pi
        self.heading += rng.gauss(0, 0.25)
        self.at = destination(self.at, self.heading, self.speed * STEP)


def walkers(users: int, centre: Place, rng: random.Random) -> list[Walker]:
    """``users`` friends of the visitor (at most ``len(FRIENDS)``) and the two strangers, at
    random places within about 4 miles of ``centre``."""
    ring = FRIENDS[:users]
    made = []
    for name in (*ring, *STRANGERS):
        spot = destination(centre, rng.uniform(0, 2 * math.pi), 6400 * math.sqrt(rng.random()))
        neighbours: tuple[str, ...] = ()
        if name in ring and users > 1:
            i = ring.index(name)
            neighbours = tuple({ring[i - 1], ring[(i + 1) % users]} - {name})
        made.append(
            Walker(name, spot, rng.uniform(0, 2 * math.pi), rng.uniform(40, 90),
                   stranger=name in STRANGERS, friends=neighbours)
        )  # fmt: skip
    return made


async def populate(admin: AdminClient, users: int) -> None:
    """The social graph: the visitor befriends every walker but the strangers, walkers
    befriend each other in a ring, and the visitor shares a group with four of them."""
    friends = FRIENDS[:users]
    pairs = [(VISITOR, name) for name in friends]
    pairs += [(a, b) for a, b in zip(friends, friends[1:] + friends[:1], strict=True) if a != b]
    await admin.befriend_many(pairs)
    await admin.set_group(GROUP, [VISITOR, *friends[:4]])


async def _listen(client: Client, walker: Walker, rng: random.Random) -> None:
    """Read every frame (a client that stops reading is a slow consumer) and answer the
    visitor's messages after a moment."""
    while True:
        frame = await client.recv()
        if frame.get("type") == "message" and frame.get("from") == VISITOR:
            await trio.sleep(rng.uniform(1.0, 3.0))
            target = {"group": frame["group"]} if "group" in frame else {"to": VISITOR}
            await client.send({"type": "send", "text": rng.choice(REPLIES), **target})


async def simulate(
    walker: Walker,
    running: RunningServer,
    centre: Place,
    rng: random.Random,
    population: int,
    *,
    delay: float = 0.0,
) -> None:
    """Run one walker until cancelled: online for a minute or two, then offline for a while,
    again and again; each session is a new WebSocket connection."""
    await trio.sleep(delay)
    while True:
        try:
            await _session(walker, running, centre, rng, population)
        except Exception as exc:  # the server went away or refused: try again later
            log.debug("demo: %s's session ended: %r", walker.user, exc)
        await trio.sleep(rng.uniform(15, 45))


async def _session(
    walker: Walker, running: RunningServer, centre: Place, rng: random.Random, population: int
) -> None:
    insecure = running.server.config.insecure
    credentials = {"user": walker.user} if insecure else {"token": running.mint_token(walker.user)}
    async with (
        connect(running.ws_url, device="sim", heartbeat=True, **credentials) as client,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(_listen, client, walker, rng)
        await client.send({"type": "settings", "visible_to_strangers": walker.stranger})
        chat_chance = STEP / (CHAT_EVERY * population)  # all walkers: one per CHAT_EVERY
        with trio.move_on_after(rng.uniform(60, 150)):
            while True:
                walker.step(centre, rng)
                await client.send({"type": "location", "lat": walker.at.lat, "lon": walker.at.lon})
                if not walker.stranger and rng.random() < chat_chance:
                    await client.send(_chat(walker, rng))
                await trio.sleep(STEP)
        if rng.random() < 0.75:
            await client.logout()  # offline at once; otherwise a drop: offline_after later
        nursery.cancel_scope.cancel()


def _chat(walker: Walker, rng: random.Random) -> dict[str, str]:
    roll = rng.random()
    text = rng.choice(LINES)
    if roll < 0.45:
        return {"type": "send", "to": VISITOR, "text": text}
    if roll < 0.75 or not walker.friends:
        return {"type": "send", "group": GROUP, "text": text}
    return {"type": "send", "to": rng.choice(walker.friends), "text": text}


def console_url(running: RunningServer, centre: Place) -> str:
    """The console, with the visitor's name filled in and the city as its start position."""
    return f"{running.http_url}/?user={VISITOR}&at={centre.lat:.4f},{centre.lon:.4f}"


async def run_demo(
    config: Config,
    *,
    users: int = 8,
    centre: Place = SAN_FRANCISCO,
    seed: int | None = None,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``config`` with ``users`` (1..10) simulated friends of the visitor and two
    strangers walking around ``centre``, until the server stops (``running.stop()``)."""
    if not 1 <= users <= len(FRIENDS):
        raise ValueError(f"users must be 1..{len(FRIENDS)}")
    rng = random.Random(seed)
    async with trio.open_nursery() as nursery:

        async def server(task_status: trio.TaskStatus[RunningServer]) -> None:
            await serve(config, task_status=task_status)
            nursery.cancel_scope.cancel()  # the server stopped: so do the walkers

        running: RunningServer = await nursery.start(server)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
        async with AdminClient(running.http_url, running.admin_key) as admin:
            await populate(admin, users)
        people = walkers(users, centre, rng)
        for index, walker in enumerate(people):
            # Most are online at once, so the radar moves from the first second; two
            # friends come online a little later, to be seen coming.
            late = not walker.stranger and index >= max(2, users - 2)
            delay = rng.uniform(8, 20) if late else 0.0
            child = random.Random(rng.random())
            run = functools.partial(simulate, walker, running, centre, child, len(people))
            nursery.start_soon(functools.partial(run, delay=delay))
        task_status.started(running)


@attrs.frozen
class DemoOptions:
    users: int
    centre: Place
    seed: int | None


def add_demo_flags(parser: argparse.ArgumentParser) -> None:
    """``--users``, ``--at`` and ``--seed`` (the command adds the flags of ``serve``)."""
    parser.add_argument(
        "--users",
        default="8",
        metavar="N",
        help=f"simulated friends of '{VISITOR}', 1..{len(FRIENDS)}, plus two strangers "
        "(default: 8)",
    )
    parser.add_argument(
        "--at",
        default=None,
        metavar="LAT,LON",
        help=f"where they walk (default: San Francisco, {SAN_FRANCISCO.lat},{SAN_FRANCISCO.lon})",
    )
    parser.add_argument("--seed", default=None, metavar="N", help="the same walks every run")


def demo_options(args: argparse.Namespace) -> DemoOptions:
    """The flags of ``add_demo_flags``, checked; ``ValueError`` naming the flag."""
    users = int(args.users) if args.users.strip().isdigit() else 0
    if not 1 <= users <= len(FRIENDS):
        raise ValueError(f"--users {args.users}: must be 1..{len(FRIENDS)}")
    centre = SAN_FRANCISCO
    if args.at is not None:
        lat, sep, lon = args.at.partition(",")
        try:
            centre = Place(float(lat), float(lon))
        except ValueError:
            raise ValueError(f"--at {args.at}: not LAT,LON (e.g. 37.7880,-122.4075)") from None
        if not sep or not (-90 <= centre.lat <= 90 and -180 <= centre.lon <= 180):
            raise ValueError(
                f"--at {args.at}: not LAT,LON with lat in [-90, 90] and lon in [-180, 180]"
            )
    seed = args.seed
    if seed is not None and not seed.lstrip("-").isdigit():
        raise ValueError(f"--seed {seed}: not a whole number")
    return DemoOptions(users, centre, None if seed is None else int(seed))


def announcement(running: RunningServer, centre: Place) -> str:
    """What the command prints before its ``listening`` line: where to look, how to sign in."""
    insecure = running.server.config.insecure
    how = f"sign in as '{VISITOR}'" if insecure else "sign in with the token below"
    lines = [
        f"demo: simulated users walking around {centre.lat:.4f},{centre.lon:.4f}",
        f"  console:    {console_url(running, centre)}  ({how})",
        f"  admin view: {running.http_url}/admin",
    ]
    if not insecure:
        lines.append(f"  token for '{VISITOR}' (24 h): {running.mint_token(VISITOR, 86400)}")
        lines.append(f"  admin key: {running.admin_key}")
    lines.append("  stop: Ctrl+C (or SIGTERM)")
    return "\n".join(lines)
