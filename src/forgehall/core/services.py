"""Background services: one base class and one runner.

A service has a name, an interval, an ``enabled`` switch (both from settings), and runs
either on every replica or only on the leader. The runner starts services with the
server and stops them cleanly: a stop request lets the current iteration finish (up to
a grace period) and then cancels it.

Leadership: a leader-only service runs on the replica that holds the PostgreSQL
advisory lock named after the service, on a dedicated connection. If that connection
dies the lock is gone, the service stops iterating and competes again. On SQLite there
is one process, and it leads.

Invariants: an iteration that raises is logged once with the service name and the loop
goes on; an iteration longer than the interval is logged as an overrun and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from forgehall.core.events import EventBus
from forgehall.core.metrics import Metrics
from forgehall.db.dialect import try_advisory_lock
from forgehall.db.engine import Database
from forgehall.db.jobs import claim_job_execution, finish_job_execution

log = structlog.get_logger("forgehall.services")
LEADER_RETRY_SECONDS = 5.0


class BackgroundService(ABC):
    """Subclass, set ``name`` and ``default_interval``, implement :meth:`run_once`."""

    name: ClassVar[str]
    default_interval: ClassVar[float]
    leader_only: ClassVar[bool] = False

    def __init__(
        self,
        db: Database,
        *,
        interval: float | None = None,
        runner_id: str = "local",
        bus: EventBus | None = None,
    ) -> None:
        self.db = db
        self.bus = bus  # for services whose changes others must hear of
        self.interval = interval if interval is not None else self.default_interval
        self.runner_id = runner_id
        self._wake = asyncio.Event()

    @abstractmethod
    async def run_once(self) -> None:
        """Do one iteration of work."""

    def wake(self) -> None:
        """Run the next iteration now instead of at the end of the interval."""
        self._wake.set()


class PeriodicJob(BackgroundService):
    """A job run once per period across all replicas.

    Every replica ticks; the first to insert the ``(job, scope, plan_time)`` row of the
    current period runs :meth:`execute`, and the row records the outcome.
    """

    period: ClassVar[timedelta]
    scope: ClassVar[str] = "instance"

    def plan_time(self, now: datetime) -> datetime:
        seconds = int(self.period.total_seconds())
        epoch = int(now.timestamp())
        return datetime.fromtimestamp(epoch - epoch % seconds, UTC)

    async def run_once(self) -> None:
        plan = self.plan_time(datetime.now(UTC))
        async with self.db.session() as session:
            execution = await claim_job_execution(
                session,
                job=self.name,
                scope=self.scope,
                plan_time=plan,
                runner_id=self.runner_id,
            )
        if execution is None:
            return
        error: str | None = None
        try:
            await self.execute(plan)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            async with self.db.session() as session:
                await finish_job_execution(session, execution, error)

    @abstractmethod
    async def execute(self, plan_time: datetime) -> None:
        """The job's work for one planned execution."""


class ServiceRunner:
    """Starts and stops a set of services."""

    def __init__(
        self,
        services: Sequence[BackgroundService],
        *,
        metrics: Metrics | None = None,
        stop_grace: float = 10.0,
    ) -> None:
        self.services = list(services)
        self.metrics = metrics
        self.stop_grace = stop_grace
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.leading: set[str] = set()

    def start(self) -> None:
        for service in self.services:
            self._tasks.append(
                asyncio.create_task(self._supervise(service), name=f"service:{service.name}")
            )
            log.info(
                "service.started",
                service=service.name,
                interval=service.interval,
                leader_only=service.leader_only,
            )

    async def stop(self) -> None:
        self._stopping.set()
        for service in self.services:
            service.wake()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=self.stop_grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for service in self.services:
            log.info(
                "service.stopped",
                service=service.name,
                cancelled=any(t.get_name() == f"service:{service.name}" for t in pending),
            )
        self._tasks.clear()

    async def _supervise(self, service: BackgroundService) -> None:
        if not service.leader_only or service.db.is_sqlite:
            await self._iterate(service, None)
            return
        while not self._stopping.is_set():
            try:
                async with service.db.engine.connect() as conn:
                    if await try_advisory_lock(conn, f"service:{service.name}"):
                        self.leading.add(service.name)
                        log.info("service.leadership_acquired", service=service.name)
                        await self._iterate(service, conn)
            except Exception as exc:
                log.warning(
                    "service.leadership_lost",
                    service=service.name,
                    error=f"{type(exc).__name__}: {exc}",
                )
            finally:
                self.leading.discard(service.name)
            # Followers retry often so a lost leader is replaced quickly, whatever the
            # service's own interval.
            await self._sleep(service, min(service.interval, LEADER_RETRY_SECONDS))

    async def _iterate(self, service: BackgroundService, lease: AsyncConnection | None) -> None:
        while not self._stopping.is_set():
            if lease is not None:
                # The lock lives on this connection; if it is gone, so is leadership.
                await asyncio.wait_for(lease.execute(text("SELECT 1")), 5)
                await lease.commit()
            started = time.monotonic()
            outcome = "ok"
            try:
                await service.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                outcome = "error"
                log.exception(
                    "service.failed", service=service.name, error=f"{type(exc).__name__}: {exc}"
                )
            elapsed = time.monotonic() - started
            if self.metrics is not None:
                self.metrics.service_runs.labels(service=service.name, outcome=outcome).inc()
            if elapsed > service.interval:
                log.warning(
                    "service.overrun",
                    service=service.name,
                    seconds=round(elapsed, 3),
                    interval=service.interval,
                )
                if self.metrics is not None:
                    self.metrics.service_overruns.labels(service=service.name).inc()
            await self._sleep(service, max(service.interval - elapsed, 0.0))

    async def _sleep(self, service: BackgroundService, seconds: float) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        wake = asyncio.ensure_future(service._wake.wait())
        try:
            await asyncio.wait({stop, wake}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (stop, wake):
                fut.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fut
            service._wake.clear()


def select_services(
    available: Iterable[type[BackgroundService]],
    db: Database,
    *,
    disabled: Iterable[str] = (),
    intervals: dict[str, float] | None = None,
    runner_id: str = "local",
    bus: EventBus | None = None,
) -> list[BackgroundService]:
    """Instantiate the enabled services with their configured intervals."""
    off = set(disabled)
    chosen = []
    for cls in available:
        if cls.name in off:
            log.info("service.disabled", service=cls.name)
            continue
        chosen.append(
            cls(db, interval=(intervals or {}).get(cls.name), runner_id=runner_id, bus=bus)
        )
    return chosen
