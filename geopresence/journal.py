"""The durability seam and the journal's on-disk format (sans-I/O).

The hub appends a record (``geopresence.records``) for every change it must not lose and
acknowledges the change only once the journal says it is durable. ``MemoryJournal`` is the
seam's in-memory implementation (``--in-memory``, and tests of the core): a record is
"stored under the configured durability" as soon as it is in memory. The file journal of
the shell (``geopresence.persistence.FileJournal``) writes the format below.

Format of a journal file (``journal-<first seq, 20 digits>.log``): the 9-byte magic
``GPJOURN1\\n``, then frames of

    4 bytes  payload length, unsigned big-endian
    4 bytes  CRC-32 of the payload, unsigned big-endian
    N bytes  payload: the record as a JSON object (``records.record_to_json``)

Record i of a file (from 0) has sequence number ``first seq + i``. A crash mid-write leaves
a torn last frame: ``decode_frames`` stops at the first frame that is incomplete or fails its
checksum and reports how many bytes were good, so the reader can truncate there.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final, Protocol

import attrs
import orjson

from geopresence.records import Record, record_from_json, record_to_json

FILE_MAGIC: Final = b"GPJOURN1\n"
HEADER: Final = struct.Struct(">II")
MAX_RECORD_BYTES: Final = 16 * 1024 * 1024
"""A frame claiming a longer payload is corruption, not a record (the largest real record,
a 100,000-member group, is a few MB)."""


class Journal(Protocol):
    """An append-only log of durable changes.

    Contract:
    - ``append(record)`` never blocks and returns the record's sequence number: one more
      than the previous record's (the first record of a fresh journal gets 1).
    - ``durable_seq`` is the highest sequence number such that it and every record before it
      survive a crash under the configured policy. It only grows.
    - When ``durable_seq`` grows other than inside ``append`` (a background flush), the
      owner calls ``Hub.journal_advanced(now)`` so the hub can acknowledge what became durable.
    """

    def append(self, record: Record) -> int: ...

    @property
    def durable_seq(self) -> int: ...


class MemoryJournal:
    """Keeps nothing: without persistence, memory is the configured durability."""

    def __init__(self, last_seq: int = 0) -> None:
        self._seq = last_seq

    def append(self, record: Record) -> int:
        self._seq += 1
        return self._seq

    @property
    def durable_seq(self) -> int:
        return self._seq


def encode_frame(record: Record) -> bytes:
    """One framed record, ready to be appended to a journal file."""
    payload = orjson.dumps(record_to_json(record))
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@attrs.frozen
class Decoded:
    """What ``decode_frames`` read: the good ``records``, the byte offset where they end,
    and ``problem`` (None when the data ended exactly after a good frame)."""

    records: list[Record]
    good_end: int
    problem: str | None


def decode_frames(data: bytes, start: int = len(FILE_MAGIC)) -> Decoded:
    """Read frames from ``data`` (a whole journal file) starting at byte ``start``."""
    if not data.startswith(FILE_MAGIC):
        return Decoded([], 0, "not a geopresence journal (bad magic)")
    records: list[Record] = []
    offset = start
    size = len(data)
    while offset < size:
        if size - offset < HEADER.size:
            return Decoded(records, offset, f"torn frame header at byte {offset}")
        length, checksum = HEADER.unpack_from(data, offset)
        if length > MAX_RECORD_BYTES:
            return Decoded(records, offset, f"impossible frame length {length} at byte {offset}")
        end = offset + HEADER.size + length
        if end > size:
            return Decoded(records, offset, f"torn frame at byte {offset}")
        payload = data[offset + HEADER.size : end]
        if zlib.crc32(payload) != checksum:
            return Decoded(records, offset, f"checksum mismatch at byte {offset}")
        try:
            records.append(record_from_json(orjson.loads(payload)))
        except (orjson.JSONDecodeError, ValueError) as exc:
            return Decoded(records, offset, f"unreadable record at byte {offset}: {exc}")
        offset = end
    return Decoded(records, offset, None)
