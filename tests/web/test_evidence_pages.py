"""The evidence pages without JavaScript, on SQLite and PostgreSQL: the ledger's entries
(filtered and paged like the API), one entry with the server's verification of its
inclusion proof — which must say "not verified", and why, once a row was rewritten
behind the server's back (triggers dropped, raw SQL) — the checkpoints, the instance
key, the export bundle (which the CLI's verifier accepts), and the issue page's gates
panel; nothing of another workspace shows, and signed-out readers go to sign in."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from markupsafe import escape
from sqlalchemy import text

from forgehall.app import AppOptions, create_app
from forgehall.db.engine import Database
from forgehall.identity.auth import Principal
from forgehall.issues.service import get_issue_or_404
from forgehall.ledger.bundle import verify_bundle_file
from forgehall.ledger.canonical import canonical_json
from forgehall.ledger.checkpoint import VerifierKey
from forgehall.ledger.merkle import leaf_hash
from forgehall.ledger.models import APPEND_ONLY
from forgehall.ledger.service import sequence_pending
from forgehall.settings import Settings
from forgehall.web.evidence import issue_evidence
from forgehall.web.pages import templates
from forgehall.workspaces.access import resolve_access
from tests.conftest import (
    Person,
    RecordingMailer,
    make_person,
    make_settings,
    make_workspace,
    new_client,
)
from tests.web.test_pages import sign_in

HTML = {"accept": "text/html,application/xhtml+xml"}
REPO = "https://git.example.com/team/app.git"
C1 = "1" * 40
C2 = "2" * 40
GATES = [
    {"id": "lint", "required_in": ["pilot"]},
    {"id": "unit", "required_in": ["prototype", "pilot"]},
]


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """The ledger's signing key is stored encrypted: these settings carry a key."""
    return make_settings(
        tmp_path, database_url=database_url, encryption_key=Fernet.generate_key().decode()
    )


def entry(gate_id: str, result: str = "PASS", **scope: Any) -> dict[str, Any]:
    """A GateEntry as `forgehall gates run` records it."""
    return {
        "gate_id": gate_id,
        "gate_name": gate_id.title(),
        "result": result,
        "reason": None if result == "PASS" else "exit 1",
        "scope": {
            "repository": REPO,
            "commit": C1,
            "branch": "main",
            "dirty": False,
            "issue_key": None,
            "task_id": None,
            **scope,
        },
        "command": f"make {gate_id}",
        "command_sha256": "ab" * 32,
        "exit_code": 0 if result == "PASS" else 1,
        "started_at": "2031-05-01T12:00:00.000Z",
        "finished_at": "2031-05-01T12:00:01.000Z",
        "duration_ms": 1000,
        "stdout_sha256": "cd" * 32,
        "stderr_sha256": "ef" * 32,
        "stdout_excerpt": "all 12 tests passed\n",
        "stderr_excerpt": "",
        "runner": {"host": "build-1", "runtime_id": None},
        "tier": "prototype",
    }


@dataclass
class Team:
    owner: Person
    browser: httpx.AsyncClient


@pytest.fixture
async def team(app: FastAPI, db: Database, mailer: RecordingMailer) -> AsyncIterator[Team]:
    """Ada owns workspaces "team" and "other"; she reads pages with a browser session
    and appends gate results with her token, as `gates run --submit` would."""
    owner = await make_person(db, "ada@example.com")
    await make_workspace(db, owner, "team")
    await make_workspace(db, owner, "other")
    async with app.router.lifespan_context(app), new_client(app) as browser:
        browser.headers.update(HTML)
        await sign_in(browser, mailer, "ada@example.com")
        yield Team(owner, browser)


async def append(
    team: Team, entries: list[dict[str, Any]], workspace: str = "team", **extra: Any
) -> None:
    response = await team.browser.post(
        f"/api/v1/workspaces/{workspace}/ledger/entries",
        headers={**team.owner.headers, "accept": "application/json"},
        json={"entries": entries, **extra},
    )
    assert response.status_code == 201, response.text


async def record_standard(team: Team, db: Database) -> None:
    """Positions 0..3 of "team": lint FAIL and unit PASS on C1 for ENG-1, unit PASS on
    C2 for ENG-2, lint WARN on C2 without an issue; checkpoints of sizes 2, 3 and 4."""
    await append(
        team,
        [entry("lint", "FAIL", issue_key="ENG-1"), entry("unit", issue_key="ENG-1")],
        gates=GATES,
    )
    await sequence_pending(db)  # checkpoint of size 2
    await append(team, [entry("unit", commit=C2, issue_key="ENG-2")], gates=GATES)
    await sequence_pending(db)  # 3
    await append(team, [entry("lint", "WARN", commit=C2)])
    await sequence_pending(db)  # 4


def positions(page: str) -> list[int]:
    return [int(p) for p in re.findall(r'<tr data-position="(\d+)">', page)]


async def public_key(client: httpx.AsyncClient) -> VerifierKey:
    answer = await client.get("/api/v1/ledger/public-key", headers={"accept": "application/json"})
    assert answer.status_code == 200, answer.text
    return VerifierKey.parse(answer.json()["verifier_key"])


async def test_the_list_shows_entries_newest_first_with_filters_in_the_url(
    team: Team, db: Database
) -> None:
    browser = team.browser
    empty = await browser.get("/w/team/evidence")
    assert empty.status_code == 200
    assert "No gate results have been recorded yet" in empty.text
    await record_standard(team, db)

    listed = await browser.get("/w/team/evidence")
    assert listed.status_code == 200
    assert "Content-Security-Policy" in listed.headers
    assert positions(listed.text) == [3, 2, 1, 0]
    row = listed.text.split('<tr data-position="0">', 1)[1].split("</tr>", 1)[0]
    assert 'href="/w/team/issues/ENG-1"' in row
    assert f"<code>{C1[:12]}</code>" in row
    assert ">lint</a>" in row
    assert '<span class="badge failed">FAIL</span>' in row
    assert 'href="/w/team/evidence/entries/0"' in row
    assert "The latest checkpoint covers 4 entries" in listed.text

    by_issue = await browser.get("/w/team/evidence", params={"issue_key": "ENG-1"})
    assert positions(by_issue.text) == [1, 0]
    assert 'value="ENG-1"' in by_issue.text, "the form shows the filter in use"
    by_commit = await browser.get("/w/team/evidence", params={"commit": C2})
    assert positions(by_commit.text) == [3, 2]
    by_gate = await browser.get("/w/team/evidence", params={"gate_id": "lint", "commit": C1})
    assert positions(by_gate.text) == [0]
    blank = await browser.get(
        "/w/team/evidence", params={"issue_key": " ", "commit": "", "gate_id": ""}
    )
    assert positions(blank.text) == [3, 2, 1, 0], "empty fields of the form filter nothing"
    nothing = await browser.get("/w/team/evidence", params={"gate_id": "contract"})
    assert positions(nothing.text) == []
    assert "No entries match these filters" in nothing.text


async def test_pages_follow_the_api_cursor_and_a_bad_cursor_is_explained(
    team: Team, db: Database
) -> None:
    await append(team, [entry("unit", commit=f"{n:040d}") for n in range(55)])
    await sequence_pending(db)
    first = await team.browser.get("/w/team/evidence")
    assert positions(first.text) == list(range(54, 4, -1))
    older = re.search(r'href="(/w/team/evidence\?cursor=\d+)">Older entries', first.text)
    assert older, "a link to the next page"
    second = await team.browser.get(older.group(1))
    assert positions(second.text) == [4, 3, 2, 1, 0]
    assert "Older entries" not in second.text
    api = await team.browser.get(
        "/api/v1/workspaces/team/ledger/entries",
        params={"cursor": older.group(1).rsplit("=", 1)[1]},
        headers={**team.owner.headers, "accept": "application/json"},
    )
    assert [e["position"] for e in api.json()["items"]] == [4, 3, 2, 1, 0]

    bad = await team.browser.get("/w/team/evidence", params={"cursor": "abc"})
    assert bad.status_code == 422
    assert "the cursor is malformed" in bad.text
    assert positions(bad.text) == []


async def test_an_entry_page_shows_everything_recorded_and_verifies(
    team: Team, db: Database
) -> None:
    await record_standard(team, db)
    page = await team.browser.get("/w/team/evidence/entries/1")
    assert page.status_code == 200, page.text
    text_ = page.text
    assert 'data-verdict="verified"' in text_
    assert '<span class="badge ok">verified</span>' in text_
    assert "not verified" not in text_
    api = await team.browser.get(
        "/api/v1/workspaces/team/ledger/entries/1",
        headers={**team.owner.headers, "accept": "application/json"},
    )
    body = api.json()
    assert f"data-leaf-hash>{body['entry']['leaf_hash']}<" in text_
    for node in body["proof"]["audit_path"]:
        assert node in text_, "the audit path the API gives"
    assert body["proof"]["checkpoint"]["root_hash"] in text_
    assert "size 4" in text_
    for shown in ("make unit", "all 12 tests passed", "build-1", "1000 ms", REPO, C1, "main"):
        assert shown in text_, shown
    assert 'href="/w/team/issues/ENG-1"' in text_
    assert "<dt>Submitted by</dt><dd>ada</dd>" in text_
    leaf = canonical_json(body["entry"]["entry"]).decode()
    assert str(escape(leaf)) in text_, "the leaf's exact bytes"

    key = await public_key(team.browser)
    fingerprint = re.search(r"data-fingerprint>SHA256:([0-9a-f:]+)<", text_)
    assert fingerprint, "the key's fingerprint"
    assert key.key_id.hex() in text_


async def test_a_row_rewritten_behind_the_servers_back_is_not_verified(
    team: Team, db: Database, backend: str, tmp_path: Path
) -> None:
    await record_standard(team, db)
    assert 'data-verdict="verified"' in (await team.browser.get("/w/team/evidence/entries/0")).text
    # Someone with the database drops the append-only triggers and rewrites rows.
    async with db.engine.begin() as conn:
        for table in APPEND_ONLY:
            if backend == "sqlite":
                for op in ("update", "delete"):
                    await conn.execute(text(f"DROP TRIGGER {table.name}_no_{op}"))
            else:
                await conn.execute(text(f"DROP TRIGGER {table.name}_append_only ON {table.name}"))
        # Entry 0: the FAIL becomes a PASS; its leaf hash is left as it was.
        await conn.execute(
            text(
                'UPDATE ledger_entries SET entry = REPLACE(entry, \'"result":"FAIL"\', '
                "'\"result\":\"PASS\"'), result = 'PASS' WHERE position = 0"
            )
        )
        # Entry 1: its leaf hash is rewritten to match new bytes.
        forged = entry("unit", issue_key="ENG-1") | {"stdout_excerpt": "forged\n"}
        leaf = leaf_hash(canonical_json(forged)).hex()
        await conn.execute(
            text("UPDATE ledger_entries SET entry = :e, leaf_hash = :h WHERE position = 1"),
            {"e": canonical_json(forged).decode(), "h": leaf},
        )

    changed = await team.browser.get("/w/team/evidence/entries/0")
    assert changed.status_code == 200
    assert 'data-verdict="not-verified"' in changed.text
    assert '<span class="badge failed">not verified</span>' in changed.text
    assert (
        "Not verified: the entry was changed: its bytes do not hash to the leaf hash "
        "recorded with it"
    ) in changed.text
    rehashed = await team.browser.get("/w/team/evidence/entries/1")
    assert 'data-verdict="not-verified"' in rehashed.text
    assert (
        "Not verified: the inclusion proof does not lead to the root of the checkpoint of size 4"
    ) in rehashed.text
    assert "forged" in rehashed.text, "the page shows what is stored, and says it is wrong"
    # An entry's proof covers that entry: an untouched neighbour still verifies (the
    # exported bundle, verified whole, is what finds every change).
    untouched = await team.browser.get("/w/team/evidence/entries/2")
    assert 'data-verdict="verified"' in untouched.text

    # The latest checkpoint's note is edited (it claims one entry more than it signed).
    async with db.engine.begin() as conn:
        await conn.execute(
            text("UPDATE ledger_checkpoints SET note = REPLACE(note, :old, :new) WHERE size = 4"),
            {"old": "/ledger/team\n4\n", "new": "/ledger/team\n5\n"},
        )
    bundle = tmp_path / "tampered.json"
    bundle.write_bytes((await team.browser.get("/w/team/evidence/export")).content)
    report = verify_bundle_file(bundle, key=await public_key(team.browser))
    assert (report.ok, report.position) == (False, 0), "the bundle's verifier agrees"

    forged_note = await team.browser.get("/w/team/evidence/entries/2")
    assert 'data-verdict="not-verified"' in forged_note.text
    assert re.search(
        r"Not verified: checkpoint of size 4: the signature by \S+ does not verify",
        forged_note.text,
    )
    checkpoints = await team.browser.get("/w/team/evidence/checkpoints")
    rows = dict(re.findall(r'<tr data-size="(\d+)">(.*?)</tr>', checkpoints.text, re.S))
    assert "not verified" in rows["4"]
    assert "does not verify" in rows["4"]
    assert ">verified<" in rows["3"]
    assert "not verified" not in rows["3"]


async def test_checkpoints_are_listed_with_their_signature_state(team: Team, db: Database) -> None:
    empty = await team.browser.get("/w/team/evidence/checkpoints")
    assert empty.status_code == 200
    assert "No checkpoint yet" in empty.text
    await record_standard(team, db)
    await append(team, [entry("unit", commit=C2)])
    await sequence_pending(db)
    page = await team.browser.get("/w/team/evidence/checkpoints")
    assert page.status_code == 200
    sizes = re.findall(r'<tr data-size="(\d+)">', page.text)
    assert sizes == ["5", "4", "3", "2"], "largest first; one per sequencing batch"
    api = await team.browser.get(
        "/api/v1/workspaces/team/ledger/checkpoints",
        headers={**team.owner.headers, "accept": "application/json"},
    )
    for item in api.json()["items"]:
        assert item["root_hash"] in page.text
    assert page.text.count('<span class="badge ok">verified</span>') == 4
    assert "not verified" not in page.text


async def test_the_public_key_and_the_bundle_download(
    team: Team, db: Database, tmp_path: Path
) -> None:
    await record_standard(team, db)
    page = await team.browser.get("/w/team/evidence")
    key = await public_key(team.browser)
    assert f"data-verifier-key>{key.encode()}<" in page.text
    assert "-----BEGIN PUBLIC KEY-----" in page.text
    assert re.search(r"data-fingerprint>SHA256:(?:[0-9a-f]{2}:){31}[0-9a-f]{2}<", page.text)
    assert 'href="/w/team/evidence/export"' in page.text

    download = await team.browser.get("/w/team/evidence/export")
    assert download.status_code == 200
    assert download.headers["content-disposition"] == 'attachment; filename="team-ledger-4.json"'
    api = await team.browser.get(
        "/api/v1/workspaces/team/ledger/export",
        headers={**team.owner.headers, "accept": "application/json"},
    )
    assert download.content == api.content, "the same bundle as the API and the CLI"
    bundle = tmp_path / "team.json"
    bundle.write_bytes(download.content)
    report = verify_bundle_file(bundle, key=key)
    assert report.ok, report.reason
    assert (report.entries, report.checkpoints) == (4, 3)


async def test_the_issue_gates_panel(team: Team, db: Database) -> None:
    for title in ("Ship the parser", "Faster parser", "Untested idea"):
        made = await team.browser.post("/w/team/issues", data={"title": title})
        assert made.status_code == 303, made.text
    await record_standard(team, db)
    gates = templates.get_template("evidence/_issue_gates.html")

    async def panel(key: str, tier: str | None = None) -> dict[str, Any]:
        """What the issue page gets from issue_evidence (the tier changed, unsaved)."""
        async with db.session() as session:
            principal = Principal(user=team.owner.user, kind="pat")
            access = await resolve_access("team", principal, session)
            if tier is not None:
                access.workspace.tier = tier
            issue = await get_issue_or_404(session, access, key)
            context = await issue_evidence(session, access, issue)
            await session.rollback()
            return context

    context = await panel("ENG-1")
    evidence = context["evidence"]
    assert evidence.key == "ENG-1"
    assert [e.position for e in evidence.entries] == [1, 0]
    assert (evidence.readiness.tier, evidence.readiness.ready) == ("prototype", True)
    html = gates.render(context)
    # Pilot also requires lint, which failed on C1: not ready, and the blocker says so.
    pilot_html = gates.render(await panel("ENG-1", "pilot"))
    # An issue no gate result names: not ready, and the panel says why.
    untested = await panel("ENG-3")
    assert "ready for prototype" in html
    assert "not ready" not in html
    assert 'href="/w/team/evidence/entries/1"' in html
    assert 'href="/w/team/evidence/entries/0"' in html
    assert 'href="/w/team/evidence?issue_key=ENG-1"' in html
    assert "not ready for pilot" in pilot_html
    assert "<strong>lint</strong>: FAIL" in pilot_html
    assert untested["evidence"].entries == []
    assert untested["evidence"].readiness.ready is False
    untested_html = gates.render(untested)
    assert "not ready for prototype" in untested_html
    assert "No gate results name ENG-3 yet" in untested_html


async def test_other_workspaces_look_like_nothing_and_signed_out_goes_to_login(
    team: Team, db: Database, app: FastAPI, mailer: RecordingMailer
) -> None:
    await record_standard(team, db)
    await append(team, [entry("unit")] * 6, workspace="other")
    await sequence_pending(db)
    # Position 5 exists in "other" only: asked under "team", it is not there.
    mine = await team.browser.get("/w/other/evidence/entries/5")
    assert mine.status_code == 200
    wrong = await team.browser.get("/w/team/evidence/entries/5")
    assert wrong.status_code == 404
    assert "There is nothing here" in wrong.text
    negative = await team.browser.get("/w/team/evidence/entries/-1")
    assert negative.status_code == 422

    await make_person(db, "eve@example.com")
    async with new_client(app) as eve:
        eve.headers.update(HTML)
        await sign_in(eve, mailer, "eve@example.com")
        for path in (
            "/w/team/evidence",
            "/w/team/evidence/entries/0",
            "/w/team/evidence/checkpoints",
            "/w/team/evidence/export",
        ):
            theirs = await eve.get(path)
            missing = await eve.get(path.replace("/w/team/", "/w/no-such-workspace/"))
            assert theirs.status_code == missing.status_code == 404, path
            assert "ENG-1" not in theirs.text
            assert theirs.text.replace("team", "X") == missing.text.replace(
                "no-such-workspace", "X"
            ), "a hidden workspace answers exactly like a missing one"
    async with new_client(app) as anonymous:
        anonymous.headers.update(HTML)
        for path in ("/w/team/evidence?gate_id=unit", "/w/team/evidence/entries/0"):
            away = await anonymous.get(path)
            assert away.status_code == 303, path
            assert away.headers["location"].startswith("/login?next=%2Fw%2Fteam%2Fevidence")
        download = await anonymous.get("/w/team/evidence/export")
        assert download.status_code == 303
        assert b"entries" not in download.content


async def test_without_an_encryption_key_the_pages_say_the_instance_cannot_sign(
    database_url: str, db: Database, tmp_path: Path, mailer: RecordingMailer
) -> None:
    """No signing key yet and no FORGEHALL_ENCRYPTION_KEY to store one: the pages say so
    instead of failing, and the download is an error page, not a broken file."""
    keyless = make_settings(tmp_path, database_url=database_url)
    app = create_app(keyless, db=db, options=AppOptions(run_services=False), mailer=mailer)
    owner = await make_person(db, "ada@example.com")
    await make_workspace(db, owner, "team")
    async with app.router.lifespan_context(app), new_client(app) as browser:
        browser.headers.update(HTML)
        await sign_in(browser, mailer, "ada@example.com")
        for path in ("/w/team/evidence", "/w/team/evidence/checkpoints"):
            page = await browser.get(path)
            assert page.status_code == 200, path
            assert "The instance has no checkpoint key" in page.text
            assert "FORGEHALL_ENCRYPTION_KEY" in page.text
        api = await browser.get("/api/v1/ledger/public-key", headers={"accept": "*/*"})
        assert (api.status_code, api.json()["type"]) == (503, "/problems/encryption-key-required")
        download = await browser.get("/w/team/evidence/export")
        assert download.status_code == 503
        assert "FORGEHALL_ENCRYPTION_KEY" in download.text
        assert download.headers["content-type"].startswith("text/html")
