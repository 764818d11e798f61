"""Presence shared by every node (shell): which node holds each alive device, and each
user-level transition decided once, atomically, by a Lua script.

Heartbeats stay on the node. Each node keeps its own devices' deadlines in its hub's
``PresenceTable`` (activity, grace window, 4000 closes) and tells Redis only a device's
transitions there (the ``Replicator`` calls): a session opened (``device_alive``: this
node's incarnation holds the device from now on) and the device ended here (its deadline
passed, or a logout). The scripts (``geopresence.cluster.presence_scripts``: the user's
``gp:presence:{U}``) run atomically on the user's slot, so whichever call makes the user's
first device alive, or ends its last one, is the only one that sees the transition: it
announces it (``announce``), once for the whole cluster. A device that reconnects to
another node inside its grace window is held there from its new session on; the first
node's later end of it checks the holder and changes nothing: no flap.

A node's liveness is its lease (``geopresence.cluster.redis_nodes``). Each node also keeps
the set of devices it holds, ``gp:held:{X}`` for its incarnation X, written before the
scripts (a device held in Redis is always in its holder's set; the set may list devices
since taken over or ended, which the scripts then leave alone): when a node's lease lapses,
the other nodes' sweepers end them (``sweep``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal

import trio

from geopresence.cluster.presence_scripts import ALIVE, END, sha1
from geopresence.cluster.redis_keys import Keys, string
from geopresence.cluster.redis_nodes import forget, lapse, read_registry
from geopresence.core.replication import PresenceSet
from geopresence.wire.errors import CLOSE_LOGGED_OUT, CLOSE_REPLACED

log = logging.getLogger("geopresence.redis")

BATCH: Final = 256
"""Device changes sent per pipeline."""

DeviceOp = tuple[Literal["alive", "end", "logout", "logout_all", "legacy"], float | None, float]
"""(kind, last, made). ("alive", at, since): a session of the device, open here since
``since``, was active at ``at``; ("end", last, made): it ended here, and ends in Redis only
if this node still holds it; ("logout", last, made) / ("logout_all", last, made): one
device / every device of the user, at once, whoever holds it, if its connection opened at
or before ``made``; ("legacy", None, made): recorded by an older version. ``last``: the
user's latest activity this node saw; ``made``: when the change was made here (epoch
seconds)."""

Op = tuple[str, str, DeviceOp]


def member(user: str, device: str) -> str:
    """A device in a node's ``gp:held`` set."""
    return f"{user}\n{device}"


class RedisPresence:
    """Reports this node's devices to Redis, announces the transitions it decides and sweeps
    the devices of gone nodes.

    ``announce(transition)`` is called in the event loop for each transition this node
    decided; ``clock()`` is the current epoch time; ``holder`` is this node's incarnation
    (None: it has no lease, and reports wait). Start ``run`` in a task.
    """

    def __init__(
        self,
        client: Any,
        keys: Keys,
        announce: Callable[[PresenceSet], None],
        clock: Callable[[], float],
        *,
        known_version: Callable[[str], int] = lambda user: 0,
        sweep_interval: float = 0.5,
        offline_after: float = 30.0,
        may_sweep: Callable[[], bool] = lambda: True,
    ) -> None:
        self._client = client
        self._keys = keys
        self._announce = announce
        self._clock = clock
        self._known_version = known_version
        """The version of ``user``'s status this node holds (0: none)."""
        self.sweep_interval = sweep_interval
        self.offline_after = offline_after
        """A gone node's devices keep their grace window this long (seconds)."""
        self._may_sweep = may_sweep
        """False while this node's own lease is not steady (``NodeLease.steady``)."""
        self._holder: str | None = None
        self.on_taken_over: Callable[[str, str, str, float], None] | None = None
        """Called with (user, device, incarnation, since) when a session here, open since
        ``since``, took a device over from another incarnation, whose node must close its
        older connection of it (4002)."""
        self.on_logged_out: Callable[[str, str, str, float], None] | None = None
        """Called with (user, device, incarnation, at) when a logout reported here at
        ``at`` (epoch seconds; or retried) ended a device ``incarnation`` held (this
        node's too: a session of it may be opening here), whose node must end it (4001),
        and with this node's incarnation when a device reported here late had been logged
        out after its connection opened."""
        self.on_offline_at: Callable[[str, bytes], None] | None = None
        """Called with (user, its last ``gp:loc:{U}``) for a user made offline here."""
        self._refused: dict[tuple[str, str], int] = {}
        """Devices whose report the last batch refused, with the close code their
        connection gets (what ``alive_now`` asks right after its batch)."""
        self.on_opened: Callable[[str, str], None] | None = None
        """Called with (user, device) as a session of the device opens here."""
        self.on_superseded: Callable[[str, str, float], None] | None = None
        """Called with (user, device, since) when a report of a connection open here since
        ``since`` reached Redis after a newer connection of the device elsewhere: it
        closes here (4002)."""
        # Latest-wins per device: only its newest state matters to Redis, except that a
        # logout overtaken by a reconnect is still applied first (one node would publish
        # offline then online; so does the cluster).
        self._pending: dict[tuple[str, str], DeviceOp] = {}
        self._first: list[Op] = []
        self._in_flight: set[tuple[str, str]] = set()
        """Devices of the run loop's batch being applied."""
        self._applied_now: set[tuple[str, str]] = set()
        """Devices ``alive_now`` just made held, whose session's own report is then moot."""
        self._applying = 0
        # One batch at a time (the run loop's, ``alive_now``'s, the sweeper's): a device's
        # index entry is added and removed in the order of its reports.
        self._lock = trio.Lock()
        self._scripts_loaded = False
        self._wakeup = trio.Event()
        # EVALSHA by hand: coredis' Script objects ask SCRIPT EXISTS before each pipelined
        # call, doubling the round trips' commands.
        self._alive_sha = sha1(ALIVE)
        self._end_sha = sha1(END)
        self.transitions = 0
        """Transitions this node decided (for metrics)."""
        self.swept = 0
        """Devices of gone nodes ended by this node's sweeper (for metrics)."""
        self.errors = 0

    @property
    def holder(self) -> str | None:
        return self._holder

    @holder.setter
    def holder(self, incarnation: str | None) -> None:
        self._holder = incarnation
        self._wakeup.set()

    # ---------------------------------------------------------------- from the hub

    def device_alive(self, user: str, device: str, at: float) -> None:
        key = (user, device)
        if self.on_opened is not None:
            self.on_opened(user, device)
        if key in self._applied_now:  # the session's report, right after ``alive_now``
            self._applied_now.discard(key)
            return
        self._report(user, device, ("alive", at, at))

    def device_ended(
        self, user: str, device: str, last_active_at: float | None, *, logout: bool
    ) -> None:
        op: DeviceOp = ("logout" if logout else "end", last_active_at, self._clock())
        self._report(user, device, op)

    def logout_user(self, user: str, last_active_at: float | None) -> None:
        """End every device of ``user`` on every node at once (HTTP logout of a user)."""
        self._report(user, "*", ("logout_all", last_active_at, self._clock()))

    def reclaim(self, devices: Iterable[tuple[str, str, float, float]]) -> None:
        """Report again every (user, device, last activity, since when its connection is
        open) alive on this node: it is a new incarnation, and what its old one held is the
        sweepers' now (but a device logged out since: ``on_logged_out``)."""
        for user, device, last_active, since in devices:
            self._report(user, device, ("alive", last_active, since))

    async def alive_now(self, user: str, device: str, at: float) -> int | None:
        """Make a device held here in Redis before its session starts, so that whatever its
        user does next (a logout on another device, on another node) comes after it: a
        report still queued here could reach Redis after that and flap the user's status.
        If the device has a change queued, that queue keeps the order instead. The
        session's own ``device_alive`` at ``at`` is then skipped, unless another report of
        the device comes first. Returns None, or the close code the opening connection
        gets instead of its welcome: 4001 if a logout made at or after ``at`` (by its
        node's clock) reached Redis first, 4002 if a newer connection holds it elsewhere."""
        key = (user, device)
        if self._holder is None or self._queued(key):
            return None
        self._applying += 1
        try:
            await self._apply([(user, device, ("alive", at, at))], self._holder)
            if key in self._refused:
                return self._refused.pop(key)
            if not self._queued(key):  # else (its old session ended meanwhile) report again
                self._applied_now.add(key)
            return None
        finally:
            self._applying -= 1

    def reporting(self, user: str, device: str) -> bool:
        """True while a report of ``user``'s ``device`` is on its way to Redis."""
        return self._queued((user, device))

    def _queued(self, key: tuple[str, str]) -> bool:
        """True if a change of the device is waiting or being applied by the run loop."""
        if key in self._pending or key in self._in_flight:
            return True
        return any(op[:2] == key for op in self._first)

    def _report(self, user: str, device: str, op: DeviceOp) -> None:
        key = (user, device)
        self._applied_now.discard(key)
        previous = self._pending.pop(key, None)  # re-queued last: ops leave in report order
        if previous is not None and previous[0] == "logout":
            if op[0] == "alive":
                self._first.append((user, device, previous))
            elif op[0] == "end":
                op = previous  # the logout ends it whoever holds it: the end adds nothing
        self._pending[key] = op
        self._wakeup.set()

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._first) + self._applying

    # ---------------------------------------------------------------- Redis side

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Apply reported device changes and sweep gone nodes' devices, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sweep_loop)
            task_status.started()
            while True:
                holder = self._holder
                if holder is None or (not self._pending and not self._first):
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                    continue
                first, self._first = self._first, []
                batch, self._pending = self._pending, {}
                ops = first + [(user, device, op) for (user, device), op in batch.items()]
                self._in_flight = {(user, device) for user, device, _ in ops}
                self._applying += len(ops)
                try:
                    for start in range(0, len(ops), BATCH):
                        await self._apply(ops[start : start + BATCH], holder)
                except Exception as exc:
                    self.errors += 1
                    log.error("redis presence of %d devices failed (%s); retrying", len(ops), exc)
                    # Retry them, in order, unless newer states were reported since.
                    for u, d, o in reversed(ops):
                        if (u, d) not in self._pending:
                            self._pending[(u, d)] = o
                    await trio.sleep(1.0)
                finally:
                    self._applying -= len(ops)
                    self._in_flight = set()

    async def flush(self) -> None:
        """Wait until every reported change is in Redis (``run`` must be running)."""
        while self.pending:
            await trio.sleep(0.005)

    async def _apply(self, ops: list[Op], holder: str) -> int:
        """Apply ``ops`` for incarnation ``holder`` (this node's, or a gone one's for the
        sweeper): the holder's index first, the scripts in one pipeline, then the
        follow-ups (index entries of ended devices, an offline user's location), and
        announce the transitions, in order. A user's ops stay in order: its keys live on
        one connection. Returns how many devices the scripts ended."""
        async with self._lock:
            return await self._apply_locked(ops, holder)

    async def _apply_locked(self, ops: list[Op], holder: str) -> int:
        keys, client = self._keys, self._client
        self._refused.clear()
        index = keys.of("held", holder)
        if not self._scripts_loaded:
            # Pipelines cannot fall back from EVALSHA to EVAL: load the scripts first.
            await client.script_load(ALIVE)  # every master of a cluster gets it
            await client.script_load(END)
            self._scripts_loaded = True
        alive = [(user, device) for user, device, (kind, _, _) in ops if kind == "alive"]
        if alive:
            # Before the scripts, in a round trip of its own (on a Cluster the set and the
            # presence hashes are on different shards): were this node to die between the
            # two, a device held in Redis but missing from its set would stay online.
            async with client.pipeline(transaction=False) as pipe:
                pipe.sadd(index, [member(user, device) for user, device in alive])
                # Every time: after a Redis data loss the index must be rebuilt.
                pipe.sadd(keys.presence_users, list({user for user, _ in alive}))
        now_ms = str(int(self._clock() * 1000))
        requests = []
        try:
            async with client.pipeline(transaction=False) as pipe:
                for user, device, (kind, when, made) in ops:
                    key = [keys.of("presence", user)]
                    made_ms = str(int(made * 1000))
                    if kind == "alive":
                        args = [device, holder, repr(when), now_ms, made_ms]
                        requests.append(pipe.evalsha(self._alive_sha, keys=key, args=args))
                    else:
                        last = "" if when is None else repr(when)
                        args = [device, kind, holder, last, now_ms, made_ms]
                        requests.append(pipe.evalsha(self._end_sha, keys=key, args=args))
            results = [await request for request in requests]
        except Exception:
            self._scripts_loaded = False  # a restarted Redis forgot them
            raise
        held: dict[str, bool] = {}  # each device's index entry after the batch, in op order
        offline: list[str] = []
        ended = 0
        for (user, device, (kind, _, made)), result in zip(ops, results, strict=True):
            if kind == "alive":
                if int(result[0]) == -1:  # logged out after its connection opened
                    held[member(user, device)] = False
                    self._refused[(user, device)] = CLOSE_LOGGED_OUT
                    if self.on_logged_out is not None:
                        self.on_logged_out(user, device, holder, int(result[4]) / 1000)
                    continue
                if int(result[0]) == -2:  # a newer connection of it is held elsewhere
                    held[member(user, device)] = False
                    self._refused[(user, device)] = CLOSE_REPLACED
                    if self.on_superseded is not None:
                        self.on_superseded(user, device, made)
                    continue
                held[member(user, device)] = True
                before = string(result[4]) if len(result) > 4 else ""
                if before and before != holder and self.on_taken_over:
                    # The device's older connection is on another node: it closes (4002).
                    # (A newer one there would have refused this report: -2.)
                    self.on_taken_over(user, device, before, made)
            else:
                if kind != "logout_all":
                    held[member(user, device)] = False
                entries = [string(entry) for entry in result[4:]]
                for i in range(0, len(entries), 4):
                    name, by, at, now = entries[i : i + 4]
                    if now == "1":
                        held[member(user, name)] = False
                        ended += 1
                    if at and by and self.on_logged_out is not None:
                        # Its connection is on the node of ``by`` (this one's too: a
                        # session still opening here): that node ends it (4001).
                        self.on_logged_out(user, name, by, int(at) / 1000)
            if self._result(user, result) == "offline":
                offline.append(user)
        dropped = [entry for entry, kept in held.items() if not kept]
        if dropped or offline:
            async with client.pipeline(transaction=False) as pipe:
                if dropped:
                    pipe.srem(index, dropped)
                gone_at = [pipe.getdel(keys.location(user)) for user in offline]
            for user, request in zip(offline, gone_at, strict=True):
                raw = await request
                if raw is not None and self.on_offline_at is not None:
                    self.on_offline_at(user, raw)
        return ended

    def _result(self, user: str, result: Any) -> str | None:
        """Announce what a script reply says if it is news: a transition this call decided,
        or a state newer than the replica's (the reply to the deciding call was lost, and a
        retry or a later report finds the transition already made). Returns the status
        announced, if any."""
        decided = int(result[0]) == 1
        version = int(string(result[2]))
        if not decided and version <= self._known_version(user):
            return None
        status: Literal["online", "offline"] = (
            "online" if string(result[3]) == "online" else "offline"
        )
        text = string(result[1])
        if decided:
            self.transitions += 1
        self._announce(PresenceSet(user, status, float(text) if text else None, version))
        return status

    # ---------------------------------------------------------------- the sweeper

    async def _sweep_loop(self) -> None:
        failing = False
        while True:
            await trio.sleep(self.sweep_interval)
            if not self._may_sweep():
                continue
            try:
                await self.sweep()
            except Exception as exc:
                self.errors += 1
                if not failing:  # once per outage, not twice a second
                    log.error("redis presence sweep failed (retrying quietly): %s", exc)
                failing = True
            else:
                if failing:
                    log.info("redis presence sweep works again")
                failing = False

    async def sweep(self) -> int:
        """Mark the nodes whose lease lapsed gone, and end the devices of every gone node
        whose grace window has passed (``offline_after`` from its lease's end: each user
        goes offline once, at most lease + ``offline_after`` + a sweep interval after its
        node died; one ``HGETALL`` when none); returns how many devices this call ended.
        Sweepers of several nodes may race: the scripts end each device, and decide each
        transition, once."""
        client, keys = self._client, self._keys
        now = self._clock()
        live, gone = await read_registry(client, keys)
        lapsed = [node for node in live if node.expires <= now]
        if lapsed:
            for node in lapsed:
                await lapse(client, keys, node, now)
            _, gone = await read_registry(client, keys)
        ended = 0
        for dead in gone:
            if now < dead.grace_from + self.offline_after:
                continue  # its clients may still reconnect elsewhere without a flap
            index = keys.of("held", dead.incarnation)
            while True:
                entries = await client.srandmember(index, BATCH)
                if not entries:
                    break
                ops: list[Op] = []
                for entry in entries:
                    user, newline, device = string(entry).partition("\n")
                    if not newline:  # not written by a node: drop it, or this never ends
                        await client.srem(index, [entry])
                        continue
                    ops.append((user, device, ("end", dead.last_seen, now)))
                ended += await self._apply(ops, dead.incarnation)
            await forget(client, keys, dead)
        self.swept += ended
        return ended

    async def migrate_legacy(self) -> int:
        """End the devices an older version recorded with a deadline (``gp:deadlines``): no
        node of this version reports or sweeps them. Returns how many."""
        keys, client = self._keys, self._client
        entries = await client.zrange(keys.legacy_deadlines, 0, -1)
        ops: list[Op] = []
        for entry in entries:
            user, _, device = string(entry).partition("\n")
            ops.append((user, device, ("legacy", None, self._clock())))
        ended = 0
        for start in range(0, len(ops), BATCH):
            ended += await self._apply(ops[start : start + BATCH], "legacy")  # no such index
        await client.delete([keys.legacy_deadlines])
        return ended
