"""Request and response bodies of the board API."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Priority = Literal["urgent", "high", "medium", "low", "none"]
Category = Literal["backlog", "todo", "in_progress", "in_review", "done", "blocked", "cancelled"]


class ActorRef(BaseModel):
    kind: Literal["member", "agent"]
    id: str


class StatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=60, examples=["QA"])
    category: Category
    color: str = Field("", max_length=20)


class StatusOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    category: str
    position: int
    color: str


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=60, examples=["bug"])
    color: str = Field("", max_length=20)


class LabelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    color: str


class IssueIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(min_length=1, max_length=500, examples=["Fix the login redirect"])
    description: str = Field("", max_length=100_000, description="Markdown, stored as text.")
    status_id: str | None = Field(None, description="Default: the first todo-category status.")
    priority: Priority = "none"
    label_ids: list[str] = Field(default_factory=list, max_length=50)
    assignee: ActorRef | None = None
    parent: str | None = Field(None, description="Key of the parent issue, e.g. ENG-7.")
    due_date: date | None = None
    position: float | None = None


class IssuePatchIn(BaseModel):
    """Only the fields sent change; ``revision`` must be the one you read (else 409)."""

    model_config = ConfigDict(extra="forbid")
    revision: int = Field(ge=1)
    title: str | None = Field(None, min_length=1, max_length=500)
    description: str | None = Field(None, max_length=100_000)
    status_id: str | None = None
    priority: Priority | None = None
    label_ids: list[str] | None = Field(None, max_length=50)
    assignee: ActorRef | None = None
    parent: str | None = None
    due_date: date | None = None
    position: float | None = None


class IssueOut(BaseModel):
    id: str
    key: str
    number: int
    title: str
    description: str
    status: StatusOut
    priority: str
    label_ids: list[str]
    assignee: ActorRef | None
    creator: ActorRef | None
    parent: str | None
    due_date: date | None
    position: float
    revision: int
    created_at: datetime
    updated_at: datetime


class IssueDetailOut(IssueOut):
    sub_issues_done: int
    sub_issues_total: int
    blocked_by: list[str]
    blocks: list[str]


class IssuePage(BaseModel):
    items: list[IssueOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class DependencyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    blocked_by: str = Field(
        description="Key of the issue that blocks this one.", examples=["ENG-3"]
    )


class CommentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    body: str = Field(min_length=1, max_length=100_000, examples=["@claude please take a look"])
    parent_id: str | None = Field(None, description="Reply to this comment.")
    mentions: list[ActorRef] = Field(
        default_factory=list,
        max_length=50,
        description="Explicit mentions, in addition to @handles "
        "in the text that name a member or an agent.",
    )


class CommentEditIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    body: str = Field(min_length=1, max_length=100_000)


class CommentOut(BaseModel):
    id: str
    issue_id: str
    parent_id: str | None
    author: ActorRef | None
    body: str
    created_at: datetime
    updated_at: datetime
    edited: bool


class CommentRevisionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    body: str
    replaced_at: datetime
    editor_user_id: str | None


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    field: str
    old_value: str | None
    new_value: str | None
    actor_user_id: str | None
    actor_agent_id: str | None
    created_at: datetime


class NotificationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    issue_id: str
    issue_key: str = ""
    comment_id: str | None
    kind: str
    summary: str
    actor_user_id: str | None
    actor_agent_id: str | None
    created_at: datetime
    read_at: datetime | None
    archived_at: datetime | None


class NotificationPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    read: bool | None = None
    archived: bool | None = None


class UnreadCount(BaseModel):
    unread: int
