"""Browser-test fixtures: the real server (engine.server.create_app) on a free 127.0.0.1 port with
the test plugins, and headless Debian Chromium driven by playwright. Each page fails its test on a
console error, an uncaught exception or a failed (>= 400) request, unless the test expects it."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "web"
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--no-first-run", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str:
    for candidate in (os.environ.get("LATENTGRAPH_CHROMIUM"), *CHROMIUM_CANDIDATES):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("Debian's chromium is missing: run `make setup-browser` (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """The real aiohttp app served from a background thread with its own event loop."""

    def __init__(self, base_dir: Path) -> None:
        from engine.config import Settings
        from engine.plugins import PluginHost
        from engine.server import create_app

        from tests.web.webnodes import BrokenPlugin, WebTestPlugin

        self.settings = Settings(base_dir=base_dir, load_entry_points=True, cache="none")
        self.settings.ensure_dirs()
        self.host = PluginHost(entry_points=True, plugins=[WebTestPlugin(), BrokenPlugin()])
        self.host.load()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._create_app = create_app
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="web-test-server", daemon=True)

    def _serve(self) -> None:
        from aiohttp import web

        asyncio.set_event_loop(self._loop)

        async def start() -> web.AppRunner:
            app = self._create_app(self.settings, host=self.host)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            return runner

        try:
            self.runner = self._loop.run_until_complete(start())
        except BaseException as error:  # reported to the test thread
            self._error = error
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.runner.cleanup())

    def start(self) -> LiveServer:
        self._thread.start()
        self._started.wait(60)
        if self._error is not None:
            raise RuntimeError(f"the server did not start: {self._error!r}") from self._error
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("webserver")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield b
        b.close()


class PageProblems:
    """Console errors, page errors and failed requests seen by one page."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.allowed_statuses: set[tuple[str, int]] = set()

    def allow(self, path_fragment: str, status: int) -> None:
        self.allowed_statuses.add((path_fragment, status))

    def on_console(self, message: Any) -> None:
        if message.type != "error":
            return
        url = (message.location or {}).get("url", "")
        expected = message.text.startswith("Failed to load resource") and any(f in url for f, _ in self.allowed_statuses)
        if not expected:
            self.errors.append(f"console: {message.text} ({url})")

    def on_response(self, response: Any) -> None:
        if response.status >= 400 and not any(f in response.url and s == response.status for f, s in self.allowed_statuses):
            self.errors.append(f"HTTP {response.status} {response.request.method} {response.url}")


@pytest.fixture()
def editor(browser: Any, live_server: LiveServer, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context on the editor, ready (node types loaded, default workflow open)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page = context.new_page()
    problems = PageProblems()
    page.on("console", problems.on_console)
    page.on("pageerror", lambda e: problems.errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.errors.append(f"request failed: {r.url} {r.failure}"))
    page.on("response", problems.on_response)
    page.problems = problems
    page.server = live_server
    page.goto(live_server.url + "/")
    page.wait_for_selector("body[data-ready=true]", timeout=30000)
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"))
    context.close()
    assert not problems.errors, "browser problems:\n" + "\n".join(problems.errors)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session", autouse=True)
def _clean_artifacts() -> None:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
