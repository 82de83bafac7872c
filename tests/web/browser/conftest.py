"""Browser tests: Debian's Chromium driven by Playwright against a real ``forgehall serve``.

The browser is ``/usr/bin/chromium`` (``make test`` installs Debian's package); the tests
never download one. Mail goes to a real SMTP relay (aiosmtpd) in the test process, so
login codes and invitation links are read from the messages the server sent.
Screenshots of the main pages go to ``artifacts/screenshots/`` (not committed).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.conftest import PostgresTemplates, run_in_thread
from tests.identity.conftest import RecordingHandler
from tests.process import ServerProcess, base_env, free_port, run_cli

CHROMIUM = os.environ.get("FORGEHALL_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[3] / "artifacts" / "screenshots"
# What a headless Chromium needs on a machine without a display or internet (as root).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

pytestmark = pytest.mark.slow


# Playwright's sync API runs its own event loop in this thread, so these tests use no
# async fixtures (pytest-asyncio's loop would collide with it): the database comes from
# a plain fixture that clones the PostgreSQL template on a thread of its own.


@pytest.fixture
def browser_database_url(backend: str, request: pytest.FixtureRequest) -> Iterator[str]:
    if backend == "sqlite":
        yield request.getfixturevalue("sqlite_database_url")
        return
    templates: PostgresTemplates = request.getfixturevalue("pg_templates")
    url: str = run_in_thread(templates.clone)
    yield url
    run_in_thread(lambda: templates.drop(url))


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
            "(`make test` installs it; or apt-get install chromium)"
        )
    with sync_playwright() as driver:
        launched = driver.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@dataclass
class Mailbox:
    handler: RecordingHandler
    port: int

    def texts(self, to: str) -> list[str]:
        return [
            str(r.message.get_content())
            for r in self.handler.received
            if to.lower() in [t.lower() for t in r.rcpt_tos]
        ]

    def wait_for(self, to: str, pattern: str, after: int = 0, timeout: float = 15) -> str:
        """The first match of ``pattern`` in a message to ``to`` (beyond the first
        ``after`` messages), waiting for it to arrive."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for text in self.texts(to)[after:]:
                found = re.search(pattern, text)
                if found:
                    return found.group(1) if found.groups() else found.group(0)
            time.sleep(0.05)
        raise AssertionError(f"no mail to {to} matching {pattern!r}: {self.texts(to)}")


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    handler = RecordingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield Mailbox(handler, port)
    controller.stop()


@dataclass
class Site:
    server: ServerProcess
    env: dict[str, str]
    tmp: Path

    @property
    def url(self) -> str:
        return self.server.url

    def setup_link(self) -> str:
        done = run_cli("admin", "bootstrap", env=self.env)
        assert done.returncode == 0, done.stderr
        link = done.stdout.strip()
        assert link.startswith(self.url), link
        return link


@pytest.fixture
def site(tmp_path: Path, browser_database_url: str, mailbox: Mailbox) -> Iterator[Site]:
    port = free_port()
    env = base_env(
        tmp_path,
        DATABASE_URL=browser_database_url,
        FORGEHALL_PUBLIC_ORIGIN=f"http://127.0.0.1:{port}",
        FORGEHALL_SMTP_HOST="127.0.0.1",
        FORGEHALL_SMTP_PORT=str(mailbox.port),
        FORGEHALL_MAIL_FROM="forgehall@example.com",
        FORGEHALL_LOG_LEVEL="info",
    )
    current = Site(ServerProcess(tmp_path, port=port, env=dict(env)).start(), env, tmp_path)
    try:
        current.server.wait_ready()
        yield current
    finally:
        current.server.stop()  # the one running now (a test may have restarted it)


def new_page(browser: Browser, site: Site) -> tuple[BrowserContext, Page]:
    context = browser.new_context(base_url=site.url, viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if msg.type == "error" and "Content Security Policy" in msg.text
            else None
        ),
    )
    page.errors = errors  # type: ignore[attr-defined]
    return context, page


def screenshot(page: Page, name: str, backend: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{backend}-{name}.png"), full_page=True)


def sign_in(page: Page, mailbox: Mailbox, email: str, next_path: str = "/") -> None:
    """The email-code login, as a person does it: the code comes from the mail."""
    before = len(mailbox.texts(email))
    page.goto(f"/login?next={next_path}")
    page.get_by_label("Email address").fill(email)
    page.get_by_role("button", name="Send code").click()
    code = mailbox.wait_for(email, r"\b(\d{6})\b", after=before)
    page.get_by_label("Code").fill(code)
    page.get_by_role("button", name="Sign in").click()
