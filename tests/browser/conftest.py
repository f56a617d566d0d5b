"""Browser tests: Playwright driving a real headless Chromium (Debian's package, passed as the
executable; nothing is downloaded) against a live server with the tiny model."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from app.config import Settings
from tests.live import live_server

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: "
                               "pip install -e '.[test]'")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# As the machine's probe found: without these Chromium dials Google's hosts at start.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


def _chromium() -> str | None:
    given = os.environ.get("CHROMIUM")
    if given:
        return given
    return next((found for n in CHROMIUM_NAMES if (found := shutil.which(n))), None)


# Module scope, not session: Playwright's sync API runs an event loop in this thread while it is
# open, and later tests that call asyncio.run() must not find it running.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium installed: apt-get install chromium (or set CHROMIUM to its "
                    "path); .ci/run installs it")
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where each page's screenshot goes: CONSOLE_SCREENSHOTS (docs/console refreshes the
    README's), else a temporary folder."""
    folder = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path_factory.mktemp("console"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Console:
    """A page of the console on a live server; every request it makes is recorded."""

    def __init__(self, page: Any, url: str, screenshots: Path) -> None:
        self.page, self.url, self.folder = page, url, screenshots
        self.requests: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def open(self, path: str = "/") -> Any:
        """Load `path` and wait until its view is drawn."""
        self.page.goto(self.url + path)
        return self.ready(path)

    def ready(self, path: str | None = None) -> Any:
        selector = f'body[data-ready="{path}"]' if path and path != "/" else "body[data-ready]"
        self.page.wait_for_selector(selector)
        return self.page

    def shot(self, name: str, full_page: bool = True) -> None:
        self.page.screenshot(path=str(self.folder / f"{name}.png"), full_page=full_page)

    def foreign_requests(self) -> list[str]:
        own = urlsplit(self.url).netloc
        return [u for u in self.requests
                if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).netloc != own]


@pytest.fixture
def console_for(browser: Any, screenshots: Path) -> Iterator[Callable[[Settings], Console]]:
    """console_for(settings) -> a Console on a live server of those settings. After the test:
    no request left the server's host, and no script error happened."""
    opened: list[Console] = []
    with ExitStack() as stack:

        def make(settings: Settings) -> Console:
            url = stack.enter_context(live_server(settings))
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            stack.callback(context.close)
            opened.append(Console(context.new_page(), url, screenshots))
            return opened[-1]

        yield make
    for console in opened:
        assert console.foreign_requests() == [], "the page asked another host"
        assert console.errors == [], "the page's scripts failed"
