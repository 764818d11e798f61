"""Take the README's screenshot of the console: ``python -m tests.browser.make_screenshot
docs/console.png``. Runs ``geopresence demo`` on free ports, signs in as its visitor in headless
Chromium (Debian's chromium), shows people nearby, says hello in the group chat and waits for
the walkers to answer and move."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

from tests.browser.conftest import ARGS, CHROMIUM
from tests.helpers import LISTENING


def main(out: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    proc = subprocess.Popen(
        [sys.executable, "-m", "geopresence", "demo", "--port", "0", "--http-port", "0",
         "--seed", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and CHROMIUM is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if LISTENING.match(line.strip()):
            break
    threading.Thread(target=lines.extend, args=(proc.stdout,), daemon=True).start()
    found = re.search(r"console: +(\S+)", "".join(lines))
    assert found, "".join(lines)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(found[1])
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
