"""The journal's on-disk format: framing, checksums, torn tails, every record kind."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geopresence.core.journal import MemoryJournal
from geopresence.model.chat_message import ChatMessage
from geopresence.model.records import (
    Befriended,
    GroupDeleted,
    GroupSet,
    MemberAdded,
    MemberRemoved,
    Record,
    SettingsChanged,
    Unfriended,
    record_from_json,
    record_to_json,
)
from geopresence.storage.journal_format import (
    FILE_MAGIC,
    HEADER,
    Damage,
    encode_frame,
    scan_frames,
)

EVERY_KIND: list[Record] = [
    Befriended("alice", "bob"),
    Unfriended("alice", "bob"),
    GroupSet("g", ["alice", "bob"], 7),
    GroupDeleted("g"),
    MemberAdded("g", "carol", 9),
    MemberRemoved("g", "carol"),
    SettingsChanged("alice", False, 1200.5, True),
    SettingsChanged("bob", True, None, False),
    ChatMessage(11, "alice", "hi 👋", 1.5, to="bob", client_msg_id="k"),
    ChatMessage(12, "bob", "", 2.0, group="g"),
]


def journal_bytes(records: list[Record]) -> bytes:
    return FILE_MAGIC + b"".join(encode_frame(r) for r in records)


def test_every_record_kind_round_trips() -> None:
    for record in EVERY_KIND:
        assert record_from_json(record_to_json(record)) == record
    scan = scan_frames(journal_bytes(EVERY_KIND))
    assert [f.record for f in scan.frames] == EVERY_KIND and not scan.damaged
    assert scan.frames[-1].end == scan.size == len(journal_bytes(EVERY_KIND))


def test_unknown_or_malformed_records_are_refused() -> None:
    bad_records: list[object] = [
        {"t": "nope"},
        {"t": "befriended", "a": "x"},
        [],
        {"t": "message", "m": [1]},
    ]
    for bad in bad_records:
        with pytest.raises(ValueError):
            record_from_json(bad)


def test_bad_magic_and_impossible_lengths() -> None:
    assert scan_frames(b"garbage").damage[0] == Damage(0, 7, "bad magic at byte 0", 0)
    huge = FILE_MAGIC + b"\xff\xff\xff\xff\x00\x00\x00\x00"
    [damage] = scan_frames(huge).damage
    assert "impossible frame length" in damage.problem


@given(position=st.integers(min_value=0, max_value=10_000), flip=st.integers(1, 255))
def test_scanning_reads_past_a_flipped_byte_and_keeps_every_other_record(
    position: int, flip: int
) -> None:
    data = bytearray(journal_bytes(EVERY_KIND))
    position %= len(data)
    data[position] ^= flip
    scan = scan_frames(bytes(data))
    [damage] = [p for p in scan.parts if isinstance(p, Damage) or p.length_fixed]
    records = [f.record for f in scan.frames]
    if position < len(FILE_MAGIC):
        assert damage == Damage(0, len(FILE_MAGIC), "bad magic at byte 0", 0)
        assert records == EVERY_KIND  # a damaged magic hides nothing
    elif isinstance(damage, Damage):
        # one record lost, exactly the one whose bytes were hit
        assert damage.start <= position < damage.end and damage.records in (1, None)
        assert len(records) == len(EVERY_KIND) - 1
        assert all(r in EVERY_KIND for r in records)
    else:
        assert records == EVERY_KIND  # only a length field was hit: the record is whole
        assert damage.start <= position < damage.start + 4


def test_scanning_re_frames_a_record_whose_length_field_is_damaged() -> None:
    data = bytearray(journal_bytes(EVERY_KIND))
    second = len(FILE_MAGIC) + len(encode_frame(EVERY_KIND[0]))
    data[second + 1] ^= 0x10
    scan = scan_frames(bytes(data))
    fixed = scan.frames[1]
    assert fixed.length_fixed and fixed.record == EVERY_KIND[1]
    assert fixed.bytes(bytes(data)) == encode_frame(EVERY_KIND[1])
    length, _ = HEADER.unpack_from(data, second)
    assert length != len(fixed.bytes(bytes(data))) - HEADER.size


@given(cut=st.integers(min_value=0, max_value=10_000))
def test_a_torn_tail_is_one_damaged_region_up_to_the_end(cut: int) -> None:
    data = journal_bytes(EVERY_KIND)
    cut = len(FILE_MAGIC) + cut % (len(data) - len(FILE_MAGIC))
    scan = scan_frames(data[:cut])
    assert [f.record for f in scan.frames] == EVERY_KIND[: len(scan.frames)]
    good_end = len(journal_bytes(EVERY_KIND[: len(scan.frames)]))
    if cut == good_end:
        assert scan.damage == []
    else:
        [damage] = scan.damage
        assert (damage.start, damage.end) == (good_end, cut)


def test_zeros_and_garbage_are_damage_not_records() -> None:
    data = journal_bytes(EVERY_KIND[:2]) + b"\x00" * 300 + journal_bytes(EVERY_KIND[2:])[9:]
    scan = scan_frames(data)
    assert [f.record for f in scan.frames] == EVERY_KIND
    [damage] = scan.damage
    assert damage.end - damage.start == 300 and damage.records is None
    assert scan_frames(b"garbage").frames == []


def test_memory_journal_is_durable_at_once_and_continues_a_sequence() -> None:
    journal = MemoryJournal(last_seq=41)
    assert journal.append(Befriended("a", "b")) == 42
    assert journal.durable_seq == 42
