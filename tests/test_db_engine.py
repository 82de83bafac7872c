"""The database handle: concurrent writes never fail, reads run beside writes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError

from forgehall.db.engine import Database
from forgehall.db.jobs import JobExecution
from forgehall.db.types import UTCDateTime


async def test_concurrent_writers_never_see_database_is_locked(db: Database) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)

    async def write(i: int) -> None:
        async with db.session() as session:
            # A read-then-write transaction: the pattern that deadlocks SQLite's
            # deferred transactions when two connections upgrade to writers at once.
            await session.execute(select(func.count()).select_from(JobExecution))
            session.add(JobExecution(job="w", scope=str(i), plan_time=base, runner_id="t"))
            await asyncio.sleep(0)
            await session.commit()

    await asyncio.gather(*(write(i) for i in range(200)))
    async with db.read_session() as session:
        count = await session.scalar(select(func.count()).select_from(JobExecution))
    assert count == 200


async def test_reads_proceed_while_a_write_transaction_is_open(db: Database) -> None:
    async with db.session() as writer:
        writer.add(JobExecution(job="slow", scope="s", plan_time=datetime.now(UTC), runner_id="t"))
        await writer.flush()  # the write transaction is now open and holds the writer
        async with db.read_session() as reader:
            seen = await asyncio.wait_for(
                reader.scalar(select(func.count()).select_from(JobExecution)), 2
            )
        assert seen == 0, "uncommitted rows are invisible to readers"
        await writer.commit()


@pytest.mark.parametrize("backend", ["sqlite"])  # a SQLite mechanism; PostgreSQL shares a pool
async def test_read_sessions_refuse_writes_on_sqlite(db: Database, backend: str) -> None:
    async with db.read_session() as reader:
        with pytest.raises(DBAPIError, match="readonly"):
            await reader.execute(text("DELETE FROM job_executions"))


async def test_timestamps_round_trip_as_aware_utc(db: Database) -> None:
    local = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).astimezone(timezone(timedelta(hours=5)))
    async with db.session() as session:
        session.add(JobExecution(job="tz", scope="s", plan_time=local, runner_id="t"))
        await session.commit()
    async with db.read_session() as session:
        row = (await session.execute(select(JobExecution))).scalar_one()
    assert row.plan_time == local
    assert row.plan_time.utcoffset() == timedelta(0)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        UTCDateTime().process_bind_param(datetime(2026, 1, 1), sqlite.dialect())
