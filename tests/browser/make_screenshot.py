"""Take the README's screenshot of the console: ``python -m tests.browser.make_screenshot
docs/console.png``. Runs ``geopresence demo`` on free ports, signs in as its visitor in headless
Chromium (Debian's chromium), shows people nearby, says hello in the group chat and waits for
the walkers to answer and move."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.browser.conftest import ARGS, CHROMIUM, start_demo


def main(out: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM is not None
    proc, url = start_demo("--seed", "5")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(url)
            page.locator("[data-signin] button[type=submit]").click()
            expect(page.locator("[data-nearby]").first).to_be_attached()
            page.locator("[data-watch-strangers]").check()
            page.locator("[data-group-form] input[name=group]").fill("walkers")
            page.locator("[data-group-form] button").click()
            page.locator("[data-composer] input[name=text]").fill("anyone near Union Square?")
            page.locator("[data-composer] input[name=text]").press("Enter")
            page.wait_for_timeout(6000)  # replies, and a few steps of walking
            page.locator("[data-composer] input[name=text]").blur()
            page.screenshot(path=str(out))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(15)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/console.png"))
