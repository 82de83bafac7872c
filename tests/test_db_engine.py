"""The database handle: concurrent writes never fail, reads run beside writes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError

from forgehall.db import engine as engine_module
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


@pytest.mark.parametrize("backend", ["postgresql"])  # SQLite has no server to lose
async def test_a_connection_the_server_dropped_while_idle_is_replaced_unseen(
    db: Database, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pooled connections are pinged only after sitting idle (not on every checkout):
    one whose server process went away meanwhile (a restart, a failover, an idle
    timeout) is replaced before a session sees it — and while busy, none is pinged."""
    pings: list[object] = []
    dialect = db.engine.sync_engine.dialect
    real_ping = dialect.do_ping

    def counting_ping(dbapi_connection: object) -> bool:
        pings.append(dbapi_connection)
        return real_ping(dbapi_connection)  # type: ignore[arg-type]

    monkeypatch.setattr(dialect, "do_ping", counting_ping)
    async with db.session() as session:
        victim = await session.scalar(text("SELECT pg_backend_pid()"))
    for _ in range(5):  # busy: the connection is reused at once, never pinged
        async with db.session() as session:
            assert await session.scalar(text("SELECT pg_backend_pid()")) == victim
    assert pings == []

    # Two pooled connections, the victim checked in first (the pool hands out the
    # longest-idle first); then its server process ends from outside the pool.
    async with db.session() as first, db.session() as second:
        assert await first.scalar(text("SELECT pg_backend_pid()")) == victim
        assert await second.scalar(text("SELECT pg_backend_pid()")) != victim
        await first.close()
    outside = Database(db.config)
    try:
        async with outside.session() as session:
            ended = await session.scalar(text("SELECT pg_terminate_backend(:p)"), {"p": victim})
            assert ended
    finally:
        await outside.dispose()
    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_SECONDS", 0.0)  # both now "idle"
    async with db.session() as session:
        replacement = await session.scalar(text("SELECT pg_backend_pid()"))
    assert replacement != victim
    assert pings, "the idle connection was pinged"


async def test_a_failed_commit_leaves_the_next_session_able_to_write(db: Database) -> None:
    """SQLite keeps a transaction open when its COMMIT fails (here a deferred foreign key);
    the connection must not go back to the pool that way (the writer would refuse every
    later BEGIN)."""
    async with db.session() as session:
        await session.execute(text("CREATE TABLE fk_parent (id INTEGER PRIMARY KEY)"))
        await session.execute(
            text(
                "CREATE TABLE fk_child (id INTEGER PRIMARY KEY, parent INTEGER "
                "REFERENCES fk_parent (id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
        await session.commit()
    async with db.session() as session:
        await session.execute(text("INSERT INTO fk_child (id, parent) VALUES (1, 99)"))
        with pytest.raises(DBAPIError, match=r"(?i)foreign key"):
            await session.commit()
    for attempt in range(2):
        async with db.session() as session:
            await session.execute(text(f"INSERT INTO fk_parent (id) VALUES ({attempt})"))
            await session.commit()
    async with db.read_session() as session:
        assert await session.scalar(select(func.count()).select_from(text("fk_child"))) == 0
        assert await session.scalar(select(func.count()).select_from(text("fk_parent"))) == 2
