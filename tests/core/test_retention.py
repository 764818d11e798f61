"""Which history files the retention deletes, and when it looks again (sans-I/O)."""

from __future__ import annotations

import math

from geopresence.core.retention import (
    DAY,
    HistoryFile,
    file_span,
    next_check,
    past_retention,
)

R = 30 * DAY


def test_a_file_goes_once_its_newest_record_is_retention_old() -> None:
    files = [HistoryFile(1, 100.0), HistoryFile(2, 200.0), HistoryFile(3, 300.0)]
    assert past_retention(files, 100.0 + R - 0.001, R) == []
    assert past_retention(files, 100.0 + R, R) == [1]
    assert past_retention(files, 250.0 + R, R) == [1, 2]
    assert past_retention(files, 1e12, math.inf) == []  # forever
    assert past_retention(files, 300.0, 0.0) == [1, 2, 3]  # nothing kept


def test_the_next_check_is_when_the_next_file_falls_due() -> None:
    files = [HistoryFile(2, 200.0), HistoryFile(3, 300.0)]
    assert next_check(files, None, 1000.0, R) == 200.0 + R
    # the file being written falls due when its writer has been idle that long
    assert next_check([], 500.0, 1000.0, R) == 500.0 + R
    # nothing on disk: a file closed meanwhile is due a retention from now at the earliest
    assert next_check([], None, 1000.0, R) == 1000.0 + R
    assert next_check(files, None, 1000.0, math.inf) is None
    # a file already due (the clock jumped): at once
    assert next_check(files, None, 400.0 + R, R) == 400.0 + R


def test_files_span_a_day_or_a_tenth_of_the_retention() -> None:
    assert file_span(R) == DAY
    assert file_span(3600.0) == 360.0
    assert file_span(math.inf) is None
