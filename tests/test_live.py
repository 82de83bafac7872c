"""Live events over a real WebSocket against real server processes: delivery, origin
and access checks, resume, and a change made through another replica."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from forgehall.core import events
from forgehall.core.events import SUBSCRIBER_QUEUE, DomainEvent, EventBus, StoredEvent
from forgehall.db.engine import Database
from tests.conftest import PostgresTemplates, run_in_thread
from tests.process import ServerProcess, base_env, run_cli

pytestmark = pytest.mark.slow


def admin_token(server: ServerProcess, env: dict[str, str]) -> str:
    """First-run link -> session -> personal access token, as a new instance would."""
    link = run_cli("admin", "bootstrap", env=env).stdout.strip()
    token = link.rsplit("/", 1)[1]
    origin = f"http://localhost:{server.port}"
    with httpx.Client(base_url=server.url, headers={"origin": origin}) as browser:
        assert (
            browser.post(
                "/auth/setup", json={"token": token, "email": "admin@example.com"}
            ).status_code
            == 200
        )
        pat = browser.post("/api/v1/me/tokens", json={"name": "live tests"})
        assert pat.status_code == 201, pat.text
        return str(pat.json()["token"])


def api(server: ServerProcess, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {token}"}, timeout=10
    )


async def next_message(ws: Any, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == kind:
                return dict(message)


def ws_url(server: ServerProcess, **params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"ws://127.0.0.1:{server.port}/api/v1/ws?{query}"


async def test_events_stream_and_resume(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    with ServerProcess(tmp_path, env=dict(env)) as server:
        server.wait_ready()
        token = admin_token(server, env)
        bearer = {"Authorization": f"Bearer {token}"}
        with api(server, token) as client:
            assert (
                client.post(
                    "/api/v1/workspaces", json={"slug": "team", "name": "Team", "key_prefix": "ENG"}
                ).status_code
                == 201
            )
            async with connect(ws_url(server, workspace="team"), additional_headers=bearer) as ws:
                started = time.monotonic()
                created = client.post("/api/v1/workspaces/team/issues", json={"title": "Live"})
                assert created.status_code == 201
                message = await next_message(ws, "issue.created")
                assert message["data"]["issue_id"] == created.json()["id"]
                print(f"same-replica delivery: {time.monotonic() - started:.3f} s")
                last_id = message["id"]
            # While disconnected: two more changes.
            client.post("/api/v1/workspaces/team/issues/ENG-1/comments", json={"body": "hi"})
            client.patch(
                "/api/v1/workspaces/team/issues/ENG-1", json={"revision": 1, "title": "Renamed"}
            )
            async with connect(
                ws_url(server, workspace="team", last_event_id=last_id), additional_headers=bearer
            ) as ws:
                kinds = [json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] for _ in range(2)]
                assert kinds == ["comment.created", "issue.updated"]
            async with connect(
                ws_url(server, workspace="team", last_event_id=-5000), additional_headers=bearer
            ) as ws:
                first = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert first["type"] == "resync", "an id older than the kept events"
        assert server.stop() == 0


async def test_upgrades_are_refused_for_foreign_origins_strangers_and_other_workspaces(
    tmp_path: Path,
) -> None:
    env = base_env(tmp_path)
    with ServerProcess(tmp_path, env=dict(env)) as server:
        server.wait_ready()
        token = admin_token(server, env)
        with api(server, token) as client:
            client.post(
                "/api/v1/workspaces", json={"slug": "team", "name": "T", "key_prefix": "ENG"}
            )
        bearer = {"Authorization": f"Bearer {token}"}
        refusals = [
            (ws_url(server, workspace="team"), {**bearer, "Origin": "https://evil.example"}),
            (ws_url(server, workspace="team"), {}),
            (ws_url(server, workspace="team"), {"Authorization": "Bearer fh_pat_" + "x" * 43}),
            (ws_url(server, workspace="nope"), bearer),
        ]
        for url, headers in refusals:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url, additional_headers=headers):
                    pass
            assert refused.value.response.status_code == 403, headers
        allowed = {**bearer, "Origin": f"http://localhost:{server.port}"}
        async with connect(ws_url(server, workspace="team"), additional_headers=allowed):
            pass
        assert "ws.refused" in server.output()
        assert server.stop() == 0


@pytest.mark.postgres_only
async def test_a_change_through_replica_b_reaches_a_client_of_replica_a(
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
        token = admin_token(replica_a, env)
        bearer = {"Authorization": f"Bearer {token}"}
        with api(replica_b, token) as through_b:
            through_b.post(
                "/api/v1/workspaces", json={"slug": "team", "name": "T", "key_prefix": "ENG"}
            )
            latencies = []
            async with connect(
                ws_url(replica_a, workspace="team"), additional_headers=bearer
            ) as ws:
                for i in range(5):
                    started = time.monotonic()
                    created = through_b.post(
                        "/api/v1/workspaces/team/issues", json={"title": f"via B {i}"}
                    )
                    assert created.status_code == 201
                    message = await next_message(ws, "issue.created", timeout=5)
                    latencies.append(time.monotonic() - started)
                    assert message["data"]["issue_id"] == created.json()["id"]
        # Reported, not asserted (tests do not time things): see the issue note.
        print("cross-replica delivery (s):", ", ".join(f"{x:.3f}" for x in latencies))
    finally:
        replica_a.stop()
        replica_b.stop()
        run_in_thread(lambda: pg_templates.drop(url))


async def test_a_slow_subscriber_is_dropped_not_waited_for(db: Database) -> None:
    bus = EventBus(db)
    await bus.start()
    total = SUBSCRIBER_QUEUE + 10
    try:
        slow = bus.subscribe("ws-1")  # never reads
        fast = bus.subscribe("ws-1")
        received = 0

        async def drain() -> None:
            nonlocal received
            while received < total:
                await fast.queue.get()
                received += 1

        reader = asyncio.create_task(drain())
        await bus.publish(
            [
                DomainEvent(kind="issue.updated", workspace_id="ws-1", data={"n": i})
                for i in range(total)
            ]
        )
        async with asyncio.timeout(15):
            await slow.overflowed.wait()
            await reader
        assert received == total
        assert not fast.overflowed.is_set()
        assert slow not in bus._subscribers["ws-1"]
        assert fast in bus._subscribers["ws-1"]
    finally:
        await bus.stop()


async def test_an_event_committed_out_of_id_order_is_still_delivered(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a publisher can commit id 11 before another commits id 10; the pump
    must not skip 10. Simulated on both databases by inserting ids out of order."""
    monkeypatch.setattr(events, "GAP_SECONDS", 0.5)
    bus = EventBus(db)
    await bus.start()
    try:
        inbox = bus.subscribe("ws-1")
        await bus.publish([DomainEvent(kind="first", workspace_id="ws-1", data={})])
        first = await asyncio.wait_for(inbox.queue.get(), 5)
        base = first.id

        async def insert(event_id: int, kind: str) -> None:
            async with db.session() as session:
                session.add(StoredEvent(id=event_id, workspace_id="ws-1", kind=kind, data="{}"))
                await session.commit()
            bus._wake.set()

        await insert(base + 2, "committed-first")
        assert (await asyncio.wait_for(inbox.queue.get(), 5)).kind == "committed-first"
        await insert(base + 1, "committed-late")
        late = await asyncio.wait_for(inbox.queue.get(), 5)
        assert (late.id, late.kind) == (base + 1, "committed-late")

        # A hole that never fills (a rolled-back insert) is given up after GAP_SECONDS,
        # and nothing is delivered twice on the way.
        await insert(base + 5, "after-a-hole")
        assert (await asyncio.wait_for(inbox.queue.get(), 5)).id == base + 5
        deadline = time.monotonic() + 10
        while bus._last_id < base + 5 and time.monotonic() < deadline:
            bus._wake.set()
            await asyncio.sleep(0.1)
        assert bus._last_id == base + 5
        assert not bus._gaps
        assert not bus._delivered
        assert inbox.queue.empty()
    finally:
        await bus.stop()


async def test_an_attached_outbox_commits_its_events_with_the_change(db: Database) -> None:
    """The events of a change are written in the change's own transaction: a crash right
    after the commit (before anyone publishes) loses none, and a rolled-back change
    leaves none behind."""
    from sqlalchemy import func, select

    from forgehall.issues.service import Outbox
    from forgehall.workspaces.models import Workspace

    bus = EventBus(db)
    await bus.start()
    try:
        inbox = bus.subscribe("ws-outbox")
        async with db.session() as session:
            outbox = Outbox().attach(session)
            session.add(Workspace(slug="kept", name="Kept", key_prefix="K"))
            outbox.add("workspace.made", "ws-outbox", slug="kept")
            await session.commit()
            # The process "dies" here: publish() is never called.
        stored = await _stored(db, "workspace.made")
        assert stored == 1, "the event was committed with the change"
        event = await asyncio.wait_for(inbox.queue.get(), timeout=5)  # the pump's poll
        assert event.kind == "workspace.made"
        assert event.data == {"slug": "kept"}

        async with db.session() as session:
            outbox = Outbox().attach(session)
            session.add(Workspace(slug="dropped", name="Dropped", key_prefix="D"))
            outbox.add("workspace.dropped", "ws-outbox", slug="dropped")
            await session.flush()
            await session.rollback()
        assert await _stored(db, "workspace.dropped") == 0
        async with db.read_session() as session:
            assert (
                await session.scalar(
                    select(func.count()).select_from(Workspace).where(Workspace.slug == "dropped")
                )
                == 0
            )

        # A commit that fails after the events were written (the flush inside the commit
        # breaks a unique constraint) takes them back; a retry that commits writes them.
        from sqlalchemy.exc import IntegrityError

        async with db.session() as session:
            outbox = Outbox().attach(session)
            outbox.add("workspace.retried", "ws-outbox")
            session.add(Workspace(slug="kept", name="Duplicate", key_prefix="K"))
            with pytest.raises(IntegrityError):
                await session.commit()
            await session.rollback()
            session.add(Workspace(slug="retried", name="Retried", key_prefix="R"))
            await session.commit()
        assert await _stored(db, "workspace.retried") == 1, "written once, by the retry"
        event = await asyncio.wait_for(inbox.queue.get(), timeout=5)
        assert event.kind == "workspace.retried"

        # Events added after the last commit are still published by publish().
        async with db.session() as session:
            outbox = Outbox().attach(session)
            outbox.add("after.commit", "ws-outbox")
            await outbox.publish(bus)
        event = await asyncio.wait_for(inbox.queue.get(), timeout=5)
        assert event.kind == "after.commit"
        assert await _stored(db, "after.commit") == 1
    finally:
        await bus.stop()


async def _stored(db: Database, kind: str) -> int:
    from sqlalchemy import func, select

    async with db.read_session() as session:
        return int(
            await session.scalar(
                select(func.count()).select_from(StoredEvent).where(StoredEvent.kind == kind)
            )
            or 0
        )


async def test_events_committed_here_reach_local_subscribers_at_once_and_once(
    db: Database,
) -> None:
    """The events a request commits are handed to this process's subscribers when it
    publishes, before the pump has read them back (a waiting claim starts sooner) — each
    exactly as the pump would deliver it, and never a second time when the pump reads it."""
    from forgehall.issues.service import Outbox
    from forgehall.workspaces.models import Workspace

    bus = EventBus(db)
    await bus.start()
    try:
        inbox = bus.subscribe("ws-local")
        async with db.session() as session:
            outbox = Outbox().attach(session)
            session.add(Workspace(slug="local", name="Local", key_prefix="L"))
            outbox.add("first.change", "ws-local", n=1, when=date(2026, 12, 1))
            outbox.add("second.change", "ws-local", n=2)
            await session.commit()
            outbox.add("after.commit", "ws-local", n=3)  # written by publish() itself
            await outbox.publish(bus)
        # No await between publish() and here has let the pump run: these came directly.
        local = [inbox.queue.get_nowait() for _ in range(3)]
        assert [e.kind for e in local] == ["first.change", "second.change", "after.commit"]
        assert local[0].data == {"n": 1, "when": "2026-12-01"}, "as JSON stores it"
        assert local[0].id < local[1].id < local[2].id
        read_back = await bus.since("ws-local", 0)
        assert read_back is not None
        assert [e.as_message() for e in local] == [e.as_message() for e in read_back]
        # The pump reads them back on its next round: nothing is delivered twice.
        await asyncio.sleep(1.5)  # past the pump's poll interval
        assert inbox.queue.empty()
        assert bus.position >= local[-1].id
    finally:
        await bus.stop()
