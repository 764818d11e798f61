"""The history keeper of a running node, on real files and virtual time: each file is
deleted exactly when everything in it is past the retention, never before, at start too; and
every forget is answered by a scrub that began after it."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from geopresence.config import Config
from geopresence.core.locations import Location
from geopresence.core.retention import HistoryFile, past_retention
from geopresence.shell import history as shell_history
from geopresence.shell.clock import ServerClock
from geopresence.shell.history import HistoryFlusher, HistoryKeeper
from geopresence.shell.metrics import Metrics
from geopresence.storage.history import HistoryWriter, history_dir, read_history
from geopresence.testing import open_server

HOUR = 3600.0


def make_files(directory: Path, newest: list[float]) -> None:
    """History files 1, 2, ... whose newest record was written at each of ``newest``."""
    writer = HistoryWriter(directory)
    for number, when in enumerate(newest, 1):
        writer.append(f"user{number}", Location(1.0, 2.0, when))
        writer.rotate()
        os.utime(directory / f"locations-{number:06d}.jsonl", (when, when))


async def inline(function: Callable[..., Any], *args: Any) -> Any:
    return function(*args)


def numbers(directory: Path) -> list[int]:
    return sorted(int(p.name[10:16]) for p in directory.glob("locations-*.jsonl"))


async def test_retention_deletes_exactly_the_files_wholly_past_the_limit(
    tmp_path: Path, autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = float(int(time.time()))  # real mtimes of files written now are about origin
    config = Config(data_dir=tmp_path, history_retention=HOUR, time_origin=origin)
    clock = ServerClock(origin)  # virtual time 0 is ``origin``
    metrics = Metrics()
    flusher = HistoryFlusher(config, metrics, clock.now)
    keeper = HistoryKeeper(config, metrics, flusher, clock.now)
    keeper.run_sync = inline  # no thread: virtual time must not jump while files are listed
    directory = history_dir(tmp_path)
    make_files(directory, [origin - 5000, origin - 3000, origin - 1000, origin + 600])
    decisions: list[tuple[float, list[int]]] = []

    def deciding(files: list[HistoryFile], now: float, retention: float) -> list[int]:
        doomed = past_retention(files, now, retention)
        writing = {flusher.history.current} - {None}  # the file being written is not a case
        assert {f.number for f in files} | writing == set(numbers(directory))
        decisions.append((now - origin, doomed))
        return doomed

    monkeypatch.setattr(shell_history, "past_retention", deciding)
    await keeper.start()
    assert decisions == [(0.0, [1])]  # at start: the one file wholly an hour old
    assert numbers(directory) == [2, 3, 4]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run, clock)
        await trio.sleep(1000)
        flusher.record("walker", Location(3.0, 4.0, origin + 1000))  # a file being written
        await trio.sleep(10 * HOUR)
        nursery.cancel_scope.cancel()
    # Each file exactly when its newest record became an hour old; the file being written
    # once its writer had been idle an hour (its newest record is older still). With nothing
    # left, a check an hour apart finds nothing.
    assert [(at, doomed) for at, doomed in decisions if doomed] == [
        (0.0, [1]),
        (-3000 + HOUR, [2]),
        (-1000 + HOUR, [3]),
        (600 + HOUR, [4]),
        (1000 + HOUR, [5]),
    ]
    assert numbers(directory) == []
    assert keeper.files_deleted == 5


@pytest.mark.parametrize(("retention", "left"), [(0.0, []), (math.inf, [1, 2])])
async def test_zero_keeps_nothing_and_forever_keeps_everything(
    tmp_path: Path, autojump_clock: MockClock, retention: float, left: list[int]
) -> None:
    directory = history_dir(tmp_path)
    make_files(directory, [1_000.0, 2_000.0])
    origin = time.time()  # the files' times are real ones
    async with open_server(
        data_dir=tmp_path, history_retention=retention, time_origin=origin
    ) as server:
        async with server.connect("alice") as alice:
            await alice.send({"type": "location", "lat": 1.0, "lon": 2.0})
            await alice.request("heartbeat")
        await trio.sleep(5)  # flushed within a second
        assert numbers(directory) == [*left, *([3] if left else [])]
    if not left:
        assert list(read_history(directory)) == []


async def test_a_user_forgotten_again_during_its_scrub_is_scrubbed_again(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    """Each forget is answered by a scrub that began after it: the second forget's lines
    (written after the first scrub began) go too, and its waiter is answered."""
    origin = float(int(time.time()))
    config = Config(data_dir=tmp_path, time_origin=origin)
    clock = ServerClock(origin)
    metrics = Metrics()
    flusher = HistoryFlusher(config, metrics, clock.now)
    keeper = HistoryKeeper(config, metrics, flusher, clock.now)
    gate = trio.Event()

    async def held(function: Callable[..., Any], *args: Any) -> Any:
        await gate.wait()  # the scrub is under way until the test opens the gate
        return function(*args)

    keeper.run_sync = held
    directory = history_dir(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run, clock)
        flusher.record("alice", Location(1.0, 2.0, origin))
        keeper.forget("alice")
        first = keeper.requested
        await trio.testing.wait_all_tasks_blocked()  # the first scrub waits at the gate
        flusher.record("alice", Location(1.0, 2.0, origin + 1))  # a new file
        keeper.forget("alice")
        second = keeper.requested
        gate.set()
        assert await keeper.scrubbed(first) is None
        assert await keeper.scrubbed(second) is None
        nursery.cancel_scope.cancel()
    assert list(read_history(directory)) == []
