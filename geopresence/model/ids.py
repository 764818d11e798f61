"""Identifier rules shared by the wire protocol and the HTTP API.

User, device and group ids are 1..64 characters of ``[A-Za-z0-9_.@-]`` (docs/protocol.md,
Conventions). Checking them in one place keeps every entry point equally strict.
"""

from __future__ import annotations

import re

ID_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
"""What a user, device or group id may look like (full match)."""


def id_problem(value: object, what: str) -> str | None:
    """Describe why ``value`` is not a valid id (None when it is valid).

    ``what`` names the field for the message, e.g. ``"device"``.
    """
    if not isinstance(value, str):
        return f"{what} must be a string"
    if ID_PATTERN.fullmatch(value) is None:
        return f"{what} must be 1..64 characters of [A-Za-z0-9_.@-]"
    return None
