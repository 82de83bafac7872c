"""HTTP routes of tasks as members see them, under ``/workspaces/{workspace}``: list,
read, transcript, cancel, run again."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.agents import dispatch
from forgehall.agents.models import Task
from forgehall.agents.schemas import RunIn, TaskMessageOut, TaskOut, TaskStatus, UsageOut
from forgehall.core.deps import EventBusDep, ReadSessionDep, SessionDep
from forgehall.issues.service import Outbox, get_issue_or_404, issue_numbers
from forgehall.workspaces.access import Access, MemberAccess

router = APIRouter(prefix="/api/v1/workspaces/{workspace}", tags=["tasks"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown task, or one of another workspace"}
}


async def tasks_out(session: AsyncSession, access: Access, tasks: list[Task]) -> list[TaskOut]:
    usage = await dispatch.usage_of(session, [t.id for t in tasks])
    names = await dispatch.agent_names(session, sorted({t.agent_id for t in tasks}))
    numbers = await issue_numbers(session, sorted({t.issue_id for t in tasks}))
    out = []
    for task in tasks:
        rows = usage[task.id]
        out.append(
            TaskOut(
                id=task.id,
                issue_id=task.issue_id,
                issue_key=f"{access.workspace.key_prefix}-{numbers.get(task.issue_id, 0)}",
                agent_id=task.agent_id,
                agent_name=names.get(task.agent_id, ""),
                status=task.status,
                trigger=task.trigger,
                follow_up=task.follow_up and task.status in ("dispatched", "running"),
                runtime_id=task.runtime_id,
                attempt=task.attempt,
                max_attempts=task.max_attempts,
                available_at=task.available_at,
                failure_class=task.failure_class,
                failure_detail=task.failure_detail,
                cancel_requested=task.cancel_requested_at is not None,
                progress=task.progress,
                result=task.result,
                session_id=task.session_id,
                created_at=task.created_at,
                started_at=task.started_at,
                finished_at=task.finished_at,
                usage=[
                    UsageOut(
                        model=u.model,
                        input_tokens=u.input_tokens,
                        output_tokens=u.output_tokens,
                        cache_read_tokens=u.cache_read_tokens,
                        cache_write_tokens=u.cache_write_tokens,
                        cost_usd=u.cost_usd,
                        cost_source=u.cost_source,
                    )
                    for u in rows
                ],
                cost_usd=round(sum(u.cost_usd for u in rows), 6),
            )
        )
    return out


@router.get("/tasks", response_model=list[TaskOut], summary="Tasks of the workspace, newest first")
async def read_tasks(
    access: MemberAccess,
    session: ReadSessionDep,
    status: Annotated[list[TaskStatus] | None, Query(description="Only these states")] = None,
    agent: Annotated[str | None, Query(description="Agent id or name")] = None,
    issue: Annotated[str | None, Query(description="Issue key, number or id")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[TaskOut]:
    issue_id = None
    if issue is not None:
        issue_id = (await get_issue_or_404(session, access, issue)).id
    tasks = await dispatch.list_tasks(
        session, access, statuses=status or (), agent=agent, issue_id=issue_id, limit=limit
    )
    return await tasks_out(session, access, tasks)


@router.get(
    "/tasks/{task_id}",
    response_model=TaskOut,
    summary="One task with its usage",
    responses=NOT_FOUND,
)
async def read_task(task_id: str, access: MemberAccess, session: ReadSessionDep) -> TaskOut:
    task = await dispatch.get_task_or_404(session, access, task_id)
    return (await tasks_out(session, access, [task]))[0]


@router.get(
    "/tasks/{task_id}/messages",
    response_model=list[TaskMessageOut],
    summary="The task's transcript, in order (page with `after`)",
    responses=NOT_FOUND,
)
async def read_messages(
    task_id: str,
    access: MemberAccess,
    session: ReadSessionDep,
    attempt: Annotated[int | None, Query(ge=1, description="Default: the latest")] = None,
    after: Annotated[int, Query(ge=0, description="Only messages after this seq")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[TaskMessageOut]:
    rows = await dispatch.list_messages(
        session, access, task_id, attempt=attempt, after_seq=after, limit=limit
    )
    return [
        TaskMessageOut(
            attempt=m.attempt,
            seq=m.seq,
            kind=m.kind,
            content=m.content,
            created_at=m.created_at,
        )
        for m in rows
    ]


@router.post(
    "/tasks/{task_id}/cancel",
    response_model=TaskOut,
    summary="Cancel: a queued task at once, a running one through its daemon",
    responses={
        **NOT_FOUND,
        409: {"description": "The task already ended (`current_state` says how)"},
    },
)
async def cancel_task(
    task_id: str, access: MemberAccess, session: SessionDep, bus: EventBusDep
) -> TaskOut:
    outbox = Outbox().attach(session)
    task = await dispatch.cancel(session, access, task_id, outbox)
    await outbox.publish(bus)
    return (await tasks_out(session, access, [task]))[0]


@router.post(
    "/tasks/{task_id}/rerun",
    response_model=TaskOut,
    summary="Run the task's agent on its issue again (coalesces with an active task)",
    responses={**NOT_FOUND, 409: {"description": "The agent is archived"}},
)
async def rerun_task(
    task_id: str, access: MemberAccess, session: SessionDep, bus: EventBusDep
) -> TaskOut:
    outbox = Outbox().attach(session)
    task = await dispatch.rerun(session, access, task_id, outbox)
    await outbox.publish(bus)
    return (await tasks_out(session, access, [task]))[0]


@router.post(
    "/issues/{key}/tasks",
    response_model=TaskOut,
    status_code=201,
    summary="Ask an agent (default: the assignee) to work on the issue now",
    responses={
        404: {"description": "Unknown issue or agent"},
        409: {"description": "The agent is archived"},
        422: {"description": "No agent named and the issue has no agent assignee"},
    },
)
async def run_on_issue(
    key: str, body: RunIn, access: MemberAccess, session: SessionDep, bus: EventBusDep
) -> TaskOut:
    outbox = Outbox().attach(session)
    enqueued = await dispatch.run_agent(session, access, key, body.agent, outbox)
    await outbox.publish(bus)
    return (await tasks_out(session, access, [enqueued.task]))[0]
