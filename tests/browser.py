"""Real headless Chromium for the browser tests (the `browser` fixture of conftest.py).

Debian's chromium (/usr/bin/chromium, installed by scripts/setup.sh) driven by Playwright's async
API: no browser is ever downloaded. Every page a test opens is watched: a console error or an
uncaught exception fails the test when it ends, unless the test allowed it first (an expected
400, say: Chromium logs every 4xx answer to fetch() as a console error). A screenshot of every
page is kept under artifacts/screenshots/ (git-ignored), named after the test.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

from conftest import REPO
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Error,
    Page,
    async_playwright,
)

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "artifacts" / "screenshots"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 375, "height": 740}


class Pages:
    """What a browser test drives: `open(url)` gives a watched page; all share one context
    (one localStorage), so a reload or a second page sees what the first kept.

    Args:
        browser (Browser): the launched Chromium.
        context (BrowserContext): the browser context the pages share.
        name (str): the test's name as a file name, for the screenshots.
    """

    def __init__(self, browser: Browser, context: BrowserContext, name: str) -> None:
        self.browser = browser
        self.context = context
        self.name = name
        self.pages: list[Page] = []
        self.errors: list[str] = []
        self.allowed: list[re.Pattern[str]] = []
        self.shots = 0

    def allow(self, pattern: str) -> None:
        """Lets console errors matching this regex pass (say `status of 400`)."""
        self.allowed.append(re.compile(pattern))

    def _error(self, text: str) -> None:
        if not any(p.search(text) for p in self.allowed):
            self.errors.append(text)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self._error(f"console error: {message.text} (at {message.location.get('url')})")

    async def open(self, url: str, *, phone: bool = False) -> Page:
        """A new watched page showing url (at a phone's width when `phone`)."""
        page = await self.context.new_page()
        if phone:
            await page.set_viewport_size(PHONE)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self._error(f"uncaught exception: {error}"))
        self.pages.append(page)
        await page.goto(url)
        return page

    async def screenshot(self, page: Page, label: str) -> Path:
        """Saves a full-page screenshot as artifacts/screenshots/TEST-N-LABEL.png."""
        self.shots += 1
        path = SCREENSHOTS / f"{self.name}-{self.shots}-{label}.png"
        await page.screenshot(path=path, full_page=True)
        return path

    def check(self) -> None:
        """Fails on every console error and uncaught exception not allowed."""
        if self.errors:
            raise AssertionError("the pages reported errors:\n  " + "\n  ".join(self.errors))


def _prepare(name: str) -> None:
    """Checks for Chromium; drops the screenshots of this test's last run."""
    if not CHROMIUM.is_file():
        raise AssertionError(f"{CHROMIUM} is missing: run scripts/setup.sh (apt-get chromium)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    last_run = re.compile(rf"{re.escape(name)}-\d+-")
    for old in SCREENSHOTS.glob(f"{name}-*.png"):
        if last_run.match(old.name):
            old.unlink()


@contextlib.asynccontextmanager
async def chromium_pages(test_name: str) -> AsyncIterator[Pages]:
    """Launches Chromium, yields Pages; on exit screenshots every open page, closes the
    browser and fails on the errors the pages reported."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", test_name).strip("-")  # parametrized ids too
    _prepare(name)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1100, "height": 800})
            pages = Pages(browser, context, name)
            yield pages
            for page in pages.pages:
                if not page.is_closed():
                    with contextlib.suppress(Error):
                        await pages.screenshot(page, "end")
        finally:
            await browser.close()
    pages.check()
