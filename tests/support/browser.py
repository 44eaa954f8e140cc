"""Looking at a page as a person would: Debian's Chromium, headless, driven by playwright (the Makefile installs
the package when it is missing). `browser_page()` opens one page that records what it fetched and every console
error or page error, so a test can say that nothing else was loaded and nothing failed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


@dataclass
class Watched:
    page: Any
    problems: list[str] = field(default_factory=list)  # console errors and page errors
    fetched: list[str] = field(default_factory=list)  # every URL the page requested


@contextmanager
def browser_page(width: int = 1400, height: int = 900) -> Iterator[Watched]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: `apt-get install -y chromium` (see the Makefile)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            watched = Watched(page)
            page.on("console", lambda m: watched.problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: watched.problems.append(str(e)))
            page.on("request", lambda r: watched.fetched.append(r.url))
            yield watched
        finally:
            browser.close()
