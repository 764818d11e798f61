"""The ``Journal`` contract (geopresence.core.journal), run against every implementation: in
memory, on disk (one node) and in Redis (several nodes, a real Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio

from geopresence.cluster.redis_keys import Keys
from geopresence.cluster.redis_load import load_durable
from geopresence.cluster.redis_state import RedisJournal
from geopresence.core.journal import Journal, MemoryJournal
from geopresence.core.state import DurableState
from geopresence.model.records import Befriended, GroupSet, Record, SettingsChanged, Unfriended
from geopresence.storage.journal_file import FileJournal
from geopresence.storage.recovery import rebuild, recover
from tests.redis_server import redis_server

RECORDS: list[Record] = [
    Befriended("alice", "bob"),
    Befriended("alice", "carol"),
    Unfriended("alice", "carol"),
    GroupSet("hikers", ["alice", "bob"], 0),
    SettingsChanged("bob", False, 1200.0, True),
]


class Running:
    """A journal whose background work runs, and what the contract lets a test observe."""

    def __init__(self, journal: Journal, advanced: list[int]) -> None:
        self.journal = journal
        self.advanced = advanced
        """durable_seq each time the owner was told it grew outside append."""
        self.reload: Callable[[], Any] | None = None
        """Reads back what a restart would recover (None: nothing survives, by design)."""


@asynccontextmanager
async def memory(tmp_path: Path) -> AsyncIterator[Running]:
    yield Running(MemoryJournal(), [])


@asynccontextmanager
async def disk(tmp_path: Path) -> AsyncIterator[Running]:
    journal = FileJournal(tmp_path, "always")
    advanced: list[int] = []
    journal.on_durable = lambda: advanced.append(journal.durable_seq)
    journal.open(0)
    running = Running(journal, advanced)

    async def reload() -> DurableState:
        state = DurableState()
        rebuild(state, recover(tmp_path, repair=False))
        return state

    running.reload = reload
    async with trio.open_nursery() as nursery:
        nursery.start_soon(journal.run)
        yield running
        nursery.cancel_scope.cancel()
    await journal.close()


@asynccontextmanager
async def redis(tmp_path: Path) -> AsyncIterator[Running]:
    with redis_server() as port:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client:
            keys = Keys("c")
            journal = RedisJournal(client, keys, node_id=1)
            advanced: list[int] = []
            journal.on_durable = lambda: advanced.append(journal.durable_seq)
            running = Running(journal, advanced)

            async def reload() -> DurableState:
                state = DurableState()
                await load_durable(client, keys, state)
                return state

            running.reload = reload
            async with trio.open_nursery() as nursery:
                await nursery.start(journal.run)
                yield running
                nursery.cancel_scope.cancel()


IMPLEMENTATIONS: dict[str, Callable[[Path], AbstractAsyncContextManager[Running]]] = {
    "memory": memory,
    "disk": disk,
    "redis": redis,
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def implementation(request: pytest.FixtureRequest) -> Callable[[Path], Any]:
    return IMPLEMENTATIONS[request.param]


async def until_durable(running: Running, seq: int) -> None:
    with trio.fail_after(10):
        while running.journal.durable_seq < seq:
            await trio.sleep(0.005)


async def test_sequence_numbers_count_up_and_durability_only_grows(
    implementation: Callable[[Path], AbstractAsyncContextManager[Running]], tmp_path: Path
) -> None:
    async with implementation(tmp_path) as running:
        journal = running.journal
        seen = [journal.durable_seq]
        assert seen == [0]
        seqs = []
        for record in RECORDS:
            seqs.append(journal.append(record))
            seen.append(journal.durable_seq)
            assert journal.durable_seq <= seqs[-1]
        assert seqs == list(range(1, len(RECORDS) + 1))
        await until_durable(running, len(RECORDS))
        seen.append(journal.durable_seq)
        assert seen == sorted(seen) and seen[-1] == len(RECORDS)
        # Growth outside append was announced, and only ever upwards, up to the last record.
        if running.advanced:
            assert running.advanced == sorted(running.advanced)
            assert running.advanced[-1] == len(RECORDS)


async def test_what_is_durable_is_what_a_restart_recovers(
    implementation: Callable[[Path], AbstractAsyncContextManager[Running]], tmp_path: Path
) -> None:
    async with implementation(tmp_path) as running:
        for record in RECORDS:
            running.journal.append(record)
        await until_durable(running, len(RECORDS))
        if running.reload is None:
            return  # the in-memory journal keeps nothing: memory is its durability
        users = (await running.reload()).users
        assert sorted(tuple(sorted(pair)) for pair in users.friendships()) == [("alice", "bob")]
        assert set(users.group_members("hikers") or ()) == {"alice", "bob"}
        settings = users.get_settings("bob")
        assert (settings.share_location, settings.radius_m, settings.visible_to_strangers) == (
            False,
            1200.0,
            True,
        )
