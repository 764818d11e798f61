"""``geopresence demo`` as a first-time user meets it: run the command, open the URL it prints,
sign in as the name it suggests, and see friends online and moving on the radar at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import Pages, start_demo


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("demo")
    proc, url = start_demo("--users", "5", "--seed", "4", cwd=tmp)
    yield url
    proc.terminate()
    proc.wait(15)


def test_the_demo_moves_at_once(pages: Pages, demo_url: str) -> None:
    from playwright.sync_api import expect

    page = pages.new()
    page.goto(demo_url)
    expect(page.locator("[data-signin] input[name=user]")).to_have_value("you")
    page.locator("[data-signin] button[type=submit]").click()
    expect(page.locator("[data-friend][data-status=online]").first).to_be_attached()
    dots = page.locator("[data-nearby]")
    expect(dots.first).to_be_attached()  # placed at the link's ?at= (no geolocation here)
    before = _distances(page)
    page.wait_for_timeout(2500)  # walkers report every second
    after = _distances(page)
    moved = [u for u in before.keys() & after.keys() if before[u] != after[u]]
    assert moved, (before, after)


def _distances(page: Any) -> dict[str, str]:
    result: dict[str, str] = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll("[data-nearby]")]
            .map((d) => [d.dataset.nearby, d.dataset.distanceM]))"""
    )
    return result
