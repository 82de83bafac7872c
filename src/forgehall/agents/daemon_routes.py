"""The daemon protocol: HTTP JSON under ``/api/v1/daemon/``, daemon tokens only.

Every request carries ``Authorization: Bearer fh_dmn_…``; the token names the workspace.
Reports on a task carry the lease token the claim handed out; a stale one gets 409
``stale-lease``, so a daemon presumed dead cannot overwrite the work of the runtime that
took the task over. ``docs/daemon-protocol.md`` describes every call.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter, BackgroundTasks, Request

from forgehall.agents import dispatch
from forgehall.agents.models import Task
from forgehall.agents.schemas import (
    ClaimIn,
    ClaimOut,
    CompleteIn,
    FailIn,
    HeartbeatIn,
    HeartbeatOut,
    IssueStatesIn,
    IssueStatesOut,
    LeaseIn,
    MessagesIn,
    MessagesOut,
    OrphansIn,
    OrphansOut,
    ProgressIn,
    RuntimeRegisteredOut,
    RuntimeRegisterIn,
    StartIn,
    TaskStateOut,
    UsageReportIn,
)
from forgehall.core.deps import DatabaseDep, EventBusDep, SessionDep, SettingsDep
from forgehall.core.events import EventBus
from forgehall.issues.service import Outbox
from forgehall.workspaces.access import DaemonAccess

log = structlog.get_logger("forgehall.dispatch")

router = APIRouter(prefix="/api/v1/daemon", tags=["daemon protocol"])

RUNTIME_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"description": "A token other than a daemon token, or the runtime of another workspace"},
    404: {"description": "Unknown runtime: register first"},
}
TASK_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"description": "A token other than a daemon token"},
    404: {"description": "Unknown task, or one of another workspace"},
    409: {
        "description": "`stale-lease`: the lease token is not the task's current one; "
        "`invalid-transition`: the task's state does not allow this report "
        "(`current_state` says which it is)"
    },
}


def _state(task: Task, follow_up_id: str | None = None) -> TaskStateOut:
    return TaskStateOut(
        id=task.id,
        status=task.status,
        attempt=task.attempt,
        lease_expires_at=task.lease_expires_at,
        cancel_requested=task.cancel_requested_at is not None,
        follow_up_id=follow_up_id,
    )


@router.post(
    "/runtimes",
    response_model=RuntimeRegisteredOut,
    summary="Register this daemon's runtime (again: updates it)",
    responses={403: RUNTIME_ERRORS[403]},
)
async def register(
    body: RuntimeRegisterIn, access: DaemonAccess, session: SessionDep
) -> RuntimeRegisteredOut:
    runtime = await dispatch.register_runtime(
        session,
        access,
        dispatch.Registration(
            daemon_id=body.daemon_id,
            machine=body.machine,
            providers=dict(body.providers),
            capacity=body.capacity,
        ),
    )
    return RuntimeRegisteredOut(
        runtime_id=runtime.id,
        workspace_id=runtime.workspace_id,
        heartbeat_seconds=dispatch.HEARTBEAT_SECONDS,
        lease_seconds=dispatch.lease_seconds(),
        offline_after_seconds=dispatch.offline_after_seconds(),
    )


@router.post(
    "/runtimes/{runtime_id}/heartbeat",
    response_model=HeartbeatOut,
    summary="Stay online and renew the leases of the runtime's tasks",
    responses=RUNTIME_ERRORS,
)
async def heartbeat(
    runtime_id: str, access: DaemonAccess, session: SessionDep, body: HeartbeatIn | None = None
) -> HeartbeatOut:
    held = list(body.held) if body is not None and body.held is not None else None
    return HeartbeatOut(cancel=await dispatch.heartbeat(session, access, runtime_id, held))


@router.post(
    "/runtimes/{runtime_id}/issue-states",
    response_model=IssueStatesOut,
    summary="The status category of issues the daemon keeps worktrees for",
    responses=RUNTIME_ERRORS,
)
async def issue_states(
    runtime_id: str, body: IssueStatesIn, access: DaemonAccess, session: SessionDep
) -> IssueStatesOut:
    categories = await dispatch.issue_states(session, access, runtime_id, list(body.keys))
    return IssueStatesOut(categories=categories)


@router.post(
    "/runtimes/{runtime_id}/claim",
    response_model=ClaimOut,
    summary="Take queued tasks (long poll: waits up to `wait` seconds for work)",
    responses=RUNTIME_ERRORS,
)
async def claim(
    runtime_id: str,
    access: DaemonAccess,
    session: SessionDep,
    db: DatabaseDep,
    bus: EventBusDep,
    background: BackgroundTasks,
    request: Request,
    body: ClaimIn | None = None,
) -> ClaimOut:
    body = body or ClaimIn()
    await dispatch.runtime_of(session, access, runtime_id)
    await session.commit()  # hold no connection (on SQLite: not the writer) while waiting
    outbox = Outbox()  # filled by claim_waiting's own transactions, published afterwards
    result = await dispatch.claim_waiting(
        db, bus, access, runtime_id, body.limit, body.wait, outbox, request.is_disconnected
    )
    # The claim is committed; its events need not delay the answer the daemon waits for.
    background.add_task(_publish_quietly, outbox, bus)
    return ClaimOut(tasks=result.tasks, cancel=result.cancel)


async def _publish_quietly(outbox: Outbox, bus: EventBus | None) -> None:
    """Publish after the answer was sent: a failure can no longer reach the daemon (whose
    tasks are claimed either way), so it is logged instead."""
    try:
        await outbox.publish(bus)
    except Exception as exc:
        log.warning("task.claimed_publish_failed", error=f"{type(exc).__name__}: {exc}")


@router.post(
    "/runtimes/{runtime_id}/orphans",
    response_model=OrphansOut,
    summary="After a restart: the tasks this runtime held, to be retried at once",
    responses=RUNTIME_ERRORS,
)
async def orphans(
    runtime_id: str, body: OrphansIn, access: DaemonAccess, session: SessionDep, bus: EventBusDep
) -> OrphansOut:
    outbox = Outbox().attach(session)
    tasks = await dispatch.report_orphans(session, access, runtime_id, list(body.task_ids), outbox)
    await outbox.publish(bus)
    return OrphansOut(
        retried=[t.id for t in tasks if t.status == "queued"],
        ended=[t.id for t in tasks if t.status != "queued"],
    )


@router.post(
    "/tasks/{task_id}/start",
    response_model=TaskStateOut,
    summary="The agent process started (dispatched → running)",
    responses=TASK_ERRORS,
)
async def start(
    task_id: str, body: StartIn, access: DaemonAccess, session: SessionDep, bus: EventBusDep
) -> TaskStateOut:
    outbox = Outbox().attach(session)
    task = await dispatch.start(session, access, task_id, body.lease_token, body.session_id, outbox)
    await outbox.publish(bus)
    return _state(task)


@router.post(
    "/tasks/{task_id}/messages",
    response_model=MessagesOut,
    summary="Append transcript messages (idempotent per sequence number)",
    responses={
        **TASK_ERRORS,
        413: {"description": "More than 500 messages, or one larger than 256 KiB"},
    },
)
async def messages(
    task_id: str, body: MessagesIn, access: DaemonAccess, session: SessionDep, bus: EventBusDep
) -> MessagesOut:
    outbox = Outbox().attach(session)
    stored, duplicates = await dispatch.add_messages(
        session, access, task_id, body.lease_token, body.messages, outbox
    )
    await outbox.publish(bus)
    return MessagesOut(stored=stored, duplicates=duplicates)


@router.post(
    "/tasks/{task_id}/usage",
    response_model=TaskStateOut,
    summary="Token use so far, per model (replaces the previous report)",
    responses=TASK_ERRORS,
)
async def usage(
    task_id: str,
    body: UsageReportIn,
    access: DaemonAccess,
    session: SessionDep,
    settings: SettingsDep,
    bus: EventBusDep,
) -> TaskStateOut:
    outbox = Outbox().attach(session)
    task = await dispatch.report_usage(
        session, access, settings, task_id, body.lease_token, body.usage, outbox
    )
    await outbox.publish(bus)
    return _state(task)


@router.post(
    "/tasks/{task_id}/progress",
    response_model=TaskStateOut,
    summary="A one-line account of what the agent is doing now",
    responses=TASK_ERRORS,
)
async def progress(
    task_id: str, body: ProgressIn, access: DaemonAccess, session: SessionDep, bus: EventBusDep
) -> TaskStateOut:
    outbox = Outbox().attach(session)
    task = await dispatch.report_progress(
        session, access, task_id, body.lease_token, body.summary, outbox
    )
    await outbox.publish(bus)
    return _state(task)


@router.post(
    "/tasks/{task_id}/complete",
    response_model=TaskStateOut,
    summary="The task succeeded",
    responses=TASK_ERRORS,
)
async def complete(
    task_id: str,
    body: CompleteIn,
    access: DaemonAccess,
    session: SessionDep,
    bus: EventBusDep,
    settings: SettingsDep,
) -> TaskStateOut:
    outbox = Outbox().attach(session)
    done = await dispatch.complete(
        session,
        access,
        task_id,
        body.lease_token,
        summary=body.summary,
        session_id=body.session_id,
        outbox=outbox,
        gate_fix_rounds=settings.gate_fix_rounds,
    )
    await outbox.publish(bus)
    return _state(done.task, done.follow_up.id if done.follow_up else None)


@router.post(
    "/tasks/{task_id}/fail",
    response_model=TaskStateOut,
    summary="The task failed: retried (retryable class) or ended (final class)",
    responses=TASK_ERRORS,
)
async def fail(
    task_id: str, body: FailIn, access: DaemonAccess, session: SessionDep, bus: EventBusDep
) -> TaskStateOut:
    outbox = Outbox().attach(session)
    task = await dispatch.fail(
        session,
        access,
        task_id,
        body.lease_token,
        failure_class=body.failure_class,
        detail=body.detail,
        outbox=outbox,
    )
    await outbox.publish(bus)
    return _state(task)


@router.post(
    "/tasks/{task_id}/lease",
    response_model=TaskStateOut,
    summary="Check and renew one task's lease (a heartbeat for a single task)",
    responses=TASK_ERRORS,
)
async def renew(
    task_id: str, body: LeaseIn, access: DaemonAccess, session: SessionDep
) -> TaskStateOut:
    task = await dispatch.renew(session, access, task_id, body.lease_token)
    return _state(task)
