"""Reading a data dir as it is, damage included (blocking; changes nothing).

``examine`` reads the newest readable snapshot and every journal segment, reading past
damage (``geopresence.storage.journal_format.scan_frames``), numbers every intact record, and
classifies what it finds: a torn tail (the usual crash mid-write, which a start-up repairs
by itself), damage a snapshot makes harmless, and damage that costs records (a start-up
refuses; ``geopresence repair`` fixes it). Recovery (``geopresence.storage.recovery``) and
repair (``geopresence.storage.repair``) act on what it reports.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from geopresence.model.records import Record, UserForgotten
from geopresence.storage.datadir import JOURNAL_PATTERN, SNAPSHOT_PATTERN, numbered, state_dir
from geopresence.storage.journal_format import FILE_MAGIC, Damage, Frame, Scan, scan_frames
from geopresence.storage.snapshot import NewerSnapshot, Snapshot, SnapshotError, decode_snapshot


@attrs.frozen
class BadSnapshot:
    """An unreadable snapshot. ``lossless``: the snapshot used and the journal after it hold
    every record it held (so falling back loses nothing)."""

    seq: int
    path: Path
    error: str
    lossless: bool


@attrs.define
class SegmentState:
    """One journal segment as read: ``scan`` is None for an empty one (``partial_magic``:
    a crash cut its magic short); ``seqs``: the sequence number of each intact frame;
    ``counts``: records each damaged region held (as far as known: ``exact``); ``torn``: a
    torn tail (start-up truncates it); ``covered``: the snapshot used holds all of it."""

    first_seq: int
    path: Path
    scan: Scan | None
    seqs: list[int] = attrs.Factory(list)
    counts: list[int] = attrs.Factory(list)
    exact: bool = True
    partial_magic: bool = False
    torn: Damage | None = None
    covered: bool = False


@attrs.define
class Examination:
    """Everything ``examine`` read, and what it found (text, start-up refuses)."""

    snapshot: Snapshot | None = None
    snapshot_path: Path | None = None
    bad_snapshots: list[BadSnapshot] = attrs.Factory(list)
    newer: list[str] = attrs.Factory(list)
    """Snapshots and journal records a newer geopresence wrote (one line each): neither
    start-up nor repair uses or changes anything then (``DataDirCorrupt.newer``)."""
    segments: list[SegmentState] = attrs.Factory(list)
    records: list[tuple[int, Record]] = attrs.Factory(list)
    last_seq: int = 0
    found: list[tuple[str, bool]] = attrs.Factory(list)
    gaps: list[tuple[int, int]] = attrs.Factory(list)
    forgets: list[tuple[int, str]] = attrs.Factory(list)
    """(seq, user) of every intact ``user_forgotten`` record in any segment, those the
    snapshot holds included: forgets that may be unfinished (``recovery.Recovered``)."""

    @property
    def base(self) -> int:
        return 0 if self.snapshot is None else self.snapshot.journal_seq

    @property
    def corruption(self) -> list[str]:
        return [text for text, fatal in self.found if fatal]


def _assign(first: int, scan: Scan, next_first: int | None) -> tuple[list[int], list[int], bool]:
    """Sequence numbers of ``scan``'s intact frames (record i of a file is ``first + i``,
    counting the records its damaged regions held), the records each damaged region held,
    and whether those counts are exact. A region whose count is unknown holds what the next
    segment's number leaves room for (that is exact when it is the only one), else one."""
    damage = scan.damage
    unknown = sum(1 for d in damage if d.records is None)
    spare: int | None = None
    if next_first is not None:
        known = sum(d.records for d in damage if d.records is not None)
        spare = max(0, next_first - first - len(scan.frames) - known)
    seqs: list[int] = []
    counts: list[int] = []
    seq = first
    for part in scan.parts:
        if isinstance(part, Frame):
            seqs.append(seq)
            seq += 1
            continue
        if part.records is not None:
            count = part.records
        else:
            unknown -= 1
            if spare is None:
                count = 1
            elif unknown == 0:
                count = spare
            else:
                count = min(1, spare)
            if spare is not None:
                spare -= count
        counts.append(count)
        seq += count
    unknown = sum(1 for d in damage if d.records is None)
    return seqs, counts, unknown == 0 or (next_first is not None and unknown == 1)


def _damage_text(name: str, scan: Scan, part: Frame | Damage) -> str:
    after = sum(1 for p in scan.parts if isinstance(p, Frame) and p.start > part.start)
    if isinstance(part, Frame):
        what = f"damaged frame length at byte {part.start} (its record is intact)"
    else:
        what = f"{part.problem}, {part.end - part.start} byte(s) unreadable"
    return f"journal {name}: {what}, then {after} intact record(s)"


def examine(data_dir: Path, *, every_snapshot: bool = False) -> Examination:
    """Read the newest readable snapshot and every journal segment, reading past damage,
    and classify what is found (blocking; changes nothing). ``every_snapshot``: also check
    the snapshots older than the one used."""
    directory = state_dir(data_dir)
    ex = Examination()
    unreadable = _read_snapshots(directory, ex, every_snapshot)
    journal = _read_journal(directory, ex)
    _weigh_unreadable_snapshots(ex, unreadable)
    ex.found.extend(journal)
    return ex


def _read_snapshots(
    directory: Path, ex: Examination, every_snapshot: bool
) -> list[tuple[int, Path, str]]:
    """Read snapshots newest first into ``ex`` until one is readable (with
    ``every_snapshot``, all of them): the first readable one is the one used. Returns the
    unreadable ones as (journal seq in the name, path, why); those a newer geopresence wrote
    also go to ``ex.newer``."""
    unreadable: list[tuple[int, Path, str]] = []
    for seq, path in reversed(numbered(directory, SNAPSHOT_PATTERN)):
        if ex.snapshot is not None and not every_snapshot:
            break
        try:
            snapshot = decode_snapshot(path.read_bytes())
            if snapshot.journal_seq != seq:
                raise SnapshotError(f"it says journal seq {snapshot.journal_seq}")
        except SnapshotError as exc:
            if isinstance(exc, NewerSnapshot):
                ex.newer.append(f"{path.name}: {exc}")
            unreadable.append((seq, path, str(exc)))
            continue
        if ex.snapshot is None:
            ex.snapshot, ex.snapshot_path = snapshot, path
    return unreadable


def _read_journal(directory: Path, ex: Examination) -> list[tuple[str, bool]]:
    """Read every journal segment in order into ``ex`` (its segments, the records after the
    snapshot used, forgets, gaps, ``last_seq``). Returns what was found in the journal, in
    order, as (text, whether start-up refuses)."""
    base = ex.base
    last_seq = base
    journal: list[tuple[str, bool]] = []
    segments = numbered(directory, JOURNAL_PATTERN)
    for index, (first_seq, path) in enumerate(segments):
        last = index + 1 == len(segments)
        next_first = None if last else segments[index + 1][0]
        segment = _read_segment(first_seq, path, next_first)
        ex.segments.append(segment)
        scan = segment.scan
        if scan is None:
            continue
        seqs = segment.seqs
        expected = last_seq + 1
        if seqs and first_seq > expected and first_seq > base + 1:
            ex.gaps.append((expected, first_seq - 1))
            journal.append(
                (
                    f"journal gap: {path.name} starts at record {first_seq} but the journal "
                    f"before it ends at record {expected - 1}: records {expected}.."
                    f"{first_seq - 1} are in no file",
                    True,
                )
            )
        for seq, frame in zip(seqs, scan.frames, strict=True):
            if seq > base:
                ex.records.append((seq, frame.record))
            if isinstance(frame.record, UserForgotten):
                ex.forgets.append((seq, frame.record.user))
        if seqs:
            last_seq = max(last_seq, seqs[-1])
        if not scan.damaged:
            continue
        # Every record of a segment that the next one starts within the snapshot's reach is
        # in the snapshot: damage there costs nothing (as long as that snapshot is readable).
        segment.covered = (
            ex.snapshot_path is not None and next_first is not None and next_first <= base + 1
        )
        journal.extend(_classify_damage(ex, segment, scan, last))
    ex.last_seq = last_seq
    return journal


def _read_segment(first_seq: int, path: Path, next_first: int | None) -> SegmentState:
    """Read the segment at ``path`` (its first record is ``first_seq``; the next segment's
    is ``next_first``, None for the last one), reading past damage."""
    data = path.read_bytes()
    if FILE_MAGIC.startswith(data):
        # Created, but a crash came before (or during) its magic: an empty segment.
        partial = 0 < len(data) < len(FILE_MAGIC)
        return SegmentState(first_seq, path, None, partial_magic=partial)
    scan = scan_frames(data)
    seqs, counts, exact = _assign(first_seq, scan, next_first)
    return SegmentState(first_seq, path, scan, seqs, counts, exact)


def _classify_damage(
    ex: Examination, segment: SegmentState, scan: Scan, last: bool
) -> list[tuple[str, bool]]:
    """What the damage in ``segment`` (read as ``scan``; ``last``: the newest segment) is,
    one (text, whether start-up refuses) per damaged region or re-framed record: a torn
    tail (kept as ``segment.torn``), damage the snapshot used makes harmless (``covered``),
    or records lost. Records of a kind this version does not know also go to ``ex.newer``."""
    name = segment.path.name
    found: list[tuple[str, bool]] = []
    for part in scan.parts:
        if isinstance(part, Frame) and not part.length_fixed:
            continue
        if isinstance(part, Damage) and "unknown record kind" in part.problem:
            # Whole (its checksum holds) but of a kind this version does not know.
            ex.newer.append(f"{name}: {part.problem}, written by a newer geopresence")
        if (
            last
            and isinstance(part, Damage)
            and part.end == scan.size
            and part.start >= len(FILE_MAGIC)
            and not part.problem.startswith("unreadable record")
        ):
            # A torn tail, the usual crash mid-write: nothing intact after it. (A frame
            # that passes its checksum but is no record it knows was written whole.)
            segment.torn = part
            kept = sum(1 for p in scan.parts if isinstance(p, Frame))
            found.append(
                (
                    f"journal {name}: {part.problem}; keeping the {kept} good "
                    f"record(s) before byte {part.start} and dropping "
                    f"{part.end - part.start} byte(s)",
                    False,
                )
            )
            continue
        text = _damage_text(name, scan, part)
        if segment.covered and ex.snapshot_path is not None:
            found.append(
                (
                    f"{text}; not needed ({ex.snapshot_path.name} holds all of that "
                    "segment): left as is (geopresence repair rewrites it)",
                    False,
                )
            )
        else:
            found.append((text, True))
    return found


def _weigh_unreadable_snapshots(ex: Examination, unreadable: list[tuple[int, Path, str]]) -> None:
    """Add each unreadable snapshot to ``ex.bad_snapshots`` (lossless when the journal
    reaches its seq) and, when it held records no other file holds, to ``ex.found`` (fatal).
    Needs ``ex.last_seq``: call after ``_read_journal``."""
    last_seq = ex.last_seq
    for seq, path, error in unreadable:
        lossless = seq <= last_seq
        ex.bad_snapshots.append(BadSnapshot(seq, path, error, lossless))
        if seq > ex.base and not lossless:
            ex.found.append(
                (
                    f"snapshot {path.name} is unreadable ({error}), and records "
                    f"{last_seq + 1}..{seq} are in no other file",
                    True,
                )
            )
