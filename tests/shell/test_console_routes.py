"""The browser's routes on the HTTP port (shell/console): served without the admin key, with
their content types and security headers; the admin API around them unchanged."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from trio.testing import MockClock

from geopresence.shell.console import web_files
from geopresence.shell.http_api import HttpApi
from geopresence.testing import TestServer, open_server

ADMIN_KEY = "admin-key-for-tests-0123456789"


@pytest.fixture
async def secure() -> AsyncIterator[TestServer]:
    async with open_server(insecure=False, admin_key=ADMIN_KEY, secret="s" * 40) as server:
        yield server


def raw_client(server: TestServer) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=HttpApi(server.running.server))
    return httpx.AsyncClient(base_url="http://test", transport=transport)


async def test_pages_are_served_without_the_key(
    secure: TestServer, autojump_clock: MockClock
) -> None:
    ws_port = secure.running.ws_port
    async with raw_client(secure) as http:
        for path, marker in (("/", b"data-signin"), ("/admin", b"data-admin-signin")):
            page = await http.get(path)
            assert page.status_code == 200, path
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert marker in page.content
            policy = page.headers["content-security-policy"]
            assert "default-src 'none'" in policy and "script-src 'self'" in policy
            assert f"connect-src 'self' ws://*:{ws_port} wss://*:{ws_port}" in policy
            assert "unsafe" not in policy and "frame-ancestors 'none'" in policy
            assert page.headers["x-content-type-options"] == "nosniff"
        module = await http.get("/client/geopresence.js")
        assert module.headers["content-type"] == "text/javascript; charset=utf-8"
        assert module.headers["access-control-allow-origin"] == "*"  # importable elsewhere
        assert b"export class GeoPresence" in module.content
        for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css"),
                           ("icon.svg", "image/svg+xml")):  # fmt: skip
            asset = await http.get(f"/console/{name}")
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        head = await http.head("/")
        assert head.status_code == 200


async def test_config_tells_the_page_what_it_cannot_know(
    secure: TestServer, autojump_clock: MockClock
) -> None:
    async with raw_client(secure) as http:
        config = (await http.get("/console/config.json")).json()
    assert config == {
        "version": "0.1.0",
        "ws_port": secure.running.ws_port,  # the bound port (the config says 0)
        "ws_path": "/ws",
        "insecure": False,
        "radius_m": 8046.72,
        "max_radius_m": 50000.0,
        "heartbeat_interval": 5.0,
        "offline_after": 30.0,
    }


async def test_unknown_files_and_the_admin_api_are_as_before(
    secure: TestServer, autojump_clock: MockClock
) -> None:
    async with raw_client(secure) as http:
        for path in ("/console/nope.js", "/console/index.html", "/console/geopresence.js"):
            missing = await http.get(path)
            assert (missing.status_code, missing.json()["error"]) == (404, "not_found"), path
        assert (await http.get("/console/configXjson")).status_code == 404  # dots are dots
        assert (await http.post("/")).status_code == 405  # public: no key needed to say so
        assert (await http.get("/index.html")).status_code == 401  # not a page: no mapping
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/v1/users/a")).status_code == 401


def test_pages_have_no_inline_script_or_style() -> None:
    """What the CSP forbids is not there to begin with (a browser would refuse it)."""
    for name in ("index.html", "admin.html"):
        html = web_files()[name][0].decode()
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [], name
        assert "<style" not in html and " style=" not in html, name
        assert re.search(r"\son[a-z]+=", html) is None, name  # no onclick= handlers
        assert "http://" not in html.replace('"http://www.w3.org', ""), name  # no CDN
    for name, (content, _) in web_files().items():
        if name.endswith(".js"):
            text = content.decode()
            assert "eval(" not in text and "new Function" not in text, name
            assert re.search(r"localStorage(\.\w|\[)", text) is None, name  # sessionStorage only
