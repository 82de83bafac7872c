"""Task lifecycle service: the daemon protocol's rules, and tasks as members see them.

``agents.queue`` holds the queue's invariants and never commits; this module composes
it into transactions with everything that must change together:

- a claim leases tasks, mints each one's task token (``fh_tsk_…``) and assembles what the
  daemon needs (agent profile with decrypted env, the issue with its comments, the
  workspace repositories, the prior CLI session) — one commit;
- every report checks the lease token (409 when stale) and renews the lease;
- a task that stops running has its task token revoked in the same commit; one that
  fails for good (no retry pending) also comments the failure on its issue, notifies the
  followers and moves the issue back to a todo-category status (``issues.service``);
- a task that completes after submitting gate results (the daemon runs the gates in the
  worktree) has its readiness decided in the same commit: the issue goes to review, or
  the failures go back to the agent (``gates_failed``), or after too many rounds the
  issue is blocked;
- events (``task.*``) are published after commit; ``task.queued`` and
  ``task.cancel_requested`` wake long-polling claims on every replica through the bus.

Long-poll claims hold no database connection while they wait: each attempt is a short
transaction, and between attempts the waiter sleeps on its event-bus subscription (woken
across replicas by ``LISTEN/NOTIFY``) with a poll fallback for tasks whose backoff ends.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

import structlog
from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.agents import queue
from forgehall.agents.models import (
    IN_FLIGHT,
    Agent,
    Runtime,
    Task,
    TaskMessage,
    TaskUsage,
    task_status_in,
)
from forgehall.agents.schemas import (
    MESSAGE_BATCH_MAX,
    MESSAGE_CONTENT_MAX,
    ClaimedAgent,
    ClaimedComment,
    ClaimedIssue,
    ClaimedRepository,
    ClaimedTask,
    CustomCommand,
    MessageIn,
    UsageIn,
)
from forgehall.agents.service import (
    RUNTIME_OFFLINE_AFTER,
    agent_env,
    eligible_runtimes,
    get_agent_or_404,
    pool_runtimes,
    runtime_providers,
)
from forgehall.core.errors import ProblemError
from forgehall.core.events import EventBus
from forgehall.core.services import BackgroundService
from forgehall.db.dialect import upsert_insert
from forgehall.db.engine import Database
from forgehall.gates.schemas import Tier
from forgehall.identity.service import mint_task_token, revoke_task_tokens
from forgehall.issues import service as issues
from forgehall.issues.service import Outbox
from forgehall.ledger import service as ledger
from forgehall.settings import Settings
from forgehall.workspaces.access import Access
from forgehall.workspaces.models import Repository, Workspace

log = structlog.get_logger("forgehall.dispatch")

HEARTBEAT_SECONDS = 15.0
CLAIM_TOUCH_AFTER = timedelta(seconds=5)
"""A claim attempt records the runtime as alive only when its last sign of life is older
than this: a daemon claims in a loop, and a write per attempt (the runtime's row, on
SQLite the single writer) bought nothing against a 150 s offline threshold."""
STARTUP_GRACE_SECONDS = queue.LEASE.total_seconds() + HEARTBEAT_SECONDS
POLL_SECONDS = 2.0  # a waiting claim re-checks this often even without a wake-up


def _now() -> datetime:
    return queue.now()


# --- runtimes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    daemon_id: str
    machine: str
    providers: dict[str, str]
    capacity: int


async def register_runtime(session: AsyncSession, access: Access, data: Registration) -> Runtime:
    """Add the daemon's runtime to the token's workspace, or update it (same daemon id)."""
    runtime = await session.scalar(
        select(Runtime).where(
            Runtime.workspace_id == access.workspace.id, Runtime.daemon_id == data.daemon_id
        )
    )
    if runtime is None:
        runtime = Runtime(workspace_id=access.workspace.id, daemon_id=data.daemon_id)
        session.add(runtime)
    runtime.machine = data.machine
    runtime.providers = json.dumps(data.providers, sort_keys=True)
    runtime.capacity = data.capacity
    runtime.token_id = access.principal.token.id if access.principal.token else None
    runtime.last_heartbeat_at = _now()
    await session.commit()
    log.info(
        "runtime.registered",
        runtime_id=runtime.id,
        workspace_id=access.workspace.id,
        providers=sorted(data.providers),
    )
    return runtime


async def runtime_of(session: AsyncSession, access: Access, runtime_id: str) -> Runtime:
    runtime = await session.get(Runtime, runtime_id)
    if runtime is None:
        raise ProblemError(404, f"runtime {runtime_id} was not found; register first")
    if runtime.workspace_id != access.workspace.id:
        raise ProblemError(
            403,
            "this daemon token belongs to another workspace than the runtime",
            type_="wrong-workspace",
        )
    return runtime


async def heartbeat(
    session: AsyncSession, access: Access, runtime_id: str, held: list[str] | None = None
) -> list[str]:
    runtime = await runtime_of(session, access, runtime_id)
    cancel = await queue.heartbeat(session, runtime, held)
    await session.commit()
    return cancel


# --- claims ---------------------------------------------------------------------------------


async def issue_states(
    session: AsyncSession, access: Access, runtime_id: str, keys: list[str]
) -> dict[str, str]:
    """For the daemon's worktree collector: which of these issues are finished."""
    await runtime_of(session, access, runtime_id)
    return await issues.status_categories(session, access, keys)


@dataclass(frozen=True)
class ClaimResult:
    tasks: list[ClaimedTask]
    cancel: list[str]


async def claim_once(
    session: AsyncSession, access: Access, runtime_id: str, limit: int, outbox: Outbox
) -> ClaimResult:
    """One claim attempt in one transaction (commits)."""
    runtime = await runtime_of(session, access, runtime_id)
    moment = _now()
    if moment - runtime.last_heartbeat_at >= CLAIM_TOUCH_AFTER:
        runtime.last_heartbeat_at = moment  # a claiming daemon is alive
    held, cancel = await _held_and_cancelled(session, runtime)
    free = max(min(limit, runtime.capacity - held), 0)
    claimed = await queue.claim(session, runtime, list(runtime_providers(runtime)), free)
    tasks = await _claimed(session, access, claimed)
    await session.commit()
    for task in claimed:
        outbox.add(
            "task.claimed",
            task.workspace_id,
            task_id=task.id,
            issue_id=task.issue_id,
            agent_id=task.agent_id,
            runtime_id=runtime.id,
            attempt=task.attempt,
        )
    return ClaimResult(tasks=tasks, cancel=cancel)


async def _held_and_cancelled(session: AsyncSession, runtime: Runtime) -> tuple[int, list[str]]:
    """How many tasks ``runtime`` holds, and which of them it has not yet been told to
    cancel (now marked told): one read for both."""
    rows = (
        await session.execute(
            select(
                Task.id,
                and_(Task.cancel_requested_at.is_not(None), Task.cancel_delivered_at.is_(None)),
            ).where(Task.runtime_id == runtime.id, task_status_in(*IN_FLIGHT))
        )
    ).all()
    cancel = [task_id for task_id, untold in rows if untold]
    if cancel:
        await session.execute(
            update(Task).where(Task.id.in_(cancel)).values(cancel_delivered_at=_now())
        )
    return len(rows), cancel


async def _claimed(
    session: AsyncSession, access: Access, claimed: Sequence[Task]
) -> list[ClaimedTask]:
    """The payloads of the tasks just claimed: agents and repositories read once for the
    batch; per task its brief (two statements), the prior session, a task token."""
    if not claimed:
        return []
    workspace = access.workspace  # the daemon's workspace: every task it claims is of it
    agent_ids = {task.agent_id for task in claimed}
    agents = {
        agent.id: agent
        for agent in (await session.scalars(select(Agent).where(Agent.id.in_(agent_ids))))
    }
    repositories = [
        ClaimedRepository(name=r.name, url=r.url, default_branch=r.default_branch)
        for r in await session.scalars(
            select(Repository)
            .where(Repository.workspace_id == workspace.id)
            .order_by(Repository.name)
        )
    ]
    return [
        await _claimed_task(session, access, task, agents[task.agent_id], repositories)
        for task in claimed
    ]


async def _claimed_task(
    session: AsyncSession,
    access: Access,
    task: Task,
    agent: Agent,
    repositories: list[ClaimedRepository],
) -> ClaimedTask:
    workspace = access.workspace
    assert workspace.id == task.workspace_id
    brief = await issues.brief_for_agent(session, workspace, task.issue_id)
    prior = task.session_id or await session.scalar(
        select(Task.session_id)
        .where(
            Task.issue_id == task.issue_id,
            Task.agent_id == task.agent_id,
            Task.id != task.id,
            Task.session_id.is_not(None),
        )
        .order_by(Task.finished_at.desc().nulls_last(), Task.created_at.desc())
        .limit(1)
    )
    token = mint_task_token(
        session,
        access.principal.user,
        workspace_id=task.workspace_id,
        task_id=task.id,
        agent_id=agent.id,
    )
    command = json.loads(agent.custom_command) if agent.custom_command else None
    assert task.lease_token is not None
    assert task.lease_expires_at is not None
    return ClaimedTask(
        id=task.id,
        workspace_id=task.workspace_id,
        attempt=task.attempt,
        trigger=task.trigger,
        lease_token=task.lease_token,
        lease_expires_at=task.lease_expires_at,
        task_token=token,
        prior_session_id=prior,
        agent=ClaimedAgent(
            id=agent.id,
            name=agent.name,
            provider=agent.provider,
            model=agent.model,
            instructions=agent.instructions,
            custom_command=CustomCommand.model_validate(command) if command else None,
            extra_args=list(json.loads(agent.extra_args or "[]")),
            env=agent_env(agent),
        ),
        issue=ClaimedIssue(
            id=brief.id,
            key=brief.key,
            title=brief.title,
            description=brief.description,
            status=brief.status,
            status_category=brief.status_category,
            priority=brief.priority,
            labels=brief.labels,
            comments=[
                ClaimedComment(author=c.author, body=c.body, created_at=c.created_at)
                for c in brief.comments
            ],
        ),
        repositories=repositories,
        tier=workspace.tier,
    )


WAKE_EVENTS = frozenset({"task.queued", "task.cancel_requested", "task.released"})


async def claim_waiting(
    db: Database,
    bus: EventBus | None,
    access: Access,
    runtime_id: str,
    limit: int,
    wait: float,
    outbox: Outbox,
    gone: Callable[[], Awaitable[bool]] | None = None,
) -> ClaimResult:
    """Claim now; with nothing to hand out, wait up to ``wait`` seconds for work.

    ``gone`` tells whether the daemon hung up: a long poll whose daemon died (a SIGKILLed
    process, a dropped connection) must not claim work woken for it, or that work would
    sit dispatched to nobody until its lease ran out.

    Subscribes before the first attempt, so a task queued between an empty attempt and
    the wait still wakes it. Every attempt is its own short transaction. The events of
    the claim (``task.claimed``) are left in ``outbox`` for the caller to publish — the
    route does so after the answer has gone out, so the daemon does not wait for them.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    subscription = bus.subscribe(access.workspace.id) if bus is not None and wait > 0 else None
    try:
        while True:
            if gone is not None and await gone():
                return ClaimResult(tasks=[], cancel=[])
            async with db.session() as session:
                result = await claim_once(session, access, runtime_id, limit, outbox)
            remaining = deadline - loop.time()
            if result.tasks or result.cancel or remaining <= 0:
                return result
            if subscription is None:
                await asyncio.sleep(min(POLL_SECONDS, remaining))
                continue
            if subscription.overflowed.is_set():  # dropped as a slow reader: re-join
                subscription.close()
                assert bus is not None
                subscription = bus.subscribe(access.workspace.id)
            await _wait_for_work(subscription.queue, runtime_id, min(POLL_SECONDS, remaining))
    finally:
        if subscription is not None:
            subscription.close()


async def _wait_for_work(events: asyncio.Queue[Any], runtime_id: str, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    while (left := until - loop.time()) > 0:
        try:
            event = await asyncio.wait_for(events.get(), left)
        except TimeoutError:
            return
        if event.kind in WAKE_EVENTS and event.data.get("runtime_id") in (None, runtime_id):
            return


# --- reports --------------------------------------------------------------------------------


async def _task_in(session: AsyncSession, access: Access, task_id: str) -> None:
    workspace_id = await session.scalar(select(Task.workspace_id).where(Task.id == task_id))
    if workspace_id is None or workspace_id != access.workspace.id:
        raise ProblemError(404, f"task {task_id} was not found")


async def start(
    session: AsyncSession,
    access: Access,
    task_id: str,
    lease_token: str,
    session_id: str | None,
    outbox: Outbox,
) -> Task:
    await _task_in(session, access, task_id)
    task = await queue.start(session, task_id, lease_token, session_id)
    await session.commit()
    outbox.add("task.started", task.workspace_id, task_id=task.id, issue_id=task.issue_id)
    return task


async def add_messages(
    session: AsyncSession,
    access: Access,
    task_id: str,
    lease_token: str,
    messages: Sequence[MessageIn],
    outbox: Outbox,
) -> tuple[int, int]:
    """Store a batch of transcript entries; returns (stored, duplicates ignored)."""
    if len(messages) > MESSAGE_BATCH_MAX:
        raise ProblemError(
            413,
            f"a batch holds at most {MESSAGE_BATCH_MAX} messages; this one has "
            f"{len(messages)}: send it in parts",
            type_="batch-too-large",
        )
    for message in messages:
        if len(message.content.encode()) > MESSAGE_CONTENT_MAX:
            raise ProblemError(
                413,
                f"message {message.seq} is larger than {MESSAGE_CONTENT_MAX} bytes; truncate it",
                type_="message-too-large",
            )
    seqs = [m.seq for m in messages]
    if len(set(seqs)) != len(seqs):
        raise ProblemError(
            422, "a sequence number appears twice in this batch", type_="duplicate-seq"
        )
    await _task_in(session, access, task_id)
    task = await queue.report(session, task_id, lease_token)
    if not messages:
        await session.commit()
        return 0, 0
    statement = (
        upsert_insert(session, TaskMessage.__table__)  # type: ignore[arg-type]
        .values(
            [
                {
                    "task_id": task.id,
                    "workspace_id": task.workspace_id,
                    "attempt": task.attempt,
                    "seq": m.seq,
                    "kind": m.kind,
                    "content": m.content,
                    "created_at": _now(),
                }
                for m in sorted(messages, key=lambda m: m.seq)
            ]
        )
        .on_conflict_do_nothing(index_elements=["task_id", "attempt", "seq"])
        .returning(TaskMessage.seq)
    )
    stored = sorted((await session.execute(statement)).scalars())
    await session.commit()
    if stored:
        outbox.add(
            "task.message",
            task.workspace_id,
            task_id=task.id,
            attempt=task.attempt,
            first_seq=stored[0],
            last_seq=stored[-1],
            count=len(stored),
        )
    return len(stored), len(messages) - len(stored)


def price(settings: Settings, usage: UsageIn) -> tuple[float, str]:
    """The cost of a usage entry and where it came from."""
    if usage.cost_usd is not None:
        return usage.cost_usd, "provider"
    figures = settings.model_prices.get(usage.model)
    if figures is None:
        return 0.0, "unpriced"
    counts = (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
    )
    return sum(c * p for c, p in zip(counts, figures, strict=True)) / 1_000_000, "prices"


async def report_usage(
    session: AsyncSession,
    access: Access,
    settings: Settings,
    task_id: str,
    lease_token: str,
    usage: Sequence[UsageIn],
    outbox: Outbox,
) -> Task:
    await _task_in(session, access, task_id)
    task = await queue.report(session, task_id, lease_token)
    named = {entry.model for entry in usage}
    for stale in (
        await session.execute(select(TaskUsage).where(TaskUsage.task_id == task.id))
    ).scalars():
        if stale.model not in named:  # the report is the whole picture: drop the rest
            await session.delete(stale)
    for entry in usage:
        cost, source = price(settings, entry)
        row = await session.get(TaskUsage, (task.id, entry.model))
        if row is None:
            row = TaskUsage(task_id=task.id, model=entry.model, workspace_id=task.workspace_id)
            session.add(row)
        row.input_tokens = entry.input_tokens
        row.output_tokens = entry.output_tokens
        row.cache_read_tokens = entry.cache_read_tokens
        row.cache_write_tokens = entry.cache_write_tokens
        row.cost_usd, row.cost_source = cost, source
        row.updated_at = _now()
    await session.commit()
    outbox.add("task.usage", task.workspace_id, task_id=task.id)
    return task


async def renew(session: AsyncSession, access: Access, task_id: str, lease_token: str) -> Task:
    await _task_in(session, access, task_id)
    task = await queue.report(session, task_id, lease_token)
    await session.commit()
    return task


async def report_progress(
    session: AsyncSession,
    access: Access,
    task_id: str,
    lease_token: str,
    summary: str,
    outbox: Outbox,
) -> Task:
    await _task_in(session, access, task_id)
    task = await queue.report(session, task_id, lease_token)
    task.progress = summary[:500]
    await session.commit()
    outbox.add("task.progress", task.workspace_id, task_id=task.id, summary=task.progress[:200])
    return task


async def complete(
    session: AsyncSession,
    access: Access,
    task_id: str,
    lease_token: str,
    *,
    summary: str,
    session_id: str | None,
    outbox: Outbox,
    gate_fix_rounds: int = 3,
) -> queue.Completed:
    await _task_in(session, access, task_id)
    done = await queue.complete(
        session, task_id, lease_token, result=summary, session_id=session_id
    )
    await revoke_task_tokens(session, [done.task.id])
    await _judge_gates(session, done.task, gate_fix_rounds, outbox)
    await session.commit()
    outbox.add(
        "task.completed", done.task.workspace_id, task_id=done.task.id, issue_id=done.task.issue_id
    )
    if done.follow_up is not None:
        outbox.add(
            "task.queued",
            done.follow_up.workspace_id,
            task_id=done.follow_up.id,
            issue_id=done.follow_up.issue_id,
            agent_id=done.follow_up.agent_id,
        )
    return done


GATES_FAILED = "gates_failed"
EXCERPT_CHARS = 1500  # of each stream, per blocking gate, in the comment


async def _judge_gates(
    session: AsyncSession, task: Task, rounds_allowed: int, outbox: Outbox
) -> None:
    """After an agent's task: when its run submitted gate results, the readiness for the
    workspace's tier moves the issue to review, or sends the failures back to the agent
    (at most ``rounds_allowed`` times in a row, then the issue is blocked). A task that
    submitted nothing changes nothing here."""
    workspace = await session.get(Workspace, task.workspace_id)
    assert workspace is not None
    key = await issues.issue_key_of(session, workspace, task.issue_id)
    if key is None:
        return
    tier: Tier = workspace.tier  # type: ignore[assignment]
    verdict = await ledger.task_gates(session, workspace.id, tier, task.id, key)
    if verdict is None:
        return
    if verdict.ready:
        log.info("task.gates_ready", task_id=task.id, tier=tier)
        await issues.gates_passed(
            session, workspace=workspace, issue_id=task.issue_id, outbox=outbox
        )
        return
    triggers = (
        await session.scalars(
            select(Task.trigger)
            .where(
                Task.issue_id == task.issue_id,
                Task.agent_id == task.agent_id,
                Task.created_at <= task.created_at,
            )
            .order_by(Task.created_at.desc())
            .limit(rounds_allowed + 1)
        )
    ).all()
    rounds = 0
    for trigger in triggers:
        if trigger != GATES_FAILED:
            break
        rounds += 1
    give_up = rounds >= rounds_allowed
    log.info("task.gates_not_ready", task_id=task.id, tier=tier, rounds=rounds, give_up=give_up)
    await issues.gates_failed(
        session,
        workspace=workspace,
        issue_id=task.issue_id,
        agent_id=task.agent_id,
        report=gates_report(verdict, rounds, rounds_allowed, give_up),
        give_up=give_up,
        outbox=outbox,
    )


def _excerpt(text: str) -> str:
    text = text.rstrip()
    if len(text) > EXCERPT_CHARS:
        text = "…" + text[-EXCERPT_CHARS:]
    return text.replace("````", "` ` ` `")


def gates_report(verdict: ledger.TaskGates, rounds: int, allowed: int, give_up: bool) -> str:
    """The comment listing each gate that blocks, with why and the end of its output."""
    latest: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    for entry in verdict.entries:
        scope = entry.get("scope") or {}
        latest[(scope.get("repository"), scope.get("commit"), entry.get("gate_id"))] = entry
    lines = [f"**The gates do not pass** for tier `{verdict.tier}`."]
    for result in verdict.results:
        if result.ready:
            continue
        lines.append("")
        lines.append(f"`{result.repository}` at `{(result.commit or 'no commit')[:12]}`:")
        for blocker in result.blockers:
            lines.append(f"- `{blocker.gate_id}` — {blocker.reason}: {blocker.detail}")
            found = latest.get((result.repository, result.commit, blocker.gate_id))
            if found is None:
                continue
            for stream in ("stdout", "stderr"):
                text = _excerpt(str(found.get(f"{stream}_excerpt") or ""))
                if text:
                    lines.append(f"\n{blocker.gate_id} {stream} (its end):\n````\n{text}\n````\n")
    lines.append("")
    if give_up:
        lines.append(
            f"They still fail after {allowed} rounds of fixes: the issue is blocked until a "
            "person looks at it."
        )
    else:
        lines.append(
            f"Fix them; the gates run again when the work is done (round {rounds + 1} of "
            f"{allowed})."
        )
    return "\n".join(lines)


async def fail(
    session: AsyncSession,
    access: Access,
    task_id: str,
    lease_token: str,
    *,
    failure_class: str,
    detail: str,
    outbox: Outbox,
) -> Task:
    await _task_in(session, access, task_id)
    task = await queue.fail(
        session, task_id, lease_token, failure_class=failure_class, detail=detail
    )
    await _stopped(session, [task], outbox)
    await session.commit()
    return task


async def report_orphans(
    session: AsyncSession, access: Access, runtime_id: str, task_ids: list[str], outbox: Outbox
) -> list[Task]:
    runtime = await runtime_of(session, access, runtime_id)
    runtime.last_heartbeat_at = _now()
    tasks = await queue.report_orphans(session, runtime, task_ids)
    await _stopped(session, tasks, outbox)
    await session.commit()
    return tasks


async def _stopped(session: AsyncSession, tasks: Sequence[Task], outbox: Outbox) -> None:
    """Tasks that left their runtime (retry or end): revoke their task tokens; for each that
    failed for good, tell the issue. In the caller's transaction."""
    await revoke_task_tokens(session, [t.id for t in tasks])
    workspaces: dict[str, Workspace | None] = {}
    for task in tasks:
        data = {"task_id": task.id, "issue_id": task.issue_id, "agent_id": task.agent_id}
        if task.status == "queued":
            outbox.add("task.released", task.workspace_id, attempt=task.attempt, **data)
            continue
        outbox.add(
            f"task.{task.status}", task.workspace_id, failure_class=task.failure_class, **data
        )
        if task.status != "failed":
            continue
        if task.workspace_id not in workspaces:
            workspaces[task.workspace_id] = await session.get(Workspace, task.workspace_id)
        workspace = workspaces[task.workspace_id]
        if workspace is not None:
            await issues.task_failed(
                session,
                workspace=workspace,
                issue_id=task.issue_id,
                agent_id=task.agent_id,
                failure=_failure_text(task),
                outbox=outbox,
            )


def _failure_text(task: Task) -> str:
    text = f"Failure class `{task.failure_class}` after {task.attempt} attempt(s)"
    if task.failure_detail:
        text += f":\n\n```\n{task.failure_detail[:2000]}\n```"
    return text


# --- the watchdog ---------------------------------------------------------------------------


async def expire_leases(db: Database, bus: EventBus | None) -> list[str]:
    """Retry (or fail for good) the tasks whose lease ran out; returns their ids."""
    outbox = Outbox()
    async with db.session() as session:
        tasks = await queue.expire_leases(session)
        if not tasks:
            await session.commit()
            return []
        await _stopped(session, tasks, outbox)
        await session.commit()
    await outbox.publish(bus)
    log.warning("tasks.leases_expired", task_ids=[t.id for t in tasks])
    return [t.id for t in tasks]


#: How long a queued task waits for a runtime able to run it while others are online.
UNRUNNABLE_AFTER = timedelta(minutes=2)


async def fail_unrunnable(db: Database, bus: EventBus | None) -> list[str]:
    """Fail the queued tasks no online runtime can run: some runtime of the agent's pool is
    online, none has the agent's provider, and that has been so for ``UNRUNNABLE_AFTER``
    since the task was queued (time for a daemon with that CLI to come up). With no
    runtime online at all a task waits — the agent shows ``offline`` meanwhile."""
    moment = _now()
    outbox = Outbox()
    async with db.session() as session:
        waiting = list(
            (
                await session.execute(
                    select(Task)
                    .where(Task.status == "queued", Task.created_at < moment - UNRUNNABLE_AFTER)
                    .order_by(Task.created_at)
                    .limit(500)
                )
            ).scalars()
        )
        if not waiting:
            await session.commit()
            return []
        agents = {
            a.id: a
            for a in (
                await session.execute(
                    select(Agent).where(Agent.id.in_({t.agent_id for t in waiting}))
                )
            ).scalars()
        }
        runtimes = list(
            (
                await session.execute(
                    select(Runtime).where(
                        Runtime.workspace_id.in_({t.workspace_id for t in waiting}),
                        Runtime.last_heartbeat_at >= moment - RUNTIME_OFFLINE_AFTER,
                    )
                )
            ).scalars()
        )
        doomed: dict[str, str] = {}
        for task in waiting:
            agent = agents.get(task.agent_id)
            if agent is None:
                continue
            online = pool_runtimes(agent, runtimes, moment)
            if not online or eligible_runtimes(agent, online, moment):
                continue
            names = ", ".join(
                f"{r.machine or r.daemon_id} ({', '.join(sorted(runtime_providers(r))) or 'none'})"
                for r in online
            )
            doomed[task.id] = (
                f"no online runtime can run provider {agent.provider!r}: the runtimes of this "
                f"agent's pool have {names}. Install the {agent.provider} CLI on one of them "
                "(`forgehall daemon providers` shows what a daemon found), or change the "
                "agent's provider, then run the task again."
            )
        # Lock only what fails, and only if a claim did not take it meanwhile.
        failed = (
            list(
                (
                    await session.execute(
                        select(Task)
                        .where(Task.id.in_(list(doomed)), Task.status == "queued")
                        .with_for_update(skip_locked=True)
                        .execution_options(populate_existing=True)
                    )
                ).scalars()
            )
            if doomed
            else []
        )
        for task in failed:
            queue.fail_queued(task, "agent_error", doomed[task.id])
        if failed:
            await session.flush()
            await _stopped(session, failed, outbox)
        await session.commit()
    await outbox.publish(bus)
    if failed:
        log.warning("tasks.unrunnable", task_ids=[t.id for t in failed])
    return [t.id for t in failed]


class TaskWatchdog(BackgroundService):
    """Recovers the tasks of runtimes that died: a lease not renewed in time is retried
    with backoff (``lease_expired``, retryable) or, after ``max_attempts``, failed for
    good — with the failure commented on its issue. It also fails the queued tasks no
    online runtime can run (:func:`fail_unrunnable`)."""

    name: ClassVar[str] = "task-watchdog"
    default_interval: ClassVar[float] = 5.0
    leader_only: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._since = time.monotonic()

    async def run_once(self) -> None:
        # A server that was down could not take heartbeats: give daemons one lease (and a
        # heartbeat) after start to renew theirs and deliver what they journaled.
        if time.monotonic() - self._since < STARTUP_GRACE_SECONDS:
            return
        await expire_leases(self.db, self.bus)
        await fail_unrunnable(self.db, self.bus)


# --- tasks for members ----------------------------------------------------------------------


async def get_task_or_404(session: AsyncSession, access: Access, task_id: str) -> Task:
    task = await session.get(Task, task_id)
    if task is None or task.workspace_id != access.workspace.id:
        raise ProblemError(404, f"task {task_id} was not found")
    return task


async def list_tasks(
    session: AsyncSession,
    access: Access,
    *,
    statuses: Sequence[str] = (),
    agent: str | None = None,
    issue_id: str | None = None,
    limit: int = 50,
) -> list[Task]:
    query = select(Task).where(Task.workspace_id == access.workspace.id)
    if statuses:
        query = query.where(Task.status.in_(list(statuses)))
    if agent is not None:
        query = query.where(Task.agent_id == (await get_agent_or_404(session, access, agent)).id)
    if issue_id is not None:
        query = query.where(Task.issue_id == issue_id)
    result = await session.execute(query.order_by(Task.created_at.desc(), Task.id).limit(limit))
    return list(result.scalars())


async def usage_of(session: AsyncSession, task_ids: list[str]) -> dict[str, list[TaskUsage]]:
    found: dict[str, list[TaskUsage]] = {t: [] for t in task_ids}
    if task_ids:
        rows = await session.execute(
            select(TaskUsage).where(TaskUsage.task_id.in_(task_ids)).order_by(TaskUsage.model)
        )
        for row in rows.scalars():
            found[row.task_id].append(row)
    return found


async def agent_names(session: AsyncSession, agent_ids: list[str]) -> dict[str, str]:
    if not agent_ids:
        return {}
    rows = await session.execute(select(Agent.id, Agent.name).where(Agent.id.in_(agent_ids)))
    return {agent_id: name for agent_id, name in rows.all()}


async def list_messages(
    session: AsyncSession,
    access: Access,
    task_id: str,
    *,
    attempt: int | None,
    after_seq: int,
    limit: int,
) -> list[TaskMessage]:
    task = await get_task_or_404(session, access, task_id)
    query = select(TaskMessage).where(
        TaskMessage.task_id == task.id,
        TaskMessage.attempt == (attempt if attempt is not None else task.attempt),
        TaskMessage.seq > after_seq,
    )
    result = await session.execute(query.order_by(TaskMessage.seq).limit(limit))
    return list(result.scalars())


async def cancel(session: AsyncSession, access: Access, task_id: str, outbox: Outbox) -> Task:
    """Cancel a queued task at once; ask the daemon holding a running one to stop (it
    learns on its waiting claim at once, or on its next heartbeat)."""
    await get_task_or_404(session, access, task_id)
    task = await queue.request_cancel(session, access.workspace.id, task_id)
    await session.commit()
    if task.status == "cancelled":
        outbox.add("task.cancelled", task.workspace_id, task_id=task.id, issue_id=task.issue_id)
    else:
        outbox.add(
            "task.cancel_requested",
            task.workspace_id,
            task_id=task.id,
            runtime_id=task.runtime_id,
        )
    return task


async def run_agent(
    session: AsyncSession,
    access: Access,
    issue_key: str,
    agent_ref: str | None,
    outbox: Outbox,
) -> queue.Enqueued:
    """The manual "run again": ask an agent (default: the assignee) to work on an issue."""
    issue = await issues.get_issue_or_404(session, access, issue_key)
    if agent_ref is not None:
        agent = await get_agent_or_404(session, access, agent_ref)
    elif issue.assignee_agent_id is not None:
        found = await session.get(Agent, issue.assignee_agent_id)
        assert found is not None
        agent = found
    else:
        raise ProblemError(
            422,
            f"{issue_key} is not assigned to an agent; name the agent to run",
            type_="no-agent",
        )
    if agent.archived_at is not None:
        raise ProblemError(
            409, f"agent {agent.name} is archived; restore it first", type_="agent-archived"
        )
    enqueued = await queue.enqueue(
        session,
        workspace_id=access.workspace.id,
        issue_id=issue.id,
        agent_id=agent.id,
        trigger="manual",
        created_by=access.principal.user.id,
    )
    await session.commit()
    if enqueued.outcome == "queued":
        outbox.add(
            "task.queued",
            access.workspace.id,
            task_id=enqueued.task.id,
            issue_id=issue.id,
            agent_id=agent.id,
        )
    return enqueued


async def rerun(session: AsyncSession, access: Access, task_id: str, outbox: Outbox) -> Task:
    task = await get_task_or_404(session, access, task_id)
    enqueued = await run_agent(session, access, task.issue_id, task.agent_id, outbox)
    return enqueued.task


def offline_after_seconds() -> float:
    return RUNTIME_OFFLINE_AFTER.total_seconds()


def lease_seconds() -> float:
    return queue.LEASE.total_seconds()
