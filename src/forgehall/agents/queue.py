"""The task queue: agent work handed to runtimes without losing it or doing it twice.

Invariants:
- At most one active task (queued, dispatched, running) per (issue, agent), enforced by
  a partial unique index. A trigger while one is queued is coalesced into it; a trigger
  while one is dispatched or running sets ``follow_up`` on it, and completing that task
  queues exactly one follow-up in the same transaction.
- A claim hands out a lease and a fresh ``lease_token``. Every later report (start,
  complete, fail, cancelled) must carry the current token, else 409 — so a daemon that
  was presumed dead can never overwrite the work of the one that took over.
- Claims are one ``UPDATE … WHERE id IN (candidates) AND status = 'queued'``: two
  claimers never get the same task (the second one's row re-check sees it taken). On
  SQLite the single writer makes the claim atomic.
- A claim respects the runtime's free capacity, the agent's runtime pool and provider,
  and the agent's concurrency limit (counted per agent within the batch too).
- Failure classes: retryable ones (runtime offline, lease expired, provider network)
  go back to the queue with exponential backoff until ``max_attempts``; final ones
  (agent error, cancelled, gate failure) end the task.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.agents.models import ACTIVE_STATES, Agent, Runtime, Task
from forgehall.core.errors import ProblemError

log = structlog.get_logger("forgehall.queue")

LEASE = timedelta(seconds=60)
BACKOFF_BASE = timedelta(seconds=10)
BACKOFF_MAX = timedelta(minutes=10)
RETRYABLE = frozenset({"runtime_offline", "lease_expired", "provider_network"})
FINAL = frozenset({"agent_error", "cancelled", "gate_failure"})


def now() -> datetime:
    return datetime.now(UTC)


def backoff(attempt: int) -> timedelta:
    return min(BACKOFF_BASE * (1 << max(attempt - 1, 0)), BACKOFF_MAX)


@dataclass(frozen=True)
class Enqueued:
    task: Task
    outcome: str  # "queued", "coalesced" or "follow_up"


async def enqueue(
    session: AsyncSession, *, workspace_id: str, issue_id: str, agent_id: str, trigger: str
) -> Enqueued:
    """Ask ``agent_id`` to work on ``issue_id``; coalesces with the active task."""
    for _ in range(3):
        active = await session.scalar(
            select(Task)
            .where(
                Task.issue_id == issue_id, Task.agent_id == agent_id, Task.status.in_(ACTIVE_STATES)
            )
            .with_for_update()
        )
        if active is not None:
            if active.status == "queued":
                await session.commit()
                return Enqueued(active, "coalesced")
            if not active.follow_up:
                active.follow_up = True
            await session.commit()
            return Enqueued(active, "follow_up")
        task = Task(
            workspace_id=workspace_id, issue_id=issue_id, agent_id=agent_id, trigger=trigger
        )
        session.add(task)
        try:
            await session.commit()
        except IntegrityError:
            await session.rollback()  # another trigger created it first: coalesce
            continue
        log.info("task.queued", task_id=task.id, trigger=trigger)
        return Enqueued(task, "queued")
    raise ProblemError(
        409, "the task queue is busy for this issue; try again", type_="queue-contention"
    )


def _in_pool(runtime_id: str) -> Any:
    return or_(Agent.runtime_pool == "[]", Agent.runtime_pool.like(f'%"{runtime_id}"%'))


async def claim(
    session: AsyncSession, runtime: Runtime, providers: list[str], limit: int
) -> list[Task]:
    """Claim up to ``limit`` queued tasks this runtime may run; returns them leased."""
    if limit <= 0 or not providers:
        return []
    moment = now()
    busy = (
        select(func.count())
        .select_from(Task)
        .where(Task.agent_id == Agent.id, Task.status.in_(("dispatched", "running")))
        .correlate(Agent)
        .scalar_subquery()
    )
    rank = (
        func.row_number()
        .over(partition_by=Task.agent_id, order_by=(Task.available_at, Task.created_at))
        .label("rank")
    )
    candidates = (
        select(
            Task.id,
            Task.available_at,
            rank,
            busy.label("busy"),
            Agent.max_concurrent_tasks.label("cap"),
        )
        .join(Agent, Agent.id == Task.agent_id)
        .where(
            Task.workspace_id == runtime.workspace_id,
            Task.status == "queued",
            Task.available_at <= moment,
            Agent.archived_at.is_(None),
            Agent.provider.in_(providers),
            _in_pool(runtime.id),
        )
        .subquery()
    )
    chosen = [
        row.id
        for row in (
            await session.execute(
                select(candidates.c.id)
                .where(candidates.c.rank + candidates.c.busy <= candidates.c.cap)
                .order_by(candidates.c.available_at)
                .limit(limit)
            )
        ).all()
    ]
    if not chosen:
        await session.commit()
        return []
    claimed: list[Task] = []
    for task_id in chosen:  # one guarded update each: never two owners for one task
        result = await session.execute(
            update(Task)
            .where(Task.id == task_id, Task.status == "queued")
            .values(
                status="dispatched",
                runtime_id=runtime.id,
                lease_token=secrets.token_hex(16),
                lease_expires_at=moment + LEASE,
                attempt=Task.attempt + 1,
                cancel_requested_at=None,
            )
            .returning(Task)
        )
        task = result.scalar_one_or_none()
        if task is not None:
            claimed.append(task)
    await session.commit()
    for task in claimed:
        log.info("task.claimed", task_id=task.id, runtime_id=runtime.id, attempt=task.attempt)
    return claimed


async def _leased(
    session: AsyncSession, task_id: str, lease_token: str, allowed: tuple[str, ...]
) -> Task:
    task = await session.scalar(select(Task).where(Task.id == task_id).with_for_update())
    if task is None:
        raise ProblemError(404, f"task {task_id} was not found")
    if task.lease_token is None or not secrets.compare_digest(task.lease_token, lease_token):
        raise ProblemError(
            409,
            "this lease is no longer yours: the task was handed to another runtime (or finished)",
            type_="stale-lease",
            current_state=task.status,
        )
    if task.status not in allowed:
        raise ProblemError(
            409,
            f"the task is {task.status}; that report is not allowed now",
            type_="invalid-transition",
            current_state=task.status,
        )
    return task


async def start(
    session: AsyncSession, task_id: str, lease_token: str, session_id: str | None = None
) -> Task:
    task = await _leased(session, task_id, lease_token, ("dispatched",))
    task.status, task.started_at = "running", now()
    task.lease_expires_at = now() + LEASE
    if session_id:
        task.session_id = session_id
    await session.commit()
    return task


async def complete(session: AsyncSession, task_id: str, lease_token: str) -> Task:
    """Finish a task; a pending follow-up is queued in the same transaction."""
    task = await _leased(session, task_id, lease_token, ("dispatched", "running"))
    _finish(task, "completed")
    follow_up = None
    if task.follow_up:
        await session.flush()  # free the (issue, agent) slot first
        follow_up = Task(
            workspace_id=task.workspace_id,
            issue_id=task.issue_id,
            agent_id=task.agent_id,
            trigger="follow_up",
        )
        session.add(follow_up)
    await session.commit()
    log.info("task.completed", task_id=task.id, follow_up=follow_up.id if follow_up else None)
    return task


def _finish(task: Task, status: str) -> None:
    task.status, task.finished_at = status, now()
    task.lease_token, task.lease_expires_at = None, None


async def fail(
    session: AsyncSession, task_id: str, lease_token: str, *, failure_class: str, detail: str = ""
) -> Task:
    if failure_class not in RETRYABLE | FINAL:
        raise ProblemError(
            422,
            f"unknown failure class {failure_class!r}; use one of "
            f"{', '.join(sorted(RETRYABLE | FINAL))}",
            type_="invalid-failure",
        )
    task = await _leased(session, task_id, lease_token, ("dispatched", "running"))
    _retry_or_fail(task, failure_class, detail)
    await session.commit()
    return task


def _retry_or_fail(task: Task, failure_class: str, detail: str) -> None:
    task.failure_class, task.failure_detail = failure_class, detail[:4000]
    if failure_class in RETRYABLE and task.attempt < task.max_attempts:
        task.status, task.runtime_id = "queued", None
        task.lease_token, task.lease_expires_at = None, None
        task.available_at = now() + backoff(task.attempt)
        log.info(
            "task.retrying", task_id=task.id, attempt=task.attempt, failure_class=failure_class
        )
    else:
        _finish(task, "cancelled" if failure_class == "cancelled" else "failed")
        log.info("task.failed", task_id=task.id, failure_class=failure_class)


async def heartbeat(session: AsyncSession, runtime: Runtime) -> list[str]:
    """Extend the leases of the runtime's tasks; return the ids it must cancel."""
    moment = now()
    runtime.last_heartbeat_at = moment
    await session.execute(
        update(Task)
        .where(Task.runtime_id == runtime.id, Task.status.in_(("dispatched", "running")))
        .values(lease_expires_at=moment + LEASE)
    )
    cancel = list(
        (
            await session.execute(
                select(Task.id).where(
                    Task.runtime_id == runtime.id,
                    Task.status.in_(("dispatched", "running")),
                    Task.cancel_requested_at.is_not(None),
                )
            )
        ).scalars()
    )
    await session.commit()
    return cancel


async def request_cancel(session: AsyncSession, workspace_id: str, task_id: str) -> Task:
    task = await session.scalar(select(Task).where(Task.id == task_id).with_for_update())
    if task is None or task.workspace_id != workspace_id:
        raise ProblemError(404, f"task {task_id} was not found")
    if task.status == "queued":
        _finish(task, "cancelled")
        task.failure_class = "cancelled"
    elif task.status in ("dispatched", "running"):
        task.cancel_requested_at = task.cancel_requested_at or now()
    else:
        raise ProblemError(
            409,
            f"the task is already {task.status}",
            type_="invalid-transition",
            current_state=task.status,
        )
    await session.commit()
    return task


async def expire_leases(session: AsyncSession) -> list[str]:
    """The watchdog: tasks whose lease ran out are retried or failed (lease_expired)."""
    rows = list(
        (
            await session.execute(
                select(Task)
                .where(Task.status.in_(("dispatched", "running")), Task.lease_expires_at < now())
                .with_for_update(skip_locked=True)
            )
        ).scalars()
    )
    for task in rows:
        _retry_or_fail(task, "lease_expired", "the runtime stopped renewing its lease")
    await session.commit()
    return [t.id for t in rows]


async def report_orphans(session: AsyncSession, runtime: Runtime, task_ids: list[str]) -> int:
    """A restarted daemon names tasks it held: retry them now, not at lease expiry."""
    rows = list(
        (
            await session.execute(
                select(Task)
                .where(
                    Task.id.in_(task_ids),
                    Task.runtime_id == runtime.id,
                    Task.status.in_(("dispatched", "running")),
                )
                .with_for_update()
            )
        ).scalars()
    )
    for task in rows:
        _retry_or_fail(task, "runtime_offline", "the daemon restarted while holding it")
    await session.commit()
    return len(rows)
