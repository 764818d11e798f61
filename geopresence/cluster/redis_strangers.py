"""Nearby strangers shared through Redis (cluster): a GEO set per geohash cell.

No node holds every visible user. The node that handles a visible user's moves (one of its
sessions sent them) writes the user's coarse position (``core.strangers.snap``: a ~100 m
cell's centre, never the exact one) into the keys of its precision-4 geohash cell
(~39 x 20 km at the equator: positions, expiries and ``ts``, one hash tag; their layout in
``geopresence.cluster.stranger_cells``).

A move to another coarse cell rewrites the position and ``ts``, a move within one writes the
expiry only (what a stranger sees, ``ts`` included, does not change), a user that hides, goes
offline or whose location expires is removed. The expiry is the user's strangers' deadline
(``core.stranger_expiry``), not its location's: a search stops finding the user when the
watchers' views end, and the expiry moves only in the coarse steps of that rule, so
neither tells when an update inside a cell came. ``nearby_people`` searches the cells that
intersect the asker's circle, one script per cell: it removes the expired members, counts in
Redis those surely within the radius (the asker and its friends excluded), and sends the node
only the nearest for the page and those near the rim, where Redis' distance (another Earth
radius, positions kept to ~0.6 m) cannot decide. The node keeps those visible and online on
its replicated state and answers with the same exact query as one node's grid. So no key
holds the world, and a search costs Redis a few cells and the node about a page.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Set
from typing import TYPE_CHECKING, Any, Final

import trio

from geopresence.cluster.presence_scripts import sha1
from geopresence.cluster.redis_keys import Keys, string, value_location
from geopresence.cluster.redis_load import read_settings
from geopresence.cluster.stranger_cells import (
    CELL_PRECISION,
    POLAR_CELLS,
    POLAR_LAT,
    cell_keys,
    cell_name,
    cells_of_index,
    leave,
)
from geopresence.cluster.stranger_scripts import POLAR, SEARCH, SURE_BEYOND, SURE_WITHIN, TIE_M
from geopresence.core.grid import StrangerGrid
from geopresence.core.locations import Location
from geopresence.core.stranger_index import Answer
from geopresence.core.stranger_queries import snap
from geopresence.model.geo import haversine_m
from geopresence.model.geocells import cap_box, cells_in, coarse

if TYPE_CHECKING:
    from geopresence.core.hub import Hub

log = logging.getLogger("geopresence.redis")

MAX_PENDING_WRITES: Final = 100_000
"""Writes queued while Redis is slow or away; beyond, they are dropped (positions are live
state: the user's next move writes it again)."""

WRITE_BATCH: Final = 512

LEFT_LISTED_KEPT: Final = 4096
"""Removals that found their user listed remembered for a ``went_offline`` that follows."""

SEARCH_ATTEMPTS: Final = 3
"""Searches made for one query at most, each without the stale members the last one sent."""

Row = tuple[str, float, float, float]
"""A search's member: (user, lon, lat, ts)."""

Write = tuple[str, str, str, Location | None, float]
"""(what, cell, user, coarse position, expiry): "enter", "stay" or "leave"."""


class RedisStrangers:
    """The ``StrangerIndex`` of a node (``core.stranger_index``) over Redis. ``ClusterLink``
    calls ``follow`` and runs ``run`` in a task."""

    def __init__(self, client: Any, keys: Keys, now: Callable[[], float]) -> None:
        self._client = client
        self._keys = keys
        self._now = now
        """The hub's clock (epoch seconds): expiries are compared with it."""
        self.visible: Callable[[str], bool] = lambda user: True
        """Whether a user is visible to strangers (the replicated settings)."""
        self.settings_kept: Callable[[str], bool] = lambda user: True
        """Whether this node keeps a user's settings (a stranger found whose settings it
        does not keep has them read: a cell can list one that hid)."""
        self.live: Callable[[str], bool] = lambda user: True
        """Whether a user found may be shown: visible to strangers and online (the
        replicated state; Redis may still list one that hid or went offline elsewhere)."""
        self._writes: deque[Write] = deque()
        self._wakeup = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._sha = sha1(SEARCH)
        self._polar_sha = sha1(POLAR)
        self._loaded = False
        self._listed: dict[tuple[str, str], Callable[[], None]] = {}
        """(cell, user) -> what ``went_offline`` calls if the cell listed the user."""
        self._left_listed: OrderedDict[tuple[str, str], None] = OrderedDict()
        """The latest removals (cell, user) that found the user listed, oldest first."""
        self.dropped = 0
        """Writes dropped (queue full, or Redis failed them), for the log."""
        self.errors = 0
        """Failed round trips (a batch of writes, or a search), for metrics."""

    def follow(self, hub: Hub) -> None:
        """Judge users by ``hub``'s replicated state."""
        store, statuses = hub.store, hub.statuses
        # One whose settings this node does not keep: as Redis lists it (its node writes
        # it), its settings read from Redis before it is shown.
        self.visible = lambda user: (
            not store.settings_kept(user) or store.get_settings(user).visible_to_strangers
        )
        self.settings_kept = store.settings_kept
        # A stranger found in Redis is online unless this node knows otherwise: its node
        # takes it out of its cell as it goes offline.
        self.live = lambda user: (
            self.visible(user) and (statuses.is_online(user) or not statuses.holds(user))
        )

    # ---------------------------------------------------------------- the StrangerIndex seam

    def entered(self, user: str, spot: Location, left: str | None, until: float) -> None:
        cell = cell_name(spot.lat, spot.lon)
        for old in () if left is None else cells_of_index(left):
            if old != cell:
                self._queue(("leave", old, user, None, 0.0))
        self._queue(("enter", cell, user, spot, until))

    def stayed(self, user: str, spot: Location, until: float) -> None:
        self._queue(("stay", cell_name(spot.lat, spot.lon), user, spot, until))

    def left(self, user: str, cell: str) -> None:
        for old in cells_of_index(cell):
            self._queue(("leave", old, user, None, 0.0))

    def went_offline(self, user: str, last: Location, listed: Callable[[], None]) -> None:
        """``user``, last at ``last`` (its ``gp:loc:{U}``), went offline: take it out of its
        cell, also when the node that listed it is dead (its own ``left`` never comes), and
        call ``listed`` once done if the cell listed it (watchers may show it). Nothing for
        a user not visible to strangers (nothing listed it)."""
        if not self.visible(user):
            return
        spot = snap(last)
        cell = cell_name(spot.lat, spot.lon)
        if len(self._writes) < MAX_PENDING_WRITES:  # else dropped: nothing to call back
            self._listed[cell, user] = listed
        self._queue(("leave", cell, user, None, 0.0))

    def lapsed(self, user: str, ts: float, then: Callable[[], None]) -> None:
        if self._nursery is None:  # not running (stopping): its watchers are going too
            return
        self._nursery.start_soon(self._lapsed, user, ts, then)

    async def _lapsed(self, user: str, ts: float, then: Callable[[], None]) -> None:
        """Any node that accepts a move of ``user`` writes it to ``gp:loc:{U}``, which
        expires with it: a later ``ts`` there is a renewal, its node keeps it current."""
        try:
            raw = await self._client.get(self._keys.location(user))
        except Exception as exc:
            self.errors += 1
            log.warning("reading %s's location failed (%s): taken as expired", user, exc)
            raw = None
        if raw is None or value_location(user, raw).ts <= ts:
            then()

    def search(
        self, center: Location, radius_m: float, excluded: Set[str], need: int, answer: Answer
    ) -> None:
        if self._nursery is None:  # not running (stopping): as if Redis did not answer
            answer(None)
            return
        self._nursery.start_soon(self._search, center, radius_m, excluded, need, answer)

    @property
    def pending(self) -> int:
        """Writes queued for Redis."""
        return len(self._writes)

    # ---------------------------------------------------------------- Redis side

    def _queue(self, write: Write) -> None:
        if len(self._writes) >= MAX_PENDING_WRITES:
            self.dropped += 1
            return
        self._writes.append(write)
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write the queued positions, a pipeline per batch, and make searches."""
        failing = False
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                while True:
                    if not self._writes:
                        self._wakeup = trio.Event()
                        await self._wakeup.wait()
                    batch = [
                        self._writes.popleft() for _ in range(min(WRITE_BATCH, len(self._writes)))
                    ]
                    try:
                        await self._write(batch)
                    except Exception as exc:
                        self.errors += 1
                        # Removals are kept, in order, for the next attempt: a node that
                        # does not keep a user's settings trusts the cell's listing.
                        leaves = [write for write in batch if write[3] is None]
                        self._writes.extendleft(reversed(leaves))
                        self.dropped += len(batch) - len(leaves)
                        if not failing:  # one line per outage
                            log.error(
                                "writing strangers' positions failed (%s): dropping moves, "
                                "keeping %d removals",
                                exc,
                                len(leaves),
                            )
                        failing = True
                        await trio.sleep(1.0)
                        continue
                    if failing:
                        log.info("strangers' positions written again (%d dropped)", self.dropped)
                    failing = False
            finally:
                self._nursery = None

    async def _write(self, batch: list[Write]) -> None:
        leaves: list[tuple[tuple[str, str], Any]] = []
        async with self._client.pipeline(transaction=False) as pipe:
            for what, cell, user, spot, expires in batch:
                where, exp, ts = cell_keys(self._keys, cell)
                polar = cell in POLAR_CELLS
                if spot is None:
                    leaves.append(((cell, user), leave(pipe, self._keys, cell, user)))
                    continue
                if polar:
                    pipe.hset(where, {user: f"{spot.lon!r} {spot.lat!r}"})
                else:
                    pipe.geoadd(where, [(spot.lon, spot.lat, user)])
                pipe.zadd(exp, {user: expires})
                if what == "enter":
                    pipe.hset(ts, {user: repr(spot.ts)})
                else:  # still live, seen as before: the ts of the update that entered
                    pipe.hsetnx(ts, user, repr(spot.ts))
        for key, request in leaves:
            was_listed = bool(await request)
            listed = self._listed.pop(key, None)
            if listed is not None:
                if was_listed or key in self._left_listed:
                    self._left_listed.pop(key, None)
                    listed()
            elif was_listed:
                # The hub may take a user out as it hears the user went offline, just
                # before ``went_offline``'s own removal: that one finds it out already.
                self._left_listed[key] = None
                if len(self._left_listed) > LEFT_LISTED_KEPT:
                    self._left_listed.popitem(last=False)

    async def _search(
        self,
        center: Location,
        radius_m: float,
        excluded: Set[str],
        need: int,
        answer: Answer,
    ) -> None:
        skipped = set(excluded)
        for attempt in range(SEARCH_ATTEMPTS):
            try:
                counted, rows = await self._read(center, radius_m, skipped, need)
                hidden = await self._hidden({user for user, *_ in rows})
            except Exception as exc:
                self._loaded = False  # a restarted Redis forgot the script
                self.errors += 1
                log.warning("nearby_people: searching Redis failed: %s", exc)
                answer(None)
                return
            sent, stale = StrangerGrid(), set()
            for user, lon, lat, ts in rows:
                if self.live(user) and user not in hidden:
                    # Snapped again: Redis keeps positions to ~0.6 m, the centre is exact.
                    sent.place(user, Location(*coarse(lat, lon), ts))
                else:
                    stale.add(user)
            total, nearest = sent.query(center, radius_m, skipped, need)
            if len(nearest) == need or not stale or attempt == SEARCH_ATTEMPTS - 1:
                break
            # Listed in Redis but hidden or offline here (a removal not written yet): the
            # page would be short; search again without them.
            skipped |= stale
        answer((counted + total, nearest))

    async def _hidden(self, users: Set[str]) -> set[str]:
        """Those of ``users`` whose settings this node does not keep and Redis says are not
        visible to strangers: their cell still lists them (a removal not written yet)."""
        unknown = sorted(user for user in users if not self.settings_kept(user))
        if not unknown:
            return set()
        read = await read_settings(self._client, self._keys, unknown)
        return {user for user, settings in read.items() if not settings.visible_to_strangers}

    async def _read(
        self, center: Location, radius_m: float, excluded: Set[str], need: int
    ) -> tuple[int, list[Row]]:
        """Search the cells around ``center`` (``SEARCH``): how many members are surely
        within ``radius_m`` but not sent, and the members sent (user, lon, lat, ts)."""
        client = self._client
        if not self._loaded:
            # Every master of a Cluster gets them.
            await client.script_load(SEARCH)
            await client.script_load(POLAR)
            self._loaded = True
        (within, less), (beyond, more) = SURE_WITHIN, SURE_BEYOND
        sure_within, reach = radius_m * within + less, radius_m * beyond + more
        lat = max(-POLAR_LAT, min(POLAR_LAT, center.lat))
        if lat != center.lat:  # from a polar cap: the GEO cells, from the cap's edge
            reach += haversine_m(lat, center.lon, center.lat, center.lon) * beyond + more
            sure_within = -1.0  # every one is sent: the node decides
        lat_min, lat_max, lons = cap_box(center.lat, center.lon, radius_m)
        cells = []
        if max(lat_min, -POLAR_LAT) <= min(lat_max, POLAR_LAT):
            box = (max(lat_min, -POLAR_LAT), min(lat_max, POLAR_LAT), lons)
            cells = sorted(cells_in(box, CELL_PRECISION))
        caps = ["polar-n"] * (lat_max > POLAR_LAT) + ["polar-s"] * (lat_min < -POLAR_LAT)
        now, others = self._now(), sorted(excluded)
        args = [center.lon, lat, sure_within, reach, now, need, TIE_M, *others]
        async with client.pipeline(transaction=False) as pipe:
            requests = [
                pipe.evalsha(self._sha, keys=cell_keys(self._keys, cell), args=args)
                for cell in cells
            ]
            requests += [
                pipe.evalsha(self._polar_sha, keys=cell_keys(self._keys, cap), args=[now, *others])
                for cap in caps
            ]
        counted, rows = 0, []
        for request in requests:
            reply = await request
            counted += int(reply[0])
            flat = [string(value) for value in reply[1:]]
            for i in range(0, len(flat), 4):
                rows.append((flat[i], float(flat[i + 1]), float(flat[i + 2]), float(flat[i + 3])))
        return counted, rows
