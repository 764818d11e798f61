"""Forgetting and exporting a user on a running server with a real data dir (real clock: the
journal and the history are written in worker threads): every trace goes, for good, and an
export gives back what was put in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import trio
from trio.testing import MockClock

from geopresence.client import AdminClient, Client
from geopresence.model.records import UserForgotten
from geopresence.storage.history import history_dir, read_history
from geopresence.storage.journal_file import append_offline
from geopresence.storage.recovery import recover
from geopresence.testing import TestServer, open_server
from tests.helpers import files_naming

HERE = {"lat": 37.5665, "lon": 126.978}


def durable(data_dir: Path) -> dict[str, Any]:
    return {
        "in_memory": False,
        "data_dir": data_dir,
        "time_origin": None,
        "fsync": "always",
    }


def flushed(server: TestServer) -> None:
    """The history written so far is in its file (the server flushes within a second)."""
    server.running.server.history.flush()


@asynccontextmanager
async def sessions(server: TestServer) -> AsyncIterator[tuple[Client, Client]]:
    """alice (with friends, a group, settings, a location history and messages both ways)
    and bob, connected; bob and carol keep a friendship of their own."""
    admin = server.admin
    for a, b in (("alice", "bob"), ("alice", "carol"), ("bob", "carol")):
        await admin.befriend(a, b)
    await admin.set_group("hikers", ["alice", "bob", "carol"])
    async with server.connect("alice") as alice, server.connect("bob") as bob:
        await alice.request("settings", radius_m=2000, visible_to_strangers=True)
        for step in range(3):
            await alice.send({"type": "location", "lat": HERE["lat"] + step / 1000, "lon": 126.978})
        await bob.send({"type": "location", "lat": 37.57, "lon": 126.978})
        await alice.send_message("meet at noon", to="bob", client_msg_id="m1")
        await bob.send_message("ok alice", to="alice")
        await alice.send_message("hello hikers", group="hikers")
        await bob.send_message("hello from bob", group="hikers")
        flushed(server)
        yield alice, bob


async def test_forget_removes_every_trace_and_survives_a_restart(tmp_path: Path) -> None:
    async with open_server(**durable(tmp_path)) as server:
        async with sessions(server) as (alice, bob):
            await server.running.server.take_snapshot(force=True)  # an older snapshot, too
            await alice.send({"type": "location", **HERE})
            await alice.request("heartbeat")  # handled: in the history's buffer
            flushed(server)
            assert files_naming(tmp_path, "alice")  # in the journal, snapshots, history
            result = await server.admin.forget("alice")
            assert result == {
                "user": "alice",
                "forgotten": True,
                "friends": 2,
                "groups": 1,
                "messages": 3,
                "settings": True,
                "location": True,
                "devices_logged_out": 1,
            }
            assert await alice.closed() == (4001, "logged out")
            seen = []
            with trio.move_on_after(0.5):
                while True:
                    seen.append(await bob.recv())
            assert {"type": "friend_removed", "user": "alice"} in seen
            assert [m["text"] for m in await bob.sync_all()] == ["hello from bob"]
        assert files_naming(tmp_path, "alice") == []
        assert await server.admin.friends("bob") == [
            {"user": "carol", "status": "offline", "last_active_at": None}
        ]
        assert (await server.admin.user("alice"))["last_active_at"] is None
    assert files_naming(tmp_path, "alice") == []  # the final snapshot too
    async with open_server(**durable(tmp_path)) as server:  # a restart
        assert await server.admin.friends("alice") == []
        assert (await server.admin.group("hikers"))["members"] == ["bob", "carol"]
        assert [f["user"] for f in await server.admin.friends("carol")] == ["bob"]
    assert files_naming(tmp_path, "alice") == []


async def test_a_forget_cut_short_by_a_crash_is_finished_at_the_next_start(
    tmp_path: Path,
) -> None:
    """The record is journaled first: a crash right after it (nothing scrubbed, nothing
    deleted) leaves a start-up that replays it and does the rest."""
    async with open_server(**durable(tmp_path)) as server:
        async with sessions(server):
            pass
    recovered = recover(tmp_path, repair=False)
    append_offline(tmp_path, recovered.last_seq + 1, UserForgotten("alice"))
    assert "history/locations-000001.jsonl" in files_naming(tmp_path, "alice")
    async with open_server(**durable(tmp_path)) as server:
        assert files_naming(tmp_path, "alice") == []
        assert await server.admin.friends("alice") == []
        assert [f["user"] for f in await server.admin.friends("bob")] == ["carol"]


async def test_export_gives_back_what_was_put_in(tmp_path: Path) -> None:
    async with open_server(**durable(tmp_path)) as server, sessions(server):
        export = await server.admin.export("alice")
        assert export["user"] == "alice" and export["exported_at"] > 0
        assert export["presence"]["status"] == "online"
        assert export["presence"]["devices"] == 1
        assert export["settings"] == {
            "share_location": True,
            "radius_m": 2000.0,
            "visible_to_strangers": True,
        }
        assert export["friends"] == ["bob", "carol"]
        assert export["groups"] == [{"group": "hikers", "members": 3, "joined_after": "0"}]
        assert export["location"]["lat"] == HERE["lat"] + 2 / 1000
        assert [
            (m["from"], m.get("to"), m.get("group"), m["text"]) for m in export["messages"]
        ] == [
            ("alice", "bob", None, "meet at noon"),
            ("bob", "alice", None, "ok alice"),
            ("alice", None, "hikers", "hello hikers"),
            ("bob", None, "hikers", "hello from bob"),
        ]
        assert export["messages"][0]["client_msg_id"] == "m1"  # its own, as its devices see it
        assert [h["lat"] for h in export["history"]] == [HERE["lat"] + s / 1000 for s in range(3)]
        nobody = await server.admin.export("nobody")
        assert (nobody["friends"], nobody["messages"], nobody["history"]) == ([], [], [])


async def test_a_long_history_is_streamed_in_chunks(tmp_path: Path) -> None:
    """Over a real socket: no content-length, chunked, and whole."""
    lines = b"".join(
        orjson.dumps({"user": "walker", "lat": i / 1e4, "lon": 1.0, "ts": float(i)}) + b"\n"
        for i in range(12_000)
    )
    directory = history_dir(tmp_path)
    directory.mkdir(parents=True)
    (directory / "locations-000001.jsonl").write_bytes(lines)
    async with (
        open_server(data_dir=tmp_path, history_retention=float("inf")) as server,
        AdminClient(server.http_url) as admin,
    ):
        async with admin.http.stream("GET", "/v1/users/walker/export") as response:
            assert response.headers.get("transfer-encoding") == "chunked"
            assert "content-length" not in response.headers
            chunks = [chunk async for chunk in response.aiter_raw()]
        assert len(chunks) > 1
        export = orjson.loads(b"".join(chunks))
        assert len(export["history"]) == 12_000
        assert export["history"][-1] == {"lat": 1.1999, "lon": 1.0, "ts": 11_999.0}


async def test_on_virtual_time_a_forget_and_an_export_take_no_time(
    server: TestServer, autojump_clock: MockClock
) -> None:
    """The test server runs the history's file work inline: a MockClock never jumps in the
    middle of a forget (here a jump would be bob's 30 s grace window passing)."""
    await server.admin.befriend("alice", "bob")
    async with server.connect("alice") as alice, server.connect("bob", heartbeat=True) as bob:
        await alice.send({"type": "location", **HERE})
        await alice.request("heartbeat")
        await trio.sleep(2)  # in the history file
        before = trio.current_time()
        export = await server.admin.export("alice")
        assert len(export["history"]) == 1
        await server.admin.forget("alice")
        assert trio.current_time() == before
        assert await alice.closed() == (4001, "logged out")
        await bob.recv_type("friend_removed")
    assert list(read_history(history_dir(server.config.data_dir))) == []
