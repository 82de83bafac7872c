"""Agent profiles and runtimes through the HTTP API, on SQLite and PostgreSQL: the
lifecycle, every validation error (which changes nothing), write-only encrypted env,
permissions, tenant isolation and the derived status."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from sqlalchemy import text

from forgehall.agents import queue, service
from forgehall.agents.models import Agent, Runtime, Task
from forgehall.app import AppOptions, create_app
from forgehall.db.engine import Database
from forgehall.db.types import install_vault, utcnow
from forgehall.settings import Settings
from tests.conftest import Person, RecordingMailer, make_person, make_workspace, new_client

WS = "/api/v1/workspaces/team"
SECRET = "sk-live-very-secret-value-0123456789"


async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app), new_client(app, origin=None) as client:
        yield client


@pytest.fixture
async def api(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The API of an app without an encryption key (the test default)."""
    async for client in _client(app):
        yield client


@pytest.fixture
async def keyed_api(
    settings: Settings, db: Database, mailer: RecordingMailer
) -> AsyncIterator[httpx.AsyncClient]:
    """The API of an app with FORGEHALL_ENCRYPTION_KEY set."""
    keyed = Settings(**{**settings.model_dump(), "encryption_key": Fernet.generate_key().decode()})
    app = create_app(keyed, db=db, options=AppOptions(run_services=False), mailer=mailer)
    async for client in _client(app):
        yield client


@pytest.fixture
async def team(db: Database) -> dict[str, Any]:
    owner = await make_person(db, "owner@example.com")
    admin = await make_person(db, "ada@example.com")
    member = await make_person(db, "mia@example.com")
    outsider = await make_person(db, "out@example.com")
    workspace = await make_workspace(db, owner, "team", {"admin": admin, "member": member})
    other = await make_workspace(db, outsider, "other")
    return {
        "owner": owner,
        "admin": admin,
        "member": member,
        "outsider": outsider,
        "workspace": workspace,
        "other": other,
    }


async def create(
    api: httpx.AsyncClient, person: Person, *, path: str = WS, **body: Any
) -> dict[str, Any]:
    response = await api.post(f"{path}/agents", headers=person.headers, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def snapshot(db: Database) -> list[tuple[Any, ...]]:
    """Every agent row as stored (env as ciphertext), to prove a refusal changed nothing."""
    async with db.session() as session:
        rows = await session.execute(
            text(
                "SELECT id, workspace_id, name, avatar, instructions, provider, model, "
                "custom_command, extra_args, env, max_concurrent_tasks, runtime_pool, "
                "archived_at FROM agents ORDER BY id"
            )
        )
        return [tuple(row) for row in rows]


async def add_runtime(
    db: Database,
    workspace_id: str,
    *,
    providers: dict[str, str] | None = None,
    age: timedelta = timedelta(seconds=5),
    daemon_id: str = "d1",
    capacity: int = 20,
) -> Runtime:
    async with db.session() as session:
        runtime = Runtime(
            workspace_id=workspace_id,
            daemon_id=daemon_id,
            machine=f"box-{daemon_id}",
            providers=json.dumps(providers if providers is not None else {"claude": "2.0.1"}),
            capacity=capacity,
            last_heartbeat_at=utcnow() - age,
        )
        session.add(runtime)
        await session.commit()
    return runtime


async def add_task(
    db: Database,
    api: httpx.AsyncClient,
    team: dict[str, Any],
    agent_id: str,
    status: str,
    *,
    failure_class: str | None = None,
    runtime_id: str | None = None,
    finished_ago: timedelta = timedelta(0),
) -> Task:
    """A task on a fresh issue (one active task per issue and agent)."""
    issue = await api.post(
        f"{WS}/issues", headers=team["owner"].headers, json={"title": f"work {status}"}
    )
    assert issue.status_code == 201, issue.text
    finished = status in ("completed", "failed", "cancelled")
    async with db.session() as session:
        task = Task(
            workspace_id=team["workspace"].id,
            issue_id=issue.json()["id"],
            agent_id=agent_id,
            status=status,
            runtime_id=runtime_id,
            failure_class=failure_class,
            finished_at=utcnow() - finished_ago if finished else None,
        )
        session.add(task)
        await session.commit()
    return task


async def status_of(api: httpx.AsyncClient, person: Person, agent_id: str) -> str:
    response = await api.get(f"{WS}/agents/{agent_id}", headers=person.headers)
    assert response.status_code == 200, response.text
    listed = (await api.get(f"{WS}/agents", headers=person.headers)).json()
    assert [a["status"] for a in listed if a["id"] == agent_id] == [response.json()["status"]]
    return str(response.json()["status"])


# --- lifecycle ---------------------------------------------------------------------------


async def test_create_list_get_update_archive_restore(
    api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    admin, member = team["admin"], team["member"]
    created = await create(api, admin, name="claude", instructions="Be brief.", model="opus")
    assert created["provider"] == "claude"
    assert created["max_concurrent_tasks"] == 6
    assert created["runtime_pool"] == []
    assert created["extra_args"] == []
    assert created["env_keys"] == []
    assert created["custom_command"] is None
    assert created["archived_at"] is None
    assert created["status"] == "offline"  # no runtime yet
    assert set(created) == {
        "id",
        "name",
        "avatar",
        "instructions",
        "provider",
        "model",
        "custom_command",
        "extra_args",
        "env_keys",
        "max_concurrent_tasks",
        "runtime_pool",
        "status",
        "created_at",
        "archived_at",
    }
    second = await create(api, admin, name="Codex.Bot", provider="codex", extra_args=["--fast"])

    listed = (await api.get(f"{WS}/agents", headers=member.headers)).json()
    assert [a["name"] for a in listed] == ["claude", "Codex.Bot"]
    by_id = (await api.get(f"{WS}/agents/{second['id']}", headers=member.headers)).json()
    by_name = (await api.get(f"{WS}/agents/codex.bot", headers=member.headers)).json()
    assert by_id == by_name == second

    response = await api.patch(
        f"{WS}/agents/{created['id']}",
        headers=admin.headers,
        json={"model": "sonnet", "max_concurrent_tasks": 2, "extra_args": ["--max-turns", "5"]},
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert (updated["model"], updated["max_concurrent_tasks"]) == ("sonnet", 2)
    assert updated["extra_args"] == ["--max-turns", "5"]
    assert updated["instructions"] == "Be brief."  # untouched fields keep their value
    renamed = await api.patch(f"{WS}/agents/claude", headers=admin.headers, json={"name": "Claude"})
    assert renamed.status_code == 200, renamed.text  # its own name in another case

    archived = await api.post(f"{WS}/agents/{created['id']}/archive", headers=admin.headers)
    assert archived.status_code == 200, archived.text
    assert archived.json()["archived_at"] is not None
    again = await api.post(f"{WS}/agents/{created['id']}/archive", headers=admin.headers)
    assert again.json()["archived_at"] == archived.json()["archived_at"]  # idempotent
    listed = (await api.get(f"{WS}/agents", headers=member.headers)).json()
    assert [a["name"] for a in listed] == ["Codex.Bot"]
    hidden = (await api.get(f"{WS}/agents?archived=true", headers=member.headers)).json()
    assert [a["name"] for a in hidden] == ["Claude"]
    # Still readable by id, and its name stays reserved while archived.
    assert (
        await api.get(f"{WS}/agents/{created['id']}", headers=member.headers)
    ).status_code == 200
    taken = await api.post(f"{WS}/agents", headers=admin.headers, json={"name": "claude"})
    assert taken.status_code == 409

    restored = await api.post(f"{WS}/agents/{created['id']}/restore", headers=admin.headers)
    assert restored.status_code == 200, restored.text
    assert restored.json()["archived_at"] is None
    listed = (await api.get(f"{WS}/agents", headers=member.headers)).json()
    assert [a["name"] for a in listed] == ["Claude", "Codex.Bot"]
    assert (await api.get(f"{WS}/agents?archived=true", headers=member.headers)).json() == []


async def test_an_archived_agent_cannot_be_assigned(
    api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    owner = team["owner"]
    agent = await create(api, owner, name="claude")
    await api.post(f"{WS}/agents/{agent['id']}/archive", headers=owner.headers)
    response = await api.post(
        f"{WS}/issues",
        headers=owner.headers,
        json={"title": "Do it", "assignee": {"kind": "agent", "id": agent["id"]}},
    )
    assert response.status_code == 422, response.text
    await api.post(f"{WS}/agents/{agent['id']}/restore", headers=owner.headers)
    response = await api.post(
        f"{WS}/issues",
        headers=owner.headers,
        json={"title": "Do it", "assignee": {"kind": "agent", "id": agent["id"]}},
    )
    assert response.status_code == 201, response.text


async def test_custom_provider_stores_its_command_and_parser(
    api: httpx.AsyncClient, team: dict[str, Any], db: Database
) -> None:
    admin = team["admin"]
    command = {"command": ["my-agent", "--json"], "parser": "stream-json"}
    agent = await create(api, admin, name="mine", provider="custom", custom_command=command)
    assert agent["custom_command"] == command
    async with db.session() as session:
        stored = await session.scalar(text("SELECT custom_command FROM agents"))
    assert json.loads(stored) == command
    # Switching provider needs the command removed in the same request.
    refused = await api.patch(f"{WS}/agents/mine", headers=admin.headers, json={"provider": "qwen"})
    assert refused.status_code == 422
    switched = await api.patch(
        f"{WS}/agents/mine",
        headers=admin.headers,
        json={"provider": "qwen", "custom_command": None},
    )
    assert switched.status_code == 200, switched.text
    assert (switched.json()["provider"], switched.json()["custom_command"]) == ("qwen", None)


# --- validation --------------------------------------------------------------------------

BAD_CREATES: list[tuple[dict[str, Any], int]] = [
    ({}, 422),
    ({"name": ""}, 422),
    ({"name": "x" * 101}, 422),
    ({"name": "-leading-dash"}, 422),
    ({"name": "has space"}, 422),
    ({"name": "at@sign"}, 422),
    ({"name": "CLAUDE"}, 409),  # taken, case-insensitively
    ({"name": "n", "provider": "gpt"}, 422),
    ({"name": "n", "provider": "custom"}, 422),
    (
        {"name": "n", "provider": "custom", "custom_command": {"command": [], "parser": "plain"}},
        422,
    ),
    (
        {
            "name": "n",
            "provider": "custom",
            "custom_command": {"command": [" "], "parser": "plain"},
        },
        422,
    ),
    (
        {"name": "n", "provider": "custom", "custom_command": {"command": ["x"], "parser": "xml"}},
        422,
    ),
    ({"name": "n", "provider": "custom", "custom_command": {"command": ["x"]}}, 422),
    ({"name": "n", "custom_command": {"command": ["x"], "parser": "plain"}}, 422),
    ({"name": "n", "extra_args": "--fast"}, 422),
    ({"name": "n", "extra_args": [1]}, 422),
    ({"name": "n", "extra_args": ["a"] * 51}, 422),
    ({"name": "n", "extra_args": ["a" * 501]}, 422),
    ({"name": "n", "env": ["A"]}, 422),
    ({"name": "n", "env": {"lower": "v"}}, 422),
    ({"name": "n", "env": {"1ABC": "v"}}, 422),
    ({"name": "n", "env": {"A": 1}}, 422),
    ({"name": "n", "env": {f"K{i}": "v" for i in range(51)}}, 422),
    ({"name": "n", "max_concurrent_tasks": 0}, 422),
    ({"name": "n", "max_concurrent_tasks": 101}, 422),
    ({"name": "n", "runtime_pool": ["not-a-runtime"]}, 422),
    ({"name": "n", "runtime_pool": "any"}, 422),
    ({"name": "n", "unknown_field": 1}, 422),
]


async def test_every_invalid_create_is_refused_and_changes_nothing(
    api: httpx.AsyncClient, team: dict[str, Any], db: Database
) -> None:
    admin = team["admin"]
    await create(api, admin, name="claude")
    before = await snapshot(db)
    for body, status in BAD_CREATES:
        response = await api.post(f"{WS}/agents", headers=admin.headers, json=body)
        assert response.status_code == status, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"]
        assert await snapshot(db) == before, body


async def test_unknown_provider_lists_the_providers(
    api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    response = await api.post(
        f"{WS}/agents", headers=team["admin"].headers, json={"name": "n", "provider": "gpt"}
    )
    assert response.status_code == 422
    assert response.json()["type"] == "/problems/unknown-provider"
    for provider in ("claude", "codex", "cursor", "opencode", "copilot", "gemini", "qwen", "acp"):
        assert provider in response.json()["detail"]


async def test_every_invalid_update_is_refused_and_changes_nothing(
    api: httpx.AsyncClient, team: dict[str, Any], db: Database
) -> None:
    admin = team["admin"]
    agent = await create(api, admin, name="claude", model="opus", extra_args=["--x"])
    await create(api, admin, name="Codex", provider="codex")
    foreign_runtime = await add_runtime(db, team["other"].id)
    before = await snapshot(db)
    bad: list[tuple[dict[str, Any], int]] = [
        ({"name": "codex"}, 409),
        ({"name": None}, 422),
        ({"name": "bad name"}, 422),
        ({"provider": None}, 422),
        ({"provider": "nope"}, 422),
        ({"provider": "custom"}, 422),
        ({"custom_command": {"command": ["x"], "parser": "plain"}}, 422),
        ({"extra_args": None}, 422),
        ({"extra_args": ["a"] * 51}, 422),
        ({"env": {"bad-key": "v"}}, 422),
        ({"max_concurrent_tasks": 0}, 422),
        ({"max_concurrent_tasks": None}, 422),
        ({"runtime_pool": [foreign_runtime.id]}, 422),
        ({"model": "sonnet", "runtime_pool": ["missing"]}, 422),  # all or nothing
        ({"status": "idle"}, 422),
    ]
    for body, status in bad:
        response = await api.patch(f"{WS}/agents/{agent['id']}", headers=admin.headers, json=body)
        assert response.status_code == status, (body, response.text)
        assert await snapshot(db) == before, body


# --- env -------------------------------------------------------------------------------------


async def test_env_values_are_write_only_and_encrypted_at_rest(
    keyed_api: httpx.AsyncClient, team: dict[str, Any], db: Database
) -> None:
    admin, member = team["admin"], team["member"]
    api = keyed_api
    seen: list[str] = []

    async def call(method: str, path: str, person: Person, **kwargs: Any) -> httpx.Response:
        response = await api.request(method, f"{WS}{path}", headers=person.headers, **kwargs)
        assert response.status_code < 300, response.text
        seen.append(response.text)
        return response

    created = (
        await call(
            "POST",
            "/agents",
            admin,
            json={"name": "claude", "env": {"API_KEY": SECRET, "REGION": "eu-west-secret-1"}},
        )
    ).json()
    assert created["env_keys"] == ["API_KEY", "REGION"]
    agent_id = created["id"]
    await call("GET", "/agents", member)
    await call("GET", f"/agents/{agent_id}", member)
    await call("GET", "/agents/claude", admin)
    await call("PATCH", f"/agents/{agent_id}", admin, json={"model": "opus"})
    await call("POST", f"/agents/{agent_id}/archive", admin)
    await call("GET", "/agents?archived=true", admin)
    await call("POST", f"/agents/{agent_id}/restore", admin)
    for body in seen:
        assert SECRET not in body
        assert "eu-west-secret-1" not in body

    async with db.session() as session:
        raw = await session.scalar(text("SELECT env FROM agents WHERE id = :id"), {"id": agent_id})
        agent = await session.get(Agent, agent_id)
        assert agent is not None
        assert service.agent_env(agent) == {"API_KEY": SECRET, "REGION": "eu-west-secret-1"}
    assert raw is not None
    for plaintext in (SECRET, "API_KEY", "eu-west-secret-1"):
        assert plaintext not in raw

    # An update without env keeps it; env replaces the whole map; null clears it.
    replaced = await call("PATCH", f"/agents/{agent_id}", admin, json={"env": {"ONLY": "x"}})
    assert replaced.json()["env_keys"] == ["ONLY"]
    cleared = await call("PATCH", f"/agents/{agent_id}", admin, json={"env": None})
    assert cleared.json()["env_keys"] == []
    async with db.session() as session:
        raw = await session.scalar(text("SELECT env FROM agents WHERE id = :id"), {"id": agent_id})
    assert raw is None


async def test_stored_env_without_the_key_is_a_409_not_a_crash(
    keyed_api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    admin = team["admin"]
    agent = await create(keyed_api, admin, name="claude", env={"API_KEY": SECRET})
    install_vault(None)  # the operator removed FORGEHALL_ENCRYPTION_KEY
    for path in ("/agents", f"/agents/{agent['id']}"):
        response = await keyed_api.get(f"{WS}{path}", headers=admin.headers)
        assert response.status_code == 409, response.text
        assert response.json()["type"] == "/problems/encryption-key-required"


async def test_env_without_an_encryption_key_is_a_409_that_changes_nothing(
    api: httpx.AsyncClient, team: dict[str, Any], db: Database
) -> None:
    admin = team["admin"]
    response = await api.post(
        f"{WS}/agents", headers=admin.headers, json={"name": "claude", "env": {"API_KEY": SECRET}}
    )
    assert response.status_code == 409, response.text
    assert response.json()["type"] == "/problems/encryption-key-required"
    assert "FORGEHALL_ENCRYPTION_KEY" in response.json()["detail"]
    assert SECRET not in response.text
    assert await snapshot(db) == []

    agent = await create(api, admin, name="claude", env={})  # nothing to encrypt
    before = await snapshot(db)
    response = await api.patch(
        f"{WS}/agents/{agent['id']}",
        headers=admin.headers,
        json={"model": "opus", "env": {"API_KEY": SECRET}},
    )
    assert response.status_code == 409, response.text
    assert response.json()["type"] == "/problems/encryption-key-required"
    assert await snapshot(db) == before
    # The session is usable again after the refusal.
    assert (await api.get(f"{WS}/agents", headers=admin.headers)).status_code == 200


# --- permissions and isolation -----------------------------------------------------------------


async def test_members_read_and_only_admins_write(
    api: httpx.AsyncClient, team: dict[str, Any], db: Database
) -> None:
    owner, admin, member = team["owner"], team["admin"], team["member"]
    agent = await create(api, owner, name="claude")
    await create(api, admin, name="codex", provider="codex")
    before = await snapshot(db)
    for method, path, body in (
        ("POST", "/agents", {"name": "sneaky"}),
        ("PATCH", f"/agents/{agent['id']}", {"model": "opus"}),
        ("POST", f"/agents/{agent['id']}/archive", None),
        ("POST", f"/agents/{agent['id']}/restore", None),
    ):
        response = await api.request(method, f"{WS}{path}", headers=member.headers, json=body)
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["type"] == "/problems/forbidden"
    assert await snapshot(db) == before
    for path in ("/agents", f"/agents/{agent['id']}", "/runtimes"):
        assert (await api.get(f"{WS}{path}", headers=member.headers)).status_code == 200
    # Outsiders do not even learn the workspace exists; anonymous callers must sign in.
    outsider = await api.get(f"{WS}/agents", headers=team["outsider"].headers)
    assert outsider.status_code == 404
    assert (await api.get(f"{WS}/agents")).status_code == 401


async def test_another_workspaces_agent_is_not_found(
    api: httpx.AsyncClient, team: dict[str, Any], db: Database
) -> None:
    admin, outsider = team["admin"], team["outsider"]
    foreign = await create(api, outsider, path="/api/v1/workspaces/other", name="foreign")
    mine = await create(api, admin, name="claude")
    before = await snapshot(db)
    for method, path, body in (
        ("GET", f"/agents/{foreign['id']}", None),
        ("GET", "/agents/foreign", None),
        ("PATCH", f"/agents/{foreign['id']}", {"model": "x"}),
        ("POST", f"/agents/{foreign['id']}/archive", None),
        ("POST", f"/agents/{foreign['id']}/restore", None),
    ):
        response = await api.request(method, f"{WS}{path}", headers=admin.headers, json=body)
        assert response.status_code == 404, (method, path, response.text)
    assert await snapshot(db) == before
    assert [a["id"] for a in (await api.get(f"{WS}/agents", headers=admin.headers)).json()] == [
        mine["id"]
    ]
    # The same name may exist in two workspaces.
    await create(api, admin, name="foreign")


# --- runtimes and status ------------------------------------------------------------------------


async def test_runtime_pool_must_name_runtimes_of_the_workspace(
    api: httpx.AsyncClient, team: dict[str, Any], db: Database
) -> None:
    admin = team["admin"]
    mine = await add_runtime(db, team["workspace"].id)
    theirs = await add_runtime(db, team["other"].id)
    response = await api.post(
        f"{WS}/agents", headers=admin.headers, json={"name": "a", "runtime_pool": [theirs.id]}
    )
    assert response.status_code == 422
    assert theirs.id in response.json()["detail"]
    agent = await create(api, admin, name="a", runtime_pool=[mine.id, mine.id])
    assert agent["runtime_pool"] == [mine.id]
    cleared = await api.patch(f"{WS}/agents/a", headers=admin.headers, json={"runtime_pool": []})
    assert cleared.json()["runtime_pool"] == []


async def test_runtimes_list_liveness_providers_and_current_tasks(
    api: httpx.AsyncClient, team: dict[str, Any], db: Database
) -> None:
    owner, member = team["owner"], team["member"]
    online = await add_runtime(
        db, team["workspace"].id, providers={"claude": "2.0.1", "codex": "0.5"}, capacity=4
    )
    stale = await add_runtime(db, team["workspace"].id, daemon_id="d2", age=timedelta(seconds=151))
    await add_runtime(db, team["other"].id, daemon_id="d3")
    agent = await create(api, owner, name="claude")
    running = await add_task(db, api, team, agent["id"], "running", runtime_id=online.id)
    dispatched = await add_task(db, api, team, agent["id"], "dispatched", runtime_id=online.id)
    await add_task(db, api, team, agent["id"], "completed", runtime_id=online.id)
    await add_task(db, api, team, agent["id"], "queued")

    response = await api.get(f"{WS}/runtimes", headers=member.headers)
    assert response.status_code == 200, response.text
    runtimes = {r["id"]: r for r in response.json()}
    assert set(runtimes) == {online.id, stale.id}
    assert runtimes[online.id]["online"] is True
    assert runtimes[online.id]["providers"] == {"claude": "2.0.1", "codex": "0.5"}
    assert runtimes[online.id]["capacity"] == 4
    assert sorted(runtimes[online.id]["task_ids"]) == sorted([running.id, dispatched.id])
    assert runtimes[stale.id]["online"] is False
    assert runtimes[stale.id]["task_ids"] == []


async def test_status_offline_without_a_suitable_online_runtime(
    api: httpx.AsyncClient, team: dict[str, Any], db: Database
) -> None:
    owner = team["owner"]
    agent = await create(api, owner, name="claude")
    assert await status_of(api, owner, agent["id"]) == "offline"  # no runtime at all
    await add_runtime(db, team["workspace"].id, daemon_id="codex-only", providers={"codex": "1"})
    await add_runtime(db, team["workspace"].id, daemon_id="stale", age=timedelta(seconds=200))
    assert await status_of(api, owner, agent["id"]) == "offline"  # wrong provider / stale
    await add_runtime(db, team["other"].id, daemon_id="elsewhere")
    assert await status_of(api, owner, agent["id"]) == "offline"  # another workspace's
    good = await add_runtime(db, team["workspace"].id, daemon_id="good")
    assert await status_of(api, owner, agent["id"]) == "idle"  # [] = any suitable runtime
    codex_only = await add_runtime(
        db, team["workspace"].id, daemon_id="other-codex", providers={"codex": "1"}
    )
    await api.patch(
        f"{WS}/agents/claude", headers=owner.headers, json={"runtime_pool": [codex_only.id]}
    )
    assert await status_of(api, owner, agent["id"]) == "offline"  # pool lacks the provider
    await api.patch(f"{WS}/agents/claude", headers=owner.headers, json={"runtime_pool": [good.id]})
    assert await status_of(api, owner, agent["id"]) == "idle"


async def test_status_working_idle_and_error_from_tasks(
    api: httpx.AsyncClient, team: dict[str, Any], db: Database
) -> None:
    owner = team["owner"]
    runtime = await add_runtime(db, team["workspace"].id)
    agent = await create(api, owner, name="claude")
    agent_id = agent["id"]
    assert await status_of(api, owner, agent_id) == "idle"  # no task rows at all

    await add_task(db, api, team, agent_id, "queued")
    assert await status_of(api, owner, agent_id) == "idle"  # queued is not working yet
    running = await add_task(db, api, team, agent_id, "running", runtime_id=runtime.id)
    assert await status_of(api, owner, agent_id) == "working"

    async with db.session() as session:
        await session.execute(text("DELETE FROM tasks"))
        await session.commit()
    await add_task(db, api, team, agent_id, "completed", finished_ago=timedelta(minutes=5))
    await add_task(
        db, api, team, agent_id, "failed", failure_class="agent_error", finished_ago=timedelta(0)
    )
    assert await status_of(api, owner, agent_id) == "error"  # the latest one failed
    retry = await add_task(db, api, team, agent_id, "queued")
    assert await status_of(api, owner, agent_id) == "idle"  # something is active again
    async with db.session() as session:
        await session.execute(text("DELETE FROM tasks WHERE id = :id"), {"id": retry.id})
        await session.commit()
    await add_task(db, api, team, agent_id, "dispatched", runtime_id=runtime.id)
    assert await status_of(api, owner, agent_id) == "working"
    _ = running


async def test_status_error_needs_a_final_failure_of_the_agent_as_the_latest_finish(
    api: httpx.AsyncClient, team: dict[str, Any], db: Database
) -> None:
    owner = team["owner"]
    await add_runtime(db, team["workspace"].id)
    first = (await create(api, owner, name="first"))["id"]
    second = (await create(api, owner, name="second"))["id"]
    third = (await create(api, owner, name="third"))["id"]
    # first: failed long ago, then completed — recovered.
    await add_task(db, api, team, first, "failed", failure_class="agent_error",
                   finished_ago=timedelta(hours=1))  # fmt: skip
    await add_task(db, api, team, first, "completed", finished_ago=timedelta(minutes=1))
    # second: retries of a runtime problem ran out — that is not the agent's error.
    await add_task(db, api, team, second, "failed", failure_class="runtime_offline")
    # third: a gate failed; then an older cancelled task does not hide it.
    await add_task(db, api, team, third, "cancelled", failure_class="cancelled",
                   finished_ago=timedelta(hours=2))  # fmt: skip
    await add_task(db, api, team, third, "failed", failure_class="gate_failure")
    statuses = {
        a["name"]: a["status"]
        for a in (await api.get(f"{WS}/agents", headers=owner.headers)).json()
    }
    assert statuses == {"first": "idle", "second": "idle", "third": "error"}


def test_agent_failure_classes_follow_the_queue() -> None:
    final_failures = queue.FINAL - {"cancelled"}
    assert final_failures == service.AGENT_FAILURE_CLASSES
    assert not service.AGENT_FAILURE_CLASSES & queue.RETRYABLE
