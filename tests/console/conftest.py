"""The web console in headless Chromium (Debian's ``chromium``), driven by Playwright.

One server (uvicorn in a thread, SQLite, the suite's nats-server, the demo LLM slowed to 30 ms a
token so streaming is visible) and one browser serve every test of the directory; the browser
reaches the server through a TCP proxy the tests can cut. Each test gets fresh browser contexts
(so its own sessionStorage) and its own tenants. Screenshots go to ``artifacts/console/``
(gitignored), and so does one of every page open when a test fails. Without
``/usr/bin/chromium`` these tests fail: they never skip.
"""

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, ViewportSize, sync_playwright

from kgents.config import Settings
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.console.proxy import CuttableProxy
from tests.support.servers import server_in_thread

CHROMIUM = Path(os.environ.get("KGENTS_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "console"
TOKEN_DELAY_MS = 30
WIDE: ViewportSize = {"width": 1280, "height": 900}
NARROW: ViewportSize = {"width": 390, "height": 844}
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Console:
    """The server as the browser sees it (through the proxy) and as the test reaches it."""

    url: str
    api_url: str
    proxy: CuttableProxy
    settings: Settings

    def tenant_key(self, name: str = "acme", plan: str = "pro") -> tuple[str, str]:
        """A new tenant and a key for it, through the admin API: (tenant id, key)."""
        with httpx.Client(base_url=self.api_url, headers=ADMIN_HEADERS, timeout=10) as client:
            tenant = client.post("/v1/tenants", json={"name": name, "plan": plan})
            assert tenant.status_code == 201, tenant.text
            key = client.post(f"/v1/tenants/{tenant.json()['id']}/keys", json={"name": "e2e"})
            assert key.status_code == 201, key.text
            return tenant.json()["id"], key.json()["key"]

    def messages(self, key: str, session_id: str) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.api_url}/v1/kgent/sessions/{session_id}/messages",
            headers={"X-API-Key": key},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        messages: list[dict[str, Any]] = response.json()["messages"]
        return messages


@dataclass
class PageProblems:
    """What a page must not do: throw, or break its Content-Security-Policy."""

    errors: list[str] = field(default_factory=list)

    def console(self, message: ConsoleMessage) -> None:
        text = message.text
        if "Content Security Policy" in text or "Refused to" in text:
            self.errors.append(f"console: {text}")

    def page_error(self, error: Exception) -> None:
        self.errors.append(f"uncaught: {error}")


# Module scope, not session: a running app also runs the shared ``metering`` consumer, which
# would take usage events published by the apps of later tests.
@pytest.fixture(scope="module")
def console_settings(tmp_path_factory: pytest.TempPathFactory, nats_url: str) -> Settings:
    base = tmp_path_factory.mktemp("console")
    return make_settings(
        base / "data",
        f"sqlite:///{base / 'kgents.db'}",
        nats_url,
        demo_token_delay_ms=TOKEN_DELAY_MS,
    )


@pytest.fixture(scope="module")
def console(console_settings: Settings) -> Iterator[Console]:
    with server_in_thread(console_settings) as api_url:
        port = urlsplit(api_url).port
        assert port is not None
        with CuttableProxy(port) as proxy:
            yield Console(url=proxy.url, api_url=api_url, proxy=proxy, settings=console_settings)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Module scope: Playwright's sync API keeps an event loop running in this thread while it
    # is open, which would break every asyncio test collected after the console tests.
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the console tests need Debian's Chromium "
            "(apt-get install -y chromium); they do not skip"
        )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


_OPEN_PAGES: list[Page] = []


def save_failure(page: Page) -> None:
    """Screenshot of a page as a test failed (``artifacts/console/failed-<test>-<n>.png``)."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "unknown").split("::")[-1].split(" ")[0]
    with contextlib.suppress(Exception):  # a crashed or closed page has nothing to show
        for n in range(100):
            path = ARTIFACTS / f"failed-{test}-{n}.png"
            if not path.exists():
                page.screenshot(path=str(path), full_page=True)
                return


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        for page in list(_OPEN_PAGES):
            save_failure(page)
    return report


@contextmanager
def browser_page(browser: Browser, viewport: ViewportSize) -> Iterator[Page]:
    """A page in a fresh context (its own sessionStorage); fails on a JS or CSP error."""
    context = browser.new_context(viewport=viewport)
    context.set_default_timeout(15_000)
    page = context.new_page()
    problems = PageProblems()
    page.on("console", problems.console)
    page.on("pageerror", problems.page_error)
    _OPEN_PAGES.append(page)
    try:
        yield page
    except BaseException:
        save_failure(page)
        raise
    finally:
        _OPEN_PAGES.remove(page)
        context.close()
    assert not problems.errors, problems.errors


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with browser_page(browser, WIDE) as page:
        yield page


@pytest.fixture
def narrow_page(browser: Browser) -> Iterator[Page]:
    """A phone-sized page (390 x 844)."""
    with browser_page(browser, NARROW) as page:
        yield page


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as an artifact (``artifacts/console/<name>.png``)."""
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Page, console: Console | str, secret: str, *, admin: bool = False) -> None:
    """Sign in on the console's server (or on the server at the URL ``console``)."""
    page.goto((console if isinstance(console, str) else console.url) + "/")
    if admin:
        page.get_by_label("Administrator, with the admin token").check()
        page.get_by_label("Admin token", exact=True).fill(secret)
    else:
        page.get_by_label("API key", exact=True).fill(secret)
    page.get_by_role("button", name="Sign in").click()
    landing = "Administration" if admin else "Sessions"
    page.get_by_role("heading", name=landing).wait_for()


def create_session(page: Page, title: str, *, mode: str = "reflect") -> str:
    """Create a session from the chat's form; returns its id (from the URL)."""
    page.get_by_label("Title of a new session").fill(title)
    page.locator("#new-mode").select_option(mode)
    page.get_by_role("button", name="New session").click()
    page.get_by_role("heading", name=title, level=2).wait_for()
    page.wait_for_url("**/#/chat/*")
    return page.url.rsplit("/", 1)[1]


def record_reply_text(page: Page) -> None:
    """Record every text the last reply shows while it streams (``window.__snapshots``)."""
    page.evaluate(
        """() => {
            window.__snapshots = [];
            const box = document.getElementById("messages");
            new MutationObserver(() => {
                const replies = box.querySelectorAll("article.msg-assistant .msg-text");
                const last = replies[replies.length - 1];
                if (last) window.__snapshots.push(last.textContent);
            }).observe(box, { childList: true, subtree: true, characterData: true });
        }"""
    )


def recorded_reply_text(page: Page) -> list[str]:
    snapshots: list[str] = page.evaluate("() => window.__snapshots")
    return snapshots


def send(page: Page, text: str) -> None:
    box = page.get_by_label("Message to K-gent")
    box.fill(text)
    box.press("Enter")
