"""The daemon protocol driven by a scripted daemon over HTTP, on SQLite and PostgreSQL.

The lifecycle (register, long-poll, claim, messages, usage, progress, complete), the
failure paths (lease expiry and takeover, cancel during a run, retry with backoff, final
failure, orphans after a restart), the triggers from the board, task tokens, and every
refusal of bad input — each refusal checked to change nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from forgehall.agents import dispatch
from forgehall.agents.models import Runtime, Task, TaskMessage
from forgehall.app import AppOptions, create_app
from forgehall.db.engine import Database
from forgehall.settings import Settings
from tests.conftest import Person, RecordingMailer, make_person, make_workspace, new_client

WS = "/api/v1/workspaces/team"
DAEMON = "/api/v1/daemon"


@pytest.fixture
async def api(
    settings: Settings, db: Database, mailer: RecordingMailer
) -> AsyncIterator[httpx.AsyncClient]:
    priced = Settings(
        **{**settings.model_dump(), "model_prices": {"m-priced": (3.0, 15.0, 0.3, 3.75)}}
    )
    app: FastAPI = create_app(priced, db=db, options=AppOptions(run_services=False), mailer=mailer)
    async with app.router.lifespan_context(app), new_client(app, origin=None) as client:
        yield client


@dataclass
class World:
    owner: Person
    member: Person
    outsider: Person
    agent: dict[str, Any]
    todo: str
    backlog: str
    done: str


@pytest.fixture
async def world(db: Database, api: httpx.AsyncClient) -> World:
    owner = await make_person(db, "owner@example.com")
    member = await make_person(db, "mia@example.com")
    outsider = await make_person(db, "out@example.com")
    await make_workspace(db, owner, "team", {"member": member})
    await make_workspace(db, outsider, "other")
    agent = await api.post(
        f"{WS}/agents",
        headers=owner.headers,
        json={"name": "claude", "provider": "claude", "instructions": "Be brief."},
    )
    assert agent.status_code == 201, agent.text
    statuses = (await api.get(f"{WS}/statuses", headers=owner.headers)).json()
    by_category = {s["category"]: s["id"] for s in reversed(statuses)}
    repo = await api.post(
        f"{WS}/repositories",
        headers=owner.headers,
        json={"name": "api", "url": "https://git.example.com/acme/api.git"},
    )
    assert repo.status_code == 201, repo.text
    return World(
        owner=owner,
        member=member,
        outsider=outsider,
        agent=agent.json(),
        todo=by_category["todo"],
        backlog=by_category["backlog"],
        done=by_category["done"],
    )


class Daemon:
    """What a runtime daemon sends, scripted."""

    def __init__(self, api: httpx.AsyncClient, token: str, daemon_id: str) -> None:
        self.api = api
        self.headers = {"Authorization": f"Bearer {token}"}
        self.daemon_id = daemon_id
        self.runtime_id = ""

    async def post(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return await self.api.post(f"{DAEMON}{path}", headers=self.headers, json=body or {})

    async def register(self, providers: dict[str, str] | None = None) -> dict[str, Any]:
        response = await self.post(
            "/runtimes",
            {
                "daemon_id": self.daemon_id,
                "machine": f"host-{self.daemon_id}",
                "providers": providers or {"claude": "2.0.1"},
                "capacity": 4,
            },
        )
        assert response.status_code == 200, response.text
        self.runtime_id = response.json()["runtime_id"]
        return dict(response.json())

    async def claim(self, wait: float = 0, limit: int = 5) -> dict[str, Any]:
        response = await self.post(
            f"/runtimes/{self.runtime_id}/claim", {"wait": wait, "limit": limit}
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def report(self, task: dict[str, Any], what: str, **body: Any) -> httpx.Response:
        return await self.post(
            f"/tasks/{task['id']}/{what}", {"lease_token": task["lease_token"], **body}
        )


async def daemon_token(api: httpx.AsyncClient, person: Person, ws: str = WS) -> str:
    response = await api.post(f"{ws}/daemon-tokens", headers=person.headers, json={"name": "d"})
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


async def new_daemon(api: httpx.AsyncClient, w: World, daemon_id: str = "d1") -> Daemon:
    daemon = Daemon(api, await daemon_token(api, w.owner), daemon_id)
    await daemon.register()
    return daemon


async def new_issue(api: httpx.AsyncClient, w: World, **body: Any) -> dict[str, Any]:
    response = await api.post(
        f"{WS}/issues", headers=w.owner.headers, json={"title": "Fix the login", **body}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def to_agent(w: World) -> dict[str, str]:
    return {"kind": "agent", "id": w.agent["id"]}


async def tasks(db: Database) -> list[Task]:
    async with db.read_session() as session:
        return list((await session.execute(select(Task).order_by(Task.created_at))).scalars())


async def expire(db: Database, task_id: str) -> None:
    async with db.session() as session:
        await session.execute(
            update(Task)
            .where(Task.id == task_id)
            .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()


async def make_available(db: Database) -> None:
    """Skip the backoff wait (the backoff itself is asserted where it is set)."""
    async with db.session() as session:
        await session.execute(
            update(Task).where(Task.status == "queued").values(available_at=datetime.now(UTC))
        )
        await session.commit()


# --- the lifecycle ------------------------------------------------------------------------------


async def test_lifecycle_from_assignment_to_completion(
    api: httpx.AsyncClient, world: World, db: Database
) -> None:
    daemon = await new_daemon(api, world)
    runtimes = (await api.get(f"{WS}/runtimes", headers=world.member.headers)).json()
    assert [(r["id"], r["online"], r["providers"]) for r in runtimes] == [
        (daemon.runtime_id, True, {"claude": "2.0.1"})
    ]
    labels = [
        (await api.post(f"{WS}/labels", headers=world.owner.headers, json={"name": n})).json()
        for n in ("regression", "auth")
    ]
    issue = await new_issue(
        api,
        world,
        description="Users land on /404 after login.",
        label_ids=[label["id"] for label in labels],
    )
    await api.post(
        f"{WS}/issues/{issue['key']}/comments",
        headers=world.owner.headers,
        json={"body": "It started after the proxy change."},
    )

    waiting = asyncio.create_task(daemon.claim(wait=30))
    await asyncio.sleep(0.3)
    assert not waiting.done(), "nothing to claim yet: the claim waits"
    assigned = await api.patch(
        f"{WS}/issues/{issue['key']}",
        headers=world.owner.headers,
        json={"revision": issue["revision"], "assignee": to_agent(world)},
    )
    assert assigned.status_code == 200, assigned.text
    claimed = await asyncio.wait_for(waiting, 10)
    (task,) = claimed["tasks"]
    assert task["attempt"] == 1
    assert task["trigger"] == "assigned"
    assert task["agent"]["name"] == "claude"
    assert task["agent"]["instructions"] == "Be brief."
    assert task["issue"]["key"] == issue["key"]
    assert task["issue"]["description"] == "Users land on /404 after login."
    assert [(c["author"], c["body"]) for c in task["issue"]["comments"]] == [
        ("member:owner", "It started after the proxy change.")
    ]
    assert task["issue"]["labels"] == ["auth", "regression"]
    assert (task["issue"]["status"], task["issue"]["status_category"]) == ("Todo", "todo")
    assert task["repositories"] == [
        {"name": "api", "url": "https://git.example.com/acme/api.git", "default_branch": "main"}
    ]
    assert task["prior_session_id"] is None
    assert task["task_token"].startswith("fh_tsk_")

    # The agent process acts through the API with its task token, as the agent.
    as_agent = {"Authorization": f"Bearer {task['task_token']}"}
    said = await api.post(
        f"{WS}/issues/{issue['key']}/comments", headers=as_agent, json={"body": "On it."}
    )
    assert said.status_code == 201, said.text
    assert said.json()["author"] == {"kind": "agent", "id": world.agent["id"]}
    assert (await daemon.claim())["tasks"] == [], "its own comment does not wake the agent"

    started = await daemon.report(task, "start", session_id="sess-1")
    assert started.json()["status"] == "running"
    batch = [
        {"seq": 1, "kind": "thinking", "content": "Reading the proxy config"},
        {"seq": 2, "kind": "tool_use", "content": '{"tool": "bash", "input": "git log"}'},
        {"seq": 3, "kind": "tool_result", "content": "3 commits"},
    ]
    stored = await daemon.report(task, "messages", messages=batch)
    assert stored.json() == {"stored": 3, "duplicates": 0}
    retried = await daemon.report(
        task, "messages", messages=[*batch[1:], {"seq": 4, "kind": "text", "content": "Fixed."}]
    )
    assert retried.json() == {"stored": 1, "duplicates": 2}, "a retried batch is not duplicated"
    usage = [
        {"model": "m-priced", "input_tokens": 1_000_000, "output_tokens": 100_000},
        {"model": "m-reported", "input_tokens": 10, "output_tokens": 5, "cost_usd": 0.25},
        {"model": "m-unknown", "input_tokens": 7},
    ]
    assert (await daemon.report(task, "usage", usage=usage)).status_code == 200
    usage[0]["output_tokens"] = 200_000  # totals so far: the next report replaces
    assert (
        await daemon.report(task, "usage", usage=[*usage, {"model": "m-gone"}])
    ).status_code == 200
    assert (await daemon.report(task, "usage", usage=usage)).status_code == 200
    progress = await daemon.report(task, "progress", summary="Running the tests")
    assert progress.status_code == 200
    done = await daemon.report(task, "complete", summary="Fixed the redirect.", session_id="s-2")
    assert done.json()["status"] == "completed"
    assert done.json()["follow_up_id"] is None

    shown = (await api.get(f"{WS}/tasks/{task['id']}", headers=world.member.headers)).json()
    assert shown["status"] == "completed"
    assert shown["issue_key"] == issue["key"]
    assert shown["agent_name"] == "claude"
    assert shown["progress"] == "Running the tests"
    assert shown["result"] == "Fixed the redirect."
    assert shown["session_id"] == "s-2"
    costs = {u["model"]: (u["cost_usd"], u["cost_source"]) for u in shown["usage"]}
    assert costs == {
        "m-priced": (pytest.approx(3.0 + 3.0), "prices"),
        "m-reported": (0.25, "provider"),
        "m-unknown": (0.0, "unpriced"),
    }
    assert shown["cost_usd"] == pytest.approx(6.25)
    log = (await api.get(f"{WS}/tasks/{task['id']}/messages", headers=world.member.headers)).json()
    assert [(m["seq"], m["kind"]) for m in log] == [
        (1, "thinking"),
        (2, "tool_use"),
        (3, "tool_result"),
        (4, "text"),
    ]
    page = await api.get(
        f"{WS}/tasks/{task['id']}/messages", params={"after": 2}, headers=world.member.headers
    )
    assert [m["seq"] for m in page.json()] == [3, 4]

    gone = await api.post(
        f"{WS}/issues/{issue['key']}/comments", headers=as_agent, json={"body": "late"}
    )
    assert gone.status_code == 401, "the task token ends with the task"

    # The next run resumes the CLI session of this one.
    rerun = await api.post(f"{WS}/tasks/{task['id']}/rerun", headers=world.member.headers)
    assert rerun.status_code == 200, rerun.text
    (second,) = (await daemon.claim())["tasks"]
    assert second["trigger"] == "manual"
    assert second["prior_session_id"] == "s-2"


async def test_triggers_from_the_board(api: httpx.AsyncClient, world: World, db: Database) -> None:
    daemon = await new_daemon(api, world)
    parked = await new_issue(api, world, status_id=world.backlog, assignee=to_agent(world))
    assert await tasks(db) == [], "assigned in the backlog: no work yet"
    moved = await api.patch(
        f"{WS}/issues/{parked['key']}",
        headers=world.owner.headers,
        json={"revision": parked["revision"], "status_id": world.todo},
    )
    assert moved.status_code == 200
    assert [(t.trigger, t.status) for t in await tasks(db)] == [("assigned", "queued")]
    (task,) = (await daemon.claim())["tasks"]
    await daemon.report(task, "start")

    for _ in range(3):  # comments while it runs: exactly one follow-up
        said = await api.post(
            f"{WS}/issues/{parked['key']}/comments",
            headers=world.member.headers,
            json={"body": "one more thing"},
        )
        assert said.status_code == 201
    done = await daemon.report(task, "complete")
    follow_up = done.json()["follow_up_id"]
    assert follow_up
    assert [(t.trigger, t.status) for t in await tasks(db)] == [
        ("assigned", "completed"),
        ("follow_up", "queued"),
    ]
    (again,) = (await daemon.claim())["tasks"]
    assert again["id"] == follow_up
    await daemon.report(again, "complete")

    # A mention asks an agent that is not the assignee.
    other = await new_issue(api, world, title="Docs")
    mentioned = await api.post(
        f"{WS}/issues/{other['key']}/comments",
        headers=world.member.headers,
        json={"body": "@claude can you look?"},
    )
    assert mentioned.status_code == 201
    (looked,) = (await daemon.claim())["tasks"]
    assert (looked["issue"]["key"], looked["trigger"]) == (other["key"], "mentioned")
    assert looked["issue"]["labels"] == []
    await daemon.report(looked, "complete")

    # Unblocked: the blocked issue's agent is woken when its last blocker is done.
    blocker = await new_issue(api, world, title="Blocker")
    blocked = await new_issue(api, world, title="Blocked", assignee=to_agent(world))
    (first_run,) = (await daemon.claim())["tasks"]
    await daemon.report(first_run, "complete")
    linked = await api.post(
        f"{WS}/issues/{blocked['key']}/dependencies",
        headers=world.owner.headers,
        json={"blocked_by": blocker["key"]},
    )
    assert linked.status_code in (200, 201, 204), linked.text
    current = (await api.get(f"{WS}/issues/{blocker['key']}", headers=world.owner.headers)).json()
    closed = await api.patch(
        f"{WS}/issues/{blocker['key']}",
        headers=world.owner.headers,
        json={"revision": current["revision"], "status_id": world.done},
    )
    assert closed.status_code == 200
    (woken,) = (await daemon.claim())["tasks"]
    assert (woken["issue"]["key"], woken["trigger"]) == (blocked["key"], "unblocked")


async def test_fifty_concurrent_comments_make_one_task(
    api: httpx.AsyncClient, world: World, db: Database
) -> None:
    issue = await new_issue(api, world, assignee=to_agent(world))
    responses = await asyncio.gather(
        *(
            api.post(
                f"{WS}/issues/{issue['key']}/comments",
                headers=world.member.headers,
                json={"body": f"ping {i}"},
            )
            for i in range(50)
        )
    )
    assert {r.status_code for r in responses} == {201}
    assert [(t.trigger, t.status) for t in await tasks(db)] == [("assigned", "queued")]


# --- failure paths -------------------------------------------------------------------------


async def test_lease_expiry_hands_the_task_over_and_fences_the_first_daemon(
    api: httpx.AsyncClient, world: World, db: Database
) -> None:
    first = await new_daemon(api, world, "d1")
    second = await new_daemon(api, world, "d2")
    await new_issue(api, world, assignee=to_agent(world))
    (task,) = (await first.claim())["tasks"]
    await first.report(task, "start")
    await expire(db, task["id"])
    assert await dispatch.expire_leases(db, None) == [task["id"]]
    (row,) = await tasks(db)
    assert (row.status, row.failure_class) == ("queued", "lease_expired")
    assert row.available_at > datetime.now(UTC) + timedelta(seconds=5), "backoff"
    await make_available(db)
    (taken,) = (await second.claim())["tasks"]
    assert taken["id"] == task["id"]
    assert taken["attempt"] == 2
    late = await first.report(task, "complete", summary="I was not dead")
    assert late.status_code == 409
    assert late.json()["type"] == "/problems/stale-lease"
    late_messages = await first.report(
        task, "messages", messages=[{"seq": 1, "kind": "text", "content": "zombie"}]
    )
    assert late_messages.status_code == 409
    ok = await second.report(taken, "complete", summary="done")
    assert ok.json()["status"] == "completed"
    async with db.read_session() as session:
        assert list((await session.execute(select(TaskMessage))).scalars()) == []
    shown = (await api.get(f"{WS}/tasks/{task['id']}", headers=world.owner.headers)).json()
    assert shown["result"] == "done"


async def test_cancel_during_a_run_reaches_the_waiting_daemon(
    api: httpx.AsyncClient, world: World, db: Database
) -> None:
    daemon = await new_daemon(api, world)
    await new_issue(api, world, assignee=to_agent(world))
    (task,) = (await daemon.claim())["tasks"]
    await daemon.report(task, "start")
    waiting = asyncio.create_task(daemon.claim(wait=30))
    await asyncio.sleep(0.3)
    cancelled = await api.post(f"{WS}/tasks/{task['id']}/cancel", headers=world.member.headers)
    assert cancelled.status_code == 200
    assert cancelled.json()["cancel_requested"] is True
    told = await asyncio.wait_for(waiting, 10)
    assert told == {"tasks": [], "cancel": [task["id"]]}
    assert (await daemon.claim())["cancel"] == [], "a claim tells a cancellation once"
    beat = await daemon.post(f"/runtimes/{daemon.runtime_id}/heartbeat")
    assert beat.json() == {"cancel": [task["id"]]}, "heartbeats repeat it until it ends"
    stopped = await daemon.report(task, "fail", failure_class="cancelled", detail="stopped")
    assert stopped.json()["status"] == "cancelled"
    again = await api.post(f"{WS}/tasks/{task['id']}/cancel", headers=world.member.headers)
    assert again.status_code == 409
    assert again.json()["current_state"] == "cancelled"
    issue = (await api.get(f"{WS}/issues", headers=world.owner.headers)).json()["items"][0]
    assert issue["status"]["category"] == "todo", "a cancelled task leaves the issue alone"


async def test_retry_with_backoff_then_final_failure_returns_the_issue_to_todo(
    api: httpx.AsyncClient, world: World, db: Database
) -> None:
    daemon = await new_daemon(api, world)
    in_progress = next(
        s["id"]
        for s in (await api.get(f"{WS}/statuses", headers=world.owner.headers)).json()
        if s["category"] == "in_progress"
    )
    issue = await new_issue(api, world, status_id=in_progress, assignee=to_agent(world))
    for attempt in (1, 2, 3):
        (task,) = (await daemon.claim())["tasks"]
        assert task["attempt"] == attempt
        failed = await daemon.report(
            task, "fail", failure_class="provider_network", detail="connection reset"
        )
        if attempt < 3:
            assert failed.json()["status"] == "queued"
            assert (await daemon.claim())["tasks"] == [], "backoff: not claimable yet"
            await make_available(db)
    assert failed.json()["status"] == "failed"
    shown = (await api.get(f"{WS}/issues/{issue['key']}", headers=world.owner.headers)).json()
    assert shown["status"]["category"] == "todo"
    comments = (
        await api.get(f"{WS}/issues/{issue['key']}/comments", headers=world.owner.headers)
    ).json()
    assert comments[-1]["author"] == {"kind": "agent", "id": world.agent["id"]}
    assert "provider_network" in comments[-1]["body"]
    assert "connection reset" in comments[-1]["body"]
    inbox = (await api.get(f"{WS}/inbox", headers=world.owner.headers)).json()
    assert "task_failed" in [n["kind"] for n in inbox]


async def test_final_failure_class_ends_at_once(
    api: httpx.AsyncClient, world: World, db: Database
) -> None:
    daemon = await new_daemon(api, world)
    await new_issue(api, world, assignee=to_agent(world))
    (task,) = (await daemon.claim())["tasks"]
    failed = await daemon.report(task, "fail", failure_class="agent_error", detail="exit 2")
    assert (failed.json()["status"], failed.json()["attempt"]) == ("failed", 1)


async def test_orphans_reported_after_a_restart_are_retried_at_once(
    api: httpx.AsyncClient, world: World, db: Database
) -> None:
    daemon = await new_daemon(api, world)
    await new_issue(api, world, assignee=to_agent(world))
    (task,) = (await daemon.claim())["tasks"]
    await daemon.report(task, "start")
    restarted = Daemon(api, daemon.headers["Authorization"][7:], "d1")
    again = await restarted.register()
    assert again["runtime_id"] == daemon.runtime_id, "the same daemon id is the same runtime"
    reported = await restarted.post(
        f"/runtimes/{restarted.runtime_id}/orphans", {"task_ids": [task["id"], "unknown"]}
    )
    assert reported.json() == {"retried": [task["id"]], "ended": []}
    (retried,) = (await restarted.claim())["tasks"]
    assert (retried["id"], retried["attempt"]) == (task["id"], 2)
    stale = await daemon.report(task, "complete")
    assert stale.status_code == 409


# --- bad input -------------------------------------------------------------------------------


async def test_bad_input_is_refused_and_changes_nothing(
    api: httpx.AsyncClient, world: World, db: Database
) -> None:
    daemon = await new_daemon(api, world)
    await new_issue(api, world, assignee=to_agent(world))
    (task,) = (await daemon.claim())["tasks"]
    await daemon.report(task, "start")
    await daemon.report(task, "messages", messages=[{"seq": 1, "kind": "text", "content": "a"}])

    async def state() -> list[tuple[Any, ...]]:
        async with db.read_session() as session:
            rows = (await session.execute(select(Task))).scalars()
            messages = (await session.execute(select(TaskMessage.seq))).scalars()
            return [
                *((t.id, t.status, t.attempt, t.lease_token, t.result) for t in rows),
                tuple(messages),
            ]

    before = await state()
    other_daemon = Daemon(
        api,
        await daemon_token(api, world.outsider, "/api/v1/workspaces/other"),
        "d-other",
    )
    await other_daemon.register()
    checks: list[tuple[httpx.Response, int, str | None]] = [
        (await daemon.post("/tasks/unknown/complete", {"lease_token": "x"}), 404, None),
        (await other_daemon.report(task, "complete"), 404, None),
        (await other_daemon.post(f"/runtimes/{daemon.runtime_id}/heartbeat"), 403, None),
        (await other_daemon.post(f"/runtimes/{daemon.runtime_id}/claim", {}), 403, None),
        (await daemon.post("/runtimes/nope/heartbeat"), 404, None),
        (
            await api.post(
                f"{DAEMON}/runtimes/{daemon.runtime_id}/claim",
                headers=world.owner.headers,
                json={},
            ),
            403,
            "wrong-token-kind",
        ),
        (
            await daemon.post(
                f"/tasks/{task['id']}/complete", {"lease_token": "0" * 32, "summary": "x"}
            ),
            409,
            "stale-lease",
        ),
        (await daemon.report(task, "start"), 409, "invalid-transition"),
        (
            await daemon.report(
                task,
                "messages",
                messages=[{"seq": i, "kind": "text", "content": "x"} for i in range(1, 502)],
            ),
            413,
            "batch-too-large",
        ),
        (
            await daemon.report(
                task, "messages", messages=[{"seq": 2, "kind": "text", "content": "x" * 300_000}]
            ),
            413,
            "message-too-large",
        ),
        (
            await daemon.report(
                task, "messages", messages=[{"seq": 0, "kind": "x", "content": ""}]
            ),
            422,
            None,
        ),
        (await daemon.report(task, "fail", failure_class="weird"), 422, None),
        (await daemon.post(f"/runtimes/{daemon.runtime_id}/claim", {"wait": 31}), 422, None),
        (
            await api.get(
                f"/api/v1/workspaces/other/tasks/{task['id']}", headers=world.outsider.headers
            ),
            404,
            None,
        ),
        (await api.post(f"{WS}/tasks/nope/cancel", headers=world.owner.headers), 404, None),
    ]
    for response, status, problem in checks:
        assert response.status_code == status, (response.request.url, response.text)
        if problem is not None:
            assert response.json()["type"] == f"/problems/{problem}"
    stale = await daemon.post(
        f"/tasks/{task['id']}/complete", {"lease_token": "0" * 32, "summary": "x"}
    )
    assert stale.json()["current_state"] == "running"
    assert await state() == before


async def test_a_cancel_survives_a_restart_of_the_daemon(
    api: httpx.AsyncClient, world: World, db: Database
) -> None:
    """A cancelled task that comes back as an orphan (or a retryable failure) ends
    cancelled; it is never handed out again."""
    daemon = await new_daemon(api, world)
    await new_issue(api, world, assignee=to_agent(world))
    await new_issue(api, world, title="second", assignee=to_agent(world))
    first, second = (await daemon.claim())["tasks"]
    for task in (first, second):
        await daemon.report(task, "start")
        cancelled = await api.post(f"{WS}/tasks/{task['id']}/cancel", headers=world.owner.headers)
        assert cancelled.status_code == 200
    reported = await daemon.post(
        f"/runtimes/{daemon.runtime_id}/orphans", {"task_ids": [first["id"]]}
    )
    assert reported.json() == {"retried": [], "ended": [first["id"]]}
    failed = await daemon.report(second, "fail", failure_class="provider_network", detail="reset")
    assert failed.json()["status"] == "cancelled"
    await make_available(db)
    assert (await daemon.claim())["tasks"] == []
    assert {(t.status, t.failure_class) for t in await tasks(db)} == {("cancelled", "cancelled")}


async def test_daemon_tokens_are_listed_and_revoked_by_admins(
    api: httpx.AsyncClient, world: World
) -> None:
    daemon = await new_daemon(api, world)
    listed = await api.get(f"{WS}/daemon-tokens", headers=world.owner.headers)
    assert listed.status_code == 200
    (token,) = listed.json()
    assert token["kind"] == "dmn"
    assert "token" not in token, "a token is shown once, at minting"
    assert (await api.get(f"{WS}/daemon-tokens", headers=world.member.headers)).status_code == 403
    other = await api.delete(
        f"/api/v1/workspaces/other/daemon-tokens/{token['id']}", headers=world.outsider.headers
    )
    assert other.status_code == 404
    revoked = await api.delete(f"{WS}/daemon-tokens/{token['id']}", headers=world.owner.headers)
    assert revoked.status_code == 204
    refused = await daemon.post(f"/runtimes/{daemon.runtime_id}/heartbeat")
    assert refused.status_code == 401


async def test_unassigning_the_agent_cancels_its_work(
    api: httpx.AsyncClient, world: World, db: Database
) -> None:
    daemon = await new_daemon(api, world)
    claimed = await new_issue(api, world, assignee=to_agent(world))
    waiting = await new_issue(api, world, title="second", assignee=to_agent(world))
    (task,) = (await daemon.claim(limit=1))["tasks"]
    assert task["issue"]["key"] == claimed["key"]
    await daemon.report(task, "start")
    for issue in (claimed, waiting):
        current = (await api.get(f"{WS}/issues/{issue['key']}", headers=world.owner.headers)).json()
        moved = await api.patch(
            f"{WS}/issues/{issue['key']}",
            headers=world.owner.headers,
            json={
                "revision": current["revision"],
                "assignee": {"kind": "member", "id": world.member.user.id},
            },
        )
        assert moved.status_code == 200, moved.text
    states = {t.issue_id: (t.status, t.cancel_requested_at is not None) for t in await tasks(db)}
    assert states == {claimed["id"]: ("running", True), waiting["id"]: ("cancelled", False)}
    beat = await daemon.post(f"/runtimes/{daemon.runtime_id}/heartbeat")
    assert beat.json() == {"cancel": [task["id"]]}


async def test_a_heartbeat_renews_only_the_tasks_the_daemon_holds(
    api: httpx.AsyncClient, world: World, db: Database
) -> None:
    """A task whose claim answer was lost is not kept alive by the daemon's heartbeats."""
    daemon = await new_daemon(api, world)
    await new_issue(api, world, assignee=to_agent(world))
    await new_issue(api, world, title="lost", assignee=to_agent(world))
    known, lost = (await daemon.claim())["tasks"]
    for task in (known, lost):
        await expire(db, task["id"])
    beat = await daemon.post(f"/runtimes/{daemon.runtime_id}/heartbeat", {"held": [known["id"]]})
    assert beat.status_code == 200
    assert await dispatch.expire_leases(db, None) == [lost["id"]]
    still = await daemon.report(known, "start")
    assert still.json()["status"] == "running"


async def test_a_claim_records_the_runtime_alive_only_when_its_last_sign_is_old(
    api: httpx.AsyncClient, world: World, db: Database
) -> None:
    """A daemon claims in a loop: each attempt does not rewrite the runtime's row, but a
    claim after a quiet spell keeps the runtime online all the same."""

    async def last_seen() -> datetime:
        async with db.read_session() as session:
            seen = await session.scalar(
                select(Runtime.last_heartbeat_at).where(Runtime.id == daemon.runtime_id)
            )
        assert seen is not None
        return seen

    daemon = await new_daemon(api, world)
    registered = await last_seen()
    await daemon.claim()
    assert await last_seen() == registered, "a fresh sign of life is not written again"
    old = registered - dispatch.CLAIM_TOUCH_AFTER - timedelta(seconds=1)
    async with db.session() as session:
        await session.execute(
            update(Runtime).where(Runtime.id == daemon.runtime_id).values(last_heartbeat_at=old)
        )
        await session.commit()
    await daemon.claim()
    assert await last_seen() > registered, "an old one is renewed by the claim"


async def test_the_watchdog_waits_one_lease_after_the_server_starts(
    api: httpx.AsyncClient, world: World, db: Database
) -> None:
    """Daemons could not heartbeat while the server was down: the first lease after a
    start is theirs to renew (and to deliver what they journaled) before expiry runs."""
    daemon = await new_daemon(api, world)
    await new_issue(api, world, assignee=to_agent(world))
    (task,) = (await daemon.claim())["tasks"]
    await expire(db, task["id"])
    watchdog = dispatch.TaskWatchdog(db)
    await watchdog.run_once()
    assert [(t.status, t.attempt) for t in await tasks(db)] == [("dispatched", 1)]
    watchdog._since -= dispatch.STARTUP_GRACE_SECONDS
    await watchdog.run_once()
    assert [(t.status, t.failure_class) for t in await tasks(db)] == [("queued", "lease_expired")]


async def test_issue_states_tell_the_daemon_which_worktrees_it_may_remove(
    api: httpx.AsyncClient, world: World
) -> None:
    daemon = await new_daemon(api, world)
    open_issue = await new_issue(api, world, title="Still going")
    done_issue = await new_issue(api, world, title="Finished")
    statuses = (await api.get(f"{WS}/statuses", headers=world.owner.headers)).json()
    done_id = next(s["id"] for s in statuses if s["category"] == "done")
    moved = await api.patch(
        f"{WS}/issues/{done_issue['key']}",
        headers=world.owner.headers,
        json={"revision": done_issue["revision"], "status_id": done_id},
    )
    assert moved.status_code == 200, moved.text
    asked = [open_issue["key"], done_issue["key"], "ENG-999", "OTHER-1", "garbage"]
    answer = await daemon.post(f"/runtimes/{daemon.runtime_id}/issue-states", {"keys": asked})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "categories": {open_issue["key"]: "todo", done_issue["key"]: "done"}
    }, "unknown keys and other workspaces' keys are left out"

    other = Daemon(
        api, await daemon_token(api, world.outsider, "/api/v1/workspaces/other"), "d-other"
    )
    await other.register()
    refused = await other.post(f"/runtimes/{daemon.runtime_id}/issue-states", {"keys": asked})
    assert refused.status_code == 403, "another workspace's runtime"
    too_many = await daemon.post(
        f"/runtimes/{daemon.runtime_id}/issue-states", {"keys": ["ENG-1"] * 1001}
    )
    assert too_many.status_code == 422


async def test_a_task_no_online_runtime_can_run_fails_with_a_clear_reason(
    api: httpx.AsyncClient, world: World, db: Database
) -> None:
    from forgehall.agents.models import Runtime

    daemon = await new_daemon(api, world)  # advertises claude only
    created = await api.post(
        f"{WS}/agents", headers=world.owner.headers, json={"name": "gem", "provider": "gemini"}
    )
    assert created.status_code == 201, created.text
    issue = await new_issue(api, world, assignee={"kind": "agent", "id": created.json()["id"]})
    (task,) = await tasks(db)

    async def age(**values: Any) -> None:
        async with db.session() as session:
            await session.execute(update(Task).values(**values))
            await session.commit()

    assert await dispatch.fail_unrunnable(db, None) == [], "queued moments ago: it waits"
    await age(created_at=datetime.now(UTC) - timedelta(minutes=3))
    async with db.session() as session:  # nobody online at all: it keeps waiting
        await session.execute(
            update(Runtime).values(last_heartbeat_at=datetime.now(UTC) - timedelta(hours=1))
        )
        await session.commit()
    assert await dispatch.fail_unrunnable(db, None) == []
    hb = await daemon.post(f"/runtimes/{daemon.runtime_id}/heartbeat")
    assert hb.status_code == 200

    assert await dispatch.fail_unrunnable(db, None) == [task.id]
    (failed,) = await tasks(db)
    assert (failed.status, failed.failure_class) == ("failed", "agent_error")
    assert "provider 'gemini'" in (failed.failure_detail or "")
    assert "host-d1 (claude)" in (failed.failure_detail or ""), failed.failure_detail
    comments = (
        await api.get(f"{WS}/issues/{issue['key']}/comments", headers=world.owner.headers)
    ).json()
    assert any("gemini" in c["body"] for c in comments), comments
    shown = (await api.get(f"{WS}/issues/{issue['key']}", headers=world.owner.headers)).json()
    assert shown["status"]["category"] == "todo"
    assert await dispatch.fail_unrunnable(db, None) == [], "nothing twice"
