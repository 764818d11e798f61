"""Replies on one connection come in order with several nodes too (docs/protocol.md): the
answers a node makes after a Redis round trip (a ``sync`` page, ``group_presence``, see
``shell.cluster_answers``) and the ``sent`` that waits for the chat horizon keep their
places among the connection's replies (``core.replies``)."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.cluster.test_multinode import cluster_of, session


async def test_answers_read_from_redis_keep_their_place(tmp_path: Path) -> None:
    with cluster_of("standalone", 2, tmp_path) as ((a, b), _):
        async with a.admin() as admin:
            await admin.befriend("alice", "bob")
            await admin.set_group("hikers", ["alice", "bob"])
        async with session(a, "bob"), session(b, "alice") as alice:
            await trio.sleep(0.1)  # past alice's join mark (CLOCK_SKEW_S)
            requests = [
                {"type": "sync", "after": "0"},  # the connection's first: waits for the horizon
                {"type": "heartbeat"},
                {"type": "group_presence", "group": "hikers"},  # read from Redis
                {"type": "send", "to": "bob", "text": "hi"},  # waits for the horizon
                {"type": "heartbeat"},
                {"type": "send", "to": "carol", "text": "x"},  # an error, at once
                {"type": "group_presence", "group": "hikers"},
                {"type": "heartbeat"},
            ]
            for request_id, request in enumerate(requests, 1):
                await alice.send({**request, "id": request_id})
            got: list[tuple[int, str]] = []
            with trio.fail_after(20):
                while len(got) < len(requests):
                    message = await alice.recv()
                    if message.get("re") is not None:
                        got.append((message["re"], message["type"]))
            assert got == [
                (1, "messages"),
                (2, "heartbeat"),
                (3, "group_presence"),
                (4, "sent"),
                (5, "heartbeat"),
                (6, "error"),
                (7, "group_presence"),
                (8, "heartbeat"),
            ]
