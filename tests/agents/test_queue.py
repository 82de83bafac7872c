"""The task queue driven like a daemon would, at the service level, on both databases:
coalescing, claims, fencing, leases, retries, cancellation, follow-ups, orphans."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from forgehall.agents import queue
from forgehall.agents.models import Agent, Runtime, Task
from forgehall.core.errors import ProblemError
from forgehall.db.engine import Database
from forgehall.db.url import resolve_database
from forgehall.issues.models import Issue
from forgehall.settings import Settings
from tests.conftest import make_person, make_workspace


@pytest.fixture
async def world(db: Database) -> dict[str, Any]:
    owner = await make_person(db, "owner@example.com")
    workspace = await make_workspace(db, owner, "team")
    async with db.session() as session:
        from forgehall.issues.models import Status

        status = await session.scalar(
            select(Status).where(Status.workspace_id == workspace.id, Status.category == "todo")
        )
        assert status is not None
        issues = [
            Issue(workspace_id=workspace.id, number=n, title=f"issue {n}", status_id=status.id)
            for n in range(1, 4)
        ]
        claude = Agent(
            workspace_id=workspace.id, name="claude", provider="claude", max_concurrent_tasks=2
        )
        codex = Agent(workspace_id=workspace.id, name="codex", provider="codex")
        runtimes = [
            Runtime(
                workspace_id=workspace.id,
                daemon_id=f"d{i}",
                providers='{"claude": "1.0", "codex": "0.9"}',
            )
            for i in range(2)
        ]
        session.add_all([*issues, claude, codex, *runtimes])
        await session.commit()
    return {
        "workspace": workspace,
        "issues": issues,
        "claude": claude,
        "codex": codex,
        "runtimes": runtimes,
    }


async def trigger(
    db: Database, w: dict[str, Any], issue: int = 0, agent: str = "claude"
) -> queue.Enqueued:
    async with db.session() as session:
        enqueued = await queue.enqueue(
            session,
            workspace_id=w["workspace"].id,
            issue_id=w["issues"][issue].id,
            agent_id=w[agent].id,
            trigger="assigned",
        )
        await session.commit()
        return enqueued


async def claim(
    db: Database,
    w: dict[str, Any],
    runtime: int = 0,
    limit: int = 10,
    providers: tuple[str, ...] = ("claude", "codex"),
) -> list[Task]:
    async with db.session() as session:
        rt = await session.get(Runtime, w["runtimes"][runtime].id)
        assert rt is not None
        claimed = await queue.claim(session, rt, list(providers), limit)
        await session.commit()
        return claimed


def small_pools(settings: Settings) -> Settings:
    """Four replicas' worth of pools that fit a stock PostgreSQL (100 connections)."""
    return settings.model_copy(update={"database_max_conns": 10, "database_min_conns": 1})


async def active_count(db: Database) -> int:
    async with db.read_session() as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(Task)
                .where(Task.status.in_(("queued", "dispatched", "running")))
            )
            or 0
        )


async def test_fifty_concurrent_triggers_make_one_task(
    db: Database, world: dict[str, Any], settings: Settings
) -> None:
    handles = [Database(resolve_database(small_pools(settings))) for _ in range(4)]
    try:

        async def fire(i: int) -> str:
            async with handles[i % 4].session() as session:
                enqueued = await queue.enqueue(
                    session,
                    workspace_id=world["workspace"].id,
                    issue_id=world["issues"][0].id,
                    agent_id=world["claude"].id,
                    trigger="comment",
                )
                await session.commit()
                return enqueued.outcome

        outcomes = await asyncio.gather(*(fire(i) for i in range(50)))
    finally:
        for handle in handles:
            await handle.dispose()
    assert outcomes.count("queued") == 1
    assert outcomes.count("coalesced") == 49
    assert await active_count(db) == 1


async def test_triggers_during_a_run_queue_exactly_one_follow_up(
    db: Database, world: dict[str, Any]
) -> None:
    await trigger(db, world)
    (task,) = await claim(db, world)
    async with db.session() as session:
        await queue.start(session, task.id, task.lease_token or "")
        await session.commit()
    outcomes = [(await trigger(db, world)).outcome for _ in range(5)]
    assert outcomes == ["follow_up"] * 5
    assert await active_count(db) == 1
    async with db.session() as session:
        await queue.complete(session, task.id, task.lease_token or "")
        await session.commit()
    async with db.read_session() as session:
        rows = list((await session.execute(select(Task).order_by(Task.created_at))).scalars())
    assert [(t.status, t.trigger) for t in rows] == [
        ("completed", "assigned"),
        ("queued", "follow_up"),
    ]


async def test_claim_leases_and_fences(db: Database, world: dict[str, Any]) -> None:
    await trigger(db, world)
    (task,) = await claim(db, world)
    assert task.status == "dispatched"
    assert task.attempt == 1
    assert task.lease_token
    assert await claim(db, world, runtime=1) == [], "a dispatched task is not claimable"
    async with db.session() as session:
        with pytest.raises(ProblemError) as stale:
            await queue.start(session, task.id, "not-the-token")
    assert stale.value.status == 409
    assert stale.value.type == "stale-lease"
    async with db.session() as session:
        running = await queue.start(session, task.id, task.lease_token or "", "sess-1")
        await session.commit()
    assert running.status == "running"
    async with db.session() as session:
        with pytest.raises(ProblemError) as twice:
            await queue.start(session, task.id, task.lease_token or "")
    assert twice.value.type == "invalid-transition"


async def test_lease_expiry_hands_the_task_to_another_runtime_and_fences_the_first(
    db: Database, world: dict[str, Any]
) -> None:
    await trigger(db, world)
    (first,) = await claim(db, world, runtime=0)
    async with db.session() as session:
        await session.execute(
            update(Task).values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()
        assert [t.id for t in await queue.expire_leases(session)] == [first.id]
        await session.commit()
    async with db.session() as session:
        await session.execute(update(Task).values(available_at=datetime.now(UTC)))
        await session.commit()
    (second,) = await claim(db, world, runtime=1)
    assert second.id == first.id
    assert second.attempt == 2
    assert second.lease_token != first.lease_token
    async with db.session() as session:
        with pytest.raises(ProblemError) as late:
            await queue.complete(session, first.id, first.lease_token or "")
    assert late.value.status == 409, "the presumed-dead daemon's late report is refused"
    async with db.session() as session:
        done = await queue.complete(session, second.id, second.lease_token or "")
        await session.commit()
    assert done.task.status == "completed"
    assert done.follow_up is None


async def test_retry_with_backoff_then_final_failure(db: Database, world: dict[str, Any]) -> None:
    await trigger(db, world)
    for attempt in (1, 2, 3):
        async with db.session() as session:
            await session.execute(update(Task).values(available_at=datetime.now(UTC)))
            await session.commit()
        (task,) = await claim(db, world)
        assert task.attempt == attempt
        async with db.session() as session:
            failed = await queue.fail(
                session,
                task.id,
                task.lease_token or "",
                failure_class="provider_network",
                detail="reset",
            )
            await session.commit()
        if attempt < 3:
            assert failed.status == "queued"
            assert failed.available_at > datetime.now(UTC) + timedelta(seconds=5)
            assert await claim(db, world) == [], "backoff: not claimable yet"
        else:
            assert failed.status == "failed"
            assert failed.failure_class == "provider_network"


async def test_final_failure_classes_do_not_retry(db: Database, world: dict[str, Any]) -> None:
    await trigger(db, world)
    (task,) = await claim(db, world)
    async with db.session() as session:
        failed = await queue.fail(
            session, task.id, task.lease_token or "", failure_class="agent_error", detail="exit 1"
        )
        assert failed.status == "failed"
        await session.commit()
        with pytest.raises(ProblemError) as unknown:
            await queue.fail(session, task.id, "x", failure_class="weird")
        assert unknown.value.status == 422


async def test_cancel_queued_and_running(db: Database, world: dict[str, Any]) -> None:
    await trigger(db, world, issue=0)
    await trigger(db, world, issue=1)
    async with db.session() as session:
        queued = await session.scalar(select(Task).where(Task.issue_id == world["issues"][1].id))
        assert queued is not None
    (running,) = await claim(db, world, limit=1)
    async with db.session() as session:
        cancelled = await queue.request_cancel(
            session, world["workspace"].id, queued.id if queued.id != running.id else ""
        )
        await session.commit()
    assert cancelled.status == "cancelled"
    async with db.session() as session:
        await queue.request_cancel(session, world["workspace"].id, running.id)
        await session.commit()
        runtime = await session.get(Runtime, world["runtimes"][0].id)
        assert runtime is not None
        assert await queue.heartbeat(session, runtime) == [running.id], (
            "the cancellation reaches the holder on its next heartbeat"
        )
    async with db.session() as session:
        done = await queue.fail(
            session, running.id, running.lease_token or "", failure_class="cancelled"
        )
        await session.commit()
    assert done.status == "cancelled"
    async with db.session() as session:
        with pytest.raises(ProblemError) as other:
            await queue.request_cancel(session, "another-workspace", running.id)
    assert other.value.status == 404


async def test_heartbeat_extends_leases(db: Database, world: dict[str, Any]) -> None:
    await trigger(db, world)
    (task,) = await claim(db, world)
    async with db.session() as session:
        await session.execute(
            update(Task).values(lease_expires_at=datetime.now(UTC) + timedelta(seconds=2))
        )
        await session.commit()
        runtime = await session.get(Runtime, world["runtimes"][0].id)
        assert runtime is not None
        await queue.heartbeat(session, runtime)
        await session.commit()
        refreshed = await session.get(Task, task.id)
        assert refreshed is not None
        await session.refresh(refreshed)
    assert refreshed.lease_expires_at is not None
    assert refreshed.lease_expires_at > datetime.now(UTC) + timedelta(seconds=30)


async def test_claims_respect_provider_pool_and_concurrency(
    db: Database, world: dict[str, Any]
) -> None:
    for issue in range(3):
        await trigger(db, world, issue=issue, agent="claude")
    await trigger(db, world, issue=0, agent="codex")
    only_codex = await claim(db, world, providers=("codex",))
    assert [t.agent_id for t in only_codex] == [world["codex"].id]
    claimed = await claim(db, world, limit=10)
    assert len(claimed) == 2, "claude may run 2 at once (max_concurrent_tasks=2)"
    assert await claim(db, world, runtime=1) == []
    async with db.session() as session:
        await session.execute(
            update(Agent)
            .where(Agent.id == world["claude"].id)
            .values(runtime_pool=f'["{world["runtimes"][1].id}"]', max_concurrent_tasks=6)
        )
        await session.commit()
    assert await claim(db, world, runtime=0) == [], "runtime 0 is not in the pool"
    assert len(await claim(db, world, runtime=1)) == 1


async def test_concurrent_claimers_never_share_a_task(
    db: Database, world: dict[str, Any], settings: Settings
) -> None:
    async with db.session() as session:
        await session.execute(update(Agent).values(max_concurrent_tasks=100))
        await session.commit()
    for issue in range(3):
        for agent in ("claude", "codex"):
            await trigger(db, world, issue=issue, agent=agent)
    handles = [Database(resolve_database(settings)) for _ in range(2)]
    try:

        async def grab(i: int) -> list[str]:
            async with handles[i].session() as session:
                runtime = await session.get(Runtime, world["runtimes"][i].id)
                assert runtime is not None
                claimed = await queue.claim(session, runtime, ["claude", "codex"], 10)
                await session.commit()
                return [t.id for t in claimed]

        first, second = await asyncio.gather(grab(0), grab(1))
    finally:
        for handle in handles:
            await handle.dispose()
    assert len(first) + len(second) == 6
    assert not set(first) & set(second)


async def test_orphans_reported_after_a_restart_are_retried_at_once(
    db: Database, world: dict[str, Any]
) -> None:
    await trigger(db, world)
    (task,) = await claim(db, world)
    async with db.session() as session:
        runtime = await session.get(Runtime, world["runtimes"][0].id)
        assert runtime is not None
        assert [t.id for t in await queue.report_orphans(session, runtime, [task.id, "x"])] == [
            task.id
        ]
        await session.commit()
        again = await session.get(Task, task.id)
        assert again is not None
        await session.refresh(again)
    assert again.status == "queued"
    assert again.failure_class == "runtime_offline"


async def test_fifty_concurrent_triggers_during_a_run_queue_one_follow_up(
    db: Database, world: dict[str, Any], settings: Settings
) -> None:
    await trigger(db, world)
    (task,) = await claim(db, world)
    handles = [Database(resolve_database(small_pools(settings))) for _ in range(4)]
    try:

        async def fire(i: int) -> str:
            async with handles[i % 4].session() as session:
                enqueued = await queue.enqueue(
                    session,
                    workspace_id=world["workspace"].id,
                    issue_id=world["issues"][0].id,
                    agent_id=world["claude"].id,
                    trigger="comment",
                )
                await session.commit()
                return enqueued.outcome

        outcomes = await asyncio.gather(*(fire(i) for i in range(50)))
    finally:
        for handle in handles:
            await handle.dispose()
    assert outcomes == ["follow_up"] * 50
    assert await active_count(db) == 1
    async with db.session() as session:
        done = await queue.complete(session, task.id, task.lease_token or "")
        await session.commit()
    assert done.follow_up is not None
    assert await active_count(db) == 1, "exactly one follow-up is queued"


async def test_batched_reports_take_the_current_leases_and_name_the_others(
    db: Database, world: dict[str, Any]
) -> None:
    for issue in range(3):
        await trigger(db, world, issue=issue, agent="codex")
    claimed = await claim(db, world)
    assert len(claimed) == 3
    leases = [queue.Lease(t.id, t.lease_token or "") for t in claimed]
    tokens = {lease.token for lease in leases}
    assert len(tokens) == 3, "each task of a batch gets its own lease token"
    assert all(len(t) == 32 and int(t, 16) >= 0 for t in tokens)
    await trigger(db, world, issue=1, agent="codex")  # while dispatched: a follow-up

    # One stale token and one unknown task in the batch: those two are refused, each
    # with its reason; the others start.
    batch = [leases[1], queue.Lease(claimed[2].id, "not-the-token"), queue.Lease("nope", "x")]
    async with db.session() as session:
        started, refused = await queue.start_many(session, batch, {claimed[1].id: "sess-1"})
        await session.commit()
    assert [t.id for t in started] == [claimed[1].id]
    assert started[0].status == "running"
    assert started[0].session_id == "sess-1"
    assert [(r.task_id, r.error.status, r.error.type) for r in refused] == [
        (claimed[2].id, 409, "stale-lease"),
        ("nope", 404, "not-found"),
    ]
    async with db.read_session() as session:
        states = {i: st for i, st in (await session.execute(select(Task.id, Task.status))).all()}
    assert states == {
        claimed[0].id: "dispatched",
        claimed[1].id: "running",
        claimed[2].id: "dispatched",
    }, "a refusal changes nothing"

    # Starting the running one again is an invalid transition; the rest start in order.
    async with db.session() as session:
        started, refused = await queue.start_many(session, [leases[2], leases[1], leases[0]])
        await session.commit()
    assert [t.id for t in started] == [claimed[2].id, claimed[0].id], "in the order given"
    assert [(r.task_id, r.error.type) for r in refused] == [(claimed[1].id, "invalid-transition")]

    async with db.session() as session:
        done, refused = await queue.complete_many(
            session, leases, results={claimed[0].id: "shipped"}, session_ids={}
        )
        await session.commit()
    assert refused == []
    assert [d.task.status for d in done] == ["completed"] * 3
    assert [d.task.result for d in done] == ["shipped", "", ""]
    assert done[1].task.session_id == "sess-1"
    assert [d.follow_up is not None for d in done] == [False, True, False]
    async with db.read_session() as session:
        queued = (await session.execute(select(Task).where(Task.status == "queued"))).scalars()
        (follow_up,) = list(queued)
    assert follow_up.issue_id == world["issues"][1].id
    assert follow_up.trigger == "follow_up"

    async with db.session() as session:  # a second report on finished tasks is refused
        done, refused = await queue.complete_many(session, leases[:1])
        with pytest.raises(ProblemError) as again:
            await queue.complete(session, leases[0].task_id, leases[0].token)
    assert done == []
    assert refused[0].error.type == "stale-lease"
    assert again.value.status == 409


async def test_a_claim_reads_the_queue_not_the_history(db: Database, world: dict[str, Any]) -> None:
    """Every statement of a claim reaches the queued and in-flight tasks through the
    partial indexes made for them, never through an agent's or runtime's whole history —
    even when the planner's statistics still describe a full queue (they were taken
    before 2,000 tasks ran). The status conditions are literals for this: a bound
    parameter never matches a partial index on SQLite, nor in a PostgreSQL generic plan."""
    from sqlalchemy import event, insert

    claude, runtime = world["claude"], world["runtimes"][0]
    workspace_id, status_id = world["workspace"].id, world["issues"][0].status_id
    many = [
        {"id": f"{n:032x}", "workspace_id": workspace_id, "number": 100 + n, "title": "old"}
        | {"status_id": status_id}
        for n in range(2000)
    ]
    async with db.session() as session:
        await session.execute(insert(Issue), many)
        await session.execute(
            insert(Task),
            [
                {
                    "workspace_id": workspace_id,
                    "issue_id": issue["id"],
                    "agent_id": claude.id,
                    "status": "queued",
                    "runtime_id": runtime.id,
                }
                for issue in many
            ],
        )
        await session.commit()
    async with db.engine.connect() as conn:
        await conn.exec_driver_sql("ANALYZE")
        await conn.commit()
    async with db.session() as session:  # the history: all ran, statistics not retaken
        await session.execute(update(Task).values(status="completed"))
        await session.commit()
    await trigger(db, world)

    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "UPDATE")):
            sent.append((statement, parameters))

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    try:
        claimed = await claim(db, world)
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", record)
    assert len(claimed) == 1
    explain = "EXPLAIN QUERY PLAN " if db.is_sqlite else "EXPLAIN "
    plans = []
    async with db.engine.connect() as conn:
        for statement, parameters in sent:
            if "tasks" not in statement:
                continue
            rows = await conn.exec_driver_sql(explain + statement, parameters)
            plans.append(" ".join(str(row[-1]) for row in rows.all()))
        await conn.rollback()
    used = " ".join(plans)
    assert "ix_tasks_queued_by_agent" in used
    assert "ix_tasks_busy_by_" in used  # the in-flight tasks, by agent or by runtime
    assert "ix_tasks_agent_id" not in used, used
    assert "ix_tasks_runtime_id" not in used, used
