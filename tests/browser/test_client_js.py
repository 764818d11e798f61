"""geopresence.js's own tests, run in headless Chromium: ``js/client_test.js`` on a page
served from this folder by a static file server on loopback, which imports
``/client/geopresence.js`` from a geopresence server on another origin (as a web app would,
the server allowing that origin with ``--allowed-origins``). One pytest case per JS test.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import Pages, Served, serve, static_site

JS = Path(__file__).parent / "js"
NAMES = re.findall(r'^test\(\s*"([^"]+)"', (JS / "client_test.js").read_text(), re.M)
# Tests declared in a loop (close codes) have a template name: listed by hand.
NAMES += [f"close {code} ({why}) stops reconnecting" for code, why in
          ((4001, "logged out"), (4002, "replaced"), (1008, "refused"))]  # fmt: skip


@pytest.fixture(scope="module")
def web_app() -> Iterator[str]:
    """The origin of a static web app (this folder) on loopback."""
    with static_site(JS) as origin:
        yield origin


@pytest.fixture(scope="module")
def js_server(web_app: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = serve(
        tmp_path_factory.mktemp("js"), "--insecure", "--allowed-origins", f"self,{web_app}"
    )
    yield served
    served.stop()


@pytest.fixture(scope="module")
def results(browser: Any, js_server: Served, web_app: str) -> dict[str, dict[str, Any]]:
    """Run the whole JS suite once: test name -> {ok, error, ms}."""
    pages = Pages(browser)
    try:
        page = pages.new()
        js_server.befriend("jsA", "jsB")
        query = f"http={js_server.http_url}&ws={js_server.ws_url}&a=jsA&b=jsB"
        page.goto(f"{web_app}/index.html?{query}")
        # The module sets __results after its top-level await (the import), maybe after
        # "load": wait for it, then for the suite.
        page.wait_for_function("window.__results !== undefined", timeout=30_000)
        outcome: list[dict[str, Any]] = page.evaluate("window.__results", None)
        assert pages.errors == [], pages.errors
    finally:
        pages.close()
    return {result["name"]: result for result in outcome}


def test_the_suite_is_collected() -> None:
    assert len(NAMES) == len(set(NAMES)) >= 20, NAMES


@pytest.mark.parametrize("name", NAMES)
def test_geopresence_js(results: dict[str, dict[str, Any]], name: str) -> None:
    assert name in results, f"not run: {name} (ran: {sorted(results)})"
    result = results[name]
    assert result["ok"], result["error"]
