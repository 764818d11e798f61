"""The journal's on-disk format (sans-I/O: bytes in, records and damage out).

A journal file (``journal-<first seq, 20 digits>.log``) is the 9-byte magic ``GPJOURN1\\n``,
then frames of

    4 bytes  payload length, unsigned big-endian
    4 bytes  CRC-32 of the payload, unsigned big-endian
    N bytes  payload: the record as a JSON object (``records.record_to_json``)

Record i of a file (from 0) has sequence number ``first seq + i``. ``scan_frames`` reads
past damage: frames are length-prefixed and checksummed, so after a damaged region it
resynchronises at the next offset where a whole frame validates, and reports every intact
frame and every damaged region (recovery tells a torn tail from corruption with it;
``geopresence repair`` keeps every intact record).
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Final

import attrs
import orjson

from geopresence.model.records import Record, record_from_json, record_to_json

FILE_MAGIC: Final = b"GPJOURN1\n"
HEADER: Final = struct.Struct(">II")
MAX_RECORD_BYTES: Final = 16 * 1024 * 1024
"""A frame claiming a longer payload is corruption, not a record (the largest real record,
a 100,000-member group, is a few MB)."""


def encode_frame(record: Record) -> bytes:
    """One framed record, ready to be appended to a journal file."""
    payload = orjson.dumps(record_to_json(record))
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@attrs.frozen
class Frame:
    """An intact frame at ``data[start:end]``. ``length_fixed``: its length field was damaged,
    but the bytes up to the next intact frame are a payload that matches its checksum (the
    record is whole; ``bytes`` re-frames it with the right length)."""

    start: int
    end: int
    record: Record
    length_fixed: bool = False

    def bytes(self, data: bytes) -> bytes:
        """This frame as it belongs in a journal file."""
        if not self.length_fixed:
            return data[self.start : self.end]
        payload = data[self.start + HEADER.size : self.end]
        return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@attrs.frozen
class Damage:
    """Damaged bytes ``data[start:end]``: ``problem`` says what was wrong at ``start``;
    ``records`` is how many records they held when that is known (0 for a damaged magic, 1
    for one whole frame that fails its checksum), else None."""

    start: int
    end: int
    problem: str
    records: int | None


@attrs.frozen
class Scan:
    """What ``scan_frames`` found, in file order: intact ``Frame``s and ``Damage``."""

    parts: list[Frame | Damage]
    size: int

    @property
    def frames(self) -> list[Frame]:
        return [part for part in self.parts if isinstance(part, Frame)]

    @property
    def damage(self) -> list[Damage]:
        return [part for part in self.parts if isinstance(part, Damage)]

    @property
    def damaged(self) -> bool:
        return any(isinstance(part, Damage) or part.length_fixed for part in self.parts)


_CANDIDATE: Final = re.compile(rb"[\x00\x01]")
"""A frame starts with its length's high byte, 0 or 1 (MAX_RECORD_BYTES is 2**24), which a
JSON payload never contains (control characters are escaped), so only these offsets can
start a frame."""


def _frame_at(data: bytes, offset: int) -> Frame | str:
    """The intact frame at ``offset``, or what is wrong with it."""
    size = len(data)
    if size - offset < HEADER.size:
        return f"torn frame header at byte {offset}"
    length, checksum = HEADER.unpack_from(data, offset)
    if length > MAX_RECORD_BYTES:
        return f"impossible frame length {length} at byte {offset}"
    end = offset + HEADER.size + length
    if end > size:
        return f"torn frame at byte {offset}"
    if length == 0:
        return f"empty frame at byte {offset}"  # zeros, as a crash can leave them
    payload = memoryview(data)[offset + HEADER.size : end]
    if zlib.crc32(payload) != checksum:
        return f"checksum mismatch at byte {offset}"
    try:
        record = record_from_json(orjson.loads(payload))
    except (orjson.JSONDecodeError, ValueError) as exc:
        return f"unreadable record at byte {offset}: {exc}"
    return Frame(offset, end, record)


def _resync(data: bytes, position: int) -> int:
    """The first offset from ``position`` where an intact frame starts (else ``len(data)``)."""
    size = len(data)
    while True:
        match = _CANDIDATE.search(data, position)
        if match is None:
            return size
        offset = match.start()
        if offset + HEADER.size + 2 > size:
            return size
        (length,) = struct.unpack_from(">I", data, offset)
        # Cheap rejections first: a payload is a JSON object of at least 2 bytes.
        if (
            2 <= length <= MAX_RECORD_BYTES
            and offset + HEADER.size + length <= size
            and data[offset + HEADER.size] == 0x7B  # "{"
            and isinstance(_frame_at(data, offset), Frame)
        ):
            return offset
        position = offset + 1


def _length_fixed(data: bytes, start: int, end: int) -> Frame | None:
    """The frame at ``start`` if only its length field is damaged: the bytes up to ``end``
    (where the next intact frame starts) are a payload matching its checksum."""
    if end - start <= HEADER.size:
        return None
    (checksum,) = struct.unpack_from(">I", data, start + 4)
    payload = memoryview(data)[start + HEADER.size : end]
    if zlib.crc32(payload) != checksum:
        return None
    try:
        record = record_from_json(orjson.loads(payload))
    except (orjson.JSONDecodeError, ValueError):
        return None
    return Frame(start, end, record, length_fixed=True)


def scan_frames(data: bytes) -> Scan:
    """Every intact frame of ``data`` (a whole journal file), reading past damage: after a
    damaged frame, reading resumes at the next offset where an intact frame starts. A
    damaged magic is reported as damage, and the frames after it are read all the same."""
    parts: list[Frame | Damage] = []
    size = len(data)
    magic = len(FILE_MAGIC)
    if not data.startswith(FILE_MAGIC):
        parts.append(Damage(0, min(magic, size), "bad magic at byte 0", 0))
    offset = magic
    while offset < size:
        found = _frame_at(data, offset)
        if isinstance(found, Frame):
            parts.append(found)
            offset = found.end
            continue
        end = _resync(data, offset + 1)
        fixed = _length_fixed(data, offset, end)
        if fixed is not None:
            parts.append(fixed)
        else:
            records: int | None = None
            if found.startswith(("checksum mismatch", "unreadable record", "empty frame")):
                (length,) = struct.unpack_from(">I", data, offset)
                if offset + HEADER.size + length == end:
                    records = 1  # one whole frame, its length intact
            parts.append(Damage(offset, end, found, records))
        offset = end
    return Scan(parts, size)
