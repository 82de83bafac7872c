"""Tables of the agents domain: agent profiles, runtimes and the task queue.

Task states: ``queued → dispatched → running → completed | failed | cancelled``. A
claim hands out a lease (``lease_expires_at``) and a fresh ``lease_token``; every later
report must carry the current token. At most one *active* task (queued, dispatched or
running) exists per (issue, agent): a partial unique index enforces it on both
databases.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ColumnElement,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    literal,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from forgehall.db.base import Base
from forgehall.db.types import EncryptedText, utcnow
from forgehall.identity.models import new_id

ACTIVE_STATES = ("queued", "dispatched", "running")
ACTIVE_SQL = "status IN ('queued', 'dispatched', 'running')"
IN_FLIGHT = ("dispatched", "running")
IN_FLIGHT_SQL = "status IN ('dispatched', 'running')"


class Agent(Base):
    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    avatar: Mapped[str] = mapped_column(String(500), default="")
    instructions: Mapped[str] = mapped_column(Text, default="")
    provider: Mapped[str] = mapped_column(String(20), default="claude")
    model: Mapped[str] = mapped_column(String(200), default="")
    custom_command: Mapped[str] = mapped_column(Text, default="")
    extra_args: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of strings
    env: Mapped[str | None] = mapped_column(EncryptedText, default=None)  # JSON object
    max_concurrent_tasks: Mapped[int] = mapped_column(Integer, default=6)
    runtime_pool: Mapped[str] = mapped_column(Text, default="[]")  # JSON ids; [] = any
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    archived_at: Mapped[datetime | None] = mapped_column(default=None)


class Runtime(Base):
    """A machine's daemon serving one workspace; online while heartbeats arrive."""

    __tablename__ = "runtimes"
    __table_args__ = (UniqueConstraint("workspace_id", "daemon_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), index=True
    )
    daemon_id: Mapped[str] = mapped_column(String(64))
    machine: Mapped[str] = mapped_column(String(200), default="")
    providers: Mapped[str] = mapped_column(Text, default="{}")  # JSON {provider: version}
    capacity: Mapped[int] = mapped_column(Integer, default=20)
    token_id: Mapped[str | None] = mapped_column(
        ForeignKey("api_tokens.id", ondelete="SET NULL"), default=None
    )
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued','dispatched','running','completed','failed','cancelled')",
            name="status_known",
        ),
        Index(
            "uq_tasks_one_active_per_issue_agent",
            "issue_id",
            "agent_id",
            unique=True,
            sqlite_where=text(ACTIVE_SQL),
            postgresql_where=text(ACTIVE_SQL),
        ),
        Index(
            "ix_tasks_claimable",
            "workspace_id",
            "available_at",
            sqlite_where=text("status = 'queued'"),
            postgresql_where=text("status = 'queued'"),
        ),
        Index(
            "ix_tasks_queued_by_agent",
            "agent_id",
            "available_at",
            "created_at",
            sqlite_where=text("status = 'queued'"),
            postgresql_where=text("status = 'queued'"),
        ),
        Index(
            "ix_tasks_busy_by_agent",
            "agent_id",
            sqlite_where=text(IN_FLIGHT_SQL),
            postgresql_where=text(IN_FLIGHT_SQL),
        ),
        Index(
            "ix_tasks_busy_by_runtime",
            "runtime_id",
            sqlite_where=text(IN_FLIGHT_SQL),
            postgresql_where=text(IN_FLIGHT_SQL),
        ),
        Index(
            "ix_tasks_lease",
            "lease_expires_at",
            sqlite_where=text(IN_FLIGHT_SQL),
            postgresql_where=text(IN_FLIGHT_SQL),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    issue_id: Mapped[str] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"), index=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(12), default="queued")
    trigger: Mapped[str] = mapped_column(String(30), default="assigned")
    follow_up: Mapped[bool] = mapped_column(default=False)
    runtime_id: Mapped[str | None] = mapped_column(
        ForeignKey("runtimes.id", ondelete="SET NULL"), default=None, index=True
    )
    lease_token: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    available_at: Mapped[datetime] = mapped_column(default=utcnow)
    failure_class: Mapped[str | None] = mapped_column(String(30), default=None)
    failure_detail: Mapped[str | None] = mapped_column(Text, default=None)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    # set once a claim response told the holder; heartbeats keep repeating it
    cancel_delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    session_id: Mapped[str | None] = mapped_column(String(200), default=None)
    progress: Mapped[str] = mapped_column(String(500), default="")
    result: Mapped[str] = mapped_column(Text, default="")  # the daemon's closing summary
    created_by: Mapped[str | None] = mapped_column(String(32), default=None)  # user, manual
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


MESSAGE_KINDS = ("text", "thinking", "tool_use", "tool_result", "error")


class TaskMessage(Base):
    """One entry of a task's transcript, in the daemon's order: ``seq`` counts from 1 in
    each attempt (a retried task starts a new transcript beside the old one)."""

    __tablename__ = "task_messages"
    __table_args__ = (
        UniqueConstraint("task_id", "attempt", "seq"),
        CheckConstraint(
            "kind IN ('text','thinking','tool_use','tool_result','error')", name="kind_known"
        ),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    workspace_id: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))
    content: Mapped[str] = mapped_column(Text)  # JSON (tool calls) or plain text
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TaskUsage(Base):
    """Token use of a task per model: the totals the daemon last reported."""

    __tablename__ = "task_usage"

    task_id: Mapped[str] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(String(32), index=True)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    cost_source: Mapped[str] = mapped_column(String(10), default="provider")  # or "prices"
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


def task_status_in(*states: str) -> ColumnElement[bool]:
    """``tasks.status`` is one of ``states``, written into the SQL as literals. The partial
    indexes on the queue (``WHERE status = 'queued'``, ``WHERE status IN ('dispatched',
    'running')``) serve a query only when its condition is literally the index's: SQLite
    never matches a bound parameter against it, nor does a PostgreSQL generic plan (which
    asyncpg's prepared statements get after a few runs) — the claim then walked every
    task an agent ever had instead of its few queued ones."""
    values = [literal(state, literal_execute=True) for state in states]
    if len(values) == 1:
        return Task.status == values[0]
    return Task.status.in_(values)
