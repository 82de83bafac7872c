"""Planned executions of periodic internal jobs.

A job (usage rollup, retention, …) runs once per plan time across all replicas: each
replica tries to insert the ``(job, scope, plan_time)`` row, and the unique key makes
exactly one of them the winner. The row then records status, attempts and errors, so
operators can see what ran where.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String, Text, UniqueConstraint, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from forgehall.db.base import Base
from forgehall.db.types import utcnow


class JobExecution(Base):
    __tablename__ = "job_executions"
    __table_args__ = (UniqueConstraint("job", "scope", "plan_time"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job: Mapped[str] = mapped_column(String(100))
    scope: Mapped[str] = mapped_column(String(200), default="instance")
    plan_time: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20), default="running")
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    runner_id: Mapped[str] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text, default=None)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


async def claim_job_execution(
    session: AsyncSession, *, job: str, scope: str, plan_time: datetime, runner_id: str
) -> int | None:
    """Claim one planned execution; return its id, or None when another runner has it."""
    row = JobExecution(job=job, scope=scope, plan_time=plan_time, runner_id=runner_id)
    session.add(row)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        return None
    return row.id


async def finish_job_execution(session: AsyncSession, execution_id: int, error: str | None) -> None:
    await session.execute(
        update(JobExecution)
        .where(JobExecution.id == execution_id)
        .values(status="failed" if error else "succeeded", error=error, finished_at=utcnow())
    )
    await session.commit()
