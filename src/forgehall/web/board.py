"""The board, the issue list and the issue page.

Every form posts to a page route that calls the board's services and redirects back
(303), so nothing needs JavaScript; with JavaScript, the same routes answer htmx and the
live-refresh script with just the part of the page that changed. A failed form answers
its page again with the server's message next to the field and what was typed kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.agents import dispatch
from forgehall.agents.service import list_agents
from forgehall.agents.task_routes import tasks_out
from forgehall.core.deps import EventBusDep, SessionDep
from forgehall.core.errors import ProblemError
from forgehall.issues import service
from forgehall.issues.models import Issue
from forgehall.web.evidence import issue_evidence
from forgehall.web.pages import discard, fragment, is_fragment, page, render, workspace_url
from forgehall.workspaces.access import Access, MemberAccess
from forgehall.workspaces.service import list_members

router = APIRouter(include_in_schema=False)

#: Cards shown per column; the count says how many there are in all.
COLUMN_LIMIT = 50
#: With a text filter the board shows the best this many matches, bucketed by column.
SEARCH_LIMIT = 300
PRIORITIES = ("urgent", "high", "medium", "low", "none")


@dataclass(frozen=True)
class Person:
    """A member or agent as the pages show them."""

    kind: str  # "member" | "agent"
    id: str
    name: str
    handle: str

    @property
    def ref(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass
class People:
    members: list[Person]
    agents: list[Person]

    def find(self, user_id: str | None, agent_id: str | None) -> Person | None:
        for person in self.agents if agent_id else self.members:
            if person.id == (agent_id or user_id):
                return person
        return None


async def people(session: AsyncSession, access: Access) -> People:
    members = [
        Person("member", user.id, user.name or user.email, user.email)
        for _, user in await list_members(session, access)
    ]
    agents = [Person("agent", a.id, a.name, a.name) for a in await list_agents(session, access)]
    return People(members, agents)


@dataclass
class Card:
    key: str
    title: str
    priority: str
    revision: int
    position: float
    status_id: str
    labels: list[str]
    assignee: Person | None
    due: date | None


async def cards(
    session: AsyncSession, access: Access, issues: list[Issue], who: People
) -> list[Card]:
    """The cards of ``issues``: their labels in one query, names from one list."""
    label_ids = await service.issue_labels(session, [i.id for i in issues])
    names = {label.id: label.name for label in await service.list_labels(session, access)}
    return [
        Card(
            key=service.issue_key(access, i),
            title=i.title,
            priority=i.priority,
            revision=i.revision,
            position=i.position,
            status_id=i.status_id,
            labels=sorted(names.get(x, "?") for x in label_ids[i.id]),
            assignee=who.find(i.assignee_user_id, i.assignee_agent_id),
            due=i.due_date,
        )
        for i in issues
    ]


@dataclass
class Filters:
    assignee: str | None
    label: str | None
    priority: str | None
    q: str | None

    def query(self) -> str:
        pairs = {k: v for k, v in vars(self).items() if v}
        return urlencode(pairs)

    def service_filter(self, **extra: Any) -> service.IssueFilter:
        return service.IssueFilter(
            assignee=self.assignee,
            label_ids=[self.label] if self.label else [],
            priorities=[self.priority] if self.priority else [],
            text=self.q,
            **extra,
        )


def _filters(
    assignee: str | None, label: str | None, priority: str | None, q: str | None
) -> Filters:
    return Filters(assignee or None, label or None, priority or None, (q or "").strip() or None)


FilterParams = Annotated[str | None, Query(max_length=200)]


@router.get("/w/{workspace}", response_model=None)
async def workspace_home(access: MemberAccess) -> Response:
    return RedirectResponse(f"{workspace_url(access)}/board", status_code=303)


@router.get("/w/{workspace}/board", response_class=HTMLResponse)
async def board_page(
    request: Request,
    access: MemberAccess,
    session: SessionDep,
    assignee: FilterParams = None,
    label: FilterParams = None,
    priority: FilterParams = None,
    q: FilterParams = None,
    error: FilterParams = None,
) -> HTMLResponse:
    filters = _filters(assignee, label, priority, q)
    statuses = await service.list_statuses(session, access)
    who = await people(session, access)
    capped = False
    shown: dict[str, list[Issue]] = {status.id: [] for status in statuses}
    counts: dict[str, int] = {}
    try:
        if filters.q:
            # One ranked search, bucketed by column: the best matches, not every match
            # walked once per column (the count says "+" when there are more).
            found, more = await service.list_issues(
                session, access, filters.service_filter(sort="relevance", limit=SEARCH_LIMIT)
            )
            capped = more is not None
            for issue in sorted(found, key=lambda i: (i.position, i.id)):
                shown.setdefault(issue.status_id, []).append(issue)
            counts = {status_id: len(issues) for status_id, issues in shown.items()}
            shown = {status_id: issues[:COLUMN_LIMIT] for status_id, issues in shown.items()}
        else:
            counts = await service.count_by_status(session, access, filters.service_filter())
            for status in statuses:
                shown[status.id], _ = await service.list_issues(
                    session,
                    access,
                    filters.service_filter(
                        status_ids=[status.id], sort="position", limit=COLUMN_LIMIT
                    ),
                )
    except ProblemError as exc:
        error = exc.detail
        shown, counts = {status.id: [] for status in statuses}, {}
    every = await cards(session, access, [i for s in statuses for i in shown[s.id]], who)
    by_key = {card.key: card for card in every}
    columns = [
        (
            status,
            [by_key[service.issue_key(access, i)] for i in shown[status.id]],
            counts.get(status.id, 0),
        )
        for status in statuses
    ]
    context: dict[str, Any] = {
        "columns": columns,
        "statuses": statuses,
        "filters": filters,
        "people": who,
        "labels": await service.list_labels(session, access),
        "priorities": PRIORITIES,
        "base": workspace_url(access),
        "error": error,
        "column_limit": COLUMN_LIMIT,
        "capped": capped,
    }
    if is_fragment(request):
        return fragment(request, access, "board/_board.html", **context)
    return await page(request, session, access, "board/board.html", "board", **context)


@router.get("/w/{workspace}/issues", response_class=HTMLResponse)
async def issue_list_page(
    request: Request,
    access: MemberAccess,
    session: SessionDep,
    assignee: FilterParams = None,
    label: FilterParams = None,
    priority: FilterParams = None,
    q: FilterParams = None,
    sort: FilterParams = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> HTMLResponse:
    filters = _filters(assignee, label, priority, q)
    who = await people(session, access)
    error = None
    try:
        issues, next_cursor = await service.list_issues(
            session, access, filters.service_filter(sort=sort or None, cursor=cursor, limit=50)
        )
    except ProblemError as exc:
        issues, next_cursor, error = [], None, exc.detail
    statuses = {s.id: s for s in await service.list_statuses(session, access)}
    return await page(
        request,
        session,
        access,
        "board/list.html",
        "issues",
        issues=await cards(session, access, issues, who),
        statuses=statuses,
        filters=filters,
        sort=sort or "",
        next_cursor=next_cursor,
        people=who,
        labels=await service.list_labels(session, access),
        priorities=PRIORITIES,
        base=workspace_url(access),
        error=error,
    )


@router.post("/w/{workspace}/issues", response_model=None)
async def quick_create(
    request: Request,
    access: MemberAccess,
    session: SessionDep,
    bus: EventBusDep,
    title: Annotated[str, Form()] = "",
    status_id: Annotated[str | None, Form()] = None,
) -> Response:
    outbox = service.Outbox().attach(session)
    try:
        if not title.strip():
            raise ProblemError(422, "an issue needs a title")
        issue = await service.create_issue(
            session,
            access,
            service.IssueInput(title=title.strip()[:500], status_id=status_id or None),
            outbox,
        )
    except ProblemError as exc:
        back = f"{workspace_url(access)}/board?{urlencode({'error': exc.detail})}"
        return RedirectResponse(back, status_code=303)
    await outbox.publish(bus)
    if is_fragment(request):
        return Response(status_code=204, headers={"HX-Trigger": "issue-created"})
    return RedirectResponse(
        f"{workspace_url(access)}/issues/{service.issue_key(access, issue)}", status_code=303
    )


async def _position_between(
    session: AsyncSession, access: Access, after: str | None, before: str | None
) -> float | None:
    """A position between two cards (either may be missing); None keeps the current one."""

    async def position(key: str | None) -> float | None:
        if not key:
            return None
        try:
            return (await service.get_issue_or_404(session, access, key)).position
        except ProblemError:
            return None

    low, high = await position(after), await position(before)
    if low is not None and high is not None:
        return (low + high) / 2
    if low is not None:
        return low + 1024
    if high is not None:
        return high - 1024
    return None


@router.get("/w/{workspace}/issues/{key}/move", response_class=HTMLResponse)
async def move_form(
    request: Request, key: str, access: MemberAccess, session: SessionDep
) -> HTMLResponse:
    """The move form of one card (loaded into the card by its Move link)."""
    issue = await service.get_issue_or_404(session, access, key)
    return await page(
        request,
        session,
        access,
        "board/move.html",
        "board",
        key=service.issue_key(access, issue),
        title=issue.title,
        revision=issue.revision,
        status_id=issue.status_id,
        statuses=await service.list_statuses(session, access),
        base=workspace_url(access),
    )


@router.post("/w/{workspace}/issues/{key}/move", response_model=None)
async def move_issue(
    request: Request,
    key: str,
    access: MemberAccess,
    session: SessionDep,
    bus: EventBusDep,
    status_id: Annotated[str, Form()],
    revision: Annotated[int, Form()],
    after: Annotated[str | None, Form()] = None,
    before: Annotated[str | None, Form()] = None,
) -> Response:
    """Drag-and-drop and the keyboard's Move form: a new status and place in the column."""
    patch = service.IssuePatch(revision=revision, status_id=status_id)
    position = await _position_between(session, access, after, before)
    if position is not None:
        patch.position = position
    outbox = service.Outbox().attach(session)
    try:
        await service.update_issue(session, access, key, patch, outbox)
    except ProblemError as exc:
        if is_fragment(request):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status)
        return RedirectResponse(
            f"{workspace_url(access)}/board?{urlencode({'error': exc.detail})}", status_code=303
        )
    await outbox.publish(bus)
    if is_fragment(request):
        return Response(status_code=204)
    return RedirectResponse(f"{workspace_url(access)}/board", status_code=303)


@router.get("/w/{workspace}/mentions", response_model=None)
async def mention_candidates(
    access: MemberAccess, session: SessionDep, q: Annotated[str, Query(max_length=100)] = ""
) -> JSONResponse:
    """Members and agents whose name or handle starts with ``q`` (for @-completion)."""
    who = await people(session, access)
    needle = q.lower()
    found = [
        {"kind": p.kind, "label": p.name, "handle": p.handle}
        for p in [*who.agents, *who.members]
        if not needle or p.name.lower().startswith(needle) or p.handle.lower().startswith(needle)
    ]
    return JSONResponse(found[:10])


# --- the issue page ---------------------------------------------------------------------------

PARTS = ("main", "comments", "tasks", "fields", "gates")


async def issue_context(session: AsyncSession, access: Access, key: str) -> dict[str, Any]:
    issue = await service.get_issue_or_404(session, access, key)
    key = service.issue_key(access, issue)
    who = await people(session, access)
    statuses = await service.list_statuses(session, access)
    done, total = await service.sub_issue_progress(session, issue)
    subs, _ = await service.list_issues(
        session, access, service.IssueFilter(parent=key, sort="position", limit=100)
    )
    blocked_by, blocks = await service.dependency_numbers(session, issue)
    comments = await service.list_comments(session, access, key)
    tasks = await tasks_out(
        session, access, await dispatch.list_tasks(session, access, issue_id=issue.id, limit=20)
    )
    live_task = next((t for t in tasks if t.status in ("running", "dispatched", "queued")), None)
    shown_task = live_task or (tasks[0] if tasks else None)
    messages = (
        await dispatch.list_messages(
            session, access, shown_task.id, attempt=None, after_seq=0, limit=1000
        )
        if shown_task
        else []
    )
    labels = await service.list_labels(session, access)
    label_ids = (await service.issue_labels(session, [issue.id]))[issue.id]
    parent_key = None
    if issue.parent_id:
        numbers = await service.issue_numbers(session, [issue.parent_id])
        parent_key = f"{access.workspace.key_prefix}-{numbers[issue.parent_id]}"
    return {
        "issue": issue,
        "key": key,
        "issue_status": next(s for s in statuses if s.id == issue.status_id),
        "statuses": statuses,
        "people": who,
        "assignee": who.find(issue.assignee_user_id, issue.assignee_agent_id),
        "creator": who.find(issue.creator_user_id, issue.creator_agent_id),
        "progress": (done, total),
        "sub_issues": await cards(session, access, subs, who),
        "blocked_by": [f"{access.workspace.key_prefix}-{n}" for n in blocked_by],
        "blocks": [f"{access.workspace.key_prefix}-{n}" for n in blocks],
        "comments": comments,
        "tasks": tasks,
        "shown_task": shown_task,
        "messages": messages,
        "labels": labels,
        "label_ids": set(label_ids),
        "parent_key": parent_key,
        "priorities": PRIORITIES,
        "base": workspace_url(access),
        "url": f"{workspace_url(access)}/issues/{key}",
        **(await issue_evidence(session, access, issue)),
    }


@router.get("/w/{workspace}/issues/{key}", response_class=HTMLResponse)
async def issue_page(
    request: Request,
    key: str,
    access: MemberAccess,
    session: SessionDep,
    part: Annotated[str | None, Query(max_length=20)] = None,
) -> HTMLResponse:
    context = await issue_context(session, access, key)
    if part in PARTS and is_fragment(request):
        return fragment(request, access, f"board/_issue_{part}.html", **context)
    return await page(request, session, access, "board/issue.html", "issues", **context)


async def _issue_with_error(
    request: Request,
    session: AsyncSession,
    access: Access,
    key: str,
    exc: ProblemError,
    **typed: Any,
) -> HTMLResponse:
    """The issue page again, the server's message shown, what was typed kept."""
    await discard(session, access.workspace, access.principal.user)
    context = await issue_context(session, access, key)
    return await page(
        request,
        session,
        access,
        "board/issue.html",
        "issues",
        status=exc.status,
        error=exc.detail,
        typed=typed,
        **context,
    )


def _assignee_ref(value: str) -> service.AssigneeRef | None:
    if not value:
        return None
    kind, _, ident = value.partition(":")
    if kind not in ("member", "agent") or not ident:
        raise ProblemError(422, f"unknown assignee {value!r}", field="assignee")
    return service.AssigneeRef(kind=kind, id=ident)


@router.post("/w/{workspace}/issues/{key}/edit", response_model=None)
async def edit_issue(
    request: Request,
    key: str,
    access: MemberAccess,
    session: SessionDep,
    bus: EventBusDep,
    revision: Annotated[int, Form()],
    title: Annotated[str | None, Form()] = None,
    description: Annotated[str | None, Form()] = None,
    status_id: Annotated[str | None, Form()] = None,
    priority: Annotated[str | None, Form()] = None,
    assignee: Annotated[str | None, Form()] = None,
    label_ids: Annotated[list[str] | None, Form()] = None,
    labels_sent: Annotated[str | None, Form()] = None,
    due_date: Annotated[str | None, Form()] = None,
    parent: Annotated[str | None, Form()] = None,
) -> Response:
    """One form for every field: only the fields the form sent change."""
    patch = service.IssuePatch(revision=revision)
    typed = {
        k: v
        for k, v in {
            "title": title,
            "description": description,
            "due_date": due_date,
            "parent": parent,
        }.items()
        if v is not None
    }
    try:
        if title is not None:
            if not title.strip():
                raise ProblemError(422, "the title cannot be empty", field="title")
            patch.title = title.strip()
        if description is not None:
            if len(description) > 100_000:
                raise ProblemError(
                    422, "the description is longer than 100,000 characters", field="description"
                )
            patch.description = description
        if status_id:
            patch.status_id = status_id
        if priority:
            patch.priority = priority
        if assignee is not None:
            patch.assignee = _assignee_ref(assignee)
        if labels_sent is not None:
            patch.label_ids = label_ids or []
        if due_date is not None:
            try:
                patch.due_date = date.fromisoformat(due_date) if due_date else None
            except ValueError:
                raise ProblemError(
                    422, f"{due_date!r} is not a date (YYYY-MM-DD)", field="due_date"
                ) from None
        if parent is not None:
            patch.parent = parent.strip() or None
        outbox = service.Outbox().attach(session)
        issue = await service.update_issue(session, access, key, patch, outbox)
    except ProblemError as exc:
        return await _issue_with_error(request, session, access, key, exc, **typed)
    await outbox.publish(bus)
    return RedirectResponse(
        f"{workspace_url(access)}/issues/{service.issue_key(access, issue)}", status_code=303
    )


@router.post("/w/{workspace}/issues/{key}/comments", response_model=None)
async def add_comment(
    request: Request,
    key: str,
    access: MemberAccess,
    session: SessionDep,
    bus: EventBusDep,
    body: Annotated[str, Form()] = "",
    parent_id: Annotated[str | None, Form()] = None,
) -> Response:
    outbox = service.Outbox().attach(session)
    try:
        if not body.strip():
            raise ProblemError(422, "write something first", field="comment")
        if len(body) > 100_000:
            raise ProblemError(
                422, "the comment is longer than 100,000 characters", field="comment"
            )
        await service.add_comment(
            session,
            access,
            key,
            body=body,
            parent_id=parent_id or None,
            mentions=[],
            outbox=outbox,
        )
    except ProblemError as exc:
        return await _issue_with_error(request, session, access, key, exc, comment=body)
    await outbox.publish(bus)
    return RedirectResponse(f"{workspace_url(access)}/issues/{key}#comments", status_code=303)


@router.post("/w/{workspace}/issues/{key}/dependencies", response_model=None)
async def add_blocker(
    request: Request,
    key: str,
    access: MemberAccess,
    session: SessionDep,
    bus: EventBusDep,
    blocked_by: Annotated[str, Form()] = "",
) -> Response:
    outbox = service.Outbox().attach(session)
    try:
        if not blocked_by.strip():
            raise ProblemError(422, "name the issue that blocks this one", field="blocked_by")
        await service.add_dependency(session, access, blocked_by.strip(), key, outbox)
    except ProblemError as exc:
        return await _issue_with_error(request, session, access, key, exc, blocked_by=blocked_by)
    await outbox.publish(bus)
    return RedirectResponse(f"{workspace_url(access)}/issues/{key}", status_code=303)


@router.post("/w/{workspace}/tasks/{task_id}/{action}", response_model=None)
async def task_action(
    request: Request,
    task_id: str,
    action: str,
    access: MemberAccess,
    session: SessionDep,
    bus: EventBusDep,
) -> Response:
    """Cancel a task or run its agent again, then back to the issue."""
    task = await dispatch.get_task_or_404(session, access, task_id)
    key = await service.issue_key_of(session, access.workspace, task.issue_id)
    outbox = service.Outbox().attach(session)
    try:
        if action == "cancel":
            await dispatch.cancel(session, access, task_id, outbox)
        elif action == "rerun":
            await dispatch.rerun(session, access, task_id, outbox)
        else:
            raise ProblemError(404, "there is nothing here")
    except ProblemError as exc:
        if exc.status == 404 or key is None:
            raise
        return await _issue_with_error(request, session, access, key, exc)
    await outbox.publish(bus)
    return RedirectResponse(f"{workspace_url(access)}/issues/{key}", status_code=303)


@router.get("/w/{workspace}/tasks/{task_id}/transcript", response_class=HTMLResponse)
async def transcript_part(
    request: Request,
    task_id: str,
    access: MemberAccess,
    session: SessionDep,
    after: Annotated[int, Query(ge=0)] = 0,
) -> HTMLResponse:
    """The transcript messages after ``after`` (the live transcript appends them)."""
    messages = await dispatch.list_messages(
        session, access, task_id, attempt=None, after_seq=after, limit=500
    )
    return render(request, "board/_messages.html", messages=messages)
