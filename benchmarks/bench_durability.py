"""Durability benchmark: acknowledged chat messages per second under each ``--fsync``
policy, and the cost of snapshots and restarts for a large state.

    python benchmarks/bench_durability.py [--quick] [--dir DIR]

Part 1 runs an in-process server (in-memory WebSocket transport, so sockets are not what is
measured) with a data dir on DIR's file system, connects C senders that each keep a window
of 8 sends in flight (waiting for their ``sent`` acks before the next window), and reports
acked messages/s, fsyncs and messages per fsync: the group commit at work. ``in-memory`` is
the ceiling without a journal. The senders run in the same process, so the figures include
the client's own WebSocket work: compare the rows with each other, not with other tables.

Part 2 builds a state of U users (5 friends each: 5U friendships), groups, settings and M
chat messages directly in the core, then takes a snapshot of it from a trio loop in which a
probe task sleeps 1 ms at a time and records the longest gap beyond that (the event-loop
stall), first as the server does (a forked child writes it), then as it did before (the
state captured in the loop, serialized in a worker thread) for comparison; then times a
restart: reading the snapshot, replaying a journal of R records after it, and rebuilding the
indexes. Default U=100,000, M=1,000,000 (about 3 GB of RAM while it runs).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import random
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from geopresence.core.state import DurableState
from geopresence.core.store import UserSettings
from geopresence.model.chat_message import ChatMessage
from geopresence.model.records import Befriended, Record
from geopresence.model.snowflake import SnowflakeGenerator
from geopresence.options import FsyncPolicy
from geopresence.storage.datadir import JOURNAL_PATTERN, journal_path, state_dir, write_snapshot
from geopresence.storage.forked_snapshot import write_snapshot_forked
from geopresence.storage.journal_format import FILE_MAGIC, encode_frame
from geopresence.storage.recovery import rebuild, recover
from geopresence.storage.snapshot import Snapshot, capture
from geopresence.testing import open_server

WINDOW = 8
"""Sends a sender has in flight before it waits for their acks."""


async def acked_rate(policy: FsyncPolicy | None, base: Path, senders: int, each: int) -> None:
    """Acked messages/s with ``senders`` concurrent senders (None: --in-memory)."""
    data_dir = Path(tempfile.mkdtemp(dir=base))
    overrides: dict[str, Any] = (
        {"in_memory": True} if policy is None else {"in_memory": False, "fsync": policy}
    )
    async with open_server(data_dir=data_dir, time_origin=None, **overrides) as server:
        await server.admin.befriend_many([("sink", f"s{i}") for i in range(senders)])
        journal = server.running.server.journal
        fsyncs_before = journal.fsyncs if journal else 0
        clients = []
        async with trio.open_nursery() as nursery:
            ready = trio.Event()
            done = [0]

            async def sender(user: str) -> None:
                async with server.connect(user) as client:
                    clients.append(client)
                    await ready.wait()
                    for start in range(0, each, WINDOW):
                        # Pipelined: a window of sends, then their acks (a chatty client).
                        count = min(WINDOW, each - start)
                        for n in range(start, start + count):
                            text = f"{user} says {n}"
                            await client.send({"type": "send", "to": "sink", "text": text})
                        for _ in range(count):
                            reply = await client.recv_type("sent", "error")
                            assert reply["type"] == "sent", reply
                    done[0] += 1

            for i in range(senders):
                nursery.start_soon(sender, f"s{i}")
            while len(clients) < senders:
                await trio.sleep(0.01)
            started = time.perf_counter()
            ready.set()
        elapsed = time.perf_counter() - started
        total = senders * each
        fsyncs = (journal.fsyncs - fsyncs_before) if journal else 0
        per_fsync = f"{total / fsyncs:8.1f}" if fsyncs else "       -"
        label = "in-memory" if policy is None else f"--fsync {policy}"
        print(
            f"{label:<18} {total / elapsed:10,.0f} acked msg/s   {fsyncs:7,} fsyncs"
            f"   {per_fsync} msg/fsync   ({total:,} messages, {senders} senders)"
        )


def build_state(users: int, messages: int) -> DurableState:
    """A durable state holding ``users`` users with 5 friends each, 1 group per 100 users
    (20 members), settings for 1 user in 10, and ``messages`` messages (9 in 10 are 1:1)."""
    rng = random.Random(7)
    state = DurableState()
    store = state.users
    for i in range(users):
        for k in range(1, 6):
            store.add_friendship(f"u{i}", f"u{(i + k) % users}")
    groups = max(1, users // 100)
    for g in range(groups):
        members = [f"u{(g * 100 + k * 5) % users}" for k in range(20)]
        store.set_group(f"g{g}", members)
        for member in members:
            state.chat.join(f"g{g}", member, 0)
    for i in range(0, users, 10):
        store.put_settings(f"u{i}", UserSettings(share_location=False, radius_m=2000.0))
    ids = SnowflakeGenerator(node_id=1)
    t = 1.8e9
    batch: list[ChatMessage] = []
    for n in range(messages):
        t += 0.001
        sender = rng.randrange(users)
        text = f"message {n}: see you at the station at {n % 24:02d}:00"
        if n % 10:
            to = f"u{(sender + rng.randrange(1, 6)) % users}"
            batch.append(ChatMessage(ids.next_id(t), f"u{sender}", text, t, to=to))
        else:
            group = f"g{rng.randrange(groups)}"
            batch.append(ChatMessage(ids.next_id(t), f"u{sender}", text, t, group=group))
    state.chat.load(batch)
    state.ids.observe(ids.last_id)
    return state


PROBE_S = 0.001
"""The loop-lag probe's sleep (seconds)."""


async def _with_probe(work: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """Run ``work`` while a probe task sleeps ``PROBE_S`` at a time; returns (longest stall
    beyond the sleep, seconds ``work`` took)."""
    longest, done = [0.0], trio.Event()

    async def probe() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await trio.sleep(PROBE_S)
            now = time.perf_counter()
            longest[0] = max(longest[0], now - last - PROBE_S)
            last = now

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe)
        await trio.sleep(0.05)  # the probe is running
        started = time.perf_counter()
        await work()
        elapsed = time.perf_counter() - started
        done.set()
    return longest[0], elapsed


def snapshot_stalls(base: Path, state: DurableState, users: int, messages: int) -> Path:
    """The longest event-loop stall during a snapshot of ``state``, now and before."""
    data_dir = Path(tempfile.mkdtemp(dir=base))
    written: list[tuple[Path, int]] = []

    async def forked() -> None:
        def take() -> Snapshot:  # in the child, as Durability.take_snapshot does
            return capture(state, 1, time.time())

        path, size, _ = await write_snapshot_forked(data_dir, 1, take)
        written.append((path, size))

    async def in_thread() -> None:  # before: capture in the loop, serialize in a thread
        snapshot = capture(state, 2, time.time())
        written.append(await trio.to_thread.run_sync(write_snapshot, data_dir, snapshot))

    label = f"{users:,} users, {5 * users:,} friendships, {messages:,} messages"
    seconds = 0.0
    for name, work in (("forked child (now)", forked), ("loop + thread (before)", in_thread)):
        stall, seconds = trio.run(_with_probe, work)
        size = written[-1][1]
        print(
            f"snapshot, {name:<22}: longest event-loop stall {stall * 1000:7.1f} ms, "
            f"total {seconds:5.2f} s, {size:,} bytes ({label})"
        )
        if not written[1:]:
            # The same probe for as long with no snapshot: the machine's own noise.
            stall, _ = trio.run(_with_probe, functools.partial(trio.sleep, seconds))
            print(f"no snapshot (baseline, {seconds:.2f} s)  : longest event-loop stall "
                  f"{stall * 1000:7.1f} ms")  # fmt: skip
    child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"snapshot child's peak RSS {child_peak:,.0f} MB (pages shared with the server included)")
    return written[0][0]


def restart_cost(base: Path, users: int, messages: int, journal_records: int) -> None:
    started = time.perf_counter()
    state = build_state(users, messages)
    print(
        f"built {users:,} users, {messages:,} messages in {time.perf_counter() - started:.1f} s"
        f" (RSS {_rss_mb():,.0f} MB)"
    )
    path = snapshot_stalls(base, state, users, messages)
    data_dir = path.parent.parent
    path.with_name("snapshot-00000000000000000002.snap").unlink()  # restart from seq 1
    records: list[Record] = [Befriended(f"n{i}", f"u{i % users}") for i in range(journal_records)]
    directory = state_dir(data_dir)
    with open(journal_path(directory, 2), "wb") as file:
        file.write(FILE_MAGIC + b"".join(encode_frame(r) for r in records))
    assert [p for p in directory.iterdir() if JOURNAL_PATTERN.match(p.name)]
    del state
    started = time.perf_counter()
    recovered = recover(data_dir, repair=False)
    read = time.perf_counter() - started
    restored = DurableState()
    rebuild(restored, recovered)
    elapsed = time.perf_counter() - started
    assert len(restored.chat) == messages and len(recovered.records) == journal_records
    print(
        f"restart: snapshot + {journal_records:,} journal records -> {len(restored.chat):,}"
        f" messages in {elapsed:.2f} s (reading and decoding the files {read:.2f} s, rebuilding"
        f" the state {elapsed - read:.2f} s; RSS {_rss_mb():,.0f} MB)"
    )
    path.unlink()


def _rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts (CI smoke run)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the data dirs go (kept afterwards)"
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.dir is None:  # a temporary folder, removed at the end
            base = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="geopresence-bench-"))
            )
        else:
            base = args.dir
            base.mkdir(parents=True, exist_ok=True)
        print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus")
        print(f"data dirs under {base}" + ("" if args.dir else " (removed at the end)"))
        senders, each = (10, 20) if args.quick else (50, 200)
        for policy in (None, "no", "everysec", "always"):
            trio.run(acked_rate, policy, base, senders, each)
        users, messages, records = (
            (1000, 10_000, 1000) if args.quick else (100_000, 1_000_000, 100_000)
        )
        restart_cost(base, users, messages, records)


if __name__ == "__main__":
    main()
