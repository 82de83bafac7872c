"""The board and issue pages without JavaScript: plain GETs and form posts, as a browser
with scripts off would send them. Every form works, errors are shown next to the form
with what was typed kept, and nothing of another workspace leaks."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from forgehall.core.events import StoredEvent
from forgehall.db.engine import Database
from tests.conftest import RecordingMailer, make_person, new_client
from tests.web.test_pages import sign_in

HTML = {"accept": "text/html,application/xhtml+xml"}


@pytest.fixture
async def browser(app: FastAPI, mailer: RecordingMailer) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app), new_client(app) as client:
        client.headers.update(HTML)
        await sign_in(client, mailer, "ada@example.com")
        created = await client.post(
            "/workspaces", data={"name": "Platform", "slug": "platform", "key_prefix": "PLT"}
        )
        assert created.status_code == 303, created.text
        assert created.headers["location"] == "/w/platform/board"
        yield client


async def create(browser: httpx.AsyncClient, title: str) -> str:
    made = await browser.post("/w/platform/issues", data={"title": title})
    assert made.status_code == 303, made.text
    key = made.headers["location"].rsplit("/", 1)[1]
    assert re.fullmatch(r"PLT-\d+", key)
    return key


def revision_of(page: str) -> str:
    found = re.search(r'name="revision" value="(\d+)"', page)
    assert found, "the form carries the revision it was read at"
    return found.group(1)


def status_id(page: str, name: str) -> str:
    found = re.search(rf'<option value="([0-9a-f]+)"[^>]*>{name}</option>', page)
    assert found, f"no status {name} on the page"
    return found.group(1)


async def test_board_columns_counts_quick_create_and_move(browser: httpx.AsyncClient) -> None:
    key = await create(browser, "Fix the login redirect")
    board = await browser.get("/w/platform/board")
    assert board.status_code == 200
    assert "Content-Security-Policy" in board.headers
    columns = re.findall(r'<h2 id="col-[0-9a-f]+">([^<]+)</h2>', board.text)
    assert columns[:3] == ["Backlog", "Todo", "In Progress"], columns
    assert f'data-key="{key}"' in board.text
    todo = status_id(board.text, "Todo")
    done = status_id(board.text, "Done")
    # The count of the Todo column says 1; the card sits in that column.
    todo_column = board.text.split(f'data-status="{todo}"', 1)[1].split("</section>", 1)[0]
    assert "data-count>1<" in todo_column
    assert key in todo_column

    # The keyboard's Move form (no JavaScript: the card's Move link opens it as a page).
    form = await browser.get(f"/w/platform/issues/{key}/move")
    assert form.status_code == 200
    assert f'<label for="move-{key}">Status of {key}</label>' in form.text
    assert f'action="/w/platform/issues/{key}/move"' in form.text
    assert f'href="/w/platform/issues/{key}/move"' in board.text, "each card links to it"
    moved = await browser.post(
        f"/w/platform/issues/{key}/move", data={"status_id": done, "revision": "1"}
    )
    assert moved.status_code == 303
    board = await browser.get("/w/platform/board")
    done_column = board.text.split(f'data-status="{done}"', 1)[1].split("</section>", 1)[0]
    assert key in done_column

    # A stale revision is refused with the server's message on the board; nothing moves.
    stale = await browser.post(
        f"/w/platform/issues/{key}/move", data={"status_id": todo, "revision": "1"}
    )
    assert stale.status_code == 303
    shown = await browser.get(stale.headers["location"])
    assert "changed since revision 1" in shown.text
    board = await browser.get("/w/platform/board")
    assert key in board.text.split(f'data-status="{done}"', 1)[1].split("</section>", 1)[0]


async def test_drag_and_drop_places_the_card_between_its_neighbours(
    browser: httpx.AsyncClient,
) -> None:
    first, second, third = [await create(browser, f"Card {n}") for n in (1, 2, 3)]
    board = await browser.get("/w/platform/board")
    todo = status_id(board.text, "Todo")
    # The script posts the neighbours' keys; the card lands between them.
    moved = await browser.post(
        f"/w/platform/issues/{third}/move",
        data={"status_id": todo, "revision": "1", "after": first, "before": second},
        headers={"hx-request": "true"},
    )
    assert moved.status_code == 204
    board = await browser.get("/w/platform/board")
    order = re.findall(r'data-key="(PLT-\d+)"', board.text)
    assert order == [first, third, second]


async def test_filters_live_in_the_url_and_a_bad_search_is_explained(
    browser: httpx.AsyncClient,
) -> None:
    await create(browser, "Parser crashes on empty input")
    await create(browser, "Update the logo")
    found = await browser.get("/w/platform/board", params={"q": "parser", "priority": ""})
    assert "Parser crashes" in found.text
    assert "Update the logo" not in found.text
    assert 'value="parser"' in found.text, "the filter form shows the filter in use"
    listed = await browser.get("/w/platform/issues", params={"q": "logo"})
    assert "Update the logo" in listed.text
    assert "Parser crashes" not in listed.text
    bad = await browser.get("/w/platform/issues", params={"sort": "sideways"})
    assert bad.status_code == 200
    assert "unknown sort" in bad.text


@pytest.mark.parametrize(
    "payload",
    [
        "<script>window.hacked = 1</script>",
        '<img src=x onerror="window.hacked=1">',
        "[click](javascript:window.hacked=1)",
        '<a href="javascript:alert(1)">x</a>',
        "[x](JaVaScRiPt:alert(1))",
        '<svg onload="alert(1)">',
    ],
)
async def test_markdown_is_rendered_without_anything_executable(
    browser: httpx.AsyncClient, payload: str
) -> None:
    key = await create(browser, "XSS")
    page = await browser.get(f"/w/platform/issues/{key}")
    saved = await browser.post(
        f"/w/platform/issues/{key}/edit",
        data={"revision": revision_of(page.text), "description": f"**bold** {payload}"},
    )
    assert saved.status_code == 303
    await browser.post(f"/w/platform/issues/{key}/comments", data={"body": payload})
    page = await browser.get(f"/w/platform/issues/{key}")
    rendered = page.text.split('<div class="markdown">', 1)[1].split("</div>", 1)[0]
    assert "<strong>bold</strong>" in rendered
    body = page.text.lower()
    # Shown as text (escaped) at most; never as a tag, handler or link.
    for bad in ("<script>window", "<img src=x", "<svg"):
        assert bad not in body, bad
    assert not re.search(r"<a [^>]*href=\"javascript:", body)
    assert not re.search(r"<[a-z]+[^>]*\son(error|load)=", body)


async def test_forms_keep_what_was_typed_and_show_the_error(browser: httpx.AsyncClient) -> None:
    key = await create(browser, "Form errors")
    page = await browser.get(f"/w/platform/issues/{key}")
    revision = revision_of(page.text)
    empty = await browser.post(f"/w/platform/issues/{key}/comments", data={"body": "   "})
    assert empty.status_code == 422
    assert "write something first" in empty.text
    bad_date = await browser.post(
        f"/w/platform/issues/{key}/edit",
        data={"revision": revision, "due_date": "31/12/2026", "title": "Renamed"},
    )
    assert bad_date.status_code == 422
    assert "is not a date" in bad_date.text
    assert 'value="31/12/2026"' in bad_date.text
    assert 'value="Renamed"' in bad_date.text
    still = await browser.get(f"/w/platform/issues/{key}")
    assert "<h1>Form errors</h1>" in still.text, "a refused form changes nothing"
    # A stale revision: the newer state is shown with what was typed kept.
    await browser.post(
        f"/w/platform/issues/{key}/edit", data={"revision": revision, "priority": "high"}
    )
    stale = await browser.post(
        f"/w/platform/issues/{key}/edit",
        data={"revision": revision, "description": "my long text"},
    )
    assert stale.status_code == 409
    assert "reload and try again" in stale.text
    assert "my long text" in stale.text
    blocker = await browser.post(
        f"/w/platform/issues/{key}/dependencies", data={"blocked_by": "PLT-999"}
    )
    assert blocker.status_code in (404, 422)
    assert 'value="PLT-999"' in blocker.text


async def test_comments_and_fields_are_saved(browser: httpx.AsyncClient) -> None:
    key = await create(browser, "Work")
    blocker = await create(browser, "Blocker")
    page = await browser.get(f"/w/platform/issues/{key}")
    saved = await browser.post(
        f"/w/platform/issues/{key}/edit",
        data={
            "revision": revision_of(page.text),
            "priority": "urgent",
            "due_date": "2027-01-15",
            "labels_sent": "1",
        },
    )
    assert saved.status_code == 303
    await browser.post(f"/w/platform/issues/{key}/dependencies", data={"blocked_by": blocker})
    posted = await browser.post(
        f"/w/platform/issues/{key}/comments", data={"body": "Looks good to **me**"}
    )
    assert posted.status_code == 303
    page = await browser.get(f"/w/platform/issues/{key}")
    assert '<option value="urgent" selected>' in page.text
    assert 'value="2027-01-15"' in page.text
    assert f">{blocker}</a>" in page.text
    assert "Looks good to <strong>me</strong>" in page.text
    mentions = await browser.get("/w/platform/mentions", params={"q": "ad"})
    assert [m["handle"] for m in mentions.json()] == ["ada@example.com"]


async def test_other_workspaces_look_like_nothing_and_signed_out_goes_to_login(
    app: FastAPI, browser: httpx.AsyncClient, mailer: RecordingMailer
) -> None:
    key = await create(browser, "Secret plans")
    await make_person(app.state.db, "eve@example.com")
    async with new_client(app) as eve:
        eve.headers.update(HTML)
        await sign_in(eve, mailer, "eve@example.com")
        theirs = await eve.get(f"/w/platform/issues/{key}")
        nothing = await eve.get("/w/no-such-workspace/issues/PLT-1")
        assert theirs.status_code == nothing.status_code == 404
        assert "Secret plans" not in theirs.text
        assert theirs.text.replace("platform", "X") == nothing.text.replace(
            "no-such-workspace", "X"
        ), "a hidden workspace answers exactly like a missing one"
        assert "There is nothing here" in theirs.text
    async with new_client(app) as anonymous:
        anonymous.headers.update(HTML)
        away = await anonymous.get("/w/platform/board?q=x")
        assert away.status_code == 303
        assert away.headers["location"] == "/login?next=%2Fw%2Fplatform%2Fboard%3Fq%3Dx"
        api = await anonymous.get("/api/v1/workspaces", headers={"accept": "application/json"})
        assert api.status_code == 401
        assert api.headers["content-type"].startswith("application/problem+json")


async def test_live_fragments_answer_with_just_their_part(browser: httpx.AsyncClient) -> None:
    key = await create(browser, "Fragments")
    fragment = {"hx-request": "true"}
    for part, element_id in (
        ("main", "issue-main"),
        ("fields", "issue-fields"),
        ("comments", "comments"),
        ("tasks", "tasks"),
        ("gates", "gates"),
    ):
        got = await browser.get(
            f"/w/platform/issues/{key}", params={"part": part}, headers=fragment
        )
        assert got.status_code == 200, (part, got.text[:300])
        assert got.text.lstrip().startswith(f'<section id="{element_id}"'), (part, got.text[:200])
        assert "<html" not in got.text
    board = await browser.get("/w/platform/board", headers=fragment)
    assert board.text.lstrip().startswith('<div id="board"')


async def test_the_markdown_preview_renders_safely_for_signed_in_people(
    app: FastAPI, browser: httpx.AsyncClient
) -> None:
    shown = await browser.post(
        "/preview",
        params={"field": "instructions"},
        data={"instructions": "**bold** <script>x()</script> [a](javascript:y())", "name": "n"},
    )
    assert shown.status_code == 200
    assert "<strong>bold</strong>" in shown.text
    assert "<script>" not in shown.text
    assert 'href="javascript:' not in shown.text
    empty = await browser.post("/preview", params={"field": "description"}, data={})
    assert "Nothing to preview yet" in empty.text
    async with new_client(app) as anonymous:
        refused = await anonymous.post("/preview", data={"text": "x"}, headers=HTML)
        assert refused.status_code == 303
        assert refused.headers["location"].startswith("/login")


async def test_a_page_resumes_its_live_connection_from_before_it_read(
    browser: httpx.AsyncClient, db: Database
) -> None:
    """Every event up to a page's ``data-last-event`` is shown on the page (the live
    connection replays only the later ones): issues created while the board is being read
    are either on it or after its position, never neither."""
    for round_ in range(8):
        creating = asyncio.gather(*(create(browser, f"Issue {round_}.{i}") for i in range(3)))
        board = await browser.get("/w/platform/board")
        await creating
        found = re.search(r'data-last-event="(\d+)"', board.text)
        assert found, "a workspace page carries where its live connection resumes"
        async with db.read_session() as session:
            created = await session.scalars(
                select(StoredEvent.data).where(
                    StoredEvent.kind == "issue.created", StoredEvent.id <= int(found.group(1))
                )
            )
            numbers = [json.loads(data)["number"] for data in created]
        missing = [n for n in numbers if f'data-key="PLT-{n}"' not in board.text]
        assert not missing, f"round {round_}: events up to the position, issues not shown"
