"""A long-poll claim waiting on replica A returns a task created through replica B: two
real server processes on one PostgreSQL database, the wake-up relayed by LISTEN/NOTIFY.
Also: a server restart in the middle of a run loses nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PostgresTemplates, run_in_thread
from tests.process import ServerProcess, base_env
from tests.test_live import admin_token

pytestmark = [pytest.mark.slow, pytest.mark.postgres_only]
WS = "/api/v1/workspaces/team"


def setup_team(server: ServerProcess, token: str) -> tuple[dict[str, str], str, str]:
    """Workspace, agent and daemon token; returns (member headers, agent id, daemon token)."""
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as api:
        assert (
            api.post(
                "/api/v1/workspaces", json={"slug": "team", "name": "T", "key_prefix": "ENG"}
            ).status_code
            == 201
        )
        agent = api.post(f"{WS}/agents", json={"name": "claude", "provider": "claude"})
        assert agent.status_code == 201, agent.text
        minted = api.post(f"{WS}/daemon-tokens", json={"name": "laptop"})
        assert minted.status_code == 201, minted.text
    return headers, agent.json()["id"], minted.json()["token"]


async def register(client: httpx.AsyncClient, daemon_id: str = "d1") -> str:
    response = await client.post(
        "/api/v1/daemon/runtimes",
        json={"daemon_id": daemon_id, "providers": {"claude": "2.0"}, "capacity": 2},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["runtime_id"])


async def test_a_claim_waiting_on_replica_a_gets_a_task_created_through_replica_b(
    tmp_path: Path, pg_templates: PostgresTemplates
) -> None:
    url = run_in_thread(pg_templates.clone)
    env = base_env(tmp_path, DATABASE_URL=url)
    replica_a = ServerProcess(tmp_path, env=dict(env), name="a")
    replica_b = ServerProcess(tmp_path, env=dict(env), name="b")
    try:
        replica_a.start()
        replica_b.start()
        replica_a.wait_ready()
        replica_b.wait_ready()
        headers, agent_id, daemon_token = setup_team(replica_b, admin_token(replica_a, env))
        bearer = {"authorization": f"Bearer {daemon_token}"}
        async with (
            httpx.AsyncClient(base_url=replica_a.url, headers=bearer, timeout=40) as daemon,
            httpx.AsyncClient(base_url=replica_b.url, headers=headers, timeout=10) as member,
        ):
            runtime_id = await register(daemon)
            latencies = []
            for i in range(3):
                waiting = asyncio.create_task(
                    daemon.post(f"/api/v1/daemon/runtimes/{runtime_id}/claim", json={"wait": 30})
                )
                await asyncio.sleep(0.5)
                assert not waiting.done(), "nothing queued yet: the claim waits"
                started = time.monotonic()
                created = await member.post(
                    f"{WS}/issues",
                    json={"title": f"via B {i}", "assignee": {"kind": "agent", "id": agent_id}},
                )
                assert created.status_code == 201, created.text
                claimed = (await asyncio.wait_for(waiting, 35)).json()
                latencies.append(time.monotonic() - started)
                (task,) = claimed["tasks"]
                assert task["issue"]["key"] == created.json()["key"]
                done = await daemon.post(
                    f"/api/v1/daemon/tasks/{task['id']}/complete",
                    json={"lease_token": task["lease_token"]},
                )
                assert done.status_code == 200, done.text
        # Reported, not asserted (tests do not time things).
        print("cross-replica dispatch (s):", ", ".join(f"{x:.3f}" for x in latencies))
    finally:
        replica_a.stop()
        replica_b.stop()
        run_in_thread(lambda: pg_templates.drop(url))


async def test_a_restart_mid_run_loses_nothing(
    tmp_path: Path, pg_templates: PostgresTemplates
) -> None:
    url = run_in_thread(pg_templates.clone)
    env = base_env(tmp_path, DATABASE_URL=url)
    server = ServerProcess(tmp_path, env=dict(env))
    try:
        server.start()
        server.wait_ready()
        headers, agent_id, daemon_token = setup_team(server, admin_token(server, env))
        bearer = {"authorization": f"Bearer {daemon_token}"}

        async def clients() -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
            return (
                httpx.AsyncClient(base_url=server.url, headers=bearer, timeout=10),
                httpx.AsyncClient(base_url=server.url, headers=headers, timeout=10),
            )

        daemon, member = await clients()
        async with daemon, member:
            runtime_id = await register(daemon)
            for title in ("running", "queued"):
                created = await member.post(
                    f"{WS}/issues",
                    json={"title": title, "assignee": {"kind": "agent", "id": agent_id}},
                )
                assert created.status_code == 201
            claim = await daemon.post(
                f"/api/v1/daemon/runtimes/{runtime_id}/claim", json={"limit": 1}
            )
            (task,) = claim.json()["tasks"]
            lease: dict[str, Any] = {"lease_token": task["lease_token"]}
            assert (
                await daemon.post(f"/api/v1/daemon/tasks/{task['id']}/start", json=lease)
            ).status_code == 200
        server.stop()
        server.start()
        server.wait_ready()
        daemon, member = await clients()
        async with daemon, member:
            states = {t["issue_key"]: t["status"] for t in (await member.get(f"{WS}/tasks")).json()}
            assert states == {"ENG-1": "running", "ENG-2": "queued"}
            messages = await daemon.post(
                f"/api/v1/daemon/tasks/{task['id']}/messages",
                json={**lease, "messages": [{"seq": 1, "kind": "text", "content": "still here"}]},
            )
            assert messages.status_code == 200, "the lease survived the restart"
            done = await daemon.post(f"/api/v1/daemon/tasks/{task['id']}/complete", json=lease)
            assert done.json()["status"] == "completed"
            claim = await daemon.post(
                f"/api/v1/daemon/runtimes/{runtime_id}/claim", json={"limit": 1}
            )
            assert [t["issue"]["key"] for t in claim.json()["tasks"]] == ["ENG-2"]
    finally:
        server.stop()
        run_in_thread(lambda: pg_templates.drop(url))
