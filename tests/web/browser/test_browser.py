"""The web UI in a real browser (headless Debian Chromium), on SQLite and PostgreSQL:
first run, email-code login, a workspace, the board with drag-and-drop, a second person
invited and watching changes arrive live, an agent run by a real daemon with a fake CLI
whose transcript streams into the page, and cancelling it."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
from playwright.sync_api import Browser, Page, expect

from tests.daemon.harness import Board, DaemonProcess, make_origin
from tests.process import ServerProcess
from tests.web.browser.conftest import Mailbox, Site, new_page, screenshot, sign_in

WS = "/api/v1/workspaces/platform"


def first_admin(page: Page, site: Site) -> None:
    page.goto(site.setup_link())
    expect(page.get_by_role("heading", name="Create the administrator")).to_be_visible()
    page.get_by_label("Your email address").fill("ada@example.com")
    page.get_by_role("button", name="Create administrator").click()
    expect(page.get_by_role("heading", name="Welcome, ada")).to_be_visible()


def create_workspace(page: Page) -> None:
    page.get_by_label("Name", exact=True).fill("Platform")
    page.get_by_label("Address").fill("platform")
    page.get_by_label("Issue key prefix").fill("PLT")
    page.get_by_role("button", name="Create workspace").click()
    expect(page).to_have_url(re.compile(r".*/w/platform/board$"))


def api(page: Page, site: Site, method: str, path: str, body: object = None) -> httpx.Response:
    """The JSON API with the page's own session cookie (as the page's scripts would)."""
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    return httpx.request(
        method,
        site.url + path,
        json=body,
        cookies=cookies,
        headers={"origin": site.url},
        timeout=10,
    )


def column(page: Page, name: str):  # type: ignore[no-untyped-def]
    return page.locator("section.column").filter(has=page.get_by_role("heading", name=name))


def test_board_live_updates_and_an_agent_run(
    browser: Browser, site: Site, mailbox: Mailbox, backend: str, tmp_path: Path
) -> None:
    ctx_a, ada = new_page(browser, site)
    first_admin(ada, site)
    screenshot(ada, "home", backend)
    create_workspace(ada)

    # Quick create from the board, then drag the card from Todo to In Progress.
    ada.get_by_label("New issue title").fill("Fix the login redirect")
    ada.get_by_label("New issue title").press("Enter")
    expect(ada.get_by_role("heading", name="Fix the login redirect")).to_be_visible()
    ada.goto("/w/platform/board")
    card = ada.locator('.issue-card[data-key="PLT-1"]')
    expect(column(ada, "Todo").locator(card)).to_have_count(1)
    # The card moves in the page at once; the reload waits for the save.
    with ada.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith("/issues/PLT-1/move")
    ) as saved:
        card.drag_to(column(ada, "In Progress").locator(".cards"))
    assert saved.value.ok, saved.value.status
    expect(column(ada, "In Progress").locator('.issue-card[data-key="PLT-1"]')).to_have_count(1)
    ada.reload()  # persisted, not just moved in the page
    expect(column(ada, "In Progress").locator('.issue-card[data-key="PLT-1"]')).to_have_count(1)
    expect(column(ada, "In Progress").locator("[data-count]")).to_have_text("1")

    # A second person, invited by mail, signs in by email code and accepts.
    ada.goto("/w/platform/settings")
    ada.locator("#inv-email").fill("bob@example.com")
    ada.get_by_role("button", name="Send invitation").click()
    expect(ada.locator("#invitations").get_by_text("bob@example.com")).to_be_visible()
    screenshot(ada, "workspace-settings", backend)
    link = mailbox.wait_for("bob@example.com", r"(http://\S+/invitations/\S+)")
    ctx_b, bob = new_page(browser, site)
    bob.goto(link)
    sign_in(bob, mailbox, "bob@example.com", next_path=link.removeprefix(site.url))
    expect(bob.get_by_role("heading", name="Join Platform")).to_be_visible()
    bob.get_by_role("button", name="Accept").click()
    expect(bob.get_by_role("link", name="Platform")).to_be_visible()

    # Bob watches the board and the issue; Ada's changes arrive without a reload.
    ada.goto("/w/platform/board")
    bob.goto("/w/platform/board")
    expect(bob.locator("body[data-live=connected]")).to_have_count(1)
    started = time.monotonic()
    ada.get_by_label("New issue title").fill("Write the release notes")
    ada.get_by_label("New issue title").press("Enter")
    expect(bob.locator('.issue-card[data-key="PLT-2"]')).to_be_visible(timeout=5_000)
    board_latency = time.monotonic() - started
    screenshot(bob, "board", backend)

    bob.goto("/w/platform/issues/PLT-1")
    expect(bob.locator("body[data-live=connected]")).to_have_count(1)
    ada.goto("/w/platform/issues/PLT-1")
    started = time.monotonic()
    ada.get_by_label("Add a comment").fill("Reproduced on **staging**")
    ada.get_by_role("button", name="Comment").click()
    expect(bob.locator("#comments").get_by_text("Reproduced on")).to_be_visible(timeout=5_000)
    comment_latency = time.monotonic() - started
    ada.get_by_label("Status").select_option(label="In Review")
    ada.get_by_role("button", name="Save details").click()
    expect(bob.locator("#issue-main .badge").first).to_have_text("In Review", timeout=5_000)
    expect(bob.locator("#f-status option:checked")).to_have_text("In Review")
    print(f"live latency: board {board_latency:.3f} s, comment {comment_latency:.3f} s")

    # An agent on a real daemon with a fake CLI that streams for a while.
    origin = make_origin(tmp_path / "origin")
    repo = api(
        ada,
        site,
        "POST",
        f"{WS}/repositories",
        {"name": "app", "url": str(origin), "default_branch": "main"},
    )
    assert repo.status_code == 201, repo.text
    # The agent is created on its page; the daemon's command comes from the runtimes page.
    ada.goto("/w/platform/agents/new")
    ada.get_by_label("Name", exact=True).fill("builder")
    ada.get_by_label("Provider", exact=True).select_option("claude")
    ada.get_by_label("Instructions").fill("Keep changes **small**.")
    ada.get_by_label("Environment, one KEY=value per line").fill(
        "FAKE_AGENT_MODE=long\nFAKE_AGENT_SECONDS=60"
    )
    ada.get_by_role("button", name="Create agent").click()
    expect(ada).to_have_url(re.compile(r".*/agents/[0-9a-f]+\?saved=1$"))
    ada.goto("/w/platform/agents")
    expect(ada.get_by_role("link", name="builder").first).to_be_visible()
    ada.goto("/w/platform/runtimes")
    ada.get_by_label("Token name").fill("laptop")
    ada.get_by_role("button", name="Create token and show the command").click()
    command = ada.locator("#daemon-command").inner_text()
    token = re.search(r"FORGEHALL_DAEMON_TOKEN=(\S+)", command)
    assert token, command
    board = Board(tmp_path, site.server, httpx.Client(), token.group(1), origin)
    daemon = DaemonProcess(board).start()
    try:
        daemon.wait_running()
        ada.goto("/w/platform/runtimes")
        expect(ada.locator(".badge.online").first).to_be_visible()
        screenshot(ada, "runtimes", backend)
        ada.goto("/w/platform/agents")
        expect(ada.locator(".badge.idle").first).to_be_visible()
        screenshot(ada, "agents", backend)
        ada.goto("/w/platform/issues/PLT-1")
        ada.get_by_label("Status").select_option(label="Todo")
        ada.get_by_label("Assignee").select_option(label="builder")
        ada.get_by_role("button", name="Save details").click()
        transcript = bob.locator("[data-transcript] .msg")
        expect(transcript.first).to_be_visible(timeout=30_000)
        seen = transcript.count()
        expect(transcript).not_to_have_count(seen, timeout=10_000)  # more arrive, no reload
        assert transcript.count() > seen
        expect(bob.locator("#tasks .badge.running")).to_be_visible()
        screenshot(bob, "issue-transcript", backend)

        # Cancel the running task from the page; both pages see it end.
        ada.reload()
        ada.locator("#tasks").get_by_role("button", name="Cancel").click()
        expect(ada.locator("#tasks .badge").first).to_have_text("cancelled", timeout=15_000)
        expect(bob.locator("#tasks .badge").first).to_have_text("cancelled", timeout=15_000)
    finally:
        daemon.stop()

    ada.goto("/w/platform/evidence")
    expect(ada.get_by_role("heading", name="Evidence")).to_be_visible()
    screenshot(ada, "evidence", backend)
    ada.goto("/w/platform/issues/PLT-1")
    expect(ada.locator("#gates")).to_be_visible()
    screenshot(ada, "issue", backend)

    assert ada.errors == [], ada.errors  # type: ignore[attr-defined]
    assert bob.errors == [], bob.errors  # type: ignore[attr-defined]
    ctx_a.close()
    ctx_b.close()


#: The elements sticking out of the viewport on the right, for a readable failure.
WIDEST = """
Array.from(document.querySelectorAll('body *'))
  .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
  .filter((e) => !e.parentElement.closest('table.list, pre, .board'))
  .slice(0, 6).map((e) => e.tagName + '.' + e.className + '#' + e.id
    + ' ' + Math.round(e.getBoundingClientRect().right))
"""

PAYLOADS = "\n\n".join(
    [
        "<script>window.hacked = 'script'</script>",
        "<img src=x onerror=\"window.hacked='img'\">",
        "[click me](javascript:window.hacked='link')",
        "<a href=\"javascript:window.hacked='a'\">a</a>",
        "<svg onload=\"window.hacked='svg'\"></svg>",
        "<iframe src=\"javascript:parent.hacked='iframe'\"></iframe>",
        "![x](javascript:window.hacked='image')",
    ]
)


def test_xss_does_not_run_and_a_lost_connection_comes_back(
    browser: Browser, site: Site, mailbox: Mailbox, backend: str
) -> None:
    _, ada = new_page(browser, site)
    dialogs: list[str] = []
    ada.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    first_admin(ada, site)
    create_workspace(ada)
    ada.get_by_label("New issue title").fill("<script>window.hacked='title'</script>")
    ada.get_by_label("New issue title").press("Enter")
    expect(ada.locator("#issue-main h1")).to_contain_text("<script>")  # shown as text
    ada.get_by_text("Edit title and description").click()
    ada.get_by_label("Description (Markdown)").fill("**Steps**\n\n" + PAYLOADS)
    ada.get_by_role("button", name="Save", exact=True).click()
    expect(ada.locator("#issue-main strong").first).to_have_text("Steps")
    ada.get_by_label("Add a comment").fill(PAYLOADS)
    ada.get_by_role("button", name="Comment").click()
    expect(ada.locator("#comments .comment")).to_have_count(1)
    ada.reload()
    for link in ada.locator(".markdown a").all():
        link.click(no_wait_after=True)  # a neutralised link goes nowhere harmful
    ada.wait_for_timeout(300)
    assert ada.evaluate("window.hacked") is None
    assert ada.evaluate("parent.hacked") is None
    assert dialogs == []
    assert ada.locator(".markdown script, .markdown iframe, .markdown svg").count() == 0

    # The server goes away: the banner says so; it comes back: the page reconnects and
    # live updates flow again without a reload.
    ada.goto("/w/platform/board")
    expect(ada.locator("body[data-live=connected]")).to_have_count(1)
    banner = ada.locator("#live-banner")
    expect(banner).to_be_hidden()
    site.server.stop()
    expect(banner).to_be_visible(timeout=10_000)
    site.server = ServerProcess(site.tmp, port=site.server.port, env=dict(site.env)).start()
    site.server.wait_ready()
    expect(banner).to_be_hidden(timeout=35_000)
    created = api(ada, site, "POST", f"{WS}/issues", {"title": "After the restart"})
    assert created.status_code == 201, created.text
    expect(ada.get_by_text("After the restart")).to_be_visible(timeout=5_000)
    # CSP violations would show up as console errors: the page raised none.
    assert ada.errors == [], ada.errors  # type: ignore[attr-defined]


def test_keyboard_board_mention_completion_and_phone_width(
    browser: Browser, site: Site, mailbox: Mailbox, backend: str
) -> None:
    _, ada = new_page(browser, site)
    first_admin(ada, site)
    create_workspace(ada)
    ada.get_by_label("New issue title").fill("Keyboard only")
    ada.get_by_label("New issue title").press("Enter")
    expect(ada.get_by_role("heading", name="Keyboard only")).to_be_visible()

    # The board without a mouse: the card's Move link loads its form in place, focused.
    ada.goto("/w/platform/board")
    ada.locator('.issue-card[data-key="PLT-1"] .move-link').focus()
    ada.keyboard.press("Enter")
    expect(ada.get_by_label("Status of PLT-1")).to_be_focused()
    expect(ada).to_have_url(re.compile(r".*/w/platform/board$"))  # loaded in place
    ada.get_by_label("Status of PLT-1").select_option(label="Done")
    ada.keyboard.press("Tab")
    ada.keyboard.press("Enter")
    expect(column(ada, "Done").locator('.issue-card[data-key="PLT-1"]')).to_have_count(1)

    # @mention completion offers members and agents; Enter inserts the handle.
    ada.goto("/w/platform/issues/PLT-1")
    area = ada.get_by_label("Add a comment")
    area.click()
    area.press_sequentially("Ping @ad")
    expect(ada.locator(".mention-menu [role=option]").first).to_contain_text("ada@example.com")
    area.press("Enter")
    expect(area).to_have_value("Ping @ada@example.com ")
    ada.get_by_role("button", name="Comment").click()
    expect(ada.locator("#comments").get_by_text("Ping @ada@example.com")).to_be_visible()

    # The agent form previews its instructions as they are typed.
    ada.goto("/w/platform/agents/new")
    ada.get_by_label("Instructions").fill("Be **brief**.")
    expect(ada.locator("#agent-instructions-preview strong")).to_have_text("brief")

    # A phone's width: the navigation folds above the content, nothing overflows sideways.
    ada.set_viewport_size({"width": 390, "height": 844})
    pages = ("board", "issues", "issues/PLT-1", "settings", "agents", "agents/new", "runtimes")
    more = ("evidence", "evidence/checkpoints", "inbox")
    for path in [
        *(f"/w/platform/{p}" for p in (*pages, *more)),
        "/",
        "/settings",
        "/admin",
    ]:
        ada.goto(path)
        overflow = ada.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        wide = ada.evaluate(WIDEST)
        assert overflow <= 1, (path, overflow, wide)
        if path.endswith(("/board", "/PLT-1")):
            screenshot(ada, "phone-" + path.rsplit("/", 1)[1].lower(), backend)
    assert ada.errors == [], ada.errors  # type: ignore[attr-defined]


AXE = Path(__file__).resolve().parents[3] / "node_modules" / "axe-core" / "axe.min.js"
AUDIT = """
axe.run(document, {runOnly: ['wcag2a', 'wcag2aa']}).then((report) => report.violations
  .filter((v) => ['serious', 'critical'].includes(v.impact))
  .map((v) => v.id + ': ' + v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')))
"""
AUDITED = (
    "/",
    "/w/platform/board",
    "/w/platform/issues",
    "/w/platform/issues/PLT-1",
    "/w/platform/settings",
    "/w/platform/agents",
    "/w/platform/agents/new",
    "/w/platform/runtimes",
    "/w/platform/evidence",
    "/w/platform/inbox",
    "/settings",
    "/admin",
)


def test_every_page_passes_an_accessibility_audit_in_light_and_dark(
    browser: Browser, site: Site, mailbox: Mailbox
) -> None:
    """axe-core (from the npm lockfile) checks WCAG 2 A/AA rules — labels, names,
    contrast, landmarks — on each page; serious or critical findings fail."""
    assert AXE.exists(), f"{AXE} is missing: run `make assets` (npm ci)"
    _, ada = new_page(browser, site)
    first_admin(ada, site)
    create_workspace(ada)
    ada.get_by_label("New issue title").fill("Audit me")
    ada.get_by_label("New issue title").press("Enter")
    ada.get_by_label("Add a comment").fill("A **comment** with `code`")
    ada.get_by_role("button", name="Comment").click()
    expect(ada.locator("#comments .comment")).to_have_count(1)
    cookies = ada.context.cookies()
    found: list[str] = []
    for scheme in ("light", "dark"):
        # The audit script is injected, which the pages' CSP rightly forbids: this
        # context alone bypasses it.
        context = browser.new_context(base_url=site.url, bypass_csp=True, color_scheme=scheme)
        context.add_cookies(cookies)  # type: ignore[arg-type]
        page = context.new_page()
        for path in AUDITED:
            page.goto(path)
            page.add_script_tag(path=str(AXE))
            result = page.evaluate(AUDIT)
            found.extend(f"{scheme} {path} {v}" for v in result)
        context.close()
    assert found == [], "\n".join(found)
