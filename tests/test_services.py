"""Background services: intervals, failures, overruns, clean stop, leadership, jobs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import pytest
from sqlalchemy import select, text
from structlog.testing import capture_logs

from forgehall.core.metrics import Metrics
from forgehall.core.services import BackgroundService, PeriodicJob, ServiceRunner
from forgehall.db.engine import Database
from forgehall.db.jobs import JobExecution
from forgehall.db.url import resolve_database
from forgehall.settings import Settings


async def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


class Counting(BackgroundService):
    name: ClassVar[str] = "counting"
    default_interval: ClassVar[float] = 0.05

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.runs = 0
        self.fail_on: set[int] = set()
        self.sleep = 0.0

    async def run_once(self) -> None:
        self.runs += 1
        if self.runs in self.fail_on:
            raise ValueError(f"run {self.runs} failed")
        if self.sleep:
            await asyncio.sleep(self.sleep)


class Leading(Counting):
    name: ClassVar[str] = "leading"
    leader_only: ClassVar[bool] = True


async def test_runs_at_its_interval_and_can_be_woken(db: Database) -> None:
    service = Counting(db, interval=60)
    runner = ServiceRunner([service])
    runner.start()
    try:
        await wait_for(lambda: service.runs == 1)
        await asyncio.sleep(0.1)
        assert service.runs == 1, "a 60 s interval must not run again at once"
        service.wake()
        await wait_for(lambda: service.runs == 2)
    finally:
        await runner.stop()


async def test_a_failing_iteration_is_logged_and_the_loop_goes_on(db: Database) -> None:
    service = Counting(db, interval=0.01)
    service.fail_on = {2}
    metrics = Metrics()
    runner = ServiceRunner([service], metrics=metrics)
    with capture_logs() as logs:
        runner.start()
        try:
            await wait_for(lambda: service.runs >= 4)
        finally:
            await runner.stop()
    failures = [e for e in logs if e["event"] == "service.failed"]
    assert len(failures) == 1
    assert failures[0]["service"] == "counting"
    assert "run 2 failed" in failures[0]["error"]
    value = metrics.registry.get_sample_value(
        "forgehall_background_service_runs_total", {"service": "counting", "outcome": "error"}
    )
    assert value == 1


async def test_overruns_are_logged_and_counted(db: Database) -> None:
    service = Counting(db, interval=0.01)
    service.sleep = 0.05
    metrics = Metrics()
    runner = ServiceRunner([service], metrics=metrics)
    with capture_logs() as logs:
        runner.start()
        try:
            await wait_for(lambda: service.runs >= 2)
        finally:
            await runner.stop()
    assert any(e["event"] == "service.overrun" for e in logs)
    overruns = metrics.registry.get_sample_value(
        "forgehall_background_service_overruns_total", {"service": "counting"}
    )
    assert overruns is not None
    assert overruns >= 1


async def test_stop_lets_a_short_iteration_finish(db: Database) -> None:
    service = Counting(db, interval=60)
    service.sleep = 0.2
    finished = asyncio.Event()
    original = service.run_once

    async def run_once() -> None:
        await original()
        finished.set()

    service.run_once = run_once  # type: ignore[method-assign]
    runner = ServiceRunner([service], stop_grace=5)
    runner.start()
    await wait_for(lambda: service.runs == 1)
    await runner.stop()
    assert finished.is_set(), "the in-flight iteration must complete within the grace"


async def test_stop_cancels_an_iteration_that_outlives_the_grace(db: Database) -> None:
    service = Counting(db, interval=60)
    service.sleep = 30
    runner = ServiceRunner([service], stop_grace=0.1)
    runner.start()
    await wait_for(lambda: service.runs == 1)
    with capture_logs() as logs:
        await asyncio.wait_for(runner.stop(), 5)
    stopped = [e for e in logs if e["event"] == "service.stopped"]
    assert stopped
    assert stopped[0]["cancelled"] is True


@pytest.fixture
async def second_db(settings: Settings) -> AsyncIterator[Database]:
    """Another replica's handle on the same database."""
    other = Database(resolve_database(settings))
    yield other
    await other.dispose()


async def test_leader_only_service_runs_on_exactly_one_replica(
    db: Database, second_db: Database, backend: str
) -> None:
    first, second = Leading(db, interval=0.02), Leading(second_db, interval=0.02)
    runner_a, runner_b = ServiceRunner([first]), ServiceRunner([second])
    runner_a.start()
    await wait_for(lambda: first.runs >= 1)
    if backend == "sqlite":
        await runner_a.stop()
        return  # one process on SQLite: it always leads
    runner_b.start()
    try:
        await asyncio.sleep(0.3)
        assert second.runs == 0, "the second replica must not run while the first leads"
        assert runner_a.leading == {"leading"}
        # The leader's lock connection dies (e.g. a network blip): the other takes over.
        async with second_db.engine.connect() as conn:
            await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND pid <> pg_backend_pid() "
                    "AND database = (SELECT oid FROM pg_database "
                    "WHERE datname = current_database())"
                )
            )
            await conn.commit()
        await wait_for(lambda: second.runs >= 1, timeout=10)
        assert runner_b.leading == {"leading"}
    finally:
        await runner_b.stop()
        await runner_a.stop()


class Rollup(PeriodicJob):
    name: ClassVar[str] = "test-rollup"
    default_interval: ClassVar[float] = 60
    period: ClassVar[timedelta] = timedelta(hours=1)
    executed: ClassVar[list[datetime]] = []
    fail: ClassVar[bool] = False

    async def execute(self, plan_time: datetime) -> None:
        Rollup.executed.append(plan_time)
        if Rollup.fail:
            raise RuntimeError("rollup broke")


async def test_a_planned_execution_runs_once_across_replicas(
    db: Database, second_db: Database
) -> None:
    Rollup.executed, Rollup.fail = [], False
    jobs = [Rollup(db, runner_id="a"), Rollup(second_db, runner_id="b"), Rollup(db, runner_id="c")]
    await asyncio.gather(*(job.run_once() for job in jobs))
    assert len(Rollup.executed) == 1
    plan = Rollup.executed[0]
    assert plan.minute == 0
    assert plan.second == 0
    assert plan <= datetime.now(UTC)
    async with db.session() as session:
        rows = (await session.execute(select(JobExecution))).scalars().all()
    assert [(r.job, r.status, r.error) for r in rows] == [("test-rollup", "succeeded", None)]
    assert rows[0].plan_time == plan


async def test_a_failed_execution_is_recorded(db: Database) -> None:
    Rollup.executed, Rollup.fail = [], True
    with pytest.raises(RuntimeError):
        await Rollup(db, runner_id="a").run_once()
    async with db.session() as session:
        row = (await session.execute(select(JobExecution))).scalar_one()
    assert row.status == "failed"
    assert row.error == "RuntimeError: rollup broke"
    assert row.finished_at is not None


@pytest.mark.parametrize("backend", ["sqlite"])  # PostgreSQL's autovacuum does this itself
async def test_sqlite_statistics_service_feeds_the_planner(db: Database, backend: str) -> None:
    from forgehall.ops.service import SqliteStatistics

    async with db.session() as session:
        session.add_all(
            [
                JobExecution(job="j", scope=str(i), plan_time=datetime.now(UTC), runner_id="t")
                for i in range(20)
            ]
        )
        await session.commit()
    async with db.read_session() as session:
        before = await session.scalar(
            text("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")
        )
    assert before == 0, "a fresh database has no planner statistics"
    await SqliteStatistics(db).run_once()
    async with db.read_session() as session:
        tables = set((await session.execute(text("SELECT tbl FROM sqlite_stat1"))).scalars())
    assert "job_executions" in tables
