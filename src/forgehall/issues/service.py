"""Board rules: issues, statuses, labels, dependencies, comments, mentions, inbox, timeline.

Invariants:
- Issue numbers come from a per-workspace counter incremented atomically; a number is
  never reused, even when the issue is deleted.
- Every reference an issue holds (status, labels, assignee, parent, dependencies) is
  checked to belong to the same workspace; a foreign id is refused with 422 and nothing
  is written.
- An update carrying a stale ``revision`` gets 409 and changes nothing.
- Every change to an issue field is recorded in ``issue_events`` (old and new value,
  actor, time) in the same transaction as the change.
- Dependencies never form a cycle (422 naming it). An issue with an open blocker sits in
  a blocked-category status; when its last blocker reaches a done-category status it
  returns to the status it had before, and an agent assignee is woken.
- Domain events are published only after the transaction commits.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import structlog
from sqlalchemy import and_, delete, func, literal_column, or_, select, update
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.agents import queue as task_queue
from forgehall.agents.models import Agent
from forgehall.core.errors import ProblemError
from forgehall.core.events import DomainEvent, EventBus
from forgehall.core.events import stage as stage_events
from forgehall.db.dialect import json_array_agg, json_list, upsert_insert
from forgehall.db.search import plan_for_the_words, ranked_issue_ids, reach, search_tokens
from forgehall.identity.models import User
from forgehall.issues.models import (
    PRIORITIES,
    Comment,
    CommentRevision,
    Dependency,
    Follower,
    Issue,
    IssueCounter,
    IssueEvent,
    IssueLabel,
    Label,
    Mention,
    Notification,
    Status,
)
from forgehall.workspaces.access import Access, Role
from forgehall.workspaces.models import Member, Workspace

log = structlog.get_logger("forgehall.issues")

DEFAULT_STATUSES = (
    ("Backlog", "backlog"),
    ("Todo", "todo"),
    ("In Progress", "in_progress"),
    ("In Review", "in_review"),
    ("Done", "done"),
    ("Blocked", "blocked"),
    ("Cancelled", "cancelled"),
)
PRIORITY_ORDER = {name: index for index, name in enumerate(PRIORITIES)}
MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9][\w.+-]*(?:@[\w-]+(?:\.[\w-]+)+)?)")
KEY = re.compile(r"^([A-Za-z][A-Za-z0-9]*)-(\d+)$")


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Actor:
    """Who acts: a member (user), an agent, or the system."""

    user_id: str | None = None
    agent_id: str | None = None

    @classmethod
    def of(cls, access: Access) -> Actor:
        token = access.principal.token
        if access.principal.kind == "tsk" and token is not None and token.agent_id:
            return cls(agent_id=token.agent_id)  # an agent at work, through its task token
        return cls(user_id=access.principal.user.id)


@dataclass
class Outbox:
    """Events gathered during a transaction, published after it commits.

    Attached to a session (:meth:`attach`), the events are written in the same transaction
    as the change, when it commits: the two are kept or lost together (a crash right after
    the commit loses no event), and no second transaction is needed. Events added after
    the last commit are written by :meth:`publish`."""

    events: list[DomainEvent] = field(default_factory=list)
    staged: int = 0  # events[:staged] were committed by the attached session
    writing: int = 0  # events[:writing] are written in its open transaction
    session: AsyncSession | None = None
    stored: list[DomainEvent] = field(default_factory=list)  # committed, ids included
    written: list[DomainEvent] = field(default_factory=list)  # in the open transaction

    def add(self, kind: str, workspace_id: str, **data: Any) -> None:
        self.events.append(DomainEvent(kind=kind, workspace_id=workspace_id, data=data))

    def attach(self, session: AsyncSession) -> Outbox:
        self.session = session
        for name, hook in self._hooks():
            sa_event.listen(session.sync_session, name, hook)
        return self

    def _hooks(self) -> list[tuple[str, Any]]:
        return [
            ("before_commit", self._stage),
            ("after_commit", self._committed),
            ("after_rollback", self._rolled_back),
        ]

    def _stage(self, sync_session: Any) -> None:
        if sync_session.in_nested_transaction():
            return  # a savepoint: its events go with the outer transaction's commit
        self.writing = max(self.writing, self.staged)
        pending = self.events[self.writing :]
        if pending:
            self.written += stage_events(sync_session, pending)
            self.writing = len(self.events)

    def _committed(self, _sync_session: Any) -> None:
        self.staged = max(self.staged, self.writing)
        self.stored += self.written
        self.written = []

    def _rolled_back(self, _sync_session: Any) -> None:
        self.writing = self.staged  # what the rolled-back transaction wrote is gone
        self.written = []

    async def publish(self, bus: EventBus | None) -> None:
        rest = self.events[self.staged :]
        if bus is not None:
            if self.stored:
                bus.deliver_committed(self.stored)
            if rest:
                await bus.publish(rest)
        if self.session is not None:
            for name, hook in self._hooks():
                sa_event.remove(self.session.sync_session, name, hook)
            self.session = None
        self.events.clear()
        self.stored = []
        self.written = []
        self.staged = self.writing = 0


# --- statuses and labels -------------------------------------------------------------


async def create_default_statuses(session: AsyncSession, workspace_id: str) -> None:
    """Give a new workspace the standard columns (in the caller's transaction)."""
    for position, (name, category) in enumerate(DEFAULT_STATUSES):
        session.add(
            Status(workspace_id=workspace_id, name=name, category=category, position=position)
        )


async def get_status(session: AsyncSession, status_id: str) -> Status:
    """A status by id."""
    status = await session.get(Status, status_id)
    assert status is not None  # issues.status_id is a foreign key
    return status


async def list_statuses(session: AsyncSession, access: Access) -> list[Status]:
    result = await session.execute(
        select(Status)
        .where(Status.workspace_id == access.workspace.id)
        .order_by(Status.position, Status.name)
    )
    return list(result.scalars())


async def create_status(
    session: AsyncSession, access: Access, *, name: str, category: str, color: str = ""
) -> Status:
    access.require(Role.ADMIN)
    _check_category(category)
    count = await session.scalar(
        select(func.count()).select_from(Status).where(Status.workspace_id == access.workspace.id)
    )
    status = Status(
        workspace_id=access.workspace.id,
        name=name.strip(),
        category=category,
        position=int(count or 0),
        color=color,
    )
    session.add(status)
    await _commit_unique(session, f"a status named {name!r} already exists")
    return status


def _check_category(category: str) -> None:
    if category not in (
        "backlog",
        "todo",
        "in_progress",
        "in_review",
        "done",
        "blocked",
        "cancelled",
    ):
        raise ProblemError(
            422,
            f"unknown category {category!r}; use backlog, todo, "
            "in_progress, in_review, done, blocked or cancelled",
            type_="invalid-category",
        )


async def _commit_unique(session: AsyncSession, conflict: str) -> None:
    from sqlalchemy.exc import IntegrityError

    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise ProblemError(409, conflict, type_="conflict") from None


async def list_labels(session: AsyncSession, access: Access) -> list[Label]:
    result = await session.execute(
        select(Label).where(Label.workspace_id == access.workspace.id).order_by(Label.name)
    )
    return list(result.scalars())


async def create_label(
    session: AsyncSession, access: Access, *, name: str, color: str = ""
) -> Label:
    label = Label(workspace_id=access.workspace.id, name=name.strip(), color=color)
    session.add(label)
    await _commit_unique(session, f"a label named {name!r} already exists")
    return label


# --- lookups scoped to the workspace ------------------------------------------------------


async def get_issue_or_404(session: AsyncSession, access: Access, key: str) -> Issue:
    """Find an issue by key (``ENG-42``), number (``42``) or id, in this workspace only."""
    match = KEY.match(key)
    query = select(Issue).where(Issue.workspace_id == access.workspace.id)
    if match:
        if match.group(1).upper() != access.workspace.key_prefix:
            raise ProblemError(
                404,
                f"issue {key} was not found (keys here start with {access.workspace.key_prefix}-)",
            )
        query = query.where(Issue.number == int(match.group(2)))
    elif key.isdigit():
        query = query.where(Issue.number == int(key))
    else:
        query = query.where(Issue.id == key)
    issue = await session.scalar(query)
    if issue is None:
        raise ProblemError(404, f"issue {key} was not found")
    return issue


async def status_categories(
    session: AsyncSession, access: Access, keys: Sequence[str]
) -> dict[str, str]:
    """The status category of each key naming an issue of this workspace (others are
    left out: another workspace's prefix, a malformed key, a number never used)."""
    numbers: dict[int, str] = {}
    for key in keys:
        match = KEY.match(key)
        if match and match.group(1).upper() == access.workspace.key_prefix:
            numbers[int(match.group(2))] = key
    if not numbers:
        return {}
    rows = await session.execute(
        select(Issue.number, Status.category)
        .join(Status, Status.id == Issue.status_id)
        .where(Issue.workspace_id == access.workspace.id, Issue.number.in_(list(numbers)))
    )
    return {numbers[number]: category for number, category in rows.all()}


def issue_key(access: Access, issue: Issue) -> str:
    return f"{access.workspace.key_prefix}-{issue.number}"


async def _status_in(session: AsyncSession, access: Access, status_id: str) -> Status:
    status = await session.get(Status, status_id)
    if status is None or status.workspace_id != access.workspace.id:
        raise ProblemError(
            422,
            f"status {status_id} is not a status of this workspace",
            type_="invalid-reference",
            field="status_id",
        )
    return status


async def _status_by_category(
    session: AsyncSession, workspace_id: str, category: str
) -> Status | None:
    return await session.scalar(
        select(Status)
        .where(Status.workspace_id == workspace_id, Status.category == category)
        .order_by(Status.position)
        .limit(1)
    )


async def _labels_in(session: AsyncSession, access: Access, label_ids: list[str]) -> list[str]:
    if not label_ids:
        return []
    found = set(
        (
            await session.execute(
                select(Label.id).where(
                    Label.workspace_id == access.workspace.id, Label.id.in_(label_ids)
                )
            )
        ).scalars()
    )
    missing = [label for label in label_ids if label not in found]
    if missing:
        raise ProblemError(
            422,
            f"labels {', '.join(missing)} are not labels of this workspace",
            type_="invalid-reference",
            field="label_ids",
        )
    return list(dict.fromkeys(label_ids))


async def _assignee_in(
    session: AsyncSession, access: Access, assignee: AssigneeRef | None
) -> tuple[str | None, str | None]:
    if assignee is None:
        return None, None
    if assignee.kind == "member":
        if await session.get(Member, (access.workspace.id, assignee.id)) is None:
            raise ProblemError(
                422,
                f"user {assignee.id} is not a member of this workspace",
                type_="invalid-reference",
                field="assignee",
            )
        return assignee.id, None
    agent = await session.get(Agent, assignee.id)
    if agent is None or agent.workspace_id != access.workspace.id or agent.archived_at:
        raise ProblemError(
            422,
            f"agent {assignee.id} is not an agent of this workspace",
            type_="invalid-reference",
            field="assignee",
        )
    return None, agent.id


@dataclass(frozen=True)
class AssigneeRef:
    kind: str  # "member" | "agent"
    id: str


async def _parent_in(
    session: AsyncSession, access: Access, parent_key: str, child: Issue | None
) -> Issue:
    try:
        parent = await get_issue_or_404(session, access, parent_key)
    except ProblemError:
        raise ProblemError(
            422,
            f"parent {parent_key} is not an issue of this workspace",
            type_="invalid-reference",
            field="parent",
        ) from None
    if child is not None:
        cursor: Issue | None = parent
        while cursor is not None:
            if cursor.id == child.id:
                raise ProblemError(
                    422,
                    f"{parent_key} is a sub-issue of this issue; an "
                    "issue cannot be its own ancestor",
                    type_="parent-cycle",
                )
            cursor = await session.get(Issue, cursor.parent_id) if cursor.parent_id else None
    return parent


# --- creating and updating -------------------------------------------------------------


@dataclass
class IssueInput:
    title: str
    description: str = ""
    status_id: str | None = None
    priority: str = "none"
    label_ids: list[str] = field(default_factory=list)
    assignee: AssigneeRef | None = None
    parent: str | None = None
    due_date: date | None = None
    position: float | None = None


async def _next_number(session: AsyncSession, workspace_id: str) -> int:
    upsert = (
        upsert_insert(session, IssueCounter.__table__)  # type: ignore[arg-type]
        .values(workspace_id=workspace_id, last_number=1)
        .on_conflict_do_update(
            index_elements=[IssueCounter.workspace_id],
            set_={"last_number": IssueCounter.last_number + 1},
        )
        .returning(IssueCounter.last_number)
    )
    return int((await session.execute(upsert)).scalar_one())


async def create_issue(
    session: AsyncSession, access: Access, data: IssueInput, outbox: Outbox
) -> Issue:
    actor = Actor.of(access)
    if data.priority not in PRIORITY_ORDER:
        raise ProblemError(422, f"unknown priority {data.priority!r}", type_="invalid-priority")
    if data.status_id is not None:
        status = await _status_in(session, access, data.status_id)
    else:
        found = await _status_by_category(session, access.workspace.id, "todo")
        if found is None:
            raise ProblemError(
                409, "this workspace has no todo-category status; create one", type_="no-status"
            )
        status = found
    labels = await _labels_in(session, access, data.label_ids)
    assignee_user, assignee_agent = await _assignee_in(session, access, data.assignee)
    parent = await _parent_in(session, access, data.parent, None) if data.parent else None
    number = await _next_number(session, access.workspace.id)
    position = data.position
    if position is None:
        last = await session.scalar(
            select(func.max(Issue.position)).where(
                Issue.workspace_id == access.workspace.id, Issue.status_id == status.id
            )
        )
        position = float(last or 0) + 1024.0
    issue = Issue(
        workspace_id=access.workspace.id,
        number=number,
        title=_title(data.title),
        description=data.description,
        status_id=status.id,
        priority=data.priority,
        assignee_user_id=assignee_user,
        assignee_agent_id=assignee_agent,
        creator_user_id=actor.user_id,
        creator_agent_id=actor.agent_id,
        parent_id=parent.id if parent else None,
        due_date=data.due_date,
        position=position,
    )
    session.add(issue)
    await session.flush()
    for label_id in labels:
        session.add(IssueLabel(issue_id=issue.id, label_id=label_id))
    _record(session, issue, actor, "created", None, issue_key(access, issue))
    if actor.user_id:
        await _follow(session, issue, actor.user_id, "creator")
    if assignee_user:
        await _follow(session, issue, assignee_user, "assignee")
        await _notify(
            session,
            issue,
            assignee_user,
            "assigned",
            actor,
            f"{issue_key(access, issue)} was assigned to you",
        )
    outbox.add("issue.created", access.workspace.id, issue_id=issue.id, number=issue.number)
    if assignee_agent and status.category != "backlog":
        await _ask_agent(session, outbox, issue, assignee_agent, actor, "agent.assigned")
    await session.commit()
    log.info("issue.created", issue_id=issue.id, workspace_id=access.workspace.id)
    return issue


UNSET: Any = object()


@dataclass
class IssuePatch:
    revision: int
    title: Any = UNSET
    description: Any = UNSET
    status_id: Any = UNSET
    priority: Any = UNSET
    label_ids: Any = UNSET
    assignee: Any = UNSET  # AssigneeRef | None
    parent: Any = UNSET  # key | None
    due_date: Any = UNSET
    position: Any = UNSET


async def update_issue(
    session: AsyncSession, access: Access, key: str, patch: IssuePatch, outbox: Outbox
) -> Issue:
    issue = await get_issue_or_404(session, access, key)
    if patch.revision != issue.revision:
        raise ProblemError(
            409,
            f"issue {key} changed since revision {patch.revision} (now "
            f"{issue.revision}); reload and try again",
            type_="stale-revision",
            current_revision=issue.revision,
        )
    actor = Actor.of(access)
    changed: list[str] = []

    def change(name: str, old: Any, new: Any) -> None:
        if old != new:
            setattr(issue, name, new)
            _record(session, issue, actor, name, _text(old), _text(new))
            changed.append(name)

    if patch.title is not UNSET:
        change("title", issue.title, _title(str(patch.title)))
    if patch.description is not UNSET:
        change("description", issue.description, patch.description)
    if patch.priority is not UNSET:
        if patch.priority not in PRIORITY_ORDER:
            raise ProblemError(
                422, f"unknown priority {patch.priority!r}", type_="invalid-priority"
            )
        change("priority", issue.priority, patch.priority)
    if patch.due_date is not UNSET:
        change("due_date", issue.due_date, patch.due_date)
    if patch.position is not UNSET:
        change("position", issue.position, float(patch.position))
    if patch.parent is not UNSET:
        parent = await _parent_in(session, access, patch.parent, issue) if patch.parent else None
        change("parent_id", issue.parent_id, parent.id if parent else None)
    old_status = await session.get(Status, issue.status_id)
    assert old_status is not None
    new_status = old_status
    if patch.status_id is not UNSET:
        new_status = await _status_in(session, access, patch.status_id)
        change("status_id", issue.status_id, new_status.id)
    if patch.label_ids is not UNSET:
        labels = await _labels_in(session, access, list(patch.label_ids))
        current = set(
            (
                await session.execute(
                    select(IssueLabel.label_id).where(IssueLabel.issue_id == issue.id)
                )
            ).scalars()
        )
        if set(labels) != current:
            await session.execute(delete(IssueLabel).where(IssueLabel.issue_id == issue.id))
            for label_id in labels:
                session.add(IssueLabel(issue_id=issue.id, label_id=label_id))
            _record(
                session, issue, actor, "labels", ",".join(sorted(current)), ",".join(sorted(labels))
            )
            changed.append("labels")
    newly_assigned_agent = None
    unassigned_agent: str | None = None
    told: set[str] = set()  # notified of this update already (e.g. assigned)
    if patch.assignee is not UNSET:
        user_id, agent_id = await _assignee_in(session, access, patch.assignee)
        before = _assignee_text(issue.assignee_user_id, issue.assignee_agent_id)
        after = _assignee_text(user_id, agent_id)
        if before != after:
            if issue.assignee_agent_id and issue.assignee_agent_id != agent_id:
                unassigned_agent = issue.assignee_agent_id
            issue.assignee_user_id, issue.assignee_agent_id = user_id, agent_id
            _record(session, issue, actor, "assignee", before, after)
            changed.append("assignee")
            if user_id:
                await _follow(session, issue, user_id, "assignee")
                told.add(user_id)
                await _notify(
                    session,
                    issue,
                    user_id,
                    "assigned",
                    actor,
                    f"{issue_key(access, issue)} was assigned to you",
                )
            newly_assigned_agent = agent_id
    if not changed:
        return issue
    issue.revision += 1
    issue.updated_at = now()
    if "status_id" in changed:
        await _notify_followers(
            session,
            access,
            issue,
            actor,
            "status_changed",
            f"{issue_key(access, issue)} moved to {new_status.name}",
            skip=told,
        )
    await session.flush()
    wakes: list[Issue] = []
    if "status_id" in changed and new_status.category == "done":
        wakes = await _release_dependents(session, access, issue, actor, outbox)
    outbox.add(
        "issue.updated",
        access.workspace.id,
        issue_id=issue.id,
        fields=changed,
        revision=issue.revision,
    )
    agent = newly_assigned_agent or (
        issue.assignee_agent_id
        if "status_id" in changed and old_status.category == "backlog"
        else None
    )
    if agent and new_status.category not in ("backlog", "done", "cancelled"):
        await _ask_agent(session, outbox, issue, agent, actor, "agent.assigned")
    if unassigned_agent is not None:
        stopped = await task_queue.cancel_active(session, issue.id, unassigned_agent)
        if stopped is not None:
            outbox.add(
                "task.cancelled" if stopped.status == "cancelled" else "task.cancel_requested",
                issue.workspace_id,
                task_id=stopped.id,
                issue_id=issue.id,
                runtime_id=stopped.runtime_id,
            )
    await _wake_unblocked(session, outbox, wakes, actor)
    await session.commit()
    return issue


def _title(value: str) -> str:
    title = value.strip()
    if not title:
        raise ProblemError(422, "the title is empty", type_="invalid-title", field="title")
    return title


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, date | datetime):
        return value.isoformat()
    return str(value)


def _assignee_text(user_id: str | None, agent_id: str | None) -> str | None:
    if user_id:
        return f"member:{user_id}"
    if agent_id:
        return f"agent:{agent_id}"
    return None


def _record(
    session: AsyncSession, issue: Issue, actor: Actor, name: str, old: str | None, new: str | None
) -> None:
    session.add(
        IssueEvent(
            workspace_id=issue.workspace_id,
            issue_id=issue.id,
            actor_user_id=actor.user_id,
            actor_agent_id=actor.agent_id,
            field=name,
            old_value=old,
            new_value=new,
        )
    )


# --- waking agents --------------------------------------------------------------------------

#: The trigger a task records for each event that asks an agent to act.
TRIGGERS = {
    "agent.assigned": "assigned",
    "agent.commented": "commented",
    "agent.mentioned": "mentioned",
    "agent.woken": "unblocked",
    "agent.gates_failed": "gates_failed",
}


async def _ask_agent(
    session: AsyncSession,
    outbox: Outbox,
    issue: Issue,
    agent_id: str,
    actor: Actor,
    event: str,
    **data: Any,
) -> None:
    """Queue work for an agent in the caller's transaction (so the change and the task
    commit together: a crash loses neither alone); the events go out after commit. An
    agent's own comments and changes never wake itself."""
    if actor.agent_id == agent_id:
        return
    enqueued = await task_queue.enqueue(
        session,
        workspace_id=issue.workspace_id,
        issue_id=issue.id,
        agent_id=agent_id,
        trigger=TRIGGERS[event],
        created_by=actor.user_id,
    )
    outbox.add(event, issue.workspace_id, issue_id=issue.id, agent_id=agent_id, **data)
    if enqueued.outcome == "queued":
        outbox.add(
            "task.queued",
            issue.workspace_id,
            task_id=enqueued.task.id,
            issue_id=issue.id,
            agent_id=agent_id,
        )


async def _wake_unblocked(
    session: AsyncSession, outbox: Outbox, woken: list[Issue], actor: Actor
) -> None:
    for issue in woken:
        outbox.add("issue.unblocked", issue.workspace_id, issue_id=issue.id)
        status = await session.get(Status, issue.status_id)
        if issue.assignee_agent_id and status is not None and status.category != "backlog":
            await _ask_agent(session, outbox, issue, issue.assignee_agent_id, actor, "agent.woken")


# --- followers and notifications -----------------------------------------------------------


async def _follow(session: AsyncSession, issue: Issue, user_id: str, reason: str) -> None:
    # INSERT … ON CONFLICT: two first comments of one person at once must not collide.
    await session.execute(
        upsert_insert(session, Follower.__table__)  # type: ignore[arg-type]
        .values(issue_id=issue.id, user_id=user_id, reason=reason)
        .on_conflict_do_nothing(index_elements=["issue_id", "user_id"])
    )


async def follow(session: AsyncSession, access: Access, key: str, on: bool) -> None:
    issue = await get_issue_or_404(session, access, key)
    user_id = access.principal.user.id
    if on:
        await _follow(session, issue, user_id, "explicit")
    else:
        await session.execute(
            delete(Follower).where(Follower.issue_id == issue.id, Follower.user_id == user_id)
        )
    await session.commit()


async def _notify(
    session: AsyncSession,
    issue: Issue,
    user_id: str,
    kind: str,
    actor: Actor,
    summary: str,
    comment_id: str | None = None,
) -> None:
    if user_id == actor.user_id:
        return  # nobody is notified of their own action
    session.add(
        Notification(
            workspace_id=issue.workspace_id,
            user_id=user_id,
            issue_id=issue.id,
            comment_id=comment_id,
            kind=kind,
            actor_user_id=actor.user_id,
            actor_agent_id=actor.agent_id,
            summary=summary[:500],
        )
    )


async def _notify_followers(
    session: AsyncSession,
    access: Access,
    issue: Issue,
    actor: Actor,
    kind: str,
    summary: str,
    comment_id: str | None = None,
    skip: set[str] | None = None,
) -> None:
    followers = (
        await session.execute(select(Follower.user_id).where(Follower.issue_id == issue.id))
    ).scalars()
    for user_id in followers:
        if user_id not in (skip or set()):
            await _notify(session, issue, user_id, kind, actor, summary, comment_id)


async def list_notifications(
    session: AsyncSession, access: Access, *, unread_only: bool, archived: bool, limit: int
) -> list[Notification]:
    query = select(Notification).where(
        Notification.workspace_id == access.workspace.id,
        Notification.user_id == access.principal.user.id,
    )
    query = query.where(
        Notification.archived_at.is_not(None) if archived else Notification.archived_at.is_(None)
    )
    if unread_only:
        query = query.where(Notification.read_at.is_(None))
    result = await session.execute(
        query.order_by(Notification.created_at.desc(), Notification.id).limit(limit)
    )
    return list(result.scalars())


async def unread_count(session: AsyncSession, access: Access) -> int:
    return int(
        await session.scalar(
            select(func.count())
            .select_from(Notification)
            .where(
                Notification.workspace_id == access.workspace.id,
                Notification.user_id == access.principal.user.id,
                Notification.read_at.is_(None),
                Notification.archived_at.is_(None),
            )
        )
        or 0
    )


async def mark_notification(
    session: AsyncSession,
    access: Access,
    notification_id: str,
    *,
    read: bool | None,
    archived: bool | None,
) -> Notification:
    row = await session.get(Notification, notification_id)
    if (
        row is None
        or row.user_id != access.principal.user.id
        or row.workspace_id != access.workspace.id
    ):
        raise ProblemError(404, f"notification {notification_id} was not found")
    if read is not None:
        row.read_at = now() if read else None
    if archived is not None:
        row.archived_at = now() if archived else None
    await session.commit()
    return row


async def mark_all_notifications_read(session: AsyncSession, access: Access) -> int:
    """Mark every unread notification of the caller in this workspace read; how many."""
    result = await session.execute(
        update(Notification)
        .where(
            Notification.workspace_id == access.workspace.id,
            Notification.user_id == access.principal.user.id,
            Notification.read_at.is_(None),
        )
        .values(read_at=now())
    )
    await session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


# --- dependencies ---------------------------------------------------------------------------


async def add_dependency(
    session: AsyncSession, access: Access, blocker_key: str, blocked_key: str, outbox: Outbox
) -> None:
    blocker = await get_issue_or_404(session, access, blocker_key)
    blocked = await get_issue_or_404(session, access, blocked_key)
    if blocker.id == blocked.id:
        raise ProblemError(422, "an issue cannot block itself", type_="dependency-cycle")
    cycle = await _find_path(session, access.workspace.id, blocked.id, blocker.id)
    if cycle:
        keys = [
            f"{access.workspace.key_prefix}-{n}"
            for n in await _numbers(session, [blocker.id, *cycle])
        ]
        raise ProblemError(
            422,
            f"this dependency would close a cycle: {' -> '.join(keys)}",
            type_="dependency-cycle",
            cycle=keys,
        )
    if await session.get(Dependency, (blocker.id, blocked.id)) is not None:
        return
    session.add(
        Dependency(blocker_id=blocker.id, blocked_id=blocked.id, workspace_id=access.workspace.id)
    )
    actor = Actor.of(access)
    _record(session, blocked, actor, "blocked_by", None, issue_key(access, blocker))
    blocker_status = await session.get(Status, blocker.status_id)
    blocked_status = await session.get(Status, blocked.status_id)
    assert blocker_status is not None
    assert blocked_status is not None
    if blocker_status.category not in ("done", "cancelled") and blocked_status.category not in (
        "done",
        "cancelled",
        "blocked",
    ):
        target = await _status_by_category(session, access.workspace.id, "blocked")
        if target is not None:
            _record(session, blocked, actor, "status_id", blocked.status_id, target.id)
            blocked.status_id = target.id
            blocked.revision += 1
            blocked.updated_at = now()
    await session.commit()
    outbox.add(
        "issue.updated",
        access.workspace.id,
        issue_id=blocked.id,
        fields=["dependencies"],
        revision=blocked.revision,
    )


async def remove_dependency(
    session: AsyncSession, access: Access, blocker_key: str, blocked_key: str, outbox: Outbox
) -> None:
    blocker = await get_issue_or_404(session, access, blocker_key)
    blocked = await get_issue_or_404(session, access, blocked_key)
    row = await session.get(Dependency, (blocker.id, blocked.id))
    if row is None:
        raise ProblemError(404, f"{blocker_key} does not block {blocked_key}")
    await session.delete(row)
    actor = Actor.of(access)
    _record(session, blocked, actor, "blocked_by", issue_key(access, blocker), None)
    await session.flush()
    wakes = await _maybe_unblock(session, access, blocked, actor)
    outbox.add(
        "issue.updated",
        access.workspace.id,
        issue_id=blocked.id,
        fields=["dependencies"],
        revision=blocked.revision,
    )
    await _wake_unblocked(session, outbox, wakes, actor)
    await session.commit()


async def _find_path(
    session: AsyncSession, workspace_id: str, start: str, goal: str
) -> list[str] | None:
    """A path start -> … -> goal following "blocks" edges, if one exists."""
    edges: dict[str, list[str]] = {}
    rows = await session.execute(
        select(Dependency.blocker_id, Dependency.blocked_id).where(
            Dependency.workspace_id == workspace_id
        )
    )
    for blocker_id, blocked_id in rows.all():
        edges.setdefault(blocker_id, []).append(blocked_id)
    previous: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        node = frontier.pop()
        if node == goal:
            path = [node]
            while previous[path[-1]] is not None:
                path.append(previous[path[-1]])  # type: ignore[arg-type]
            return list(reversed(path))
        for nxt in edges.get(node, []):
            if nxt not in previous:
                previous[nxt] = node
                frontier.append(nxt)
    return None


async def _numbers(session: AsyncSession, ids: list[str]) -> list[int]:
    rows = dict(
        (await session.execute(select(Issue.id, Issue.number).where(Issue.id.in_(ids)))).all()
    )
    return [rows[i] for i in ids]


async def _release_dependents(
    session: AsyncSession, access: Access, done: Issue, actor: Actor, outbox: Outbox
) -> list[Issue]:
    dependents = (
        (
            await session.execute(
                select(Issue)
                .join(Dependency, Dependency.blocked_id == Issue.id)
                .where(Dependency.blocker_id == done.id)
            )
        )
        .scalars()
        .all()
    )
    woken: list[Issue] = []
    for dependent in dependents:
        woken += await _maybe_unblock(session, access, dependent, actor)
    return woken


async def _maybe_unblock(
    session: AsyncSession, access: Access, issue: Issue, actor: Actor
) -> list[Issue]:
    """Leave the blocked column once no open blocker remains; return it (to be woken)."""
    status = await session.get(Status, issue.status_id)
    if status is None or status.category != "blocked":
        return []
    open_blockers = await session.scalar(
        select(func.count())
        .select_from(Dependency)
        .join(Issue, Issue.id == Dependency.blocker_id)
        .join(Status, Status.id == Issue.status_id)
        .where(Dependency.blocked_id == issue.id, Status.category.not_in(("done", "cancelled")))
    )
    if open_blockers:
        return []
    previous_id = await session.scalar(
        select(IssueEvent.old_value)
        .where(
            IssueEvent.issue_id == issue.id,
            IssueEvent.field == "status_id",
            IssueEvent.new_value == issue.status_id,
        )
        .order_by(IssueEvent.id.desc())
        .limit(1)
    )
    target = await session.get(Status, previous_id) if previous_id else None
    if target is None or target.category == "blocked" or target.workspace_id != issue.workspace_id:
        target = await _status_by_category(session, issue.workspace_id, "todo")
    if target is None:
        return []
    _record(session, issue, actor, "status_id", issue.status_id, target.id)
    issue.status_id = target.id
    issue.revision += 1
    issue.updated_at = now()
    await _notify_followers(
        session, access, issue, actor, "status_changed", f"{issue_key(access, issue)} is unblocked"
    )
    return [issue]


async def dependency_numbers(session: AsyncSession, issue: Issue) -> tuple[list[int], list[int]]:
    """The numbers of (blocked_by, blocks) of an issue, in one query."""
    rows = await session.execute(
        select(Dependency.blocked_id == issue.id, Issue.number)
        .join(
            Dependency,
            or_(
                and_(Dependency.blocker_id == Issue.id, Dependency.blocked_id == issue.id),
                and_(Dependency.blocked_id == Issue.id, Dependency.blocker_id == issue.id),
            ),
        )
        .order_by(Issue.number)
    )
    blocked_by: list[int] = []
    blocks: list[int] = []
    for is_blocker, number in rows.all():
        (blocked_by if is_blocker else blocks).append(number)
    return blocked_by, blocks


# --- comments and mentions ------------------------------------------------------------------


@dataclass(frozen=True)
class MentionTargets:
    user_ids: list[str]
    agent_ids: list[str]


async def resolve_mentions(
    session: AsyncSession, access: Access, body: str, explicit: list[AssigneeRef]
) -> MentionTargets:
    """Structured mentions: the explicit list plus ``@email``/``@name`` handles in the text
    that name a member or agent of this workspace (unknown handles are plain text)."""
    users: dict[str, None] = {}
    agents: dict[str, None] = {}
    for ref in explicit:
        user_id, agent_id = await _assignee_in(session, access, ref)
        if user_id:
            users[user_id] = None
        if agent_id:
            agents[agent_id] = None
    handles = {h.lower() for h in MENTION.findall(body)}
    if handles:
        members = await session.execute(
            select(User.id, User.email, User.name)
            .join(Member, Member.user_id == User.id)
            .where(Member.workspace_id == access.workspace.id)
        )
        for user_id, email, name in members.all():
            if {email.lower(), email.split("@")[0].lower(), name.lower()} & handles:
                users[user_id] = None
        workspace_agents = await session.execute(
            select(Agent.id, Agent.name).where(
                Agent.workspace_id == access.workspace.id, Agent.archived_at.is_(None)
            )
        )
        for agent_id, name in workspace_agents.all():
            if name.lower() in handles:
                agents[agent_id] = None
    return MentionTargets(user_ids=list(users), agent_ids=list(agents))


async def add_comment(
    session: AsyncSession,
    access: Access,
    key: str,
    *,
    body: str,
    parent_id: str | None,
    mentions: list[AssigneeRef],
    outbox: Outbox,
) -> Comment:
    issue = await get_issue_or_404(session, access, key)
    if parent_id is not None:
        parent = await session.get(Comment, parent_id)
        if parent is None or parent.issue_id != issue.id:
            raise ProblemError(
                422,
                f"comment {parent_id} is not a comment on {key}",
                type_="invalid-reference",
                field="parent_id",
            )
    actor = Actor.of(access)
    targets = await resolve_mentions(session, access, body, mentions)
    written = now()
    comment = Comment(
        workspace_id=access.workspace.id,
        issue_id=issue.id,
        parent_id=parent_id,
        author_user_id=actor.user_id,
        author_agent_id=actor.agent_id,
        body=body,
        created_at=written,
        updated_at=written,
    )
    session.add(comment)
    await session.flush()
    await _store_mentions(session, access, issue, comment, targets, actor)
    skip = set(targets.user_ids)
    await _notify_followers(
        session,
        access,
        issue,
        actor,
        "commented",
        f"New comment on {issue_key(access, issue)}",
        comment.id,
        skip,
    )
    if actor.user_id:
        await _follow(session, issue, actor.user_id, "commenter")
    issue.updated_at = now()
    outbox.add("comment.created", access.workspace.id, issue_id=issue.id, comment_id=comment.id)
    for agent_id in targets.agent_ids:
        await _ask_agent(
            session, outbox, issue, agent_id, actor, "agent.mentioned", comment_id=comment.id
        )
    if issue.assignee_agent_id and issue.assignee_agent_id not in targets.agent_ids:
        await _ask_agent(
            session,
            outbox,
            issue,
            issue.assignee_agent_id,
            actor,
            "agent.commented",
            comment_id=comment.id,
        )
    await session.commit()
    return comment


async def _store_mentions(
    session: AsyncSession,
    access: Access,
    issue: Issue,
    comment: Comment,
    targets: MentionTargets,
    actor: Actor,
) -> None:
    for user_id in targets.user_ids:
        session.add(
            Mention(
                workspace_id=access.workspace.id,
                issue_id=issue.id,
                comment_id=comment.id,
                target_user_id=user_id,
            )
        )
        await _follow(session, issue, user_id, "mentioned")
        await _notify(
            session,
            issue,
            user_id,
            "mentioned",
            actor,
            f"You were mentioned on {issue_key(access, issue)}",
            comment.id,
        )
    for agent_id in targets.agent_ids:
        session.add(
            Mention(
                workspace_id=access.workspace.id,
                issue_id=issue.id,
                comment_id=comment.id,
                target_agent_id=agent_id,
            )
        )


async def _comment_or_404(session: AsyncSession, access: Access, comment_id: str) -> Comment:
    comment = await session.get(Comment, comment_id)
    if comment is None or comment.workspace_id != access.workspace.id or comment.deleted_at:
        raise ProblemError(404, f"comment {comment_id} was not found")
    return comment


async def edit_comment(
    session: AsyncSession, access: Access, comment_id: str, body: str, outbox: Outbox
) -> Comment:
    comment = await _comment_or_404(session, access, comment_id)
    if comment.author_user_id != access.principal.user.id:
        raise ProblemError(403, "only the author can edit a comment", type_="forbidden")
    if body == comment.body:
        return comment
    session.add(
        CommentRevision(
            comment_id=comment.id, body=comment.body, editor_user_id=access.principal.user.id
        )
    )
    known = set(
        (
            await session.execute(
                select(Mention.target_user_id).where(Mention.comment_id == comment.id)
            )
        ).scalars()
    )
    known_agents = set(
        (
            await session.execute(
                select(Mention.target_agent_id).where(Mention.comment_id == comment.id)
            )
        ).scalars()
    )
    comment.body, comment.updated_at = body, now()
    issue = await session.get(Issue, comment.issue_id)
    assert issue is not None
    targets = await resolve_mentions(session, access, body, [])
    fresh = MentionTargets(
        user_ids=[u for u in targets.user_ids if u not in known],
        agent_ids=[a for a in targets.agent_ids if a not in known_agents],
    )
    actor = Actor.of(access)
    await _store_mentions(session, access, issue, comment, fresh, actor)
    outbox.add("comment.updated", access.workspace.id, issue_id=issue.id, comment_id=comment.id)
    for agent_id in fresh.agent_ids:
        await _ask_agent(
            session, outbox, issue, agent_id, actor, "agent.mentioned", comment_id=comment.id
        )
    await session.commit()
    return comment


async def delete_comment(
    session: AsyncSession, access: Access, comment_id: str, outbox: Outbox
) -> None:
    comment = await _comment_or_404(session, access, comment_id)
    if comment.author_user_id != access.principal.user.id:
        access.require(Role.ADMIN)
    comment.deleted_at = now()
    await session.commit()
    outbox.add(
        "comment.deleted", access.workspace.id, issue_id=comment.issue_id, comment_id=comment.id
    )


async def list_comments(session: AsyncSession, access: Access, key: str) -> list[Comment]:
    issue = await get_issue_or_404(session, access, key)
    result = await session.execute(
        select(Comment)
        .where(Comment.issue_id == issue.id, Comment.deleted_at.is_(None))
        .order_by(Comment.created_at, Comment.id)
    )
    return list(result.scalars())


async def comment_history(
    session: AsyncSession, access: Access, comment_id: str
) -> list[CommentRevision]:
    comment = await _comment_or_404(session, access, comment_id)
    result = await session.execute(
        select(CommentRevision)
        .where(CommentRevision.comment_id == comment.id)
        .order_by(CommentRevision.id)
    )
    return list(result.scalars())


async def timeline(session: AsyncSession, access: Access, key: str) -> list[IssueEvent]:
    issue = await get_issue_or_404(session, access, key)
    result = await session.execute(
        select(IssueEvent).where(IssueEvent.issue_id == issue.id).order_by(IssueEvent.id)
    )
    return list(result.scalars())


async def issue_labels(session: AsyncSession, issue_ids: list[str]) -> dict[str, list[str]]:
    labels: dict[str, list[str]] = {i: [] for i in issue_ids}
    if issue_ids:
        rows = await session.execute(
            select(IssueLabel.issue_id, IssueLabel.label_id).where(
                IssueLabel.issue_id.in_(issue_ids)
            )
        )
        for issue_id, label_id in rows.all():
            labels[issue_id].append(label_id)
    return labels


async def sub_issue_progress(session: AsyncSession, issue: Issue) -> tuple[int, int]:
    """(done, total) of an issue's direct sub-issues."""
    rows = await session.execute(
        select(Status.category, func.count())
        .join(Issue, Issue.status_id == Status.id)
        .where(Issue.parent_id == issue.id)
        .group_by(Status.category)
    )
    counts = dict(rows.all())
    return int(counts.get("done", 0)), int(sum(counts.values()))


# --- listing -------------------------------------------------------------------------------


@dataclass
class IssueFilter:
    status_ids: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    assignee: str | None = None  # "me", "none", "member:<id>", "agent:<id>"
    label_ids: list[str] = field(default_factory=list)
    priorities: list[str] = field(default_factory=list)
    parent: str | None = None
    text: str | None = None
    sort: str | None = None  # default: relevance with text, else position
    limit: int = 50
    cursor: str | None = None


SORTS = {
    "position": Issue.position,
    "created": Issue.created_at,
    "updated": Issue.updated_at,
    "number": Issue.number,
    "due": Issue.due_date,
}


async def list_issues(
    session: AsyncSession, access: Access, f: IssueFilter
) -> tuple[list[Issue], str | None]:
    """A filtered, sorted page; returns the issues and the cursor of the next page."""
    query = select(Issue).where(Issue.workspace_id == access.workspace.id)
    if f.status_ids:
        query = query.where(Issue.status_id.in_(f.status_ids))
    if f.categories:
        # Resolved to literal ids first: with a sub-select the planners cannot estimate
        # how selective the filter is and walk the sort index over every issue instead.
        in_categories = list(
            (
                await session.execute(
                    select(Status.id).where(
                        Status.workspace_id == access.workspace.id,
                        Status.category.in_(f.categories),
                    )
                )
            ).scalars()
        )
        query = query.where(Issue.status_id.in_(in_categories))
    if f.assignee:
        query = query.where(_assignee_clause(access, f.assignee))
    for label_id in f.label_ids:
        if f.status_ids or f.categories:
            # The status indexes bound the rows walked (newest first when sorting by
            # recency); checking each row's label is then cheaper than reading every issue
            # of the label. Written as EXISTS because SQLite, whose sampled statistics rate
            # both filters alike, would otherwise start from the label's rows and sort.
            query = query.where(
                select(IssueLabel.issue_id)
                .where(IssueLabel.issue_id == Issue.id, IssueLabel.label_id == label_id)
                .exists()
            )
        else:
            query = query.where(
                Issue.id.in_(select(IssueLabel.issue_id).where(IssueLabel.label_id == label_id))
            )
    if f.priorities:
        query = query.where(Issue.priority.in_(f.priorities))
    if f.parent:
        parent = await get_issue_or_404(session, access, f.parent)
        query = query.where(Issue.parent_id == parent.id)
    searching = bool(f.text)
    if f.text and not search_tokens(f.text):
        return [], None  # nothing searchable in the text: nothing matches
    sort = f.sort or ("relevance" if searching else "position")
    name = sort.lstrip("-")
    if name == "relevance":
        if not searching:
            raise ProblemError(422, "sort=relevance needs a search text (q)", type_="invalid-sort")
        assert f.text is not None
        await plan_for_the_words(session)
        # best matches first unless asked otherwise
        return await _relevance_page(session, access, query, f, f.text, not sort.startswith("-"))
    if name not in SORTS:
        raise ProblemError(
            422,
            f"unknown sort {sort!r}; use one of {', '.join([*SORTS, 'relevance'])} "
            "(prefix - for descending)",
            type_="invalid-sort",
        )
    column: Any = SORTS[name]
    descending = sort.startswith("-")
    if f.text:
        # Any other order: the search is a filter, over every match (no window).
        await plan_for_the_words(session)
        matching = await reach(session, access.workspace.id, f.text, _ids(query))
        assert matching is not None
        query = query.where(matching.matches())
    if f.cursor:
        value, last_id = _decode_cursor(f.cursor)
        query = query.where(_after(column, _cursor_value(name, value), last_id, descending))
    # Empty values (only due dates can be empty) come last, in either direction. The extra
    # sort key is added only there: it would stop the other sorts from using their index.
    direction = column.desc() if descending else column.asc()
    keys = (column.is_(None), direction, Issue.id) if name == "due" else (direction, Issue.id)
    ordered = query.add_columns(column.label("sort_value")).order_by(*keys)
    rows: list[Any] = list((await session.execute(ordered.limit(f.limit + 1))).all())
    next_cursor = None
    if len(rows) > f.limit:
        rows = rows[: f.limit]
        next_cursor = _encode_cursor(rows[-1][1], rows[-1][0].id)
    return [row[0] for row in rows], next_cursor


async def count_by_status(session: AsyncSession, access: Access, f: IssueFilter) -> dict[str, int]:
    """How many issues of each status match the filter (the board's column counts).

    The same filters as :func:`list_issues` (its status, sort and paging fields are
    ignored): one GROUP BY over the workspace's status index."""
    conditions: list[Any] = [Issue.workspace_id == access.workspace.id]
    if f.assignee:
        conditions.append(_assignee_clause(access, f.assignee))
    for label_id in f.label_ids:
        conditions.append(
            select(IssueLabel.issue_id)
            .where(IssueLabel.issue_id == Issue.id, IssueLabel.label_id == label_id)
            .exists()
        )
    if f.priorities:
        conditions.append(Issue.priority.in_(f.priorities))
    if f.parent:
        parent = await get_issue_or_404(session, access, f.parent)
        conditions.append(Issue.parent_id == parent.id)
    if f.text:
        if not search_tokens(f.text):
            return {}
        await plan_for_the_words(session)
        matching = await reach(
            session, access.workspace.id, f.text, _ids(select(Issue).where(*conditions))
        )
        assert matching is not None
        conditions.append(matching.matches())
    rows = await session.execute(
        select(Issue.status_id, func.count()).where(*conditions).group_by(Issue.status_id)
    )
    return {status_id: int(n) for status_id, n in rows.all()}


def _after(column: Any, typed: Any, last_id: str, descending: bool) -> Any:
    """The rows after a cursor at ``(typed, last_id)`` in ``(column, id)`` order."""
    if typed is None:  # inside the trailing run of empty values (due dates)
        return and_(column.is_(None), Issue.id > last_id)
    beyond = column < typed if descending else column > typed
    return or_(beyond, and_(column == typed, Issue.id > last_id), column.is_(None))


# Relevance cursors: a rank inside the ranking window, or this prefix and the update time
# for the matches beyond it.
_BEYOND = "u:"


async def _relevance_page(
    session: AsyncSession,
    access: Access,
    query: Any,
    f: IssueFilter,
    words: str,
    descending: bool,
) -> tuple[list[Issue], str | None]:
    """A page sorted by relevance, in two parts (see db/search.py): the issues of the
    ranking window by rank, then every other match by update time (newest first); in
    reverse for ``-relevance``. The second part is read only once the first is used up,
    and not at all when every match is inside the window."""
    workspace_id = access.workspace.id
    window = ranked_issue_ids(session.get_bind().dialect.name, workspace_id, words)
    assert window is not None
    parts = ["window", "beyond"] if descending else ["beyond", "window"]
    cursor: tuple[str, Any, str] | None = None
    if f.cursor:
        value, last_id = _decode_cursor(f.cursor)
        if value is not None and value.startswith(_BEYOND):
            cursor = ("beyond", _cursor_value("updated", value[len(_BEYOND) :]), last_id)
        else:
            cursor = ("window", _cursor_value("relevance", value), last_id)
        if cursor[1] is None:
            raise ProblemError(
                422, "the cursor is malformed; start again without it", type_="invalid-cursor"
            )
        parts = parts[parts.index(cursor[0]) :]
    rows: list[tuple[Issue, str, Any]] = []
    # The issues of the window that pass the filters, once the window part has returned
    # all of them (fewer than it asked for): the other part excludes these ids instead of
    # ranking the window a second time.
    in_window: list[str] | None = None
    for part in parts:
        wanted = f.limit + 1 - len(rows)
        if wanted <= 0:
            break
        if part == "window":
            column: Any = window.c.rank
            part_query = query.join(window, window.c.issue_id == Issue.id)
        else:
            matching = await reach(session, workspace_id, words, _ids(query))
            assert matching is not None
            if matching.in_window:
                continue  # the window held every match
            column = Issue.updated_at
            outside = (
                Issue.id.not_in(in_window)
                if in_window is not None
                else Issue.id.not_in(select(window.c.issue_id))
            )
            part_query = query.where(matching.matches(), outside)
        if cursor is not None and cursor[0] == part:
            part_query = part_query.where(_after(column, cursor[1], cursor[2], descending))
        direction = column.desc() if descending else column.asc()
        ordered = part_query.add_columns(column.label("sort_value")).order_by(direction, Issue.id)
        found = (await session.execute(ordered.limit(wanted))).all()
        rows += [(row[0], part, row[1]) for row in found]
        if part == "window" and cursor is None and len(found) < wanted:
            in_window = [row[0].id for row in found]
    next_cursor = None
    if len(rows) > f.limit:
        rows = rows[: f.limit]
        issue, part, value = rows[-1]
        text_value = _text(value) if part == "window" else _BEYOND + str(_text(value))
        next_cursor = _encode_cursor(text_value, issue.id)
    return [row[0] for row in rows], next_cursor


def _ids(query: Any) -> Any:
    """A row for each issue a filtered ``select(Issue)`` yields (its filters, no order), to
    be counted: no column, so an index holding the filtered columns answers alone."""
    return query.with_only_columns(literal_column("1"))


def _assignee_clause(access: Access, value: str) -> Any:
    if value == "me":
        return Issue.assignee_user_id == access.principal.user.id
    if value == "none":
        return and_(Issue.assignee_user_id.is_(None), Issue.assignee_agent_id.is_(None))
    kind, _, ident = value.partition(":")
    if kind == "member" and ident:
        return Issue.assignee_user_id == ident
    if kind == "agent" and ident:
        return Issue.assignee_agent_id == ident
    raise ProblemError(
        422,
        f"assignee filter {value!r} must be me, none, member:<id> or agent:<id>",
        type_="invalid-filter",
    )


def _encode_cursor(value: Any, issue_id: str) -> str:
    """``value`` is the sort value of the page's last row (or its text)."""
    raw = json.dumps([_text(value), issue_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str | None, str]:
    try:
        value, issue_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return value, str(issue_id)
    except (ValueError, TypeError):
        raise ProblemError(
            422, "the cursor is malformed; start again without it", type_="invalid-cursor"
        ) from None


def _cursor_value(sort: str, value: str | None) -> Any:
    if value is None:
        return None
    try:
        if sort in ("position", "relevance"):
            return float(value)
        if sort == "number":
            return int(value)
        if sort in ("created", "updated"):
            return datetime.fromisoformat(value)
        if sort == "due":
            return date.fromisoformat(value)
    except ValueError:
        raise ProblemError(
            422, "the cursor is malformed; start again without it", type_="invalid-cursor"
        ) from None
    return value


async def issue_numbers(session: AsyncSession, issue_ids: list[str]) -> dict[str, int]:
    if not issue_ids:
        return {}
    rows = await session.execute(select(Issue.id, Issue.number).where(Issue.id.in_(issue_ids)))
    return {issue_id: number for issue_id, number in rows.all()}


# --- for the task queue ---------------------------------------------------------------------


@dataclass(frozen=True)
class CommentBrief:
    author: str  # "member:<name or email>" or "agent:<name>"
    body: str
    created_at: datetime


@dataclass(frozen=True)
class IssueBrief:
    """What an agent is told about the issue it works on."""

    id: str
    key: str
    title: str
    description: str
    status: str
    status_category: str
    priority: str
    labels: list[str]
    comments: list[CommentBrief]


#: The newest comments an agent is given with its task (the rest stay on the issue).
AGENT_COMMENTS = 200


async def brief_for_agent(session: AsyncSession, workspace: Workspace, issue_id: str) -> IssueBrief:
    """What an agent is told about ``issue_id``: two statements (the issue with its status
    and label names, then its newest comments), columns only."""
    label_names = (
        select(json_array_agg(Label.name))
        .join(IssueLabel, IssueLabel.label_id == Label.id)
        .where(IssueLabel.issue_id == Issue.id)
        .scalar_subquery()
    )
    found = (
        await session.execute(
            select(
                Issue.workspace_id,
                Issue.number,
                Issue.title,
                Issue.description,
                Issue.priority,
                Status.name,
                Status.category,
                label_names,
            )
            .join(Status, Status.id == Issue.status_id)
            .where(Issue.id == issue_id)
        )
    ).first()
    assert found is not None
    issue_workspace, number, title, description, priority, status, category, labels = found
    assert issue_workspace == workspace.id
    rows = await session.execute(
        select(Comment.body, Comment.created_at, User.name, User.email, Agent.name)
        .outerjoin(User, User.id == Comment.author_user_id)
        .outerjoin(Agent, Agent.id == Comment.author_agent_id)
        .where(Comment.issue_id == issue_id, Comment.deleted_at.is_(None))
        .order_by(Comment.created_at.desc(), Comment.id.desc())
        .limit(AGENT_COMMENTS)
    )
    comments = [
        CommentBrief(
            author=f"agent:{agent_name}"
            if agent_name is not None
            else f"member:{(user_name or user_email) if user_email is not None else 'unknown'}",
            body=body,
            created_at=created_at,
        )
        for body, created_at, user_name, user_email, agent_name in rows.all()
    ]
    comments.reverse()
    return IssueBrief(
        id=issue_id,
        key=f"{workspace.key_prefix}-{number}",
        title=title,
        description=description,
        status=status,
        status_category=category,
        priority=priority,
        labels=sorted(json_list(labels)),
        comments=comments,
    )


async def task_failed(
    session: AsyncSession,
    *,
    workspace: Workspace,
    issue_id: str,
    agent_id: str,
    failure: str,
    outbox: Outbox,
) -> None:
    """An agent's task failed for good (in the caller's transaction): the failure is
    commented on the issue by the agent, followers get a "task failed" notification, and
    an issue the agent had moved along goes back to a todo-category status so a person
    picks it up."""
    issue = await session.get(Issue, issue_id)
    if issue is None:
        return
    actor = Actor(agent_id=agent_id)
    key = f"{workspace.key_prefix}-{issue.number}"
    comment = Comment(
        workspace_id=workspace.id,
        issue_id=issue.id,
        author_agent_id=agent_id,
        body=f"**The task failed** and will not be retried.\n\n{failure}",
        created_at=(written := now()),
        updated_at=written,
    )
    session.add(comment)
    await session.flush()
    status = await session.get(Status, issue.status_id)
    changed = ["comments"]
    if status is not None and status.category in ("in_progress", "in_review", "blocked"):
        target = await _status_by_category(session, workspace.id, "todo")
        if target is not None:
            _record(session, issue, actor, "status_id", issue.status_id, target.id)
            issue.status_id = target.id
            issue.revision += 1
            changed.append("status_id")
    issue.updated_at = now()
    followers = (
        await session.execute(select(Follower.user_id).where(Follower.issue_id == issue.id))
    ).scalars()
    for user_id in followers:
        await _notify(
            session, issue, user_id, "task_failed", actor, f"A task on {key} failed", comment.id
        )
    outbox.add("comment.created", workspace.id, issue_id=issue.id, comment_id=comment.id)
    outbox.add(
        "issue.updated", workspace.id, issue_id=issue.id, fields=changed, revision=issue.revision
    )


async def _move_by_system(
    session: AsyncSession, issue: Issue, category: str, changed: list[str]
) -> bool:
    """Move the issue to the workspace's first status of ``category`` (the system acts)."""
    target = await _status_by_category(session, issue.workspace_id, category)
    if target is None or target.id == issue.status_id:
        return False
    _record(session, issue, Actor(), "status_id", issue.status_id, target.id)
    issue.status_id = target.id
    issue.revision += 1
    changed.append("status_id")
    return True


async def gates_passed(
    session: AsyncSession, *, workspace: Workspace, issue_id: str, outbox: Outbox
) -> None:
    """The gates the workspace's tier requires pass after an agent's work (in the caller's
    transaction): the issue moves to review unless it is there already (or done)."""
    issue = await session.get(Issue, issue_id)
    if issue is None:
        return
    status = await session.get(Status, issue.status_id)
    if status is not None and status.category in ("in_review", "done", "cancelled"):
        return
    changed: list[str] = []
    if await _move_by_system(session, issue, "in_review", changed):
        issue.updated_at = now()
        outbox.add(
            "issue.updated",
            workspace.id,
            issue_id=issue.id,
            fields=changed,
            revision=issue.revision,
        )


async def gates_failed(
    session: AsyncSession,
    *,
    workspace: Workspace,
    issue_id: str,
    agent_id: str,
    report: str,
    give_up: bool,
    outbox: Outbox,
) -> None:
    """The gates the tier requires do not pass after an agent's work (in the caller's
    transaction): the agent comments which gates block and why; then either the agent is
    asked to fix them (a task with trigger ``gates_failed``) and an issue it moved to
    review goes back to in progress, or — ``give_up``, its rounds are used up — the issue
    is blocked for a person to look at. An issue done or cancelled meanwhile only gets
    the comment."""
    issue = await session.get(Issue, issue_id)
    if issue is None:
        return
    comment = Comment(
        workspace_id=workspace.id,
        issue_id=issue.id,
        author_agent_id=agent_id,
        body=report,
        created_at=(written := now()),
        updated_at=written,
    )
    session.add(comment)
    await session.flush()
    changed = ["comments"]
    status = await session.get(Status, issue.status_id)
    category = status.category if status is not None else None
    settled = category in ("done", "cancelled")  # a person closed it meanwhile: only say so
    if settled:
        pass
    elif give_up:
        if category != "blocked":
            await _move_by_system(session, issue, "blocked", changed)
    elif category == "in_review":
        await _move_by_system(session, issue, "in_progress", changed)
    issue.updated_at = now()
    outbox.add("comment.created", workspace.id, issue_id=issue.id, comment_id=comment.id)
    outbox.add(
        "issue.updated", workspace.id, issue_id=issue.id, fields=changed, revision=issue.revision
    )
    if not give_up and not settled:
        await _ask_agent(session, outbox, issue, agent_id, Actor(), "agent.gates_failed")


async def issue_key_of(session: AsyncSession, workspace: Workspace, issue_id: str) -> str | None:
    issue = await session.get(Issue, issue_id)
    return None if issue is None else f"{workspace.key_prefix}-{issue.number}"
