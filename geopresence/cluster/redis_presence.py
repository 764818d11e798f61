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
from typing import Any, Final

import trio

from geopresence.cluster.presence_batches import DeviceOp, Op, PresenceBatches
from geopresence.cluster.redis_keys import Keys, string
from geopresence.cluster.redis_nodes import forget, lapse, read_registry
from geopresence.core.replication import PresenceSet

log = logging.getLogger("geopresence.redis")

BATCH: Final = 256
"""Device changes sent per pipeline."""


class RedisPresence:
    """Reports this node's devices to Redis, announces the transitions it decides and sweeps
    the devices of gone nodes; ``batches`` applies each batch of changes (``PresenceBatches``).

    ``announce(transition)`` is called in the event loop for each transition this node
    decided (``known_version(user)``: the version of ``user``'s status this node holds, 0:
    none); ``clock()`` is the current epoch time; ``holder`` is this node's incarnation
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
        sweep_interval: float,
        offline_after: float,
        may_sweep: Callable[[], bool] = lambda: True,
    ) -> None:
        self._client = client
        self._keys = keys
        self._clock = clock
        self.sweep_interval = sweep_interval
        self.offline_after = offline_after
        """A gone node's devices keep their grace window this long (seconds)."""
        self._may_sweep = may_sweep
        """False while this node's own lease is not steady (``NodeLease.steady``)."""
        self._holder: str | None = None
        self.batches = PresenceBatches(client, keys, announce, clock, known_version)
        """Applies the changes in Redis, and tells what the scripts decided (its ``on_*``
        callbacks: devices taken over, logged out, superseded; users made offline)."""
        self.on_opened: Callable[[str, str], None] | None = None
        """Called with (user, device) as a session of the device opens here."""
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
        self._wakeup = trio.Event()
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

    @property
    def transitions(self) -> int:
        """Transitions this node decided (for metrics)."""
        return self.batches.transitions

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
        sweepers' now (but a device logged out since: ``batches.on_logged_out``)."""
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
            await self.batches.apply([(user, device, ("alive", at, at))], self._holder)
            if key in self.batches.refused:
                return self.batches.refused.pop(key)
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
                        await self.batches.apply(ops[start : start + BATCH], holder)
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
                ended += await self.batches.apply(ops, dead.incarnation)
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
            # "legacy": no node's incarnation, so no such index
            ended += await self.batches.apply(ops[start : start + BATCH], "legacy")
        await client.delete([keys.legacy_deadlines])
        return ended
