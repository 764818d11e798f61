"""A large group replacement, joined in slices while its members chat: every member added
gets, live, each message its ``sync`` shows (found by an adversarial review)."""

from __future__ import annotations

import contextlib
from typing import Any

import trio
from trio.testing import MockClock

from geopresence.client import Client
from geopresence.testing import TestServer


async def drain(client: Client, seconds: float = 0.05) -> list[dict[str, Any]]:
    got = []
    while True:
        with trio.move_on_after(seconds):
            got.append(await client.recv())
            continue
        return got


async def test_group_message_sent_while_a_large_group_is_replaced_reaches_new_members_live(
    server: TestServer, autojump_clock: MockClock
) -> None:
    """PROTOCOL.md:100 "Delivery to every connected device of the recipients"; docs/protocol.md:284
    "message to every connection ... of every member whose membership began before the message".
    A member added by a large PUT /v1/groups whose join mark is below a message's id reads that
    message with sync (so it is a recipient), but its connected device never got it live: a
    client that then applies a later live message moves its cur_max_message_id past it and
    never syncs it (skipped)."""
    await server.admin.set_group("big", ["alice"])
    watched = [f"w{i:02d}" for i in range(16)]
    filler = [f"u{i:05d}" for i in range(30_000)]  # several GROUP_SLICE steps
    async with server.connect("alice") as alice, contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(server.connect(w)) for w in watched]
        done = trio.Event()

        async def put() -> None:
            await server.admin.set_group("big", ["alice", *filler, *watched])
            done.set()

        async def chatter() -> None:
            # Frames written while the PUT runs, not waiting for the acks.
            i = 0
            while not done.is_set():
                await alice.send({"type": "send", "group": "big", "text": f"m{i}"})
                await trio.sleep(0)
                i += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(put)
            nursery.start_soon(chatter)
        await trio.sleep(1)
        sent = [m["message_id"] for m in await drain(alice) if m["type"] == "sent"]
        problems = []
        for client in clients:
            live = {m["message_id"] for m in await drain(client) if m["type"] == "message"}
            synced = {m["message_id"] for m in await client.sync_all()}
            if synced - live:
                problems.append((client.user, sorted(synced - live)))
        assert not problems, f"synced but never delivered live: {problems}; sent={sent}"
