"""The browser side of the HTTP port (shell): the console, the admin view and geopresence.js.

Static files from the package's ``web/`` folder (no build step, no CDN), read once per
process, served without the admin key: they hold no secret (the admin view asks for the key
and sends it with each ``/metrics`` call). Every page gets a Content-Security-Policy that
allows only the server's own scripts and styles (no inline script or style anywhere), and
WebSocket connections only to the WebSocket port.

| Path | |
| --- | --- |
| ``/`` | the console (``index.html``) |
| ``/admin`` | the admin view (``admin.html``) |
| ``/client/geopresence.js`` | the browser client module (importable from any origin) |
| ``/console/config.json`` | what the pages need to know: the WebSocket port and path, ... |
| ``/console/NAME`` | the pages' scripts, styles and icon |
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Callable
from typing import Final

import attrs

from geopresence.config import Config
from geopresence.shell.http_routing import HttpError, Request, Response

CONTENT_TYPES: Final = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
}
PAGES: Final = {"/": "index.html", "/admin": "admin.html"}
CLIENT_MODULE: Final = "geopresence.js"

_COMMON: Final = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    # Pages and scripts change with the package: always revalidate, never serve stale.
    (b"cache-control", b"no-cache"),
)


@attrs.frozen
class Asset:
    """A response body that is not JSON: bytes, their content type, extra headers."""

    body: bytes
    content_type: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


@functools.cache
def web_files() -> dict[str, tuple[bytes, bytes]]:
    """Name -> (content, content type) of every servable file of ``geopresence/web``."""
    folder = importlib.resources.files("geopresence") / "web"
    files: dict[str, tuple[bytes, bytes]] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES:
            files[entry.name] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    return files


def content_security_policy(ws_port: int | None) -> bytes:
    """The pages' policy: own scripts and styles only (none inline), no frames, no plugins;
    WebSocket connections to the WebSocket port of any host the page was opened on (the
    page itself connects to its own host; which pages a socket accepts is the server's
    ``--allowed-origins`` check)."""
    sockets = "ws: wss:" if ws_port is None else f"ws://*:{ws_port} wss://*:{ws_port}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self' {sockets}; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ).encode()


class Console:
    """The handlers of the browser routes. ``ws_port`` reads the bound WebSocket port (None
    before the server listens: the configured one is used)."""

    def __init__(self, config: Config, ws_port: Callable[[], int | None]) -> None:
        self._config = config
        self._ws_port = ws_port

    def _port(self) -> int:
        bound = self._ws_port()
        return bound if bound is not None else self._config.port

    def page(self, request: Request) -> Response:
        name = PAGES[request.path]
        body, content_type = web_files()[name]
        headers = (
            (b"content-security-policy", content_security_policy(self._port())),
            (b"x-frame-options", b"DENY"),
            *_COMMON,
        )
        return 200, Asset(body, content_type, headers)

    def asset(self, request: Request) -> Response:
        name = request.params["name"]
        found = web_files().get(name)
        if found is None or name in PAGES.values() or name == CLIENT_MODULE:
            raise HttpError(404, "not_found", f"no such file: /console/{name}")
        return 200, Asset(found[0], found[1], _COMMON)

    def client_module(self, request: Request) -> Response:
        body, content_type = web_files()[CLIENT_MODULE]
        # A public module: web apps on other origins may import it (an ES module import
        # across origins needs CORS).
        headers = ((b"access-control-allow-origin", b"*"), *_COMMON)
        return 200, Asset(body, content_type, headers)

    def config_json(self, request: Request) -> Response:
        """What the pages cannot know by themselves: the WebSocket port and path (the page
        builds ``ws://ITS_HOST:PORT/ws``), insecure mode (sign in with a user name, no admin
        key) and the defaults the console shows. Nothing secret."""
        from geopresence import __version__  # the package imports this module first

        config = self._config
        return 200, {
            "version": __version__,
            "ws_port": self._port(),
            "ws_path": "/ws",
            "insecure": config.insecure,
            "radius_m": config.radius,
            "max_radius_m": config.max_radius,
            "heartbeat_interval": config.heartbeat_interval,
            "offline_after": config.offline_after,
        }
