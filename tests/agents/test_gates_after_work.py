"""Gates after an agent's work, server side, driven by a scripted daemon (SQLite and
PostgreSQL): the task's entries decide, on ``complete``, whether the issue goes to review
or back to the agent with the failing gates, and after too many rounds to blocked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from sqlalchemy import func, select

from forgehall.app import AppOptions, create_app
from forgehall.db.engine import Database
from forgehall.ledger.models import LedgerPending
from forgehall.settings import Settings
from tests.agents.test_protocol import (
    WS,
    Daemon,
    expire,
    make_available,
    new_daemon,
    new_issue,
    tasks,
    to_agent,
)
from tests.conftest import (
    Person,
    RecordingMailer,
    make_person,
    make_settings,
    make_workspace,
    new_client,
)

REPOSITORY = "https://git.example.com/acme/api.git"
COMMIT = "9f2c" * 10
ROUNDS = 2


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_url,
        encryption_key=Fernet.generate_key().decode(),
        gate_fix_rounds=ROUNDS,
    )


@pytest.fixture
async def api(
    settings: Settings, db: Database, mailer: RecordingMailer
) -> AsyncIterator[httpx.AsyncClient]:
    app: FastAPI = create_app(
        settings, db=db, options=AppOptions(run_services=False), mailer=mailer
    )
    async with app.router.lifespan_context(app), new_client(app, origin=None) as client:
        yield client


class World:
    def __init__(self, owner: Person, agent: dict[str, Any], daemon: Daemon) -> None:
        self.owner = owner
        self.agent = agent
        self.daemon = daemon


@pytest.fixture
async def world(db: Database, api: httpx.AsyncClient) -> World:
    owner = await make_person(db, "owner@example.com")
    await make_workspace(db, owner, "team")
    agent = await api.post(
        f"{WS}/agents", headers=owner.headers, json={"name": "claude", "provider": "claude"}
    )
    assert agent.status_code == 201, agent.text
    w = World(owner, agent.json(), Daemon(api, "", ""))
    w.daemon = await new_daemon(api, w)  # type: ignore[arg-type]
    return w


def entry(task: dict[str, Any], gate_id: str, result: str, stdout: str = "") -> dict[str, Any]:
    failed = result != "PASS"
    return {
        "gate_id": gate_id,
        "gate_name": gate_id,
        "result": result,
        "reason": "exit 1" if failed else None,
        "scope": {
            "repository": REPOSITORY,
            "commit": COMMIT,
            "branch": f"forgehall/claude/{task['issue']['key']}",
            "dirty": False,
            "issue_key": task["issue"]["key"],
            "task_id": task["id"],
        },
        "command": f"make {gate_id}",
        "command_sha256": "0" * 64,
        "exit_code": 1 if failed else 0,
        "started_at": "2026-01-01T00:00:00.000Z",
        "finished_at": "2026-01-01T00:00:01.000Z",
        "duration_ms": 1000,
        "stdout_sha256": "1" * 64,
        "stderr_sha256": "2" * 64,
        "stdout_excerpt": stdout,
        "stderr_excerpt": "",
        "runner": {"host": "build-1", "runtime_id": None},
        "tier": task["tier"],
    }


GATES = [
    {"id": "unit", "required_in": ["prototype", "pilot", "production"], "allow_failure": False},
    {"id": "lint", "required_in": ["production"], "allow_failure": False},
]


async def submit(
    api: httpx.AsyncClient, task: dict[str, Any], entries: list[dict[str, Any]]
) -> httpx.Response:
    return await api.post(
        f"{WS}/ledger/entries",
        headers={"Authorization": f"Bearer {task['task_token']}"},
        json={"entries": entries, "gates": GATES},
    )


async def assigned_task(api: httpx.AsyncClient, w: World) -> tuple[dict[str, Any], dict[str, Any]]:
    issue = await new_issue(api, w, assignee=to_agent(w))  # type: ignore[arg-type]
    (task,) = (await w.daemon.claim())["tasks"]
    assert (await w.daemon.report(task, "start")).status_code == 200
    return issue, task


async def next_task(w: World, db: Database) -> dict[str, Any]:
    await make_available(db)
    (task,) = (await w.daemon.claim())["tasks"]
    assert (await w.daemon.report(task, "start")).status_code == 200
    return task


async def status_category(api: httpx.AsyncClient, w: World, key: str) -> str:
    issue = (await api.get(f"{WS}/issues/{key}", headers=w.owner.headers)).json()
    return str(issue["status"]["category"])


async def comments(api: httpx.AsyncClient, w: World, key: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = (
        await api.get(f"{WS}/issues/{key}/comments", headers=w.owner.headers)
    ).json()
    return rows


async def test_passing_gates_move_the_issue_to_review(
    api: httpx.AsyncClient, world: World, db: Database
) -> None:
    issue, task = await assigned_task(api, world)
    assert task["tier"] == "prototype", "the claim carries the workspace's tier"
    before = await status_category(api, world, issue["key"])
    assert before != "in_review"
    # lint fails, but only production requires it: the prototype tier is ready.
    sent = await submit(api, task, [entry(task, "unit", "PASS"), entry(task, "lint", "FAIL")])
    assert sent.status_code == 201, sent.text
    done = await world.daemon.report(task, "complete", summary="Done.")
    assert done.status_code == 200, done.text

    assert await status_category(api, world, issue["key"]) == "in_review"
    assert await comments(api, world, issue["key"]) == []
    assert [t.status for t in await tasks(db)] == ["completed"], "nothing more to do"


async def test_a_failing_gate_goes_back_to_the_agent_with_its_output(
    api: httpx.AsyncClient, world: World, db: Database
) -> None:
    issue, task = await assigned_task(api, world)
    as_agent = {"Authorization": f"Bearer {task['task_token']}"}
    current = (await api.get(f"{WS}/issues/{issue['key']}", headers=as_agent)).json()
    statuses = (await api.get(f"{WS}/statuses", headers=world.owner.headers)).json()
    review = next(s["id"] for s in statuses if s["category"] == "in_review")
    moved = await api.patch(
        f"{WS}/issues/{issue['key']}",
        headers=as_agent,
        json={"revision": current["revision"], "status_id": review},
    )
    assert moved.status_code == 200, moved.text  # the agent thinks it is done
    output = "collected 12 items\nFAILED tests/test_login.py::test_redirect - 404"
    sent = await submit(api, task, [entry(task, "unit", "FAIL", output)])
    assert sent.status_code == 201, sent.text
    assert (await world.daemon.report(task, "complete", summary="Done.")).status_code == 200

    assert await status_category(api, world, issue["key"]) == "in_progress"
    (comment,) = await comments(api, world, issue["key"])
    assert comment["author"] == {"kind": "agent", "id": world.agent["id"]}
    assert "`unit` — FAIL: exit 1" in comment["body"]
    assert "FAILED tests/test_login.py::test_redirect - 404" in comment["body"]
    assert "round 1 of 2" in comment["body"]
    rows = await tasks(db)
    assert [(t.status, t.trigger) for t in rows] == [
        ("completed", "assigned"),
        ("queued", "gates_failed"),
    ]
    # The follow-up is the agent's next task, with the comment in its brief.
    follow_up = await next_task(world, db)
    assert follow_up["trigger"] == "gates_failed"
    assert any("FAILED tests/test_login.py" in c["body"] for c in follow_up["issue"]["comments"])


async def test_after_the_allowed_rounds_the_issue_is_blocked(
    api: httpx.AsyncClient, world: World, db: Database
) -> None:
    issue, task = await assigned_task(api, world)
    for round_ in range(ROUNDS + 1):
        if round_:
            task = await next_task(world, db)
            assert task["trigger"] == "gates_failed"
        sent = await submit(api, task, [entry(task, "unit", "FAIL", f"boom {round_}")])
        assert sent.status_code == 201, sent.text
        assert (await world.daemon.report(task, "complete")).status_code == 200

    assert await status_category(api, world, issue["key"]) == "blocked"
    said = await comments(api, world, issue["key"])
    assert len(said) == ROUNDS + 1
    assert "boom 2" in said[-1]["body"]
    assert f"still fail after {ROUNDS} rounds" in said[-1]["body"]
    assert [t.status for t in await tasks(db)] == ["completed"] * (ROUNDS + 1), "no more tasks"
    assert (await world.daemon.claim())["tasks"] == []


async def test_a_task_that_submitted_nothing_changes_nothing(
    api: httpx.AsyncClient, world: World, db: Database
) -> None:
    issue, task = await assigned_task(api, world)
    before = await status_category(api, world, issue["key"])
    # Entries of the same issue from a member (not this task) do not count either.
    member = {**entry(task, "unit", "FAIL"), "scope": {**entry(task, "unit", "FAIL")["scope"]}}
    member["scope"]["task_id"] = None
    by_member = await api.post(
        f"{WS}/ledger/entries",
        headers=world.owner.headers,
        json={"entries": [member], "gates": GATES},
    )
    assert by_member.status_code == 201, by_member.text
    assert (await world.daemon.report(task, "complete", summary="Done.")).status_code == 200

    assert await status_category(api, world, issue["key"]) == before
    assert await comments(api, world, issue["key"]) == []
    assert [t.status for t in await tasks(db)] == ["completed"]


async def test_entries_are_accepted_only_while_the_lease_is_current(
    api: httpx.AsyncClient, world: World, db: Database
) -> None:
    _, task = await assigned_task(api, world)
    await expire(db, task["id"])
    late = await submit(api, task, [entry(task, "unit", "PASS")])
    assert late.status_code == 403, late.text
    assert late.json()["type"].endswith("task-lease-ended")

    _, other = await assigned_task(api, world)
    assert (await world.daemon.report(other, "complete")).status_code == 200
    after = await submit(api, other, [entry(other, "unit", "PASS")])
    assert after.status_code == 401, after.text  # its token was revoked with the lease
    async with db.read_session() as session:
        stored = await session.scalar(select(func.count()).select_from(LedgerPending))
    assert stored == 0, "nothing of a refused append is stored"
