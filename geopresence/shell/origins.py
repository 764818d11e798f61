"""Which web pages may open a WebSocket (shell): the ``Origin`` check of the opening handshake.

Browsers send ``Origin`` on every WebSocket handshake and let any page open a socket to any
host, so without this check a page on another site could drive a session from a visitor's
browser. Clients that are not browsers send no ``Origin`` (and could send any): they always
pass; their hello is what authenticates them.

``--allowed-origins`` (``Config.allowed_origins``) lists what passes: ``*`` (any page), exact
origins (``https://app.example.com``), and ``self``, the console's own pages: an
``http(s)://HOST:HTTP_PORT`` origin where ``HTTP_PORT`` is the port the HTTP API is bound
to, ``HOST`` is the host the WebSocket request was addressed to (its ``Host`` header) and is an
IP address, ``localhost`` or the configured ``--host``. A host *name* is only trusted when it is
``--host`` itself: any other name could be an attacker's, pointed at this machine by DNS
(rebinding), and would pass a same-host test.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from typing import Final

from geopresence.options import (
    ANY_ORIGIN,
    SELF_ORIGIN,
    normalize_origin,
    origin_problem,
)

LOCAL_NAMES: Final = frozenset({"localhost"})


def _host_of(authority: str) -> str | None:
    """The host of a ``Host`` header (``127.0.0.1:8765``, ``[::1]:8765``, ``name``),
    lower case and without brackets; None if it is not one."""
    try:
        parts = urllib.parse.urlsplit("//" + authority.strip())
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return None
    return parts.hostname


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class OriginPolicy:
    """Decides, per opening handshake, whether its ``Origin`` may connect.

    ``http_port`` is the bound HTTP port, set by the server once it listens (None until
    then: no page of this server can exist yet, so ``self`` matches nothing)."""

    def __init__(self, allowed: tuple[str, ...], host: str) -> None:
        self.any = ANY_ORIGIN in allowed
        self.self = SELF_ORIGIN in allowed
        self.exact = frozenset(o for o in allowed if o not in (SELF_ORIGIN, ANY_ORIGIN))
        self.host = host.strip("[]").lower()
        self.http_port: int | None = None

    def refusal(self, origins: list[str], host_header: str | None) -> str | None:
        """Why a handshake with these ``Origin`` header values (usually none or one) and
        this ``Host`` may not connect; None when it may."""
        if not origins:
            return None  # not a browser
        if len(origins) > 1:
            return "more than one Origin header"
        origin = origins[0]
        if self.any:
            return None
        if origin_problem(origin) is None:
            normalized = normalize_origin(origin)
            if normalized in self.exact or (self.self and self._is_self(normalized, host_header)):
                return None
        return f"origin {origin[:200]!r} may not connect (see --allowed-origins)"

    def _is_self(self, origin: str, host_header: str | None) -> bool:
        parts = urllib.parse.urlsplit(origin)
        if parts.scheme not in ("http", "https") or self.http_port is None:
            return False
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = parts.hostname
        if port != self.http_port or host is None or host_header is None:
            return False
        if _host_of(host_header) != host:
            return False  # a page of another host than the one this socket was opened to
        return _is_address(host) or host in LOCAL_NAMES or host == self.host
