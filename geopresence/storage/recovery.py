"""Recovery: what a start-up (or an offline tool) rebuilds from a data dir (blocking).

``recover`` reads the newest readable snapshot and the journal after it (``examine``). A
torn tail, a half-written segment magic and an unreadable snapshot that the journal makes up
for are repaired by a start-up itself; any other damage makes it refuse (``DataDirCorrupt``)
without changing anything, and ``geopresence repair`` (``geopresence.storage.repair``) fixes
it offline. ``rebuild`` loads what was read into a ``DurableState``: the snapshot, then the
journal records after it.

A forget's to-do marker is its ``user_forgotten`` record: whoever finishes the forget (its
history scrubbed, every older snapshot deleted) deletes the record's segment last, and no
pruning deletes it before (``datadir.prune``'s ``keep_from``). So a record still on disk,
even in a segment the snapshot holds, is a forget that may be unfinished: ``Recovered.forgotten``.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import attrs

from geopresence.core.state import DurableState
from geopresence.model.records import Record
from geopresence.storage.datadir import CORRUPT_DIR, keep_aside, truncate_segment
from geopresence.storage.examine import BadSnapshot, Examination, examine
from geopresence.storage.snapshot import Snapshot, restore


class DataDirCorrupt(Exception):
    """The data dir holds damage that start-up may not repair (anything but a torn tail)
    without losing or changing data: it refuses, having changed nothing, and says to run
    ``geopresence repair``. ``problems``: every such damage, one line each."""

    def __init__(self, data_dir: Path, problems: list[str], *, newer: bool = False) -> None:
        self.data_dir = data_dir
        self.problems = problems
        self.newer = newer
        """A newer geopresence wrote it (``problems`` say which files): not damage, and
        ``repair`` would set sound data aside; the newer version reads it."""
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        if newer:
            advice = (
                "run the geopresence version that wrote it (geopresence repair refuses it: "
                "the files are sound)"
            )
        else:
            advice = (
                f"run geopresence repair --data-dir {shlex.quote(str(data_dir))} (it keeps a "
                "copy of every file it changes)"
            )
        super().__init__(
            f"{data_dir}: {problems[0]}{more}; refusing to use it, so that nothing is lost (no "
            f"file was changed): {advice}"
        )

    @classmethod
    def of(cls, data_dir: Path, newer: list[str], corruption: list[str]) -> DataDirCorrupt | None:
        """The refusal a start-up makes for what ``examine`` found, if any: files of a newer
        version first (repairing would lose them), else damage."""
        if newer:
            return cls(data_dir, newer, newer=True)
        return cls(data_dir, corruption) if corruption else None


@attrs.define
class Recovered:
    """What a data dir holds: the snapshot used (None: start empty), the journal records
    after it as (seq, record), the last sequence number, and problems found (log lines).
    ``corruption``: the problems that make a start-up refuse (then ``records`` are every
    intact record, as ``geopresence repair`` would keep them)."""

    snapshot: Snapshot | None
    records: list[tuple[int, Record]]
    last_seq: int
    problems: list[str] = attrs.Factory(list)
    snapshot_path: Path | None = None
    corruption: list[str] = attrs.Factory(list)
    forgets: list[tuple[int, str]] = attrs.Factory(list)
    """(seq, user) of every ``user_forgotten`` record in any segment (``Examination``)."""
    newer: list[str] = attrs.Factory(list)
    """What a newer geopresence wrote (``Examination.newer``): a start-up refuses."""

    @property
    def forgotten(self) -> dict[str, int]:
        """The users whose forget may be unfinished (a record of it is still on disk, behind
        the snapshot or after it), each with the seq of its first such record: a start-up
        scrubs their history and purges the older files again (both idempotent)."""
        first: dict[str, int] = {}
        for seq, user in self.forgets:
            first.setdefault(user, seq)
        return first

    @property
    def keep_from(self) -> int | None:
        """The first record no pruning may delete (the oldest forget marker), if any."""
        return min((seq for seq, _ in self.forgets), default=None)


def _fallback_text(ex: Examination, bad: BadSnapshot, moved: str) -> str:
    if bad.seq < ex.base:
        return f"snapshot {bad.path.name} is unreadable ({bad.error}); {moved}; not needed"
    using = "the whole journal" if ex.snapshot_path is None else ex.snapshot_path.name
    return (
        f"snapshot {bad.path.name} unreadable ({bad.error}); {moved}; using {using} and the "
        "journal after it, which hold every record it held"
    )


def recover(data_dir: Path, *, repair: bool) -> Recovered:
    """Read the newest readable snapshot and the journal after it (blocking: call it in a
    thread). ``repair`` is a start-up: if the data dir holds damage other than a torn tail
    that costs records (``examine``), it raises ``DataDirCorrupt`` having changed nothing;
    else it truncates a torn tail, resets a half-written magic and moves an unreadable
    snapshot that the journal makes up for to ``DATA_DIR/corrupt/``. Without ``repair``
    nothing is changed (``geopresence inspect``)."""
    ex = examine(data_dir)
    corruption = ex.corruption
    refusal = DataDirCorrupt.of(data_dir, ex.newer, corruption)
    if repair and refusal is not None:
        raise refusal
    problems: list[str] = []
    for bad in ex.bad_snapshots:
        if not bad.lossless:
            continue  # in ``corruption``
        if repair:
            moved = f"moved to {keep_aside(data_dir, bad.path, move=True)}"
        else:
            moved = f"a start-up moves it to {data_dir / CORRUPT_DIR}/"
        problems.append(_fallback_text(ex, bad, moved))
    problems.extend(text for text, _ in ex.found)
    if repair:
        for segment in ex.segments:
            if segment.partial_magic:
                truncate_segment(segment.path, 0)
            elif segment.torn is not None:
                truncate_segment(segment.path, segment.torn.start)
    return Recovered(
        ex.snapshot,
        ex.records,
        ex.last_seq,
        problems,
        ex.snapshot_path,
        corruption,
        ex.forgets,
        ex.newer,
    )


def rebuild(state: DurableState, recovered: Recovered) -> None:
    """Load what ``recover`` read into a fresh state: the snapshot, then the journal after
    it."""
    if recovered.snapshot is not None:
        restore(state, recovered.snapshot)
    for _, record in recovered.records:
        state.apply(record)


def load_offline(data_dir: Path, *, repair: bool) -> tuple[DurableState, Recovered]:
    """The durable state of ``data_dir``, rebuilt without a server (blocking; the offline
    tools). ``repair`` as for ``recover``."""
    recovered = recover(data_dir, repair=repair)
    state = DurableState()
    rebuild(state, recovered)
    return state, recovered
