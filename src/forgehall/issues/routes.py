"""HTTP routes of the board. Every route is under ``/workspaces/{workspace}`` and goes
through the one access check."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.core.deps import DatabaseDep, EventBusDep, SessionDep
from forgehall.issues import service
from forgehall.issues.models import Comment, Issue, Status
from forgehall.issues.schemas import (
    ActorRef,
    CommentEditIn,
    CommentIn,
    CommentOut,
    CommentRevisionOut,
    DependencyIn,
    EventOut,
    IssueDetailOut,
    IssueIn,
    IssueOut,
    IssuePage,
    IssuePatchIn,
    LabelIn,
    LabelOut,
    NotificationOut,
    NotificationPatch,
    StatusIn,
    StatusOut,
    UnreadCount,
)
from forgehall.workspaces.access import Access, AdminAccess, MemberAccess

router = APIRouter(prefix="/api/v1/workspaces/{workspace}", tags=["board"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown issue, or one of another workspace"}
}
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"description": "A reference to another workspace, or invalid input"}
}


def _ref(user_id: str | None, agent_id: str | None) -> ActorRef | None:
    if user_id:
        return ActorRef(kind="member", id=user_id)
    if agent_id:
        return ActorRef(kind="agent", id=agent_id)
    return None


def _assignee(ref: ActorRef | None) -> service.AssigneeRef | None:
    return service.AssigneeRef(kind=ref.kind, id=ref.id) if ref else None


async def issue_out(session: AsyncSession, access: Access, issues: list[Issue]) -> list[IssueOut]:
    labels = await service.issue_labels(session, [i.id for i in issues])
    if len(issues) == 1:  # one issue (its detail): one status, not the whole list
        statuses = {issues[0].status_id: await service.get_status(session, issues[0].status_id)}
    else:
        statuses = {s.id: s for s in await service.list_statuses(session, access)}
    parents = await service.issue_numbers(session, [i.parent_id for i in issues if i.parent_id])
    prefix = access.workspace.key_prefix
    return [
        IssueOut(
            id=i.id,
            key=f"{prefix}-{i.number}",
            number=i.number,
            title=i.title,
            description=i.description,
            status=StatusOut.model_validate(statuses[i.status_id]),
            priority=i.priority,
            label_ids=sorted(labels[i.id]),
            assignee=_ref(i.assignee_user_id, i.assignee_agent_id),
            creator=_ref(i.creator_user_id, i.creator_agent_id),
            parent=f"{prefix}-{parents[i.parent_id]}" if i.parent_id in parents else None,
            due_date=i.due_date,
            position=i.position,
            revision=i.revision,
            created_at=i.created_at,
            updated_at=i.updated_at,
        )
        for i in issues
    ]


async def issue_detail(session: AsyncSession, access: Access, issue: Issue) -> IssueDetailOut:
    (base,) = await issue_out(session, access, [issue])
    done, total = await service.sub_issue_progress(session, issue)
    blocked_by, blocks = await service.dependency_numbers(session, issue)
    prefix = access.workspace.key_prefix
    return IssueDetailOut(
        **base.model_dump(),
        sub_issues_done=done,
        sub_issues_total=total,
        blocked_by=[f"{prefix}-{n}" for n in blocked_by],
        blocks=[f"{prefix}-{n}" for n in blocks],
    )


def comment_out(comment: Comment) -> CommentOut:
    return CommentOut(
        id=comment.id,
        issue_id=comment.issue_id,
        parent_id=comment.parent_id,
        author=_ref(comment.author_user_id, comment.author_agent_id),
        body=comment.body,
        created_at=comment.created_at,
        updated_at=comment.updated_at,
        edited=comment.updated_at > comment.created_at,
    )


@router.get("/statuses", response_model=list[StatusOut], summary="Board columns")
async def read_statuses(access: MemberAccess, session: SessionDep) -> list[Status]:
    return await service.list_statuses(session, access)


@router.post(
    "/statuses",
    response_model=StatusOut,
    status_code=201,
    summary="Add a status",
    responses={409: {"description": "Name taken"}, **INVALID},
)
async def create_status(body: StatusIn, access: AdminAccess, session: SessionDep) -> Status:
    return await service.create_status(
        session, access, name=body.name, category=body.category, color=body.color
    )


@router.get("/labels", response_model=list[LabelOut], summary="Labels")
async def read_labels(access: MemberAccess, session: SessionDep) -> list[Any]:
    return await service.list_labels(session, access)


@router.post(
    "/labels",
    response_model=LabelOut,
    status_code=201,
    summary="Add a label",
    responses={409: {"description": "Name taken"}},
)
async def create_label(body: LabelIn, access: MemberAccess, session: SessionDep) -> Any:
    return await service.create_label(session, access, name=body.name, color=body.color)


@router.get("/issues", response_model=IssuePage, summary="List and filter issues")
async def read_issues(
    access: MemberAccess,
    session: SessionDep,
    status: Annotated[list[str], Query(description="Status ids")] = [],  # noqa: B006
    category: Annotated[list[str], Query()] = [],  # noqa: B006
    assignee: Annotated[str | None, Query(description="me, none, member:<id>, agent:<id>")] = None,
    label: Annotated[list[str], Query(description="Label ids (all must match)")] = [],  # noqa: B006
    priority: Annotated[list[str], Query()] = [],  # noqa: B006
    parent: Annotated[str | None, Query(description="Parent issue key")] = None,
    q: Annotated[str | None, Query(max_length=200, description="Text to look for")] = None,
    sort: Annotated[
        str | None,
        Query(
            description="relevance (with q), position, created, updated, number, due; "
            "prefix - to reverse. Default: relevance with q, else position. Relevance ranks "
            "the issues of the newest 500 matching documents first, then lists every other "
            "match, most recently updated first"
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query()] = None,
) -> IssuePage:
    issues, next_cursor = await service.list_issues(
        session,
        access,
        service.IssueFilter(
            status_ids=status,
            categories=category,
            assignee=assignee,
            label_ids=label,
            priorities=priority,
            parent=parent,
            text=q,
            sort=sort,
            limit=limit,
            cursor=cursor,
        ),
    )
    return IssuePage(items=await issue_out(session, access, issues), next_cursor=next_cursor)


@router.post(
    "/issues",
    response_model=IssueDetailOut,
    status_code=201,
    summary="Create an issue",
    responses=INVALID,
)
async def create_issue(
    body: IssueIn, access: MemberAccess, session: SessionDep, bus: EventBusDep
) -> IssueDetailOut:
    outbox = service.Outbox().attach(session)
    issue = await service.create_issue(
        session,
        access,
        service.IssueInput(
            title=body.title,
            description=body.description,
            status_id=body.status_id,
            priority=body.priority,
            label_ids=body.label_ids,
            assignee=_assignee(body.assignee),
            parent=body.parent,
            due_date=body.due_date,
            position=body.position,
        ),
        outbox,
    )
    await outbox.publish(bus)
    return await issue_detail(session, access, issue)


@router.get(
    "/issues/{key}", response_model=IssueDetailOut, summary="One issue", responses=NOT_FOUND
)
async def read_issue(key: str, access: MemberAccess, session: SessionDep) -> IssueDetailOut:
    return await issue_detail(session, access, await service.get_issue_or_404(session, access, key))


@router.patch(
    "/issues/{key}",
    response_model=IssueDetailOut,
    summary="Change an issue",
    responses={409: {"description": "Stale revision"}, **NOT_FOUND, **INVALID},
)
async def update_issue(
    key: str,
    body: IssuePatchIn,
    access: MemberAccess,
    session: SessionDep,
    bus: EventBusDep,
    db: DatabaseDep,
) -> IssueDetailOut:
    sent = body.model_fields_set
    patch = service.IssuePatch(revision=body.revision)
    for name in (
        "title",
        "description",
        "status_id",
        "priority",
        "label_ids",
        "parent",
        "due_date",
        "position",
    ):
        if name in sent:
            setattr(patch, name, getattr(body, name))
    if "assignee" in sent:
        patch.assignee = _assignee(body.assignee)
    outbox = service.Outbox().attach(session)
    issue = await service.update_issue(session, access, key, patch, outbox)
    await outbox.publish(bus)
    await session.close()  # the change is committed: let the next writer in (SQLite)
    async with db.read_session() as reads:
        return await issue_detail(reads, access, issue)


@router.get(
    "/issues/{key}/timeline",
    response_model=list[EventOut],
    summary="Every change to the issue",
    responses=NOT_FOUND,
)
async def read_timeline(key: str, access: MemberAccess, session: SessionDep) -> list[Any]:
    return await service.timeline(session, access, key)


@router.post(
    "/issues/{key}/dependencies",
    status_code=204,
    summary="Record that another issue blocks this one",
    responses={422: {"description": "Would create a cycle (named in `cycle`)"}, **NOT_FOUND},
)
async def add_dependency(
    key: str, body: DependencyIn, access: MemberAccess, session: SessionDep, bus: EventBusDep
) -> Response:
    outbox = service.Outbox().attach(session)
    await service.add_dependency(session, access, body.blocked_by, key, outbox)
    await outbox.publish(bus)
    return Response(status_code=204)


@router.delete(
    "/issues/{key}/dependencies/{blocker}",
    status_code=204,
    summary="Remove a dependency",
    responses=NOT_FOUND,
)
async def remove_dependency(
    key: str, blocker: str, access: MemberAccess, session: SessionDep, bus: EventBusDep
) -> Response:
    outbox = service.Outbox().attach(session)
    await service.remove_dependency(session, access, blocker, key, outbox)
    await outbox.publish(bus)
    return Response(status_code=204)


@router.put("/issues/{key}/follow", status_code=204, summary="Follow an issue")
async def follow_issue(key: str, access: MemberAccess, session: SessionDep) -> Response:
    await service.follow(session, access, key, True)
    return Response(status_code=204)


@router.delete("/issues/{key}/follow", status_code=204, summary="Stop following an issue")
async def unfollow_issue(key: str, access: MemberAccess, session: SessionDep) -> Response:
    await service.follow(session, access, key, False)
    return Response(status_code=204)


@router.get(
    "/issues/{key}/comments",
    response_model=list[CommentOut],
    summary="Comments",
    responses=NOT_FOUND,
)
async def read_comments(key: str, access: MemberAccess, session: SessionDep) -> list[CommentOut]:
    return [comment_out(c) for c in await service.list_comments(session, access, key)]


@router.post(
    "/issues/{key}/comments",
    response_model=CommentOut,
    status_code=201,
    summary="Comment (with @mentions)",
    responses={**NOT_FOUND, **INVALID},
)
async def create_comment(
    key: str, body: CommentIn, access: MemberAccess, session: SessionDep, bus: EventBusDep
) -> CommentOut:
    outbox = service.Outbox().attach(session)
    comment = await service.add_comment(
        session,
        access,
        key,
        body=body.body,
        parent_id=body.parent_id,
        mentions=[service.AssigneeRef(kind=m.kind, id=m.id) for m in body.mentions],
        outbox=outbox,
    )
    await outbox.publish(bus)
    return comment_out(comment)


@router.patch(
    "/comments/{comment_id}",
    response_model=CommentOut,
    summary="Edit a comment",
    responses={403: {"description": "Not the author"}},
)
async def edit_comment(
    comment_id: str,
    body: CommentEditIn,
    access: MemberAccess,
    session: SessionDep,
    bus: EventBusDep,
) -> CommentOut:
    outbox = service.Outbox().attach(session)
    comment = await service.edit_comment(session, access, comment_id, body.body, outbox)
    await outbox.publish(bus)
    return comment_out(comment)


@router.delete(
    "/comments/{comment_id}", status_code=204, summary="Delete a comment (author or admin)"
)
async def delete_comment(
    comment_id: str, access: MemberAccess, session: SessionDep, bus: EventBusDep
) -> Response:
    outbox = service.Outbox().attach(session)
    await service.delete_comment(session, access, comment_id, outbox)
    await outbox.publish(bus)
    return Response(status_code=204)


@router.get(
    "/comments/{comment_id}/history",
    response_model=list[CommentRevisionOut],
    summary="Previous versions of a comment",
)
async def read_comment_history(
    comment_id: str, access: MemberAccess, session: SessionDep
) -> list[Any]:
    return await service.comment_history(session, access, comment_id)


@router.get("/inbox", response_model=list[NotificationOut], summary="Your notifications")
async def read_inbox(
    access: MemberAccess,
    session: SessionDep,
    unread: bool = False,
    archived: bool = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[NotificationOut]:
    rows = await service.list_notifications(
        session, access, unread_only=unread, archived=archived, limit=limit
    )
    numbers = await service.issue_numbers(session, [n.issue_id for n in rows])
    prefix = access.workspace.key_prefix
    return [
        NotificationOut.model_validate(n).model_copy(
            update={"issue_key": f"{prefix}-{numbers[n.issue_id]}"}
        )
        for n in rows
    ]


@router.get("/inbox/unread-count", response_model=UnreadCount, summary="Unread notifications")
async def read_unread_count(access: MemberAccess, session: SessionDep) -> UnreadCount:
    return UnreadCount(unread=await service.unread_count(session, access))


@router.patch(
    "/inbox/{notification_id}",
    response_model=NotificationOut,
    summary="Mark read/unread, archive or restore",
)
async def update_notification(
    notification_id: str, body: NotificationPatch, access: MemberAccess, session: SessionDep
) -> Any:
    return await service.mark_notification(
        session, access, notification_id, read=body.read, archived=body.archived
    )
