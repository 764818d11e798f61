"""What ``geopresence serve`` and ``geopresence demo`` print once they listen: how to use the
server, then the ``listening`` line, last, so that a script waiting for it knows start-up (and
this text) is complete."""

from __future__ import annotations

import os

from geopresence import __version__
from geopresence.config import Config
from geopresence.demo import Place, announcement
from geopresence.shell.server import RunningServer

__all__ = ["announce_demo", "announce_serve"]


def announce_serve(running: RunningServer, *, config: Config) -> None:
    """Tell the user how to use the server; the ``listening`` line comes last, so a script
    waiting for it knows start-up (and this text) is complete."""
    data_dir = config.data_dir
    hints = [f"geopresence {__version__}: WebSocket {running.ws_url}, HTTP API {running.http_url}"]
    if config.insecure:
        hints.append(
            '  insecure mode: hello with {"type":"hello","user":"alice","device":"phone"}; '
            "no admin key needed"
        )
    else:
        token_cmd = "geopresence token USER"
        secret_file = config.secret is None and not os.environ.get("GEOPRESENCE_SECRET")
        if not secret_file:  # not in the data dir: the command needs it the same way
            token_cmd += " with this server's --secret or GEOPRESENCE_SECRET"
        elif data_dir != Config().data_dir:
            token_cmd += f" --data-dir {data_dir}"
        if secret_file and config.in_memory and not (data_dir / "secret").exists():
            token_cmd = "POST /v1/tokens with the admin key (the secret is in memory only)"
        hints.append(f"  mint a token:  {token_cmd}")
        if config.admin_key is None and not os.environ.get("GEOPRESENCE_ADMIN_KEY"):
            if config.in_memory and not (data_dir / "admin_key").exists():
                hints.append(f"  HTTP API admin key (this process only): {running.admin_key}")
            else:
                hints.append(f"  HTTP API admin key: in {data_dir / 'admin_key'}")
    hints.append("  stop: Ctrl+C (or SIGTERM)")
    print("\n".join(hints), flush=True)
    _listening(running)


def announce_demo(running: RunningServer, centre: Place) -> None:
    """How to look at the demo; the ``listening`` line last, as for ``serve``."""
    print(f"geopresence {__version__} {announcement(running, centre)}", flush=True)
    _listening(running)


def _listening(running: RunningServer) -> None:
    print(
        f"listening ws={running.host}:{running.ws_port} http={running.host}:{running.http_port}",
        flush=True,
    )
