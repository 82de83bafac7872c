"""The agents and runtimes pages without JavaScript, on SQLite and PostgreSQL: plain GETs
and form posts as a browser with scripts off sends them.

Covered: the list with derived status and current work (a runtime registered through the
daemon protocol, a task claimed by it), the create and edit forms and their refusals
(message next to the field, what was typed kept, nothing written), env values that never
come back in a page, roles as the API has them, archive and restore, the daemon token
shown once, and another workspace's agent answered as not found.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI

from forgehall.agents import service as agent_service
from forgehall.agents.models import Agent
from forgehall.db.engine import Database
from forgehall.settings import Settings
from forgehall.web.pages import NOT_FOUND_TEXT
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
WS = "/w/team"
API = "/api/v1/workspaces/team"
SECRET = "sk-live-7f3a9c1e5b2d"


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """Test settings with an encryption key, so agents can store env values."""
    return make_settings(
        tmp_path, database_url=database_url, encryption_key=Fernet.generate_key().decode()
    )


@dataclass
class Team:
    app: FastAPI
    owner: Person
    member: Person
    outsider: Person
    admin_page: httpx.AsyncClient  # the owner, signed in with a browser
    member_page: httpx.AsyncClient
    api: httpx.AsyncClient  # tokens only (the daemon, the API for comparison)


async def _browser(
    stack: AsyncExitStack, app: FastAPI, mailer: RecordingMailer, email: str
) -> httpx.AsyncClient:
    client = await stack.enter_async_context(new_client(app))
    client.headers.update(HTML)
    signed = await sign_in(client, mailer, email)
    assert signed.status_code == 303, signed.text
    return client


@pytest.fixture
async def team(app: FastAPI, db: Database, mailer: RecordingMailer) -> AsyncIterator[Team]:
    owner = await make_person(db, "owner@example.com")
    member = await make_person(db, "mia@example.com")
    outsider = await make_person(db, "out@example.com")
    await make_workspace(db, owner, "team", {"member": member})
    await make_workspace(db, outsider, "other")
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        admin_page = await _browser(stack, app, mailer, "owner@example.com")
        member_page = await _browser(stack, app, mailer, "mia@example.com")
        api = await stack.enter_async_context(new_client(app, origin=None))
        yield Team(app, owner, member, outsider, admin_page, member_page, api)


def agent_form(**fields: Any) -> dict[str, Any]:
    form: dict[str, Any] = {
        "name": "claude",
        "provider": "claude",
        "model": "",
        "instructions": "",
        "command": "",
        "parser": "plain",
        "pool": "any",
        "max_concurrent_tasks": "3",
        "extra_args": "",
        "env": "",
    }
    form.update(fields)
    return form


async def create_agent(team: Team, **fields: Any) -> str:
    made = await team.admin_page.post(f"{WS}/agents", data=agent_form(**fields))
    assert made.status_code == 303, made.text
    found = re.fullmatch(rf"{WS}/agents/([0-9a-f]+)\?saved=1", made.headers["location"])
    assert found, made.headers["location"]
    return found.group(1)


async def api_agents(team: Team, archived: bool = False) -> list[dict[str, Any]]:
    response = await team.api.get(
        f"{API}/agents", headers=team.owner.headers, params={"archived": archived}
    )
    assert response.status_code == 200, response.text
    return list(response.json())


async def stored_env(db: Database, agent_id: str) -> dict[str, str]:
    async with db.session() as session:
        agent = await session.get(Agent, agent_id)
        assert agent is not None
        return agent_service.agent_env(agent)


def row_of(page: str, marker: str) -> str:
    """The table row carrying ``marker`` (e.g. ``data-agent="…"``)."""
    found = re.search(rf"<tr {marker}>(.*?)</tr>", page, re.S)
    assert found, f"no row {marker}"
    return found.group(1)


async def mint_token(team: Team, name: str = "build-box-1") -> tuple[httpx.Response, str]:
    minted = await team.admin_page.post(f"{WS}/runtimes/daemon-tokens", data={"name": name})
    assert minted.status_code == 201, minted.text
    found = re.search(
        r"FORGEHALL_DAEMON_TOKEN=(fh_dmn_[A-Za-z0-9_\-]+) forgehall daemon", minted.text
    )
    assert found, "the page shows the command with the token"
    return minted, found.group(1)


async def register(team: Team, token: str, providers: dict[str, str]) -> str:
    response = await team.api.post(
        "/api/v1/daemon/runtimes",
        headers={"authorization": f"Bearer {token}"},
        json={
            "daemon_id": "box-1",
            "machine": "build-box-1",
            "providers": providers,
            "capacity": 4,
        },
    )
    assert response.status_code == 200, response.text
    return str(response.json()["runtime_id"])


# --- the list, status and current work ----------------------------------------------------------


async def test_list_shows_status_and_current_work_as_a_daemon_takes_a_task(team: Team) -> None:
    agent_id = await create_agent(team, name="claude", model="opus-4")
    listed = await team.member_page.get(f"{WS}/agents")
    assert listed.status_code == 200
    assert "Content-Security-Policy" in listed.headers
    row = row_of(listed.text, f'data-agent="{agent_id}"')
    assert "claude" in row
    assert "opus-4" in row
    assert "avatar" in row
    assert "agent" in row
    assert '<span class="badge offline" data-status>offline</span>' in row, "no runtime yet"
    assert "0 / 3" in row

    # A daemon registers through the protocol with a token minted on the runtimes page.
    _, token = await mint_token(team)
    runtime_id = await register(team, token, {"claude": "2.0.1", "codex": "0.9"})
    listed = await team.member_page.get(f"{WS}/agents")
    assert "badge idle" in row_of(listed.text, f'data-agent="{agent_id}"')

    # An issue assigned to the agent; the daemon claims its task: the agent is working on it.
    issue = await team.api.post(
        f"{API}/issues",
        headers=team.owner.headers,
        json={"title": "Fix the login", "assignee": {"kind": "agent", "id": agent_id}},
    )
    assert issue.status_code == 201, issue.text
    key = issue.json()["key"]
    claimed = await team.api.post(
        f"/api/v1/daemon/runtimes/{runtime_id}/claim",
        headers={"authorization": f"Bearer {token}"},
        json={"wait": 0, "limit": 1},
    )
    assert claimed.status_code == 200, claimed.text
    assert len(claimed.json()["tasks"]) == 1
    listed = await team.member_page.get(f"{WS}/agents")
    row = row_of(listed.text, f'data-agent="{agent_id}"')
    assert "badge working" in row
    assert f'<a href="{WS}/issues/{key}">{key}</a>' in row
    assert "1 / 3" in row

    runtimes = await team.member_page.get(f"{WS}/runtimes")
    assert runtimes.status_code == 200
    row = row_of(runtimes.text, f'data-runtime="{runtime_id}"')
    assert "build-box-1" in row
    assert "badge online" in row
    assert "claude 2.0.1" in row
    assert "codex 0.9" in row
    assert "1 / 4" in row
    assert f'<a href="{WS}/issues/{key}">{key}</a>' in row
    assert "Connect a new daemon" not in runtimes.text, "members cannot mint daemon tokens"

    # The live regions answer a fragment request with only themselves.
    for path, region in (("agents", "agents-live"), ("runtimes", "runtimes-live")):
        part = await team.member_page.get(f"{WS}/{path}", headers={"hx-request": "true"})
        assert part.status_code == 200
        assert part.text.lstrip().startswith(
            f'<div id="{region}" data-live="task. agent. runtime."'
        )
        assert "<html" not in part.text
        assert key in part.text
        full = await team.member_page.get(f"{WS}/{path}")
        assert f'id="{region}"' in full.text
        assert f'data-live-url="{WS}/{path}"' in full.text


async def test_a_runtime_that_stops_heartbeating_shows_offline(team: Team, db: Database) -> None:
    _, token = await mint_token(team)
    runtime_id = await register(team, token, {"claude": "2.0.1"})
    from datetime import timedelta

    from sqlalchemy import update

    from forgehall.agents.models import Runtime
    from forgehall.db.types import utcnow

    async with db.session() as session:
        await session.execute(
            update(Runtime)
            .where(Runtime.id == runtime_id)
            .values(last_heartbeat_at=utcnow() - timedelta(minutes=10))
        )
        await session.commit()
    page = await team.member_page.get(f"{WS}/runtimes")
    assert "badge offline" in row_of(page.text, f'data-runtime="{runtime_id}"')


# --- create and edit ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "status", "field", "message"),
    [
        ({"name": "  "}, 422, "name", "give the agent a name"),
        ({"name": "has space"}, 422, "name", "is not a valid handle"),
        ({"name": "CLAUDE"}, 409, "name", "already exists"),
        ({"provider": "skynet"}, 422, "provider", "unknown provider"),
        ({"max_concurrent_tasks": "0"}, 422, "max_concurrent_tasks", "between 1 and 100"),
        ({"max_concurrent_tasks": "many"}, 422, "max_concurrent_tasks", "whole number"),
        ({"env": "NOT A LINE"}, 422, "env", "is not KEY=value"),
        ({"env": "lower=x"}, 422, "env", "is invalid"),
        ({"provider": "custom"}, 422, "custom_command", "needs a custom_command"),
        ({"pool": "chosen"}, 422, "runtime_pool", "choose at least one runtime"),
        ({"pool": "chosen", "runtime_ids": ["nope"]}, 422, "runtime_pool", "not runtimes"),
    ],
)
async def test_create_refuses_bad_input_keeps_what_was_typed_and_creates_nothing(
    team: Team, fields: dict[str, Any], status: int, field: str, message: str
) -> None:
    await create_agent(team, name="claude")
    before = await api_agents(team)
    typed = agent_form(name="helper", model="my-model-x", instructions="Typed *instructions*", **{})
    typed.update(fields)
    refused = await team.admin_page.post(f"{WS}/agents", data=typed)
    assert refused.status_code == status, refused.text
    error = re.search(
        rf'<p class="error" id="{field}-error" role="alert">([^<]*)</p>', refused.text
    )
    assert error, f"the message sits next to the {field} field"
    assert message in error.group(1).replace("&#39;", "'")
    assert f'aria-describedby="{field}-error"' in refused.text or (
        f'-hint {field}-error"' in refused.text
    ), "the field points at its message"
    if field != "runtime_pool":  # a group of checkboxes, described but not invalid itself
        assert 'aria-invalid="true"' in refused.text
    assert 'value="my-model-x"' in refused.text, "what was typed is kept"
    assert "Typed *instructions*</textarea>" in refused.text
    if "name" in fields and fields["name"].strip():
        assert f'value="{fields["name"]}"' in refused.text
    assert await api_agents(team) == before, "nothing was created"


async def test_edit_changes_the_profile_and_shows_the_saved_instructions(team: Team) -> None:
    _, token = await mint_token(team)
    runtime_id = await register(team, token, {"claude": "2.0.1"})
    agent_id = await create_agent(team, name="claude")
    saved = await team.admin_page.post(
        f"{WS}/agents/{agent_id}",
        data=agent_form(
            name="claude-2",
            provider="codex",
            model="gpt-x",
            instructions="Be **brief**.",
            pool="chosen",
            runtime_ids=[runtime_id],
            max_concurrent_tasks="9",
            extra_args="--fast\n--quiet\n",
        ),
    )
    assert saved.status_code == 303, saved.text
    shown = await team.admin_page.get(saved.headers["location"])
    assert "Saved." in shown.text
    assert "<strong>brief</strong>" in shown.text, "the saved instructions, as Markdown"
    assert re.search(rf'value="{runtime_id}" checked', shown.text)
    assert "--fast\n--quiet</textarea>" in shown.text
    (agent,) = await api_agents(team)
    assert agent["name"] == "claude-2"
    assert agent["provider"] == "codex"
    assert agent["model"] == "gpt-x"
    assert agent["runtime_pool"] == [runtime_id]
    assert agent["max_concurrent_tasks"] == 9
    assert agent["extra_args"] == ["--fast", "--quiet"]

    # A refused edit shows the message, keeps the typed values and changes nothing.
    refused = await team.admin_page.post(
        f"{WS}/agents/{agent_id}",
        data=agent_form(name="claude-3", max_concurrent_tasks="101", model="typed-model"),
    )
    assert refused.status_code == 422
    assert 'id="max_concurrent_tasks-error"' in refused.text
    assert 'value="claude-3"' in refused.text
    assert 'value="typed-model"' in refused.text
    assert await api_agents(team) == [agent]

    # A custom command: provider custom with its argv, one per line.
    custom = await team.admin_page.post(
        f"{WS}/agents/{agent_id}",
        data=agent_form(
            name="claude-2", provider="custom", command="my-agent\n--json", parser="stream-json"
        ),
    )
    assert custom.status_code == 303, custom.text
    (agent,) = await api_agents(team)
    assert agent["custom_command"] == {"command": ["my-agent", "--json"], "parser": "stream-json"}
    # Back to another provider with the command still in its box: the command is dropped.
    back = await team.admin_page.post(
        f"{WS}/agents/{agent_id}",
        data=agent_form(name="claude-2", provider="claude", command="my-agent\n--json"),
    )
    assert back.status_code == 303, back.text
    (agent,) = await api_agents(team)
    assert agent["provider"] == "claude"
    assert agent["custom_command"] is None


async def test_env_values_never_come_back_in_a_page(team: Team, db: Database) -> None:
    agent_id = await create_agent(
        team, name="claude", env=f"OPENAI_API_KEY={SECRET}\nREGION=eu-west-1\n"
    )
    assert await stored_env(db, agent_id) == {"OPENAI_API_KEY": SECRET, "REGION": "eu-west-1"}
    for client in (team.admin_page, team.member_page):
        for path in ("agents", f"agents/{agent_id}", "runtimes"):
            page = await client.get(f"{WS}/{path}")
            assert page.status_code == 200
            assert SECRET not in page.text
            assert "eu-west-1" not in page.text
    edit = await team.admin_page.get(f"{WS}/agents/{agent_id}")
    assert "OPENAI_API_KEY=\nREGION=\n</textarea>" in edit.text, "the keys, without values"
    member_view = await team.member_page.get(f"{WS}/agents/{agent_id}")
    assert "<code>OPENAI_API_KEY</code>" in member_view.text

    # Saving the form as shown keeps both values.
    kept = await team.admin_page.post(
        f"{WS}/agents/{agent_id}", data=agent_form(env="OPENAI_API_KEY=\nREGION=\n")
    )
    assert kept.status_code == 303, kept.text
    assert await stored_env(db, agent_id) == {"OPENAI_API_KEY": SECRET, "REGION": "eu-west-1"}

    # A refused save does not show the stored value either.
    refused = await team.admin_page.post(
        f"{WS}/agents/{agent_id}",
        data=agent_form(name="", env="OPENAI_API_KEY=\nREGION=\n"),
    )
    assert refused.status_code == 422
    assert SECRET not in refused.text
    assert await stored_env(db, agent_id) == {"OPENAI_API_KEY": SECRET, "REGION": "eu-west-1"}

    # A new value replaces one; a deleted line removes its key; a new key is added.
    changed = await team.admin_page.post(
        f"{WS}/agents/{agent_id}", data=agent_form(env="OPENAI_API_KEY=sk-rotated\nDEBUG=1\n")
    )
    assert changed.status_code == 303, changed.text
    assert await stored_env(db, agent_id) == {"OPENAI_API_KEY": "sk-rotated", "DEBUG": "1"}
    edit = await team.admin_page.get(f"{WS}/agents/{agent_id}")
    assert "DEBUG=\nOPENAI_API_KEY=\n</textarea>" in edit.text
    assert "sk-rotated" not in edit.text
    listed = await team.admin_page.get(f"{WS}/agents")
    assert "sk-rotated" not in listed.text
    (agent,) = await api_agents(team)
    assert agent["env_keys"] == ["DEBUG", "OPENAI_API_KEY"]

    # An empty field clears the env.
    cleared = await team.admin_page.post(f"{WS}/agents/{agent_id}", data=agent_form(env=""))
    assert cleared.status_code == 303
    assert await stored_env(db, agent_id) == {}


# --- roles, archive, other workspaces -----------------------------------------------------------


async def test_members_read_and_admins_change_as_in_the_api(team: Team) -> None:
    agent_id = await create_agent(team, name="claude", instructions="Use *care*.")
    listed = await team.member_page.get(f"{WS}/agents")
    assert listed.status_code == 200
    assert "New agent" not in listed.text
    admin_list = await team.admin_page.get(f"{WS}/agents")
    assert f'href="{WS}/agents/new"' in admin_list.text

    view = await team.member_page.get(f"{WS}/agents/{agent_id}")
    assert view.status_code == 200
    assert 'name="name"' not in view.text, "members get the profile read-only"
    assert "<em>care</em>" in view.text
    assert "Archive</button>" not in view.text

    refusals = [
        ("GET", f"{WS}/agents/new", None),
        ("POST", f"{WS}/agents", agent_form(name="mine")),
        ("POST", f"{WS}/agents/{agent_id}", agent_form(name="renamed")),
        ("POST", f"{WS}/agents/{agent_id}/archive", {}),
        ("POST", f"{WS}/runtimes/daemon-tokens", {"name": "box"}),
    ]
    for method, path, data in refusals:
        response = await team.member_page.request(method, path, data=data)
        assert response.status_code == 403, f"{method} {path}"
        assert "Not allowed" in response.text
        assert "ADMIN role" in response.text
    # The API refuses the member the same way.
    api_refusal = await team.api.post(
        f"{API}/agents", headers=team.member.headers, json={"name": "mine"}
    )
    assert api_refusal.status_code == 403
    assert [a["name"] for a in await api_agents(team)] == ["claude"]
    tokens = await team.api.get(f"{API}/daemon-tokens", headers=team.owner.headers)
    assert tokens.json() == []


async def test_archive_and_restore(team: Team) -> None:
    agent_id = await create_agent(team, name="claude")
    archived = await team.admin_page.post(f"{WS}/agents/{agent_id}/archive")
    assert archived.status_code == 303
    assert archived.headers["location"] == f"{WS}/agents"
    listed = await team.admin_page.get(f"{WS}/agents")
    assert f'data-agent="{agent_id}"' not in listed.text
    row = row_of(listed.text, f'data-archived-agent="{agent_id}"')
    assert f'action="{WS}/agents/{agent_id}/restore"' in row
    assert [a["id"] for a in await api_agents(team, archived=True)] == [agent_id]
    page = await team.admin_page.get(f"{WS}/agents/{agent_id}")
    assert "Restore</button>" in page.text

    restored = await team.admin_page.post(f"{WS}/agents/{agent_id}/restore")
    assert restored.status_code == 303
    listed = await team.admin_page.get(f"{WS}/agents")
    assert f'data-agent="{agent_id}"' in listed.text
    assert "data-archived-agent" not in listed.text
    assert await api_agents(team, archived=True) == []

    unknown = await team.admin_page.post(f"{WS}/agents/{agent_id}/explode")
    assert unknown.status_code == 404


async def test_another_workspaces_agent_is_not_found(team: Team) -> None:
    theirs = await team.api.post(
        "/api/v1/workspaces/other/agents", headers=team.outsider.headers, json={"name": "spy"}
    )
    assert theirs.status_code == 201, theirs.text
    other_id = theirs.json()["id"]
    for method, path in (
        ("GET", f"{WS}/agents/{other_id}"),
        ("POST", f"{WS}/agents/{other_id}"),
        ("POST", f"{WS}/agents/{other_id}/archive"),
        ("GET", f"{WS}/agents/no-such-agent"),
        ("GET", "/w/other/agents"),
        ("GET", "/w/other/runtimes"),
    ):
        data = agent_form(name="taken-over") if method == "POST" else None
        response = await team.admin_page.request(method, path, data=data)
        assert response.status_code == 404, f"{method} {path}"
        assert NOT_FOUND_TEXT in response.text
        assert "spy" not in response.text
    untouched = await team.api.get(
        f"/api/v1/workspaces/other/agents/{other_id}", headers=team.outsider.headers
    )
    assert untouched.json()["name"] == "spy"
    assert untouched.json()["archived_at"] is None


# --- daemon tokens --------------------------------------------------------------------------------


async def test_a_daemon_token_is_shown_once_with_the_command(
    team: Team, settings: Settings
) -> None:
    page = await team.admin_page.get(f"{WS}/runtimes")
    assert "Connect a new daemon" in page.text
    assert "No runtime has registered yet" in page.text

    refused = await team.admin_page.post(
        f"{WS}/runtimes/daemon-tokens", data={"name": " ", "expires_in_days": "7"}
    )
    assert refused.status_code == 422
    assert 'id="name-error"' in refused.text
    assert 'value="7"' in refused.text
    bad_expiry = await team.admin_page.post(
        f"{WS}/runtimes/daemon-tokens", data={"name": "box", "expires_in_days": "forever"}
    )
    assert bad_expiry.status_code == 422
    assert 'id="expires_in_days-error"' in bad_expiry.text
    assert 'value="box"' in bad_expiry.text
    assert "fh_dmn_" not in bad_expiry.text
    listed = await team.api.get(f"{API}/daemon-tokens", headers=team.owner.headers)
    assert listed.json() == [], "a refused form mints nothing"

    minted, token = await mint_token(team, "build-box-1")
    assert minted.headers["cache-control"] == "no-store"
    assert (
        f"FORGEHALL_SERVER_URL={settings.origin} FORGEHALL_DAEMON_TOKEN={token} forgehall daemon"
        in minted.text
    )
    assert settings.origin == "http://localhost:8000"
    (row,) = (await team.api.get(f"{API}/daemon-tokens", headers=team.owner.headers)).json()
    assert row["name"] == "build-box-1"

    again = await team.admin_page.get(f"{WS}/runtimes")
    assert again.status_code == 200
    assert token not in again.text, "a reload never shows the token again"
    assert "FORGEHALL_DAEMON_TOKEN=" not in again.text
    assert f"<code>{row['prefix']}…</code>" in again.text, "the token is listed by its prefix"

    # The token works on the daemon protocol; revoking it from the page stops it.
    await register(team, token, {"claude": "2.0.1"})
    revoked = await team.admin_page.post(f"{WS}/runtimes/daemon-tokens/{row['id']}/revoke")
    assert revoked.status_code == 303
    refused_daemon = await team.api.post(
        "/api/v1/daemon/runtimes",
        headers={"authorization": f"Bearer {token}"},
        json={"daemon_id": "box-1", "providers": {}},
    )
    assert refused_daemon.status_code == 401
