"""Text sizes in the contract's unit (a value helper)."""

from __future__ import annotations


def utf8_len(text: str | bytes) -> int:
    """The size of ``text`` in UTF-8 bytes (the contract measures frames and chat texts so);
    ``bytes`` are already that. Lone surrogates count as their 3-byte encoding."""
    return len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
