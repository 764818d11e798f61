"""The ``Journal`` seam on disk: segments of framed records, written in worker threads.

Records go to ``DATA_DIR/state/journal-<first seq>.log`` (layout in
``geopresence.storage.datadir``, frame format in ``storage.journal_format``); a new segment
starts at every snapshot, so that old ones can be deleted whole.

Writes and fsyncs run in worker threads (``trio.to_thread``), never in the event loop.
``--fsync`` has Redis' appendfsync meaning: ``always`` fsyncs before anything is
acknowledged, and every record written while one fsync runs shares the next one (group
commit); ``everysec`` acknowledges once the record is written to the OS (it survives a
crash of the process) and fsyncs once a second (an OS crash or power cut may lose the last
second); ``no`` leaves fsync to the OS.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import trio

from geopresence.model.records import Record
from geopresence.options import FsyncPolicy
from geopresence.storage.datadir import fsync_dir, journal_path, state_dir
from geopresence.storage.journal_format import FILE_MAGIC, encode_frame

log = logging.getLogger("geopresence.persistence")

RETRY_AFTER_WRITE_ERROR_S: Final = 1.0


class FileJournal:
    """The ``Journal`` seam on disk. ``append`` only buffers; ``run`` (a task) writes the
    buffer in a worker thread, fsyncs per policy, advances ``durable_seq`` and calls
    ``on_durable``. Whatever is appended while a write is in flight goes out with the next
    one, so under load one fsync covers many records (group commit)."""

    def __init__(self, data_dir: Path, policy: FsyncPolicy) -> None:
        self.directory = state_dir(data_dir)
        self.policy = policy
        self.on_durable: Callable[[], None] = lambda: None
        self._seq = 0
        self._durable = 0
        self._written = 0
        self._synced = 0
        self._frames: list[bytes] = []
        self._frames_first = 1  # seq of self._frames[0]
        self._segment_starts: list[int] = []  # pending new segments (first seqs)
        self._fd: int | None = None
        self._progress = (0, 0)  # (frames written, segment starts done) of the current batch
        self._wakeup = trio.Event()
        self._io = trio.Lock()  # one thread at a time touches the segment file
        self.fsyncs = 0
        self.bytes_written = 0
        self.write_errors = 0
        self._failing = False
        self._last_error_log = 0.0

    # The Journal protocol

    def append(self, record: Record) -> int:
        self._frames.append(encode_frame(record))
        self._seq += 1
        self._wakeup.set()
        return self._seq

    @property
    def durable_seq(self) -> int:
        return self._durable

    @property
    def last_seq(self) -> int:
        return self._seq

    # Control

    def open(self, last_seq: int) -> None:
        """Continue after ``last_seq`` in a new segment (blocking; before ``run``)."""
        self._seq = self._durable = self._written = self._synced = last_seq
        self._frames_first = last_seq + 1
        self.directory.mkdir(parents=True, exist_ok=True)
        self._open_segment(last_seq + 1)

    def start_segment(self) -> int:
        """Records appended from now on go to a new segment; returns the last seq before it
        (the ``journal_seq`` of a snapshot captured at this instant)."""
        self._segment_starts.append(self._seq + 1)
        self._wakeup.set()
        return self._seq

    async def run(self) -> None:
        """Write, fsync and advance until cancelled (then ``close`` finishes the job)."""
        async with trio.open_nursery() as nursery:
            if self.policy == "everysec":
                nursery.start_soon(self._fsync_every_second)
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                await self.flush()

    async def flush(self) -> None:
        """Write (and, with ``always``, fsync) everything appended so far; after an error,
        again every ``RETRY_AFTER_WRITE_ERROR_S`` until it works (an fsync that failed
        under ``always`` too: its records are written, and stay unacknowledged until one
        succeeds)."""
        while self._frames or self._segment_starts or self._sync_owed():
            # Shielded: a batch taken from the buffer is written and accounted for even if
            # the server is shutting down (close() then finds the buffer consistent).
            with trio.CancelScope(shield=True):
                # The batch is taken only once the file is this flush's: another one's (a
                # ``settle`` during the writer's) may still fail and be put back in front,
                # and no later record may be written, or acknowledged, before it.
                async with self._io:
                    failed = await self._write_batch()
            if failed:
                await trio.sleep(RETRY_AFTER_WRITE_ERROR_S)

    async def _write_batch(self) -> bool:
        """Write what is buffered (holding ``_io``) and account for it; True if it failed
        (what was not written is back in the buffer, in order)."""
        frames, first = self._frames, self._frames_first
        self._frames = []
        self._frames_first = first + len(frames)
        starts, self._segment_starts = self._segment_starts, []
        try:
            await trio.to_thread.run_sync(self._write, frames, first, starts)
        except OSError as exc:
            # Nothing is acknowledged that is not written: re-queue what was not written
            # and retry (what was, stays: it is never written twice).
            self.write_errors += 1
            self._log_write_error(exc)
            done, rotations = self._progress
            if done:
                self._written = max(self._written, first + done - 1)
            self._frames = frames[done:] + self._frames
            self._frames_first = first + done
            self._segment_starts = sorted(starts)[rotations:] + self._segment_starts
            return True
        if self._failing:
            log.warning("journal writes work again after %d error(s)", self.write_errors)
            self._failing = False
        self._written = max(self._written, first + len(frames) - 1)
        if self.policy == "always":
            self._synced = self._written
        self._durable = self._written
        self.on_durable()
        return False

    def _sync_owed(self) -> bool:
        return self.policy == "always" and self._written > self._durable

    async def settle(self) -> None:
        """Return once everything appended and every segment started so far is written
        (a write already under way included)."""
        await self.flush()
        async with self._io:
            pass

    async def close(self) -> None:
        """Flush, fsync (any policy) and close the segment (at shutdown)."""
        await self.flush()
        async with self._io:
            await trio.to_thread.run_sync(self._fsync_and_close)

    # Worker-thread side. The segment is a raw file descriptor (no Python buffer that could
    # keep half a batch after a failed write and write it again later).

    def _write(self, frames: list[bytes], first: int, starts: list[int]) -> None:
        """Write ``frames`` (seq ``first``...) starting new segments at ``starts``. Progress
        is recorded in ``_progress`` as it is made, so that after an error the caller
        re-queues only what was not written."""
        self._progress = (0, 0)
        position = 0
        for done, start in enumerate(sorted(starts)):
            count = max(0, min(start - first, len(frames)) - position)
            self._write_frames(frames[position : position + count])
            position += count
            self._progress = (position, done)
            if self._fd is not None:  # None: closed by a try whose new segment failed
                self._sync()
                self._close_fd()
            self._open_segment(start)
            self._progress = (position, done + 1)
        self._write_frames(frames[position:])
        self._progress = (len(frames), len(starts))
        if self.policy == "always":
            self._sync()  # failed: written, not durable; the flush loop fsyncs again

    def _write_frames(self, frames: list[bytes]) -> None:
        if not frames:
            return
        assert self._fd is not None
        data = memoryview(b"".join(frames))
        before = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            while data:
                written = os.write(self._fd, data)  # to the OS: a process crash cannot lose it
                data = data[written:]
        except OSError:
            # Cut a partial write off, so that the retry does not follow a torn frame.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, before)
            raise
        self.bytes_written += sum(len(frame) for frame in frames)

    def _sync(self) -> None:
        assert self._fd is not None
        os.fsync(self._fd)
        self.fsyncs += 1

    def _open_segment(self, first_seq: int) -> None:
        self._fd = open_segment(self.directory, first_seq)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _fsync_and_close(self) -> None:
        if self._fd is not None:
            self._sync()
            self._close_fd()

    def _log_write_error(self, exc: OSError, *, fsync_only: bool = False) -> None:
        # The first failure and then one line a minute: a full disk must not flood the log.
        now = time.monotonic()
        if not self._failing or now - self._last_error_log >= 60:
            if fsync_only:
                log.error(
                    "journal fsync failed (%d so far): %s; retrying next second (the records "
                    "are written: only an OS crash could lose them)",
                    self.write_errors,
                    exc,
                )
            else:
                log.error(
                    "journal write failed (%d so far): %s; acks wait, retrying every %g s",
                    self.write_errors,
                    exc,
                    RETRY_AFTER_WRITE_ERROR_S,
                )
            self._last_error_log = now
        self._failing = True

    async def _fsync_every_second(self) -> None:
        while True:
            await trio.sleep(1.0)
            if self._written > self._synced and self._fd is not None:
                target = self._written
                try:
                    async with self._io:
                        if self._fd is None:
                            # A new segment could not be created (a full disk): the retry
                            # creates it, and the next tick fsyncs it. (Not the shutdown:
                            # that cancels this task first.)
                            continue
                        await trio.to_thread.run_sync(self._sync)
                except OSError as exc:
                    self.write_errors += 1
                    self._log_write_error(exc, fsync_only=True)
                    continue
                self._synced = max(self._synced, target)


def append_offline(data_dir: Path, seq: int, record: Record) -> Path:
    """Without a server (``geopresence forget``): make ``record`` journal record ``seq``
    (one after the last), durably, in the segment that starts at ``seq`` (created, or the
    empty one a server left); returns the segment's path."""
    directory = state_dir(data_dir)
    path = journal_path(directory, seq)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        if os.fstat(fd).st_size < len(FILE_MAGIC):
            os.ftruncate(fd, 0)
            os.write(fd, FILE_MAGIC)
        data = memoryview(encode_frame(record))
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(directory)
    return path


def open_segment(directory: Path, first_seq: int) -> int:
    """Open (creating it, its magic fsynced) the segment whose first record is
    ``first_seq``, for appending; returns its file descriptor (blocking)."""
    path = journal_path(directory, first_seq)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size < len(FILE_MAGIC):
            # New, or cut short by a crash before its magic was complete.
            os.ftruncate(fd, 0)
            os.write(fd, FILE_MAGIC)
            os.fsync(fd)
            fsync_dir(directory)
    except OSError:
        os.close(fd)
        raise
    return fd
