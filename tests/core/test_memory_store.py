"""``MemoryStore``'s footprint: the friendship graph is most of a server's heap."""

from __future__ import annotations

import tracemalloc

import orjson

from geopresence.core.store import MemoryStore


def test_a_friendship_costs_tens_of_bytes_not_hundreds() -> None:
    # 100 users with 400 friends each, ids decoded from JSON as an import brings them (a
    # new string for every occurrence): the design's population in miniature.
    pairs = orjson.loads(
        orjson.dumps(
            [[f"u{i}", f"x{(i * 7919 + k) % 400}"] for i in range(100) for k in range(400)]
        )
    )
    store = MemoryStore()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for a, b in pairs:
            store.add_friendship(a, b)
        del pairs  # what the store kept of them is all that is left
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert store.friendship_count() == 40_000
    # Sorted lists: 18 bytes a friendship (both directions); adjacency sets took 167, not
    # counting the strings (allocated before the measurement) each set kept of its own.
    assert used / 40_000 < 40
