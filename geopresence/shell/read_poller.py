"""One task reads every open session (shell): ``ReadPoller``.

A task per connection that awaits its socket costs ~35 µs of CPU per message read at
10,000 connections (trio's readiness wait re-arms the fd with an ``epoll_ctl`` and wakes
the task; ``receive_some`` tries a read that fails first), against ~12 µs when one task
polls a private epoll set of every session's socket and hands each readable one to its
callback, synchronously (``benchmarks/read_paths.py``; benchmarks/RESULTS.md). The
session's own task then only waits for its end.

Linux only (``select.epoll``): elsewhere ``ReadPoller.create`` returns None and each
session's task reads its socket itself.
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Callable
from typing import Final

import trio

BATCH: Final = 256
"""At most this many readable sockets handled between two checkpoints: a burst of input
must not hold off the timers and the other tasks for long (those left over stay readable
and come back at the next poll, the set being level-triggered)."""


class ReadPoller:
    """Calls each registered socket's callback while it has something to read.

    The set is level-triggered: a callback must read (or unregister) at each call, or it is
    called again at once. Callbacks run in the poller's task, one after another; one that
    raises is unregistered and its ``on_error`` told, so that one connection cannot stop
    the others' reading."""

    def __init__(self, epoll: select.epoll) -> None:
        self._epoll = epoll
        self._callbacks: dict[int, tuple[Callable[[], None], Callable[[Exception], None]]] = {}
        self.stopped = False
        """The poller's task has ended (the server is stopping): nothing is polled now."""

    @classmethod
    def create(cls) -> ReadPoller | None:
        """A poller, or None where the platform has no epoll."""
        if not hasattr(select, "epoll"):
            return None
        return cls(select.epoll())

    def __len__(self) -> int:
        return len(self._callbacks)

    def register(
        self, fd: int, callback: Callable[[], None], on_error: Callable[[Exception], None]
    ) -> None:
        """Call ``callback`` whenever ``fd`` is readable (or at its end or an error), until
        ``unregister``; if it raises, ``fd`` is unregistered and ``on_error`` is given the
        exception (it must not raise). Unregister before the fd is closed: its number may be
        reused. Nothing once ``stopped``."""
        if self.stopped:
            return
        self._epoll.register(fd, select.EPOLLIN)
        self._callbacks[fd] = (callback, on_error)

    def unregister(self, fd: int) -> None:
        """Stop polling ``fd`` (nothing if it is not registered)."""
        if self._callbacks.pop(fd, None) is None:
            return
        # Closed behind our back, the kernel has dropped it from the set already.
        with contextlib.suppress(OSError):
            self._epoll.unregister(fd)

    async def run(self) -> None:
        """Poll until cancelled (then the epoll set is closed, and ``stopped``)."""
        epoll = self._epoll
        callbacks = self._callbacks
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0, BATCH):
                    registered = callbacks.get(fd)
                    if registered is None:
                        continue  # unregistered by an earlier callback of this batch
                    try:
                        registered[0]()
                    except Exception as exc:
                        self.unregister(fd)
                        registered[1](exc)
        finally:
            self.stopped = True
            callbacks.clear()
            epoll.close()


__all__ = ["BATCH", "ReadPoller"]
