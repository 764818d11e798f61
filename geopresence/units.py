"""Durations, sizes and distances as a person writes and reads them (``30 s``, ``64 MiB``).

Used by the command line (``geopresence serve --help`` and its flags and environment
variables) and by configuration errors. Plain functions, no I/O.
"""

from __future__ import annotations

import math
import re
from typing import Final, Literal

Unit = Literal["", "s", "B", "m", "/s"]
"""How a number is read and shown: seconds, bytes, metres, per second, or a plain count."""

_DURATIONS: Final = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
FOREVER: Final = "forever"
_SIZES: Final = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
}
_NUMBER: Final = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)\s*$")


def _split(text: str) -> tuple[str, str] | None:
    match = _NUMBER.match(text)
    return None if match is None else (match[1], match[2].lower())


def parse_duration(text: str) -> float:
    """Seconds from ``"30"``, ``"30s"``, ``"250ms"``, ``"10min"``, ``"1h"`` or ``"30d"``."""
    parts = _split(text)
    if parts is None or parts[1] not in ("", *_DURATIONS):
        raise ValueError("not a duration (seconds, or a number with ms, s, min, h or d)")
    value = float(parts[0]) * _DURATIONS.get(parts[1], 1.0)
    if not math.isfinite(value):
        raise ValueError("not a finite duration")
    return value


def parse_retention(text: str) -> float:
    """A duration of at least 0 (``parse_duration``), or ``"forever"``: ``math.inf``."""
    if text.strip().lower() == FOREVER:
        return math.inf
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"{exc}, or {FOREVER}") from None
    if value < 0:
        raise ValueError(f"must be 0 or more (or {FOREVER})")
    return value


def parse_size(text: str) -> int:
    """Bytes from ``"65536"``, ``"64KiB"``, ``"64 MiB"`` or ``"1G"`` (units of 1024)."""
    parts = _split(text)
    if parts is None or parts[1] not in _SIZES:
        raise ValueError("not a size (bytes, or a number with KiB, MiB or GiB)")
    value = float(parts[0]) * _SIZES[parts[1]]
    if not math.isfinite(value) or value != int(value):
        raise ValueError("not a whole number of bytes")
    return int(value)


def parse_number(text: str) -> float:
    """A finite number (metres, messages per second, ...)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number") from None
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("not a whole number") from None


def duration(seconds: float) -> str:
    """``"5 s"``, ``"0.5 s"``, ``"10 min"``, ``"1 h"``, ``"30 d"``, ``"forever"`` (inf)."""
    if math.isinf(seconds):
        return FOREVER
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{seconds / 86400:g} d"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 120 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def size(count: int) -> str:
    """``"64 MiB"``, ``"4 KiB"``, ``"1000 B"``: the largest binary unit that is exact."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= factor and count % factor == 0:
            return f"{count // factor} {unit}"
    return f"{count} B"


def show(value: object, unit: Unit) -> str:
    """``value`` as a person reads it, in ``unit``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if unit == "s":
        return duration(value)
    if unit == "B":
        return size(int(value))
    if unit == "m":
        return f"{value:g} m"
    if unit == "/s":
        return f"{value:g}/s"
    return f"{value:g}" if isinstance(value, float) else str(value)
