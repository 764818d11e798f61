"""Log output (shell): readable lines, or one JSON object per line for log collectors.

Logging never blocks the event loop. ``configure`` puts a bounded queue between the loggers
and the output: the serving thread only formats a record's message and enqueues it
(``BoundedQueueHandler``); a daemon thread (``logging.handlers.QueueListener``) writes the
lines to standard error with plain ``os.write`` calls. A reader that stops reading (a full
pipe, a paused terminal, a slow collector) blocks only that thread: once the queue is full,
new records are dropped and counted (``dropped_records()``, the metric
``geopresence_log_records_dropped_total``) and, when the output moves again, one line says
how many were lost. At exit, what is still queued gets ``EXIT_FLUSH_S`` to be written; a
reader that is still stuck then cannot hold the process.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import logging.handlers
import os
import queue
import threading
from typing import Any, Final, Literal

import orjson

LogFormat = Literal["text", "json"]
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUEUE_RECORDS: Final = 10_000
"""Records waiting for the output at most; more are dropped (and counted)."""
EXIT_FLUSH_S: Final = 2.0
"""Seconds the process waits at exit for queued records to be written."""

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is kept.
_STANDARD: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"ts": ISO-8601 UTC, "level", "logger", "message", ...extra, "exc"?}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


class BoundedQueueHandler(logging.handlers.QueueHandler):
    """Enqueue without waiting: a record that does not fit is dropped and counted."""

    def __init__(self, records: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__(records)
        self.dropped = 0
        self._exc_formatter = logging.Formatter()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Unlike the standard prepare, keep the message and the traceback apart (the JSON
        # format puts them in two fields); both become strings here, in the logging thread,
        # because the arguments may change before the writer thread gets to them.
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = self._exc_formatter.formatException(record.exc_info)
            record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class FdHandler(logging.Handler):
    """Write formatted lines to a file descriptor with ``os.write`` (no Python buffer, so
    nothing is left to flush, or to block on, at interpreter exit). Used by one thread only:
    ``handle`` takes no lock, so ``logging.shutdown`` never waits for a blocked write."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self.lost = 0
        """Records that could not be written (the output is closed or broken)."""

    def handle(self, record: logging.LogRecord) -> bool:
        if self.filter(record):
            self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "replace")
        except Exception:
            self.handleError(record)
            return
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            # The reader is gone (EPIPE, a closed descriptor): nowhere to say so either.
            self.lost += 1


class _Listener(logging.handlers.QueueListener):
    """Writes queued records; reports, once the output moves again, what was dropped."""

    def __init__(
        self, records: queue.Queue[logging.LogRecord | None], out: FdHandler, source: Any
    ) -> None:
        super().__init__(records, out)
        self.out = out
        self.source: BoundedQueueHandler = source
        self.reported = 0
        self.done = threading.Event()

    def handle(self, record: logging.LogRecord) -> None:
        self.out.handle(record)
        dropped = self.source.dropped
        if dropped > self.reported:
            lost, self.reported = dropped - self.reported, dropped
            self.out.handle(
                logging.makeLogRecord(
                    {
                        "name": "geopresence",
                        "levelno": logging.WARNING,
                        "levelname": "WARNING",
                        "msg": f"log: {lost} record(s) dropped: the log's reader was not "
                        "keeping up (geopresence_log_records_dropped_total counts them all)",
                    }
                )
            )

    def stop_within(self, seconds: float) -> bool:
        """Write what is queued, waiting at most ``seconds``; True if everything was."""
        thread = self._thread
        if thread is None:
            return True
        try:
            self.queue.put(self._sentinel, timeout=seconds)  # type: ignore[attr-defined]
        except queue.Full:
            return False
        thread.join(seconds)
        if thread.is_alive():
            return False
        self._thread = None
        return True


_active: _Listener | None = None


def dropped_records() -> int:
    """Log records dropped since ``configure`` because the output was not keeping up."""
    return 0 if _active is None else _active.source.dropped + _active.out.lost


def configure(
    level: str, fmt: LogFormat, *, fd: int = 2, queue_records: int = QUEUE_RECORDS
) -> None:
    """Send log records at ``level`` (debug/info/warning/error) in ``fmt`` to ``fd``
    (standard error), through a bounded queue and a writer thread (see the module doc)."""
    global _active
    stop()
    records: queue.Queue[logging.LogRecord | None] = queue.Queue(queue_records)
    out = FdHandler(fd)
    out.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    source = BoundedQueueHandler(records)
    listener = _Listener(records, out, source)
    root = logging.getLogger()
    root.handlers[:] = [source]
    root.setLevel(getattr(logging, level.upper()))
    listener.start()
    _active = listener


def stop(seconds: float = EXIT_FLUSH_S) -> bool:
    """Write what is queued (waiting at most ``seconds``) and stop the writer thread.
    Records logged afterwards are dropped until ``configure`` is called again."""
    global _active
    listener, _active = _active, None
    return True if listener is None else listener.stop_within(seconds)


atexit.register(stop)
