"""``read_sync``'s merge of a user's conversations against a brute-force merge (seeded
random cases, several batch sizes)."""

from __future__ import annotations

import random

import pytest

from geopresence.cluster import chat_reads
from geopresence.cluster.chat_reads import read_sync
from geopresence.cluster.chat_writes import ChatWrites
from geopresence.cluster.redis_keys import Keys
from geopresence.model.chat_message import ChatMessage
from tests.redis_server import AnyRedis

END = 2**63


@pytest.mark.parametrize("batch", [1, 2, 3, 50])
async def test_read_sync_equals_brute_force(
    any_redis: AnyRedis, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    monkeypatch.setattr(chat_reads, "SYNC_BATCH", batch)
    rng = random.Random(batch)
    for case in range(40):
        keys = Keys(f"merge{batch}x{case}")
        others = [f"u{i}" for i in range(rng.randint(0, 4))]
        groups = [f"g{i}" for i in range(rng.randint(0, 3))]
        used: set[int] = set()
        messages: list[ChatMessage] = []
        for _ in range(rng.randint(0, 60)):
            mid = rng.randint(1, 300)
            if mid in used:
                continue
            used.add(mid)
            if groups and (not others or rng.random() < 0.5):
                messages.append(ChatMessage(mid, "x", f"m{mid}", 1.0, group=rng.choice(groups)))
            elif others:
                other = rng.choice(others)
                sender, to = ("ann", other) if rng.random() < 0.5 else (other, "ann")
                messages.append(ChatMessage(mid, sender, f"m{mid}", 1.0, to=to))
        # messages not ann's
        messages.append(ChatMessage(1000 + case, "zed", "no", 1.0, to="yan"))
        if messages:
            await ChatWrites(any_redis, keys, 2)(sorted(messages, key=lambda m: m.message_id))
        marks = {g: rng.choice([0, rng.randint(0, 300)]) for g in groups}
        for _ in range(8):
            after = rng.choice([0, rng.randint(0, 300)])
            below = rng.choice([END, rng.randint(0, 320)])
            count = rng.randint(1, 25)
            expected = sorted(
                m.message_id
                for m in messages
                if after < m.message_id < below
                and (
                    (m.group is None and "ann" in (m.sender, m.to))
                    or (m.group is not None and m.message_id > marks[m.group])
                )
            )[:count]
            got = await read_sync(any_redis, keys, "ann", marks, after, below, count)
            assert [m.message_id for m in got] == expected, (case, after, below, count, marks)
