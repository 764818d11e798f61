"""A batch of device changes applied in Redis (cluster): for one holder, the holder's
``gp:held:{X}`` index first, the presence scripts (``geopresence.cluster.presence_scripts``)
in one pipeline, then the follow-ups (index entries of ended devices, an offline user's
location); what the scripts' replies say is announced (a transition) and told (a device
taken over, logged out, superseded) in op order. ``RedisPresence`` says when: its reports,
its retries, its sweeps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import attrs
import trio

from geopresence.cluster.presence_scripts import ALIVE, END, sha1
from geopresence.cluster.redis_keys import Keys, string
from geopresence.core.replication import PresenceSet
from geopresence.wire.errors import CLOSE_LOGGED_OUT, CLOSE_REPLACED

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


DECIDED = 1
"""A reply's code when this very call made the user's transition (0: it did not)."""
LOGGED_OUT = -1
"""``ALIVE`` refused: the device was logged out at or after its connection opened."""
SUPERSEDED = -2
"""``ALIVE`` refused: a connection of the device that opened later holds it elsewhere."""


@attrs.frozen
class ScriptReply:
    """A presence script's reply (``ALIVE``'s or ``END``'s, ``presence_scripts``), read:
    ``code`` (``DECIDED``, 0, or ``ALIVE``'s refusals ``LOGGED_OUT`` / ``SUPERSEDED``), the
    user's ``last_active_at`` (epoch seconds, None if unknown), status ``version`` and
    ``status`` as they are after the call, and the script's ``details`` after those."""

    code: int
    last_active_at: float | None
    version: int
    status: Literal["online", "offline"]
    details: tuple[str, ...]
    """``ALIVE``'s: (the incarnation that held the device until now, '' if none), for
    ``LOGGED_OUT`` (the logout's time in ms), for ``SUPERSEDED`` (the holder); ``END``'s:
    (device, its holder, the logout's time in ms or '', '1' if this call ended it, else
    '0') for each device it ends or tells of again, flattened."""

    @classmethod
    def read(cls, result: Any) -> ScriptReply:
        """Read a reply as Redis returns it (bytes or numbers)."""
        text = string(result[1])
        return cls(
            code=int(result[0]),
            last_active_at=float(text) if text else None,
            version=int(string(result[2])),
            status="online" if string(result[3]) == "online" else "offline",
            details=tuple(string(entry) for entry in result[4:]),
        )

    @property
    def before(self) -> str:
        """``ALIVE``'s: the incarnation that held the device until now ('' if none)."""
        return self.details[0] if self.details else ""

    @property
    def logged_out_at(self) -> float:
        """``ALIVE``'s ``LOGGED_OUT``: when the device was logged out (epoch seconds)."""
        return int(self.details[0]) / 1000


class PresenceBatches:
    """Applies batches of device changes (``apply``), one at a time, and tells what the
    scripts decided: ``announce(transition)`` for each transition that is news to this
    node's kept statuses (``known_version(user)``: the version of ``user``'s status it holds, 0:
    none), the ``on_*`` callbacks for the rest; ``clock()`` is the current epoch time."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        announce: Callable[[PresenceSet], None],
        clock: Callable[[], float],
        known_version: Callable[[str], int],
    ) -> None:
        self._client = client
        self._keys = keys
        self._announce = announce
        self._clock = clock
        self._known_version = known_version
        """The version of ``user``'s status this node holds (0: none)."""
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
        self.on_superseded: Callable[[str, str, float], None] | None = None
        """Called with (user, device, since) when a report of a connection open here since
        ``since`` reached Redis after a newer connection of the device elsewhere: it
        closes here (4002)."""
        self.on_offline_at: Callable[[str, bytes], None] | None = None
        """Called with (user, its last ``gp:loc:{U}``) for a user made offline here."""
        self.refused: dict[tuple[str, str], int] = {}
        """Devices whose report the last batch refused, with the close code their
        connection gets (what ``RedisPresence.alive_now`` asks right after its batch)."""
        # One batch at a time (the run loop's, ``alive_now``'s, the sweeper's): a device's
        # index entry is added and removed in the order of its reports.
        self._lock = trio.Lock()
        self._scripts_loaded = False
        # EVALSHA by hand: coredis' Script objects ask SCRIPT EXISTS before each pipelined
        # call, doubling the round trips' commands.
        self._alive_sha = sha1(ALIVE)
        self._end_sha = sha1(END)
        self.transitions = 0
        """Transitions this node decided (for metrics)."""

    async def apply(self, ops: list[Op], holder: str) -> int:
        """Apply ``ops`` for incarnation ``holder`` (this node's, or a gone one's for the
        sweeper): the holder's index first, the scripts in one pipeline, then the
        follow-ups (index entries of ended devices, an offline user's location), and
        announce the transitions, in order. A user's ops stay in order: its keys live on
        one connection. Returns how many devices the scripts ended."""
        async with self._lock:
            return await self._apply_locked(ops, holder)

    async def _apply_locked(self, ops: list[Op], holder: str) -> int:
        self.refused.clear()
        index = self._keys.of("held", holder)
        await self._load_scripts()
        await self._index_alive(ops, index)
        results = await self._run_scripts(ops, holder)
        held: dict[str, bool] = {}  # each device's index entry after the batch, in op order
        offline: list[str] = []
        ended = 0
        for (user, device, (kind, _, made)), result in zip(ops, results, strict=True):
            reply = ScriptReply.read(result)
            if kind == "alive":
                if reply.code in (LOGGED_OUT, SUPERSEDED):
                    self._tell_refused(user, device, holder, made, reply, held)
                    continue
                self._tell_held(user, device, holder, made, reply, held)
            else:
                ended += self._tell_ended(user, device, kind, reply, held)
            if self._announce_news(user, reply) == "offline":
                offline.append(user)
        await self._follow_up(index, held, offline)
        return ended

    async def _load_scripts(self) -> None:
        """Load the scripts into Redis unless done since it last failed us."""
        if not self._scripts_loaded:
            # Pipelines cannot fall back from EVALSHA to EVAL: load the scripts first.
            await self._client.script_load(ALIVE)  # every master of a cluster gets it
            await self._client.script_load(END)
            self._scripts_loaded = True

    async def _index_alive(self, ops: list[Op], index: str) -> None:
        """Add the devices ``ops`` report alive to the holder's ``index`` (``gp:held``), and
        their users to ``gp:presence_users``."""
        keys, client = self._keys, self._client
        alive = [(user, device) for user, device, (kind, _, _) in ops if kind == "alive"]
        if alive:
            # Before the scripts, in a round trip of its own (on a Cluster the set and the
            # presence hashes are on different shards): were this node to die between the
            # two, a device held in Redis but missing from its set would stay online.
            async with client.pipeline(transaction=False) as pipe:
                pipe.sadd(index, [member(user, device) for user, device in alive])
                # Every time: after a Redis data loss the index must be rebuilt.
                pipe.sadd(keys.presence_users, list({user for user, _ in alive}))

    async def _run_scripts(self, ops: list[Op], holder: str) -> list[Any]:
        """Run each op's script (``ALIVE`` or ``END``) in one pipeline; returns their raw
        replies in op order. A failure makes the next batch load the scripts again."""
        keys, client = self._keys, self._client
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
            return [await request for request in requests]
        except Exception:
            self._scripts_loaded = False  # a restarted Redis forgot them
            raise

    def _tell_refused(
        self,
        user: str,
        device: str,
        holder: str,
        made: float,
        reply: ScriptReply,
        held: dict[str, bool],
    ) -> None:
        """``ALIVE`` refused the device's report (``reply.code``): its index entry goes, and
        its connection here is told to close (``refused``, ``on_logged_out`` or
        ``on_superseded``; ``made``: when the connection opened)."""
        held[member(user, device)] = False
        if reply.code == LOGGED_OUT:
            self.refused[(user, device)] = CLOSE_LOGGED_OUT
            if self.on_logged_out is not None:
                self.on_logged_out(user, device, holder, reply.logged_out_at)
        else:
            self.refused[(user, device)] = CLOSE_REPLACED
            if self.on_superseded is not None:
                self.on_superseded(user, device, made)

    def _tell_held(
        self,
        user: str,
        device: str,
        holder: str,
        made: float,
        reply: ScriptReply,
        held: dict[str, bool],
    ) -> None:
        """``ALIVE`` gave ``holder`` the device: its index entry stays, and an incarnation
        that held it until now is told (``on_taken_over``; ``made``: when the connection
        here opened)."""
        held[member(user, device)] = True
        before = reply.before
        if before and before != holder and self.on_taken_over:
            # The device's older connection is on another node: it closes (4002).
            # (A newer one there would have refused this report: SUPERSEDED.)
            self.on_taken_over(user, device, before, made)

    def _tell_ended(
        self, user: str, device: str, kind: str, reply: ScriptReply, held: dict[str, bool]
    ) -> int:
        """``END`` ran for the device (``kind``: the op's): the index entries of the devices
        it ended go, and the holders of those a logout ended are told (``on_logged_out``).
        Returns how many devices it ended."""
        if kind != "logout_all":
            held[member(user, device)] = False
        ended = 0
        entries = reply.details
        for i in range(0, len(entries), 4):
            name, by, at, now = entries[i : i + 4]
            if now == "1":
                held[member(user, name)] = False
                ended += 1
            if at and by and self.on_logged_out is not None:
                # Its connection is on the node of ``by`` (this one's too: a
                # session still opening here): that node ends it (4001).
                self.on_logged_out(user, name, by, int(at) / 1000)
        return ended

    async def _follow_up(self, index: str, held: dict[str, bool], offline: list[str]) -> None:
        """Remove the entries ``held`` says are gone from the holder's ``index``, and take
        each ``offline`` user's last location (``on_offline_at``)."""
        keys, client = self._keys, self._client
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

    def _announce_news(self, user: str, reply: ScriptReply) -> str | None:
        """Announce what a script reply says if it is news: a transition this call decided,
        or a state newer than the one kept here (the reply to the deciding call was lost, and a
        retry or a later report finds the transition already made). Returns the status
        announced, if any."""
        decided = reply.code == DECIDED
        if not decided and reply.version <= self._known_version(user):
            return None
        if decided:
            self.transitions += 1
        self._announce(PresenceSet(user, reply.status, reply.last_active_at, reply.version))
        return reply.status
