"""Opening the node's listening sockets (shell), and saying clearly why one cannot be."""

from __future__ import annotations

import errno
import socket

import trio

from geopresence.config import Config


class CannotListen(OSError):
    """A listener could not be opened. ``field`` is the ``Config`` field to change (``port``,
    ``http_port``, or ``host`` when the address is the problem); ``problem`` says why."""

    def __init__(self, field: str, config: Config, cause: OSError) -> None:
        port = getattr(config, field)
        if isinstance(cause, socket.gaierror):
            field, problem = "host", f"cannot resolve it ({cause.strerror})"
        elif cause.errno == errno.EADDRNOTAVAIL:
            field, problem = "host", f"not an address of this machine ({cause.strerror})"
        elif cause.errno == errno.EADDRINUSE:
            problem = "already in use (another server on it?); pick another port, or 0 for any"
        elif cause.errno == errno.EACCES:
            problem = f"no permission to listen on port {port} (below 1024 needs privileges)"
        else:
            problem = f"cannot listen on {config.host}:{port} ({cause.strerror or cause})"
        super().__init__(cause.errno, f"{field} {getattr(config, field)}: {problem}")
        self.field = field
        self.problem = problem


def lone_os_error(exc: BaseException) -> OSError | None:
    """The ``OSError`` that ``exc`` is, or is the only leaf of (through nurseries)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, OSError) else None


async def open_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """Listen on every address of ``host``. With port 0 and several addresses (``localhost``
    is ::1 and 127.0.0.1), all of them get the port the first one drew, so the one printed
    port is right for each."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    if port == 0 and len(listeners) > 1:
        chosen = listeners[0].socket.getsockname()[1]
        for listener in listeners:
            await listener.aclose()
        listeners = await trio.open_tcp_listeners(chosen, host=host)
    return listeners
