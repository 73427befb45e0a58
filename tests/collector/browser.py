"""A real headless Chromium for the collector's page tests: Playwright driving Debian's
/usr/bin/chromium (the Makefile's DEB_PACKAGES), never a browser Playwright downloads.

- `needs_chromium`: the mark that skips a module when Debian's Chromium is not installed;
- `chromium()`: one launched browser (a module's tests share it: a launch costs seconds);
- `log_in(page, name, password)`: the login form filled and sent as a person does;
- `EXPECT_MS`: how long Playwright's auto-waiting expectations (and a test's pages, with
  ``context.set_default_timeout``) wait: long, for a busy machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EXPECT_MS = 60_000

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not installed")


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (a playwright.sync_api.Browser), closed on exit."""
    from playwright.sync_api import expect, sync_playwright  # lazy: only the browser tests

    expect.set_options(timeout=EXPECT_MS)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


def log_in(page: Any, name: str, password: str) -> None:
    """Fill the login form on the page shown and send it."""
    page.fill("#name", name)
    page.fill("#password", password)
    page.click("#login")
    page.wait_for_load_state()
