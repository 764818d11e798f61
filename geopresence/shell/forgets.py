"""The shell's part of forgetting a user (the core's is ``geopresence.core.forget``).

After the hub forgot a user (here, or on another node: ``on_forgotten``), its queued pushes
are dropped and the location history files are scrubbed of it (``HistoryKeeper``). A forget
made here (``DELETE /v1/users/{user}``, ``forget_user``) also waits until its record is
durable and, with a journal, writes a snapshot and deletes every older snapshot and journal
segment, which still hold the user: its response means the user is gone from the disk.

The order is what makes a crash harmless: the record is journaled before anything is
deleted, and the older journal goes last, so a restart that finds the record does the rest
again (``Server.run``). The record is the forget's only to-do marker, and any snapshot may
hold it meanwhile (the interval's, ``POST /v1/snapshot``): so until the history is scrubbed
no snapshot deletes the segment that holds it (``keep_from``), and a restart looks for it in
every segment, not only after the snapshot it loads (``recovery.Recovered.forgotten``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from geopresence.core.forget import ForgetReport
from geopresence.core.hub import Hub
from geopresence.shell.history import RETRY_AFTER_ERROR_S, HistoryKeeper
from geopresence.shell.push import PushNotifier

TakeSnapshot = Callable[..., Awaitable[dict[str, object]]]


class Forgets:
    """Forgets outside the core. ``durable(seq)`` waits for the journal; ``take_snapshot``
    is the journal's (None: no journal, with --in-memory or Redis)."""

    def __init__(
        self,
        hub: Hub,
        keeper: HistoryKeeper,
        push: PushNotifier,
        durable: Callable[[int], Awaitable[None]],
        take_snapshot: TakeSnapshot | None,
    ) -> None:
        self._hub = hub
        self._keeper = keeper
        self._push = push
        self._durable = durable
        self._take_snapshot = take_snapshot
        self._unscrubbed: dict[int, int] = {}
        """With a journal: the record seq of each forget whose history is not known to be
        scrubbed -> the ``HistoryKeeper.requested`` count that its scrub is."""
        hub.forgetting.on_forgotten = self.on_forgotten

    def on_forgotten(self, user: str) -> None:
        """The hub forgot ``user``: its pushes go, its history is scrubbed."""
        self._keeper.forget(user)
        self._push.forget(user, self._hub.state.ids.last_id)

    def keep_from(self) -> int | None:
        """The record of the oldest forget whose history is not yet scrubbed (None: there
        is none): no snapshot may prune or purge the segment that holds it
        (``datadir.prune``), the marker by which the next start finishes the forget.

        A forget whose history is scrubbed needs no marker any more: a purge deletes every
        snapshot older than itself, and a prune deletes the record's segment only with every
        snapshot from before the forget, so either finishes it."""
        done = self._keeper.done
        for seq in [seq for seq, count in self._unscrubbed.items() if count <= done]:
            del self._unscrubbed[seq]
        return min(self._unscrubbed, default=None)

    def resumed(self, forgotten: Mapping[str, int]) -> None:
        """Before serving, after ``HistoryKeeper.start`` scrubbed (or failed to scrub, then
        retrying) the users of the forgets a restart found (user -> the seq of its first
        record, ``Durability.start``): their records stay until that scrub is done."""
        if forgotten and self._take_snapshot is not None:
            self._unscrubbed[min(forgotten.values())] = self._keeper.requested

    async def forget_user(self, user: str, now: float) -> tuple[ForgetReport, str | None]:
        """Forget ``user`` at ``now`` and return once it is durable and gone from the disk
        (see the module), with what failed (None: nothing) for the response."""
        report = self._hub.forgetting.forget(user, now)
        if self._take_snapshot is not None:  # before any await: no snapshot can miss it
            self._unscrubbed[report.seq] = self._keeper.requested
        await self._durable(report.seq)
        # Every forget asked so far, not only this one: the purge below keeps the segments
        # from the record of any forget still unscrubbed (``keep_from``), and one of them
        # may hold this user's older records.
        problem = await self._keeper.scrubbed(self._keeper.requested)
        if problem is not None:
            return report, f"{problem}: retrying every {RETRY_AFTER_ERROR_S:g} s"
        if self._take_snapshot is not None:
            try:
                await self._take_snapshot(force=True, purge=True)
            except OSError as exc:
                return report, f"the snapshot that deletes the older files failed ({exc})"
        return report, None
