"""The server ledger through its HTTP API, on SQLite and PostgreSQL: appends are durable
before their answer and get gap-free positions from the sequencer; checkpoints, proofs
and exports verify with the pure core; bad input changes nothing; the tables refuse
UPDATE and DELETE whoever asks."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from forgehall.app import AppOptions, create_app
from forgehall.db.engine import Database
from forgehall.db.url import resolve_database
from forgehall.ledger.bundle import verify_bundle_file
from forgehall.ledger.canonical import canonical_json
from forgehall.ledger.checkpoint import VerifierKey, open_checkpoint
from forgehall.ledger.merkle import (
    MerkleFrontier,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from forgehall.ledger.models import APPEND_ONLY, LedgerEntry, LedgerPending
from forgehall.ledger.service import sequence_pending
from forgehall.settings import Settings
from tests.conftest import Person, RecordingMailer, make_person, make_workspace, new_client

LEDGER = "/api/v1/workspaces/team/ledger"
REPO = "https://git.example.com/team/app.git"


def entry(
    gate_id: str = "unit", result: str = "PASS", top: dict[str, Any] | None = None, **scope: Any
) -> dict[str, Any]:
    """A GateEntry dict as `forgehall gates run` records it (``scope`` fields by name,
    others in ``top``)."""
    return {
        "gate_id": gate_id,
        "gate_name": gate_id.title(),
        "result": result,
        "reason": None if result == "PASS" else "exit 1",
        "scope": {
            "repository": REPO,
            "commit": "c1",
            "branch": "main",
            "dirty": False,
            "issue_key": None,
            "task_id": None,
            **scope,
        },
        "command": f"run {gate_id}",
        "command_sha256": "ab" * 32,
        "exit_code": 0 if result == "PASS" else 1,
        "started_at": "2031-05-01T12:00:00.000Z",
        "finished_at": "2031-05-01T12:00:01.000Z",
        "duration_ms": 1000,
        "stdout_sha256": "cd" * 32,
        "stderr_sha256": "ef" * 32,
        "stdout_excerpt": "ok\n",
        "stderr_excerpt": "",
        "runner": {"host": "build-1", "runtime_id": None},
        "tier": "prototype",
        **(top or {}),
    }


GATES = [
    {"id": "lint", "required_in": ["pilot", "production"]},
    {"id": "unit", "required_in": ["prototype", "pilot", "production"]},
    {"id": "contract", "required_in": ["production"]},
]


@dataclass
class Team:
    owner: Person
    admin: Person
    member: Person
    outsider: Person


@pytest.fixture
async def app(settings: Settings, db: Database, mailer: RecordingMailer) -> FastAPI:
    return create_app(settings, db=db, options=AppOptions(run_services=False), mailer=mailer)


@pytest.fixture
async def api(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app), new_client(app, origin=None) as client:
        yield client


@pytest.fixture
async def team(db: Database) -> Team:
    owner = await make_person(db, "owner@example.com")
    admin = await make_person(db, "admin@example.com")
    member = await make_person(db, "member@example.com")
    outsider = await make_person(db, "out@example.com")
    await make_workspace(db, owner, "team", {"admin": admin, "member": member})
    await make_workspace(db, outsider, "other")
    return Team(owner, admin, member, outsider)


async def append(
    api: httpx.AsyncClient, person: Person, entries: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    response = await api.post(
        f"{LEDGER}/entries", headers=person.headers, json={"entries": entries, **extra}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def count(db: Database, model: type[Any]) -> int:
    async with db.read_session() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def public_key(api: httpx.AsyncClient) -> VerifierKey:
    response = await api.get("/api/v1/ledger/public-key")  # no credentials needed
    assert response.status_code == 200, response.text
    key = VerifierKey.parse(response.json()["verifier_key"])
    assert base64.b64encode(key.public_key).decode() == response.json()["public_key"]
    return key


async def test_append_sequence_prove_and_export(
    api: httpx.AsyncClient, db: Database, team: Team, tmp_path: Path
) -> None:
    submitted = [
        entry("lint", commit="c1", issue_key="ENG-1"),
        entry("unit", "FAIL", {"stdout_excerpt": "naïve ✓\n"}, commit="c1", issue_key="ENG-1"),
        entry("unit", commit="c2"),
    ]
    answer = await append(api, team.member, submitted)
    leaves = [leaf_hash(canonical_json(e)) for e in submitted]
    assert answer["accepted"] == 3
    assert [e["leaf_hash"] for e in answer["entries"]] == [h.hex() for h in leaves]
    assert answer["origin"] == "localhost:8000/ledger/team"
    # Durable, not yet positioned: nothing listed, no checkpoint.
    assert await count(db, LedgerPending) == 3
    listed = await api.get(f"{LEDGER}/entries", headers=team.member.headers)
    assert listed.json() == {"items": [], "next_cursor": None}
    latest = await api.get(f"{LEDGER}/checkpoints/latest", headers=team.member.headers)
    assert (latest.status_code, latest.json()["type"]) == (404, "/problems/no-checkpoint")

    result = await sequence_pending(db)
    assert (result.entries, result.checkpoints) == (3, 1)
    assert await count(db, LedgerPending) == 0
    more = [entry("contract", commit="c2", issue_key="ENG-1")]
    await append(api, team.owner, more)
    await sequence_pending(db)
    leaves.append(leaf_hash(canonical_json(more[0])))

    key = await public_key(api)
    latest = await api.get(f"{LEDGER}/checkpoints/latest", headers=team.member.headers)
    checkpoint = open_checkpoint(latest.json()["note"], key)
    frontier = MerkleFrontier()
    frontier.extend(leaves)
    assert (checkpoint.origin, checkpoint.size, checkpoint.root_hash) == (
        "localhost:8000/ledger/team",
        4,
        frontier.root(),
    )
    assert latest.json()["root_hash"] == frontier.root().hex()
    page = (await api.get(f"{LEDGER}/checkpoints", headers=team.member.headers)).json()
    assert [c["size"] for c in page["items"]] == [4, 3]

    for position, leaf in enumerate(leaves):
        got = await api.get(f"{LEDGER}/entries/{position}", headers=team.member.headers)
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["entry"]["position"] == position
        assert canonical_json(body["entry"]["entry"]) == canonical_json(
            ([*submitted, *more])[position]
        )
        proof = body["proof"]
        assert proof["tree_size"] == 4
        path = [bytes.fromhex(h) for h in proof["audit_path"]]
        assert verify_inclusion(position, 4, leaf, path, checkpoint.root_hash)
    for old in range(5):
        got = await api.get(f"{LEDGER}/consistency?from={old}&to=4", headers=team.member.headers)
        body = got.json()
        old_root = bytes.fromhex(body["from_root"])
        proof = [bytes.fromhex(h) for h in body["proof"]]
        assert verify_consistency(old, 4, old_root, checkpoint.root_hash, proof)

    by_issue = await api.get(f"{LEDGER}/entries?issue_key=ENG-1", headers=team.member.headers)
    assert [e["position"] for e in by_issue.json()["items"]] == [3, 1, 0]
    by_commit = await api.get(
        f"{LEDGER}/entries?commit=c2&order=oldest", headers=team.member.headers
    )
    assert [e["position"] for e in by_commit.json()["items"]] == [2, 3]
    by_gate = await api.get(f"{LEDGER}/entries?gate_id=unit", headers=team.member.headers)
    assert [e["entry"]["result"] for e in by_gate.json()["items"]] == ["PASS", "FAIL"]
    first = await api.get(f"{LEDGER}/entries?limit=3", headers=team.member.headers)
    assert [e["position"] for e in first.json()["items"]] == [3, 2, 1]
    rest = await api.get(
        f"{LEDGER}/entries?limit=3&cursor={first.json()['next_cursor']}",
        headers=team.member.headers,
    )
    assert ([e["position"] for e in rest.json()["items"]], rest.json()["next_cursor"]) == (
        [0],
        None,
    )
    submitter = by_gate.json()["items"][0]["submitted_by"]
    assert submitter == team.owner.user.id or submitter == team.member.user.id

    exported = await api.get(f"{LEDGER}/export", headers=team.member.headers)
    assert exported.status_code == 200
    assert "team-ledger-4.json" in exported.headers["content-disposition"]
    bundle = tmp_path / "bundle.json"
    bundle.write_bytes(exported.content)
    report = verify_bundle_file(bundle, key=key)
    assert report.ok, report.reason
    assert (report.entries, report.checkpoints, report.head) == (4, 2, frontier.root().hex())
    assert json.loads(exported.content)["public_key"] == key.encode()


async def test_an_empty_ledger_exports_a_verifiable_bundle(
    api: httpx.AsyncClient, team: Team, tmp_path: Path
) -> None:
    exported = await api.get(f"{LEDGER}/export", headers=team.member.headers)
    assert exported.status_code == 200, exported.text
    bundle = tmp_path / "empty.json"
    bundle.write_bytes(exported.content)
    report = verify_bundle_file(bundle, key=await public_key(api))
    assert (report.ok, report.entries) == (True, 0)
    consistency = await api.get(f"{LEDGER}/consistency?from=0", headers=team.member.headers)
    assert consistency.json()["proof"] == []


async def test_bad_input_is_refused_by_field_and_records_nothing(
    api: httpx.AsyncClient, db: Database, team: Team
) -> None:
    good = entry()
    cases: list[tuple[Any, str]] = [
        ({"entries": [good, {**good, "result": "MAYBE"}]}, "body.entries.1.result"),
        ({"entries": [{k: v for k, v in good.items() if k != "exit_code"}]}, "exit_code"),
        ({"entries": [{**good, "extra": 1}]}, "body.entries.0.extra"),
        ({"entries": [{**good, "scope": {**good["scope"], "commit": "x" * 201}}]}, "commit"),
        ({"entries": [{**good, "gate_id": ""}]}, "body.entries.0.gate_id"),
        ({"entries": [{**good, "tier": "beta"}]}, "body.entries.0.tier"),
        ({"entries": []}, "body.entries"),
        ({"entries": [good] * 1001}, "body.entries"),
        ({"entries": [good], "gates": [{"id": "Bad Id", "required_in": []}]}, "gates.0.id"),
        ({"entries": [good], "surprise": True}, "body.surprise"),
    ]
    for body, field in cases:
        response = await api.post(f"{LEDGER}/entries", headers=team.member.headers, json=body)
        assert response.status_code == 422, (field, response.text)
        problem = response.json()
        assert field in problem["detail"], (field, problem["detail"])
    # Text with a lone surrogate has no canonical form: refused, naming the field.
    raw = json.dumps({"entries": [{**good, "stdout_excerpt": "x"}]}).replace(
        '"stdout_excerpt": "x"', '"stdout_excerpt": "\\ud800"'
    )
    response = await api.post(
        f"{LEDGER}/entries",
        headers={**team.member.headers, "content-type": "application/json"},
        content=raw,
    )
    assert response.status_code == 422, response.text
    assert "stdout_excerpt" in response.json()["detail"]
    assert await count(db, LedgerPending) == 0
    await sequence_pending(db)
    assert await count(db, LedgerEntry) == 0

    for path, status in (
        ("/entries/0", 404),
        ("/entries/-1", 422),
        ("/entries?cursor=abc", 422),
        ("/checkpoints?cursor=x1", 422),
        ("/consistency?from=2", 422),
        ("/consistency?from=1&to=0", 422),
        ("/readiness", 422),
        ("/readiness?commit=c1&tier=beta", 422),
    ):
        response = await api.get(LEDGER + path, headers=team.member.headers)
        assert response.status_code == status, (path, response.text)
    # Another workspace's ledger is not found; an outsider sees none of this one.
    await append(api, team.member, [entry()])
    await sequence_pending(db)
    hidden = await api.get(f"{LEDGER}/entries/0", headers=team.outsider.headers)
    assert hidden.status_code == 404
    assert "workspace team was not found" in hidden.json()["detail"]
    theirs = await api.get("/api/v1/workspaces/other/ledger/entries", headers=team.outsider.headers)
    assert theirs.json()["items"] == []


async def test_the_tables_refuse_update_and_delete_through_raw_sql(
    api: httpx.AsyncClient, db: Database, team: Team, backend: str
) -> None:
    await append(api, team.member, [entry(), entry("lint")], gates=GATES)
    await sequence_pending(db)
    statements = {
        "ledger_entries": ("UPDATE ledger_entries SET entry = '{}'", "DELETE FROM ledger_entries"),
        "ledger_nodes": ("UPDATE ledger_nodes SET hash = 'x'", "DELETE FROM ledger_nodes"),
        "ledger_checkpoints": (
            "UPDATE ledger_checkpoints SET note = 'forged'",
            "DELETE FROM ledger_checkpoints",
        ),
        "ledger_keys": ("UPDATE ledger_keys SET name = 'x'", "DELETE FROM ledger_keys"),
        "ledger_gate_sets": (
            "UPDATE ledger_gate_sets SET gates = '[]'",
            "DELETE FROM ledger_gate_sets",
        ),
    }
    assert {t.name for t in APPEND_ONLY} == set(statements)
    if backend == "postgresql":
        for table in list(statements):
            statements[table] += (f"TRUNCATE {table}",)
    before = {}
    async with db.engine.connect() as conn:
        for table in statements:
            rows = (await conn.execute(text(f"SELECT * FROM {table}"))).all()
            assert rows, table
            before[table] = rows
    for attempts in statements.values():
        for sql in attempts:
            async with db.engine.connect() as conn:
                with pytest.raises(DBAPIError, match="append-only"):
                    await conn.execute(text(sql))
                await conn.rollback()
    async with db.engine.connect() as conn:
        for table, rows in before.items():
            assert (await conn.execute(text(f"SELECT * FROM {table}"))).all() == rows
        # The queue and the head stay writable: the sequencer needs them to be.
        await conn.execute(text("UPDATE ledger_heads SET updated_at = updated_at"))
        await conn.execute(text("DELETE FROM ledger_pending"))
        await conn.rollback()


async def test_tables_made_from_the_models_get_the_triggers_too(empty_database_url: str) -> None:
    from forgehall.db.metadata import target_metadata

    database = Database(resolve_database(Settings(database_url=empty_database_url)))
    try:
        async with database.engine.begin() as conn:
            await conn.run_sync(target_metadata().create_all)
        async with database.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO ledger_checkpoints (workspace_id, size, root_hash, note, "
                    "key_id, created_at) VALUES ('w', 1, 'r', 'n', 'k', CURRENT_TIMESTAMP)"
                )
            )
        for sql in ("UPDATE ledger_checkpoints SET size = 2", "DELETE FROM ledger_checkpoints"):
            async with database.engine.connect() as conn:
                with pytest.raises(DBAPIError, match="append-only"):
                    await conn.execute(text(sql))
    finally:
        await database.dispose()


async def test_concurrent_appends_get_unique_gap_free_positions(
    api: httpx.AsyncClient, db: Database, team: Team, backend: str
) -> None:
    writers, requests, per_request = 8, 12, 3
    stop = asyncio.Event()

    async def sequencer() -> None:
        while not stop.is_set():
            await sequence_pending(db, batch=7)  # small batches: many interleavings
            await asyncio.sleep(0)

    async def writer(number: int) -> list[str]:
        hashes = []
        for request in range(requests):
            batch = [
                entry(f"g{number}-{request}-{i}", commit=f"c{number}") for i in range(per_request)
            ]
            answer = await append(api, team.member, batch)
            hashes += [e["leaf_hash"] for e in answer["entries"]]
        return hashes

    # Two sequencers at once, as during a leadership hand-over.
    sequencers = [asyncio.create_task(sequencer()) for _ in range(2)]
    written = await asyncio.gather(*(writer(n) for n in range(writers)))
    stop.set()
    await asyncio.gather(*sequencers)
    while (await sequence_pending(db)).entries:
        pass
    total = writers * requests * per_request
    async with db.read_session() as session:
        rows = (
            await session.execute(
                select(LedgerEntry.position, LedgerEntry.leaf_hash).order_by(LedgerEntry.position)
            )
        ).all()
    assert [p for p, _ in rows] == list(range(total)), "one entry per position, no gap"
    assert sorted(h for _, h in rows) == sorted(h for hashes in written for h in hashes)
    for hashes in written:  # each writer's entries keep the order it appended them in
        positions = {h: p for p, h in rows}
        assert [positions[h] for h in hashes] == sorted(positions[h] for h in hashes)
    checkpoints = (
        await api.get(f"{LEDGER}/checkpoints?limit=500", headers=team.member.headers)
    ).json()
    sizes = [c["size"] for c in checkpoints["items"]]
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] == total
    key = await public_key(api)
    frontier = MerkleFrontier()
    for checkpoint in reversed(checkpoints["items"]):
        frontier.extend(bytes.fromhex(h) for _, h in rows[frontier.size : checkpoint["size"]])
        assert open_checkpoint(checkpoint["note"], key).root_hash == frontier.root()


async def test_task_tokens_append_only_while_their_task_runs(
    api: httpx.AsyncClient, db: Database, team: Team
) -> None:
    from tests.agents.test_protocol import Daemon, daemon_token, expire

    agent = await api.post(
        "/api/v1/workspaces/team/agents", headers=team.owner.headers, json={"name": "claude"}
    )
    assert agent.status_code == 201, agent.text
    issue = await api.post(
        "/api/v1/workspaces/team/issues",
        headers=team.owner.headers,
        json={"title": "Fix it", "assignee": {"kind": "agent", "id": agent.json()["id"]}},
    )
    assert issue.status_code == 201, issue.text
    dmn = await daemon_token(api, team.owner, "/api/v1/workspaces/team")
    daemon = Daemon(api, dmn, "d1")
    await daemon.register()
    claimed = (await daemon.claim())["tasks"][0]
    task_headers = {"authorization": f"Bearer {claimed['task_token']}"}
    task_id = claimed["id"]

    ours = entry(issue_key=issue.json()["key"], task_id=task_id)
    response = await api.post(f"{LEDGER}/entries", headers=task_headers, json={"entries": [ours]})
    assert response.status_code == 201, response.text
    for headers, body, kind in (
        (task_headers, [entry(task_id="someone-else")], "task-scope-mismatch"),
        (task_headers, [ours, entry(task_id=None)], "task-scope-mismatch"),
        ({"authorization": f"Bearer {dmn}"}, [ours], "wrong-token-kind"),
    ):
        refused = await api.post(f"{LEDGER}/entries", headers=headers, json={"entries": body})
        assert (refused.status_code, refused.json()["type"]) == (403, f"/problems/{kind}")
    await expire(db, task_id)
    late = await api.post(f"{LEDGER}/entries", headers=task_headers, json={"entries": [ours]})
    assert (late.status_code, late.json()["type"]) == (403, "/problems/task-lease-ended")
    assert await count(db, LedgerPending) == 1
    await sequence_pending(db)
    listed = (await api.get(f"{LEDGER}/entries", headers=team.member.headers)).json()["items"]
    assert [e["entry"]["scope"]["task_id"] for e in listed] == [task_id]


async def test_readiness_for_commits_and_issues(
    api: httpx.AsyncClient, db: Database, team: Team
) -> None:
    await append(
        api,
        team.member,
        [
            entry("lint", "FAIL", commit="c1", issue_key="ENG-7"),
            entry("unit", commit="c1", issue_key="ENG-7"),
            entry("lint", commit="c2", issue_key="ENG-7"),
            entry("unit", commit="c2", issue_key="ENG-7"),
            entry("unit", commit="c3", dirty=True),
        ],
        gates=GATES,
    )
    await append(api, team.member, [entry("unit", commit="c9")])  # no gates file sent
    await sequence_pending(db)

    async def ask(query: str, person: Person = team.member) -> dict[str, Any]:
        response = await api.get(f"{LEDGER}/readiness?{query}", headers=person.headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    prototype = await ask("commit=c1")  # the workspace's tier: prototype by default
    assert (prototype["tier"], prototype["ready"]) == ("prototype", True)
    assert prototype["results"][0]["passing"] == ["unit"]
    pilot = await ask("commit=c1&tier=pilot")
    assert pilot["ready"] is False
    assert [(b["gate_id"], b["reason"]) for b in pilot["results"][0]["blockers"]] == [
        ("lint", "FAIL")
    ]
    production = await ask(f"commit=c2&tier=production&repository={REPO}")
    assert [(b["gate_id"], b["reason"]) for b in production["results"][0]["blockers"]] == [
        ("contract", "missing")
    ]
    dirty = await ask("commit=c3")
    assert [(b["gate_id"], b["reason"]) for b in dirty["results"][0]["blockers"]] == [
        ("unit", "dirty")
    ]
    no_gates = await ask("commit=c9")
    assert no_gates["ready"] is False
    assert no_gates["results"][0]["blockers"][0]["reason"] == "no gates"
    unknown = await ask(f"commit=c404&repository={REPO}")
    assert unknown["ready"] is False
    assert unknown["results"][0]["blockers"][0]["reason"] == "no gates"
    assert (await ask("commit=c404"))["results"] == []

    # An issue: the latest commit it recorded (c2), for the workspace's tier.
    changed = await api.patch(
        "/api/v1/workspaces/team", headers=team.admin.headers, json={"tier": "pilot"}
    )
    assert (changed.status_code, changed.json()["tier"]) == (200, "pilot")
    issue = await ask("issue_key=ENG-7")
    assert (issue["tier"], issue["ready"]) == ("pilot", True)
    assert [r["commit"] for r in issue["results"]] == ["c2"]
    assert (await ask("issue_key=ENG-8"))["ready"] is False

    # A later, weaker gates file for the same commit does not lower the bar.
    await append(
        api,
        team.member,
        [entry("unit", commit="c2")],
        gates=[{"id": "unit", "required_in": ["prototype"]}],
    )
    await sequence_pending(db)
    assert (await ask("commit=c2&tier=production"))["results"][0]["required"] == [
        "contract",
        "lint",
        "unit",
    ]

    # Only admins change the tier; a bad tier changes nothing.
    for person, body, status in (
        (team.member, {"tier": "production"}, 403),
        (team.admin, {"tier": "beta"}, 422),
    ):
        response = await api.patch("/api/v1/workspaces/team", headers=person.headers, json=body)
        assert response.status_code == status, response.text
    shown = await api.get("/api/v1/workspaces/team", headers=team.member.headers)
    assert shown.json()["tier"] == "pilot"
