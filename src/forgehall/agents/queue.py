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

These functions never commit: they work inside the caller's transaction, so a trigger is
queued atomically with the issue change that caused it, and a claim atomically with the
task tokens minted for it (``agents.dispatch`` commits). ``enqueue`` inserts with
``ON CONFLICT DO NOTHING``, so a lost race with a concurrent trigger is absorbed without
aborting the caller's transaction.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Integer, bindparam, case, func, or_, select, text, tuple_, union_all, update
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.agents.models import (
    ACTIVE_SQL,
    ACTIVE_STATES,
    IN_FLIGHT,
    Agent,
    Runtime,
    Task,
    task_status_in,
)
from forgehall.core.errors import ProblemError
from forgehall.db.dialect import random_hex_token, upsert_insert

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
    session: AsyncSession,
    *,
    workspace_id: str,
    issue_id: str,
    agent_id: str,
    trigger: str,
    created_by: str | None = None,
) -> Enqueued:
    """Ask ``agent_id`` to work on ``issue_id``; coalesces with the active task.

    The insert is ``INSERT … ON CONFLICT DO NOTHING`` on the one-active-task index: a
    concurrent trigger that created the task first makes it insert nothing (no error, no
    savepoint), and this one coalesces with that task on the next round."""
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
                return Enqueued(active, "coalesced")
            active.follow_up = True
            await session.flush()
            return Enqueued(active, "follow_up")
        task = await session.scalar(
            upsert_insert(session, Task)
            .values(
                workspace_id=workspace_id,
                issue_id=issue_id,
                agent_id=agent_id,
                trigger=trigger,
                created_by=created_by,
            )
            .on_conflict_do_nothing(
                index_elements=["issue_id", "agent_id"], index_where=text(ACTIVE_SQL)
            )
            .returning(Task),
            execution_options={"populate_existing": True},
        )
        if task is None:
            continue  # a concurrent trigger created it first: coalesce with that one
        log.info("task.queued", task_id=task.id, trigger=trigger)
        return Enqueued(task, "queued")
    raise ProblemError(
        409, "the task queue is busy for this issue; try again", type_="queue-contention"
    )


# --- claiming ---------------------------------------------------------------------------
#
# The claim's statements are built once, with bound parameters, and reused: building them
# per call (and SQLAlchemy's cache key over them) cost more CPU than the database spent
# answering them. The pick over each agent's oldest tasks has one shape per number of
# agents (a UNION ALL branch each), built on first use and kept for up to
# ``_CACHED_PICKS`` agents.

_CACHED_PICKS = 64


def _eligible_agents(skip_locked: bool) -> Any:
    # The agent's oldest claimable task, in the order of ix_tasks_queued_by_agent: a
    # plain EXISTS let the planner walk the agent's whole history through ix_tasks_agent_id
    # looking for a queued row, whenever its statistics still showed a full queue.
    has_work = (
        select(Task.id)
        .where(
            Task.agent_id == Agent.id,
            task_status_in("queued"),
            Task.available_at <= bindparam("moment"),
        )
        .order_by(Task.available_at, Task.created_at)
        .limit(1)
        .scalar_subquery()
        .is_not(None)
    )
    return (
        select(Agent.id, Agent.max_concurrent_tasks)
        .where(
            Agent.workspace_id == bindparam("workspace_id"),
            Agent.archived_at.is_(None),
            Agent.provider.in_(bindparam("providers", expanding=True)),
            or_(Agent.runtime_pool == "[]", Agent.runtime_pool.like(bindparam("pool_pattern"))),
            has_work,
        )
        .order_by(Agent.id)
        .with_for_update(of=Agent, skip_locked=skip_locked)
    )


_LOCK_FREE_AGENTS = _eligible_agents(skip_locked=True)
_LOCK_AGENTS = _eligible_agents(skip_locked=False)
_BUSY_BY_AGENT = (
    select(Task.agent_id, func.count())
    .where(
        Task.agent_id.in_(bindparam("agent_ids", expanding=True)),
        task_status_in(*IN_FLIGHT),
    )
    .group_by(Task.agent_id)
)
_PICKS: dict[int, Any] = {}


def _pick(agents: int) -> Any:
    """``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING`` over the oldest
    queued tasks of ``agents`` agents (parameters ``agent_<i>`` / ``slots_<i>``), oldest
    first up to ``limit``: one short index range per agent (ix_tasks_queued_by_agent),
    never a pass over the whole queue."""
    cached = _PICKS.get(agents)
    if cached is not None:
        return cached
    per_agent = []
    for i in range(agents):
        oldest = (
            select(Task.id, Task.available_at, Task.created_at)
            .where(
                Task.agent_id == bindparam(f"agent_{i}"),
                task_status_in("queued"),
                Task.available_at <= bindparam("moment"),
            )
            .order_by(Task.available_at, Task.created_at)
            .limit(bindparam(f"slots_{i}", type_=Integer))
            .subquery()
        )
        per_agent.append(select(oldest.c.id, oldest.c.available_at, oldest.c.created_at))
    candidates = union_all(*per_agent).subquery()
    chosen = (
        select(candidates.c.id)
        .order_by(candidates.c.available_at, candidates.c.created_at)
        .limit(bindparam("limit", type_=Integer))
    )
    still_queued = (
        select(Task.id)
        .where(Task.id.in_(chosen), Task.status == "queued")
        .with_for_update(skip_locked=True)
    )
    statement = (
        update(Task)
        .where(Task.id.in_(still_queued))
        .values(
            status="dispatched",
            runtime_id=bindparam("runtime_id"),
            lease_token=random_hex_token(),
            lease_expires_at=bindparam("lease_until"),
            attempt=Task.attempt + 1,
            cancel_requested_at=None,
            cancel_delivered_at=None,
        )
        .returning(Task)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    if agents <= _CACHED_PICKS:
        _PICKS[agents] = statement
    return statement


async def claim(
    session: AsyncSession, runtime: Runtime, providers: list[str], limit: int
) -> list[Task]:
    """Claim up to ``limit`` queued tasks this runtime may run; returns them leased.

    The agents concerned are row-locked first (in id order, skipping those another
    claimer holds), so concurrent claimers on PostgreSQL count each agent's running
    tasks one after the other and never exceed its concurrency limit together. Each
    locked agent's free slots (its limit minus its dispatched and running tasks) are
    counted once, after the lock, in a statement of their own (so it sees what the
    previous holder of the lock committed). The claim itself is then one ``UPDATE …
    WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING`` over each agent's oldest
    queued tasks, at most its free slots, oldest first up to ``limit``; the database
    makes each task's new lease token.
    """
    if limit <= 0 or not providers:
        return []
    moment = now()
    params = {
        "moment": moment,
        "workspace_id": runtime.workspace_id,
        "providers": providers,
        "pool_pattern": f'%"{runtime.id}"%',
    }
    # Agents another runtime is claiming for right now are skipped, so concurrent
    # claimers share the agents out instead of queueing behind one another; only when
    # every agent with work is taken does this claim wait for their locks.
    locked = await session.execute(_LOCK_FREE_AGENTS, params)
    caps: dict[str, int] = {agent_id: cap for agent_id, cap in locked.all()}
    if not caps:
        locked = await session.execute(_LOCK_AGENTS, params)
        caps = {agent_id: cap for agent_id, cap in locked.all()}
    if not caps:
        return []
    counted = await session.execute(_BUSY_BY_AGENT, {"agent_ids": list(caps)})
    busy: dict[str, int] = {agent_id: n for agent_id, n in counted.all()}
    free = {
        agent_id: min(cap - busy.get(agent_id, 0), limit)
        for agent_id, cap in caps.items()
        if cap - busy.get(agent_id, 0) > 0
    }
    if not free:
        return []
    picked: dict[str, Any] = {
        "moment": moment,
        "limit": limit,
        "runtime_id": runtime.id,
        "lease_until": moment + LEASE,
    }
    for i, (agent_id, slots) in enumerate(free.items()):
        picked[f"agent_{i}"] = agent_id
        picked[f"slots_{i}"] = slots
    result = await session.execute(_pick(len(free)), picked)
    claimed = sorted(result.scalars(), key=lambda t: (t.available_at, t.created_at, t.id))
    for task in claimed:
        log.info("task.claimed", task_id=task.id, runtime_id=runtime.id, attempt=task.attempt)
    return claimed


@dataclass(frozen=True)
class Lease:
    """A report's claim on a task: its id and the lease token handed out with it."""

    task_id: str
    token: str


@dataclass(frozen=True)
class Refused:
    """Why a report on one task of a batch was not taken (raised as is for a single one)."""

    task_id: str
    error: ProblemError


async def _refusals(
    session: AsyncSession, leases: Sequence[Lease], taken: set[str], allowed: tuple[str, ...]
) -> list[Refused]:
    """Why the leases a batched update did not take were refused (read after the fact)."""
    missing = [lease for lease in leases if lease.task_id not in taken]
    if not missing:
        return []
    rows = await session.execute(select(Task).where(Task.id.in_([m.task_id for m in missing])))
    found = {task.id: task for task in rows.scalars()}
    refused = []
    for lease in missing:
        problem = _lease_problem(found.get(lease.task_id), lease, allowed)
        refused.append(Refused(lease.task_id, problem or _raced(lease.task_id)))
    return refused


def _raced(task_id: str) -> ProblemError:
    return ProblemError(
        409,
        f"task {task_id} changed while this report was made; send it again",
        type_="report-raced",
    )


def _matching(leases: Sequence[Lease], allowed: tuple[str, ...]) -> Any:
    """The rows of ``leases`` still holding that lease in an allowed state. A lease token
    is a fencing token (which claim a report belongs to), not a credential — the caller
    is already authenticated for the workspace — so it is compared in the statement."""
    return (
        tuple_(Task.id, Task.lease_token).in_([(lease.task_id, lease.token) for lease in leases]),
        Task.status.in_(allowed),
    )


def _lease_problem(
    task: Task | None, lease: Lease, allowed: tuple[str, ...]
) -> ProblemError | None:
    if task is None:
        return ProblemError(404, f"task {lease.task_id} was not found")
    if task.lease_token is None or not secrets.compare_digest(task.lease_token, lease.token):
        return ProblemError(
            409,
            "this lease is no longer yours: the task was handed to another runtime (or finished)",
            type_="stale-lease",
            current_state=task.status,
        )
    if task.status not in allowed:
        return ProblemError(
            409,
            f"the task is {task.status}; that report is not allowed now",
            type_="invalid-transition",
            current_state=task.status,
        )
    return None


async def _leased(
    session: AsyncSession, task_id: str, lease_token: str, allowed: tuple[str, ...]
) -> Task:
    task = await session.scalar(select(Task).where(Task.id == task_id).with_for_update())
    problem = _lease_problem(task, Lease(task_id, lease_token), allowed)
    if problem is not None:
        raise problem
    assert task is not None
    return task


async def start(
    session: AsyncSession, task_id: str, lease_token: str, session_id: str | None = None
) -> Task:
    sessions = {task_id: session_id} if session_id else None
    started, refused = await start_many(session, [Lease(task_id, lease_token)], sessions)
    if refused:
        raise refused[0].error
    return started[0]


async def start_many(
    session: AsyncSession, leases: Sequence[Lease], session_ids: Mapping[str, str] | None = None
) -> tuple[list[Task], list[Refused]]:
    """dispatched → running for the tasks of ``leases`` whose lease is current: one
    ``UPDATE … RETURNING``. Returns the started tasks (in the order given) and, for the
    others, why not; a refusal changes nothing of its task."""
    if not leases:
        return [], []
    moment = now()
    named = {task_id: sid for task_id, sid in (session_ids or {}).items() if sid}
    result = await session.execute(
        update(Task)
        .where(*_matching(leases, ("dispatched",)))
        .values(
            status="running",
            started_at=moment,
            lease_expires_at=moment + LEASE,
            session_id=case(named, value=Task.id, else_=Task.session_id)
            if named
            else Task.session_id,
        )
        .returning(Task)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    started = _in_order(leases, result.scalars())
    return started, await _refusals(session, leases, {t.id for t in started}, ("dispatched",))


def _in_order(leases: Sequence[Lease], tasks: Iterable[Task]) -> list[Task]:
    by_id = {task.id: task for task in tasks}
    return [by_id[lease.task_id] for lease in leases if lease.task_id in by_id]


async def report(session: AsyncSession, task_id: str, lease_token: str) -> Task:
    """Check the lease for a report made while the task runs (messages, usage, progress)
    and extend it: a daemon that is reporting is alive."""
    task = await _leased(session, task_id, lease_token, ("dispatched", "running"))
    task.lease_expires_at = now() + LEASE
    return task


@dataclass(frozen=True)
class Completed:
    task: Task
    follow_up: Task | None


async def complete(
    session: AsyncSession,
    task_id: str,
    lease_token: str,
    *,
    result: str = "",
    session_id: str | None = None,
) -> Completed:
    """Finish a task; a pending follow-up is queued in the same transaction."""
    done, refused = await complete_many(
        session,
        [Lease(task_id, lease_token)],
        results={task_id: result},
        session_ids={task_id: session_id} if session_id else None,
    )
    if refused:
        raise refused[0].error
    return done[0]


async def complete_many(
    session: AsyncSession,
    leases: Sequence[Lease],
    *,
    results: Mapping[str, str] | None = None,
    session_ids: Mapping[str, str] | None = None,
) -> tuple[list[Completed], list[Refused]]:
    """Finish the tasks of ``leases`` whose lease is current (one ``UPDATE …
    RETURNING``); the follow-ups they had pending are queued in the same transaction
    (one insert). Returns what was completed, in the order given, and the refusals."""
    if not leases:
        return [], []
    allowed = ("dispatched", "running")
    texts = {task_id: text[:20000] for task_id, text in (results or {}).items() if text}
    named = {task_id: sid for task_id, sid in (session_ids or {}).items() if sid}
    updated = await session.execute(
        update(Task)
        .where(*_matching(leases, allowed))
        .values(
            status="completed",
            finished_at=now(),
            lease_token=None,
            lease_expires_at=None,
            result=case(texts, value=Task.id, else_="") if texts else "",
            session_id=case(named, value=Task.id, else_=Task.session_id)
            if named
            else Task.session_id,
        )
        .returning(Task)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    tasks = _in_order(leases, updated.scalars())
    follow_ups = {
        task.id: Task(
            workspace_id=task.workspace_id,
            issue_id=task.issue_id,
            agent_id=task.agent_id,
            trigger="follow_up",
        )
        for task in tasks
        if task.follow_up
    }
    if follow_ups:
        session.add_all(follow_ups.values())
        await session.flush()
    done = [Completed(task, follow_ups.get(task.id)) for task in tasks]
    for item in done:
        log.info(
            "task.completed",
            task_id=item.task.id,
            follow_up=item.follow_up.id if item.follow_up else None,
        )
    return done, await _refusals(session, leases, {t.id for t in tasks}, allowed)


def fail_queued(task: Task, failure_class: str, detail: str) -> None:
    """End a task that never left the queue (nothing could run it)."""
    _finish(task, "failed")
    task.failure_class, task.failure_detail = failure_class, detail[:4000]
    log.info("task.failed", task_id=task.id, failure_class=failure_class)


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
    await session.flush()
    return task


def _retry_or_fail(task: Task, failure_class: str, detail: str) -> None:
    if task.cancel_requested_at is not None and failure_class != "cancelled":
        # Someone asked to cancel it: whatever stopped this attempt, it ends here.
        detail = f"cancelled (the attempt ended with {failure_class}: {detail})"
        failure_class = "cancelled"
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


async def heartbeat(
    session: AsyncSession, runtime: Runtime, held: list[str] | None = None
) -> list[str]:
    """Extend the leases of the runtime's tasks (only those in ``held`` when given);
    return the ids it must cancel."""
    moment = now()
    runtime.last_heartbeat_at = moment
    renew = update(Task).where(Task.runtime_id == runtime.id, task_status_in(*IN_FLIGHT))
    if held is not None:
        renew = renew.where(Task.id.in_(held))
    await session.execute(renew.values(lease_expires_at=moment + LEASE))
    await session.flush()
    return await cancellations(session, runtime)


async def cancellations(session: AsyncSession, runtime: Runtime) -> list[str]:
    """Ids of the runtime's tasks whose cancellation was asked for."""
    return list(
        (
            await session.execute(
                select(Task.id).where(
                    Task.runtime_id == runtime.id,
                    task_status_in(*IN_FLIGHT),
                    Task.cancel_requested_at.is_not(None),
                )
            )
        ).scalars()
    )


async def request_cancel(session: AsyncSession, workspace_id: str, task_id: str) -> Task:
    task = await session.scalar(select(Task).where(Task.id == task_id).with_for_update())
    if task is None or task.workspace_id != workspace_id:
        raise ProblemError(404, f"task {task_id} was not found")
    if task.status == "queued":
        _finish(task, "cancelled")
        task.failure_class, task.failure_detail = "cancelled", "cancelled while queued"
    elif task.status in ("dispatched", "running"):
        task.cancel_requested_at = task.cancel_requested_at or now()
    else:
        raise ProblemError(
            409,
            f"the task is already {task.status}",
            type_="invalid-transition",
            current_state=task.status,
        )
    await session.flush()
    return task


async def cancel_active(session: AsyncSession, issue_id: str, agent_id: str) -> Task | None:
    """The agent no longer works on the issue (it was unassigned): cancel its active task
    there, if any — at once when queued, through its daemon when running."""
    task = await session.scalar(
        select(Task)
        .where(Task.issue_id == issue_id, Task.agent_id == agent_id, Task.status.in_(ACTIVE_STATES))
        .with_for_update()
    )
    if task is not None:
        await request_cancel(session, task.workspace_id, task.id)
    return task


async def expire_leases(session: AsyncSession) -> list[Task]:
    """The watchdog: tasks whose lease ran out are retried or failed (lease_expired)."""
    rows = list(
        (
            await session.execute(
                select(Task)
                .where(task_status_in(*IN_FLIGHT), Task.lease_expires_at < now())
                .with_for_update(skip_locked=True)
            )
        ).scalars()
    )
    for task in rows:
        _retry_or_fail(task, "lease_expired", "the runtime stopped renewing its lease")
    await session.flush()
    return rows


async def report_orphans(
    session: AsyncSession, runtime: Runtime, task_ids: list[str]
) -> list[Task]:
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
        task.available_at = now()  # the runtime is back: no reason to wait
    await session.flush()
    return rows
