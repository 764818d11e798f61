"""Browser tests: headless Chromium from Debian's ``chromium`` package, driven by Playwright.

No browser is ever downloaded (never ``playwright install``): ``.ci/run`` installs chromium
with apt, ``pip install -e '.[dev]'`` installs playwright. Without either, every test here is
skipped with the reason; with both, they run. One browser per module, a context (its own
storage, like another person's browser) per signed-in user, servers as subprocesses on
loopback (``geopresence serve``, as a person runs it).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import itertools
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.helpers import LISTENING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Two pages side by side must both keep their heartbeats on time.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]
HEARTBEAT = 0.5
OFFLINE_AFTER = 3.0
"""Short, so that a test can wait past the grace window to show nothing happened."""
ADMIN_KEY = "browser-test-admin-key-0123456789"
SECRET = "browser-test-secret-0123456789abcdef"
TIMEOUT_MS = 10_000


class Served:
    """A ``geopresence serve`` subprocess: its URLs and an HTTP client with the admin key."""

    def __init__(self, proc: subprocess.Popen[str], ws_port: int, http_port: int, key: str | None):
        self.proc = proc
        self.ws_port = ws_port
        self.http_port = http_port
        self.ws_url = f"ws://127.0.0.1:{ws_port}/ws"
        self.http_url = f"http://127.0.0.1:{http_port}"
        self.admin_key = key
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.http_url, headers=headers, timeout=10)
        self.output: list[str] = []

    def befriend(self, a: str, b: str) -> None:
        self.http.put(f"/v1/friendships/{a}/{b}").raise_for_status()

    def token(self, user: str) -> str:
        response = self.http.post("/v1/tokens", json={"user": user, "ttl": 600})
        response.raise_for_status()
        return str(response.json()["token"])

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_demo(*flags: str, cwd: Path | None = None) -> tuple[subprocess.Popen[str], str]:
    """Start ``geopresence demo`` on free ports with ``flags``; return the process (terminate
    it when done) and the console URL it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "geopresence", "demo", "--port", "0", "--http-port", "0", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if LISTENING.match(line.strip()):
            break
    threading.Thread(target=lines.extend, args=(proc.stdout,), daemon=True).start()
    found = re.search(r"console: +(\S+)", "".join(lines))
    if found is None:
        proc.terminate()
        raise AssertionError("".join(lines))
    return proc, found[1]


def serve(tmp: Path, *flags: str, key: str | None = None) -> Served:
    """Start ``geopresence serve`` on free loopback ports; its output is drained by a thread
    (a full pipe would block the server)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if key is not None:
        env |= {"GEOPRESENCE_ADMIN_KEY": key, "GEOPRESENCE_SECRET": SECRET}
    timings = ["--heartbeat-interval", str(HEARTBEAT), "--offline-after", str(OFFLINE_AFTER)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "geopresence", "serve", "--port", "0", "--http-port", "0",
         "--in-memory", "--data-dir", str(tmp / "data"), *timings, *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        match = LISTENING.match(line.strip())
        if match:
            served = Served(proc, int(match["wp"]), int(match["hp"]), key)
            served.output = lines
            threading.Thread(target=lines.extend, args=(proc.stdout,), daemon=True).start()
            return served
    proc.kill()
    raise AssertionError("server did not print its listening line:\n" + "".join(lines))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def static_site(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on loopback (another origin than the server's): its origin."""
    handler = functools.partial(_Quiet, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """An --insecure server (sign in with a user name), shared by a module's tests: each
    test uses its own user names (``names``)."""
    served = serve(tmp_path_factory.mktemp("insecure"), "--insecure")
    yield served
    served.stop()


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server with tokens and an admin key."""
    served = serve(tmp_path_factory.mktemp("secure"), key=ADMIN_KEY)
    yield served
    served.stop()


_numbers = itertools.count(1)


@pytest.fixture
def names() -> Any:
    """``names("alice", "bob")`` -> user ids no other test of the run uses."""
    n = next(_numbers)
    return lambda *bases: tuple(f"{base}{n}" for base in bases)


class Pages:
    """A test's browser contexts, closed at its end; page errors fail the test."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[BrowserContext] = []
        self.errors: list[str] = []

    def new(self, **options: Any) -> Page:
        """A page in a new context (a person of its own); CSP violations are recorded in
        ``window.__csp``."""
        context = self.browser.new_context(viewport={"width": 1280, "height": 860}, **options)
        context.set_default_timeout(TIMEOUT_MS)
        context.add_init_script(
            "window.__csp = []; document.addEventListener('securitypolicyviolation',"
            " (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
        )
        self.contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: self.errors.append(f"{page.url}: {error}"))
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def pages(browser: Browser) -> Iterator[Pages]:
    opened = Pages(browser)
    yield opened
    opened.close()
    assert opened.errors == [], "JavaScript errors on the page"


def sign_in(page: Page, served: Served, *, user: str | None = None, token: str | None = None,
            query: str = "") -> Page:  # fmt: skip
    """Open the console and sign in; returns once the page shows the user signed in."""
    from playwright.sync_api import expect

    page.goto(f"{served.http_url}/{query}")
    form = page.locator("[data-signin]")
    if user is not None:
        form.locator("input[name=user]").fill(user)
    else:
        form.locator("input[name=token]").fill(token or "")
    form.locator("button[type=submit]").click()
    expect(page.locator("[data-connection-pill]")).to_have_attribute("data-state", "open")
    return page
