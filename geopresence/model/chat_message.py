"""A chat message as stored, journaled and delivered (a value type)."""

from __future__ import annotations

from typing import Final

import attrs

MAX_TEXT_BYTES: Final = 4096
"""The largest ``text`` the protocol accepts, in UTF-8 bytes."""


@attrs.frozen(slots=True)
class ChatMessage:
    """One stored message. Exactly one of ``to`` (1:1) and ``group`` is set.

    ``created_at`` is Unix epoch seconds on the server's clock; ``client_msg_id`` is the
    sender's de-duplication key (shown only to the sender's own devices).
    """

    message_id: int
    sender: str
    text: str
    created_at: float
    to: str | None = None
    group: str | None = None
    client_msg_id: str | None = None

    def readers(self) -> tuple[str, ...]:
        """The users whose 1:1 inbox holds this message (empty for a group message)."""
        if self.to is None:
            return ()
        return (self.sender,) if self.to == self.sender else (self.sender, self.to)
