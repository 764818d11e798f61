"""The shell's part of forgetting a user (the core's is ``geopresence.core.forget``).

After the hub forgot a user (here, or on another node: ``on_forgotten``), its queued pushes
are dropped and the location history files are scrubbed of it (``HistoryKeeper``). A forget
made here (``DELETE /v1/users/{user}``, ``forget_user``) also waits until its record is
durable and, with a journal, writes a snapshot and deletes every older snapshot and journal
segment, which still hold the user: its response means the user is gone from the disk.

The order is what makes a crash harmless: the record is journaled before anything is
deleted, and the older journal goes last, so a restart that finds the record replays it and
does the rest again (``Server.run``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

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
        hub.forgetting.on_forgotten = self.on_forgotten

    def on_forgotten(self, user: str) -> None:
        """The hub forgot ``user``: its pushes go, its history is scrubbed."""
        self._keeper.forget(user)
        self._push.forget(user, self._hub.state.ids.last_id)

    async def forget_user(self, user: str, now: float) -> tuple[ForgetReport, str | None]:
        """Forget ``user`` at ``now`` and return once it is durable and gone from the disk
        (see the module), with what failed (None: nothing) for the response."""
        report = self._hub.forgetting.forget(user, now)
        requested = self._keeper.requested  # this forget's place in the scrub queue
        await self._durable(report.seq)
        problem = await self._keeper.scrubbed(requested)
        if problem is not None:
            return report, f"{problem}: retrying every {RETRY_AFTER_ERROR_S:g} s"
        if self._take_snapshot is not None:
            try:
                await self._take_snapshot(force=True, purge=True)
            except OSError as exc:
                return report, f"the snapshot that deletes the older files failed ({exc})"
        return report, None
