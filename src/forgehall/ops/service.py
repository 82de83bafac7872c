"""Readiness: is this replica able to serve? (database reachable, schema current).

Checks never raise; each reports ``ok`` or a short reason. The database check has a
short timeout so a probe never hangs on a dead server.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import ClassVar

from sqlalchemy import delete

from forgehall.core.events import prune_events
from forgehall.core.logging import redactor
from forgehall.core.services import BackgroundService
from forgehall.db.engine import Database
from forgehall.db.jobs import JobExecution
from forgehall.db.migrate import SchemaAheadError, migration_status
from forgehall.ops.schemas import Readiness


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "error: timed out"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return str(redactor.scrub(f"error: {type(exc).__name__}: {text}"[:200]))


async def check_readiness(db: Database) -> Readiness:
    checks: dict[str, str] = {}
    try:
        await db.ping()
        checks["db"] = "ok"
    except Exception as exc:
        checks["db"] = _reason(exc)
    if checks["db"] != "ok":
        checks["migrations"] = "unknown"
    else:
        try:
            status = await asyncio.wait_for(migration_status(db), 5)
            if status.is_current:
                checks["migrations"] = "ok"
            else:
                checks["migrations"] = f"pending: {len(status.pending)} migration(s)"
        except SchemaAheadError:
            checks["migrations"] = "error: database schema is newer than this release"
        except Exception as exc:
            checks["migrations"] = _reason(exc)
    ok = all(value == "ok" for value in checks.values())
    return Readiness(status="ok" if ok else "unavailable", checks=checks)


class JobHistoryRetention(BackgroundService):
    """Deletes records of periodic job executions older than the retention period."""

    name: ClassVar[str] = "job-history-retention"
    default_interval: ClassVar[float] = 3600.0
    leader_only: ClassVar[bool] = True
    retention: ClassVar[timedelta] = timedelta(days=30)

    async def run_once(self) -> None:
        cutoff = datetime.now(UTC) - self.retention
        async with self.db.session() as session:
            await session.execute(delete(JobExecution).where(JobExecution.plan_time < cutoff))
            await session.commit()


class EventRetention(BackgroundService):
    """Deletes domain events older than an hour (clients resuming from older ids are
    told to resync)."""

    name: ClassVar[str] = "event-retention"
    default_interval: ClassVar[float] = 300.0
    leader_only: ClassVar[bool] = True

    async def run_once(self) -> None:
        await prune_events(self.db)


class SqliteStatistics(BackgroundService):
    """Keeps SQLite's query-planner statistics current (PostgreSQL's autovacuum does this
    itself). Without them SQLite may walk the wrong index for a filtered page.

    ``analysis_limit`` bounds the work, so a run takes milliseconds even on a large
    database; the first run happens at start-up.
    """

    name: ClassVar[str] = "sqlite-statistics"
    default_interval: ClassVar[float] = 3600.0
    leader_only: ClassVar[bool] = True

    async def run_once(self) -> None:
        if not self.db.is_sqlite:
            return
        await refresh_sqlite_statistics(self.db)


async def refresh_sqlite_statistics(db: Database) -> None:
    async with db.engine.connect() as conn:
        await conn.exec_driver_sql("PRAGMA analysis_limit=1000")
        await conn.exec_driver_sql("ANALYZE")
        await conn.commit()
