"""Error codes, the ``ProtocolError`` a client message can raise, request ids, and the
WebSocket close codes of the contract (wire layer)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

ErrorCode = Literal[
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "rate_limited",
    "too_large",
    "no_location",
    "internal",
]

RequestId = int | float | str | None
"""The ``id`` a client may put on a request; echoed as ``re`` on the reply."""

MAX_SAFE_INTEGER: Final = 2**53 - 1
MAX_REQUEST_ID_CHARS: Final = 128
"""A string request id longer than this is refused: it is echoed on every reply."""


CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_TRY_AGAIN_LATER: Final = 1013
"""Several nodes: the session could not start because Redis did not answer (an extension)."""
CLOSE_HEARTBEAT_TIMEOUT: Final = 4000
CLOSE_LOGGED_OUT: Final = 4001
CLOSE_REPLACED: Final = 4002
CLOSE_SLOW_CONSUMER: Final = 4008

CLOSE_REASONS: Final[Mapping[int, str]] = {
    CLOSE_GOING_AWAY: "server shutting down",
    CLOSE_HEARTBEAT_TIMEOUT: "heartbeat timeout",
    CLOSE_LOGGED_OUT: "logged out",
    CLOSE_REPLACED: "replaced by a newer connection",
    CLOSE_SLOW_CONSUMER: "slow consumer",
}
"""The reason sent with each close code the server closes with for one cause only (1008,
1009 and 1013 say what went wrong; a 4008 for rate limit abuse says so)."""


class ProtocolError(Exception):
    """A client message that cannot be accepted.

    ``code`` is the wire error code, ``message`` a human explanation, ``re`` the request id
    of the offending message when it could be read (None otherwise).
    """

    def __init__(self, code: ErrorCode, message: str, re: RequestId = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.re = re
