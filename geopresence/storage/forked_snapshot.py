"""Snapshots written by a forked child, as Redis' BGSAVE does, so the event loop never waits.

``os.fork`` gives the child the parent's memory as it is at that instant (copy on write):
the state at exactly ``journal_seq``, without copying anything in the event loop. The child
captures and serializes it, writes ``snapshot-<seq>.snap.tmp`` and fsyncs it, reports on a
pipe and leaves with ``os._exit``; the parent only waits for it to exit, then renames the
file into place, fsyncs the directory and prunes (in a worker thread).

What each side costs (100,000 users, 500,000 friendships, 1,000,000 messages, about 0.7 GB
of RSS; benchmarks/bench_durability.py):

- the event loop: ``fork`` itself, which copies page tables (about 7 ms per GB of RSS
  here), then the page faults of what the parent writes while the child runs;
- the child: the capture and serialization (a few seconds of CPU), at nice
  +``CHILD_NICENESS`` and, on Linux, in the ``SCHED_IDLE`` class, so that on a shared core
  the server always comes first;
- memory: the pages the child touches are copied (CPython writes a reference count in
  every object it reads), up to about the state's size again while the child runs.

The child runs in a copy of a process that has threads (journal writes and fsyncs, the
logging writer) which the child does not have: a lock one of them held at the fork stays
held for ever there. So the child takes no lock and calls nothing that might: no logging,
no trio, no thread, no import of anything not yet imported. It turns the garbage collector
off (a collection would touch every object and run finalizers of the parent's objects),
closes every inherited descriptor but the report pipe (a socket the parent closes must
really close), ignores SIGINT and SIGTERM (a Ctrl+C or a service manager's stop is the
parent's to handle: it waits for the child or kills it), and on Linux dies with its parent
(``PR_SET_PDEATHSIG``). Only the parent, which holds the data dir's lock, renames the file:
a child that outlived its server can leave nothing but a ``.tmp`` file, which is pruned.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import os
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, NoReturn

import orjson
import trio

from geopresence.storage.datadir import (
    install_snapshot,
    prune,
    snapshot_temporary,
    state_dir,
    write_snapshot_temporary,
)
from geopresence.storage.snapshot import Snapshot

CHILD_NICENESS: Final = 10
"""Added to the child's nice value: its CPU share against the server's on one core is
about 1:10 (the kernel's weights for nice 10 and 0), so a snapshot slows, never the server."""
POLL_S: Final = 0.05
"""How often the parent checks on the child where ``os.pidfd_open`` is missing (seconds)."""
_REPORT_LIMIT: Final = 4096
"""Bytes of the child's report at most: less than a pipe holds, so it never blocks."""
_PR_SET_PDEATHSIG: Final = 1


class SnapshotWriterFailed(OSError):
    """The forked snapshot writer failed, was killed, or could not be started. The previous
    snapshot and the journal are as they were (at worst a ``.tmp`` file is left, pruned by
    the next snapshot)."""


async def write_snapshot_forked(
    data_dir: Path,
    journal_seq: int,
    take: Callable[[], Snapshot],
    keep_from: Callable[[], int | None] = lambda: None,
) -> tuple[Path, int, dict[str, int]]:
    """Fork; in the child, ``take()`` (the state as of ``journal_seq``, captured from the
    child's copy of memory) is written as the snapshot's temporary file; then the parent
    installs it and prunes, keeping the segments from record ``keep_from()`` on (an
    unfinished forget's marker: ``datadir.prune``; asked once the child is done, in the
    parent). Call it with nothing between reading ``journal_seq`` and this call that could
    let the state move on (no ``await``).

    Returns (path, bytes, ``Snapshot.counts()``). Raises ``SnapshotWriterFailed`` if the
    child fails or dies; ``OSError`` if installing or pruning fails. If cancelled, the
    child is killed and reaped before the cancellation goes on. A child that fails or is
    killed leaves nothing behind: its partial temporary file is deleted."""
    directory = state_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    die_with_parent = _parent_death_signal()  # resolved here: the child must not dlopen
    parent = os.getpid()
    read_fd, write_fd = os.pipe()
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork in a process with threads: the child's contract
            # above (no locks, no threads, os._exit) is the answer to that warning.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        raise SnapshotWriterFailed(f"could not start the snapshot writer: {exc}") from None
    if pid == 0:
        _child(write_fd, parent, die_with_parent, lambda: _write(directory, journal_seq, take))
    os.close(write_fd)
    try:
        status = await _wait_for_exit(pid)
        report = _read_report(read_fd)
    finally:
        os.close(read_fd)
    temporary = snapshot_temporary(directory, journal_seq)
    failure = _failure(pid, status, report)
    if failure is not None:
        # As Redis' BGSAVE does: the partial file goes at once. On a full disk it holds
        # the space the journal needs to catch up, and no later snapshot (another seq)
        # would write over it; the child is reaped, so nothing writes to it any more.
        with contextlib.suppress(OSError):
            await trio.to_thread.run_sync(functools.partial(temporary.unlink, missing_ok=True))
        raise SnapshotWriterFailed(failure)
    path = await trio.to_thread.run_sync(_install_and_prune, temporary, keep_from())
    return path, int(report["bytes"]), dict(report["counts"])


def _failure(pid: int, status: int, report: dict[str, Any]) -> str | None:
    """What went wrong with the exited child ``pid`` (None: it wrote the file)."""
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        return f"the snapshot writer (pid {pid}) was killed by {name}"
    if os.waitstatus_to_exitcode(status) != 0 or "error" in report:
        error = report.get("error", f"exit status {os.waitstatus_to_exitcode(status)}")
        return f"the snapshot writer (pid {pid}) failed: {error}"
    return None


def _install_and_prune(temporary: Path, keep_from: int | None) -> Path:
    path = install_snapshot(temporary)
    prune(path.parent, keep_from)
    return path


def _write(directory: Path, journal_seq: int, take: Callable[[], Snapshot]) -> dict[str, object]:
    """The child's work: the report it sends."""
    snapshot = take()
    if snapshot.journal_seq != journal_seq:
        raise ValueError(f"captured journal seq {snapshot.journal_seq}, not {journal_seq}")
    _, size = write_snapshot_temporary(directory, snapshot)
    return {"bytes": size, "counts": snapshot.counts()}


# ------------------------------------------------------------------------------ the child


def _child(
    report_fd: int,
    parent: int,
    die_with_parent: Callable[[], None] | None,
    work: Callable[[], dict[str, object]],
) -> NoReturn:
    """Run ``work`` in the forked child and leave with ``os._exit``, whatever happens: the
    child must never return into the parent's code (its trio loop, its threads' state)."""
    code = 1
    report: dict[str, object] = {"error": "interrupted"}
    try:
        gc.disable()
        _detach(report_fd, parent, die_with_parent)
        report = work()
        code = 0
    except BaseException as exc:  # anything at all: reported, then os._exit
        report = {"error": _describe(exc)}
    finally:
        with contextlib.suppress(BaseException):
            os.write(report_fd, orjson.dumps(report)[:_REPORT_LIMIT])
        os._exit(code)


def _detach(report_fd: int, parent: int, die_with_parent: Callable[[], None] | None) -> None:
    """Make the child independent of the parent's signals and descriptors."""
    with contextlib.suppress(ValueError):  # ValueError: not forked from the main thread
        # trio's wakeup socket is shared with the parent: a signal here must not wake it.
        signal.set_wakeup_fd(-1)
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if die_with_parent is not None:
        die_with_parent()
    if os.getppid() != parent:
        raise SnapshotWriterFailed("the server exited before its snapshot writer started")
    limit = os.sysconf("SC_OPEN_MAX")
    os.closerange(3, report_fd)
    os.closerange(report_fd + 1, max(limit, report_fd + 1))
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICENESS)
    if hasattr(os, "SCHED_IDLE"):
        # Linux: run only on a CPU nothing else wants. A nice value is not enough on one
        # busy core (issue 16, 19,000 users): the kernel still gives the child slices of a
        # few ms while deliveries wait, and the server fell seconds behind. The price: on a
        # saturated core a snapshot waits (the journal keeps everything meanwhile).
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@functools.cache
def _parent_death_signal() -> Callable[[], None] | None:
    """A call that makes the calling process get SIGKILL when its parent dies (Linux's
    ``prctl(PR_SET_PDEATHSIG)``), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)

    return die_with_parent


# ------------------------------------------------------------------------------ the parent


async def _wait_for_exit(pid: int) -> int:
    """The child's wait status once it has exited (it is reaped). The wait is a pidfd
    becoming readable (Linux 5.3+), else a poll every ``POLL_S``. On cancellation (or any
    error) the child is killed with SIGKILL and reaped before the exception goes on."""
    try:
        try:
            pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        if pidfd is not None:
            try:
                await trio.lowlevel.wait_readable(pidfd)
            finally:
                os.close(pidfd)
        while True:
            reaped, status = os.waitpid(pid, os.WNOHANG)
            if reaped:
                return status
            await trio.sleep(POLL_S)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with trio.CancelScope(shield=True), contextlib.suppress(ChildProcessError):
            # A child in the middle of an fsync dies when the fsync returns: not in the loop.
            await trio.to_thread.run_sync(os.waitpid, pid, 0)
        raise


def _read_report(fd: int) -> dict[str, Any]:
    """The child's report (it has exited: the pipe holds all of it, then end of file)."""
    chunks = []
    while chunk := os.read(fd, _REPORT_LIMIT):
        chunks.append(chunk)
    try:
        report = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        return {"error": "no report"}
    return report if isinstance(report, dict) else {"error": "no report"}
