"""Snapshots and replay: state -> snapshot -> state is the identity, and replaying the
journal rebuilds exactly the live state."""

from __future__ import annotations

import zlib
from typing import Any

import attrs
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopresence.core.hub import Hub, HubSettings
from geopresence.core.state import DurableState
from geopresence.core.store import MemoryStore
from geopresence.model.chat_message import ChatMessage
from geopresence.model.records import Record, SettingsChanged, converter
from geopresence.storage import snapshot as snapshot_module
from geopresence.storage.snapshot import (
    SNAPSHOT_VERSION,
    Snapshot,
    SnapshotError,
    capture,
    decode_snapshot,
    encode_snapshot,
    header,
    payload_chunks,
    restore,
)
from geopresence.wire.client_messages import Send, SettingsUpdate
from tests.helpers import RecordingSink

USERS = ["ann", "ben", "cat", "dan", "eve"]
GROUPS = ["g1", "g2"]


class RecordingJournal:
    def __init__(self) -> None:
        self.records: list[Record] = []

    def append(self, record: Record) -> int:
        self.records.append(record)
        return len(self.records)

    @property
    def durable_seq(self) -> int:
        return len(self.records)


_send = st.tuples(
    st.just("send"),
    st.sampled_from(USERS),
    st.one_of(st.sampled_from(USERS), st.sampled_from(GROUPS).map(lambda g: "#" + g)),
    st.text(max_size=12),
    st.one_of(st.none(), st.sampled_from(["k1", "k2"])),
)

step = st.one_of(
    _send,
    _send,
    st.tuples(st.just("befriend"), st.sampled_from(USERS), st.sampled_from(USERS)),
    st.tuples(st.just("unfriend"), st.sampled_from(USERS), st.sampled_from(USERS)),
    st.tuples(st.just("set_group"), st.sampled_from(GROUPS), st.sets(st.sampled_from(USERS))),
    st.tuples(st.just("delete_group"), st.sampled_from(GROUPS)),
    st.tuples(st.just("add_member"), st.sampled_from(GROUPS), st.sampled_from(USERS)),
    st.tuples(st.just("remove_member"), st.sampled_from(GROUPS), st.sampled_from(USERS)),
    st.tuples(
        st.just("settings"),
        st.sampled_from(USERS),
        st.one_of(st.none(), st.booleans()),
        st.one_of(st.none(), st.floats(min_value=1, max_value=50_000)),
    ),
    st.tuples(
        st.just("send"),
        st.sampled_from(USERS),
        st.one_of(st.sampled_from(USERS), st.sampled_from(GROUPS).map(lambda g: "#" + g)),
        st.text(max_size=12),
        st.one_of(st.none(), st.sampled_from(["k1", "k2"])),
    ),
)


def run(steps: list[tuple[Any, ...]]) -> tuple[Hub, RecordingJournal]:
    journal = RecordingJournal()
    hub = Hub(HubSettings(), MemoryStore(), RecordingSink(), journal=journal)
    for conn, user in enumerate(USERS, start=1):
        hub.open_session(conn, user, "d", now=0)
    # A populated start, so that most random steps change something.
    for a, b in (("ann", "ben"), ("ann", "cat"), ("ben", "cat"), ("dan", "eve")):
        hub.membership.add_friendship(a, b, 0)
    hub.membership.set_group("g1", ["ann", "ben", "cat"])
    hub.membership.set_group("g2", ["dan"])
    now = 1.0
    for kind, *args in steps:
        now += 0.25
        try:
            if kind == "befriend":
                hub.membership.add_friendship(args[0], args[1], now)
            elif kind == "unfriend":
                hub.membership.remove_friendship(args[0], args[1])
            elif kind == "set_group":
                hub.membership.set_group(args[0], args[1])
            elif kind == "delete_group":
                hub.membership.delete_group(args[0])
            elif kind == "add_member":
                hub.membership.add_member(args[0], args[1])
            elif kind == "remove_member":
                hub.membership.remove_member(args[0], args[1])
            elif kind == "settings":
                user, share, radius = args
                update = SettingsUpdate(share_location=share, radius_m=radius)
                hub.handle(USERS.index(user) + 1, update, now)
            else:
                sender, target, text, key = args
                fields = {"group": target[1:]} if target.startswith("#") else {"to": target}
                message = Send(text=text, client_msg_id=key, **fields)
                hub.handle(USERS.index(sender) + 1, message, now)
        except Exception as exc:  # refused steps (self-friendship, missing group) are fine
            if type(exc).__name__ not in ("ProtocolError", "BulkError"):
                raise
    return hub, journal


def fresh() -> DurableState:
    return DurableState()


def snap(hub: Hub, journal_seq: int, now: float) -> Snapshot:
    """What the server writes: the durable state and the messages still on their way."""
    return capture(hub.state, journal_seq, now, hub.chat.pending_messages())


def comparable(snapshot: Snapshot) -> Snapshot:
    """Order-insensitive form (friendship pairs and settings come in dict order)."""
    return attrs.evolve(
        snapshot,
        created_at=0.0,
        friendships=sorted(tuple(sorted(pair)) for pair in snapshot.friendships),  # type: ignore[misc]
        settings=sorted(snapshot.settings, key=lambda s: s.user),
    )


@settings(max_examples=300)
@given(st.lists(step, max_size=40))
def test_state_to_snapshot_to_state_is_the_identity(steps: list[tuple[Any, ...]]) -> None:
    hub, journal = run(steps)
    taken = snap(hub, len(journal.records), now=123.0)
    # The hand-written encoding is the generic one's, byte for byte, and decodes the same.
    assert b"".join(payload_chunks(taken)) == orjson.dumps(converter.unstructure(taken))
    decoded = decode_snapshot(encode_snapshot(taken))
    assert decoded == taken
    assert decoded == converter.structure(converter.unstructure(taken), Snapshot)
    restored = fresh()
    restore(restored, decoded)
    assert comparable(capture(restored, decoded.journal_seq, 123.0)) == comparable(taken)
    # the restored hub answers like the original
    for user in USERS:
        groups = restored.users.groups_of(user)
        assert set(groups) == set(hub.store.groups_of(user))
        assert restored.chat.sync(user, groups, 0, 1000) == hub.chat.store.sync(
            user, groups, 0, 1000
        )
    assert restored.ids.last_id >= hub.chat.ids.last_id


@settings(max_examples=300)
@given(st.lists(step, max_size=40), st.integers(min_value=0, max_value=40))
def test_snapshot_plus_journal_replay_rebuilds_the_live_state(
    steps: list[tuple[Any, ...]], split: int
) -> None:
    """A snapshot taken after the first ``split`` steps plus the records after it (what a
    restart reads) gives the same state as the live hub."""
    hub_before, journal_before = run(steps[:split])
    hub, journal = run(steps)
    assert journal.records[: len(journal_before.records)] == journal_before.records
    base = snap(hub_before, len(journal_before.records), 0.0)
    rebuilt = fresh()
    restore(rebuilt, decode_snapshot(encode_snapshot(base)))
    for record in journal.records[len(journal_before.records) :]:
        rebuilt.apply(record)
    assert comparable(capture(rebuilt, 0, 0.0)) == comparable(snap(hub, 0, 0.0))
    nothing_before = fresh()
    for record in journal.records:
        nothing_before.apply(record)
    assert comparable(capture(nothing_before, 0, 0.0)) == comparable(snap(hub, 0, 0.0))


def test_corrupt_truncated_and_newer_snapshots_are_refused() -> None:
    data = encode_snapshot(Snapshot(created_at=1.0, journal_seq=3, last_message_id=9))
    assert decode_snapshot(data).journal_seq == 3
    flipped = bytearray(data)
    flipped[-3] ^= 0x20
    for bad, complaint in (
        (bytes(flipped), "checksum"),
        (data[:-5], "truncated"),
        (b"nope", "bad magic"),
    ):
        with pytest.raises(SnapshotError, match=complaint):
            decode_snapshot(bad)
    newer = encode_snapshot(
        Snapshot(version=SNAPSHOT_VERSION + 1, created_at=1, journal_seq=1, last_message_id=0)
    )
    with pytest.raises(SnapshotError, match="newer than this geopresence reads"):
        decode_snapshot(newer)


def test_older_versions_are_migrated_step_by_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The migration rule: a version-v payload goes through MIGRATIONS[v], v+1, ..."""
    old = encode_snapshot(Snapshot(created_at=1.0, journal_seq=5, last_message_id=0))
    calls: list[int] = []

    def to_2(payload: dict[str, Any]) -> dict[str, Any]:
        calls.append(payload["version"])
        return {**payload, "journal_seq": payload["journal_seq"] + 100}

    monkeypatch.setattr(snapshot_module, "SNAPSHOT_VERSION", SNAPSHOT_VERSION + 1)
    monkeypatch.setitem(snapshot_module.MIGRATIONS, SNAPSHOT_VERSION, to_2)
    migrated = decode_snapshot(old)
    assert calls == [SNAPSHOT_VERSION]
    assert migrated.journal_seq == 105 and migrated.version == SNAPSHOT_VERSION + 1


def test_a_version_without_a_migration_is_a_snapshot_error() -> None:
    ancient = encode_snapshot(Snapshot(version=0, created_at=1, journal_seq=1, last_message_id=0))
    with pytest.raises(SnapshotError, match="no migration from snapshot version 0"):
        decode_snapshot(ancient)


@pytest.mark.parametrize("count", [0, 1, 4, 5, 9])
def test_messages_are_encoded_in_chunks_that_join_into_one_array(
    count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot_module, "MESSAGES_PER_CHUNK", 2)
    messages = [
        ChatMessage(n, "ann", f"text {n}", 1.5 * n, to="ben", client_msg_id=f"k{n}")
        if n % 2
        else ChatMessage(n, "ben", "", 2.0, group="g1")
        for n in range(1, count + 1)
    ]
    taken = Snapshot(
        created_at=1.0,
        journal_seq=7,
        last_message_id=count,
        friendships=[("ann", "ben")],
        groups={"g1": {"ann": 0, "ben": 1}},
        settings=[SettingsChanged("ann", False, None, True)],
        messages=messages,
    )
    assert len(list(payload_chunks(taken))) == 2 + (count + 1) // 2
    assert b"".join(payload_chunks(taken)) == orjson.dumps(converter.unstructure(taken))
    assert decode_snapshot(encode_snapshot(taken)) == taken


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("journal_seq", "3"),
        ("journal_seq", True),
        ("friendships", [["ann"]]),
        ("friendships", [["ann", 5]]),
        ("groups", {"g": {"ann": "0"}}),
        ("messages", [[1, "ann", "hi", 1.0, "ben", None]]),
        ("messages", [["1", "ann", "hi", 1.0, "ben", None, None]]),
        ("messages", [[1, "ann", "hi", "soon", "ben", None, None]]),
        ("messages", {"1": []}),
    ],
)
def test_a_payload_of_the_wrong_shape_is_a_snapshot_error(field: str, value: Any) -> None:
    payload = converter.unstructure(Snapshot(created_at=1.0, journal_seq=3, last_message_id=0))
    payload[field] = value
    data = orjson.dumps(payload)
    with pytest.raises(SnapshotError, match="does not match version"):
        decode_snapshot(snapshot_module.header(len(data), zlib.crc32(data)) + data)


def test_a_payload_over_4_gib_gets_a_header() -> None:
    """The length field keeps the low 32 bits: a state of ~32 million messages can still be
    snapshotted (it raised struct.error, so every snapshot failed), and every version
    reads the header as before."""
    assert header(2**32 + 10, 7) == b"GPSNAP1\n" + (10).to_bytes(4, "big") + (7).to_bytes(4, "big")
    data = encode_snapshot(capture(DurableState(), journal_seq=1, now=0.0))
    assert data[8:12] == (len(data) - 16).to_bytes(4, "big")  # small ones as ever
    with pytest.raises(SnapshotError, match=r"truncated snapshot: \d+ payload bytes, the header"):
        decode_snapshot(data[:-1])
