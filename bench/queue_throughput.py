"""Task-queue throughput on PostgreSQL: our service layer next to pgqueuer, same server.

What it builds: a scratch database ``fh_bench_<pid>`` migrated to head, holding one
workspace with its default statuses, ``--jobs`` issues (one per job), ``--agents`` agents
(provider ``claude``, a concurrency limit above the job count, so the limit never binds:
pgqueuer's entrypoint has none) and one runtime per worker. pgqueuer's tables are
installed in the same scratch database (``Queries.install``) and uninstalled at the end;
the database is dropped at the end, failure included.

What it measures, per round and per queue, in jobs/s from the first claim to the last
completion (``--jobs`` jobs, all enqueued before the clock starts, each doing nothing):

- ``forgehall``: ``--workers`` asyncio workers in this process, each acting as one
  runtime, each looping: one transaction ``agents.queue.claim(session, runtime,
  ["claude"], --batch)`` + commit; then one transaction ``queue.start_many`` + commit
  and one transaction ``queue.complete_many`` + commit over the claimed batch — the
  three state changes a daemon reports, each committed on its own (without the rest of
  what ``agents.dispatch`` adds to a claim: task tokens, the issue brief, events).
  Batching the start and completion reports is the counterpart of pgqueuer buffering
  its acknowledgements; ``queue.start`` / ``queue.complete`` (what the daemon protocol
  calls per task) are the same functions with a batch of one. A worker stops when a
  claim returns nothing. Sessions come from
  ``Database.session()`` (SQLAlchemy + asyncpg pool, as the server uses it). Tasks are
  enqueued beforehand with ``queue.enqueue`` (task *i* on issue *i*, agent *i* mod
  ``--agents``), a few hundred per transaction; that is not timed.
- ``pgqueuer``: ``--workers`` ``QueueManager`` instances in this process, each on its own
  asyncpg connection (``AsyncpgDriver``), one entrypoint whose handler returns at once,
  ``run(batch_size=--batch, mode=drain)``. Jobs are enqueued beforehand with
  ``Queries.enqueue`` (lists, 1,000 per statement). pgqueuer marks a job done by moving
  it to its log table; it buffers those writes (flushed per ``--batch`` jobs or every
  0.1 s), which is its normal way of working and part of what is measured. The clock
  starts at the first ``dequeue`` call and stops when the log writes have covered every
  job; then the managers are shut down.

Both queues see the same server, job count, concurrency and batch size, and both tables
are ``ANALYZE``d after enqueueing. ``--rounds`` rounds alternate the order (forgehall
first in odd rounds, pgqueuer first in even ones), so drift in machine load hits both;
each round starts from an empty queue (completed tasks stay in ``tasks``, as they do in
production; pgqueuer's log table likewise keeps growing). The summary takes the median
jobs/s of the rounds for each queue and prints the ratio (ours / pgqueuer) on a line
containing ``ratio``. Target: ratio >= 1.0 (``met`` / ``MISSED``). ``--explain`` prints
``EXPLAIN (ANALYZE, BUFFERS)`` of the claim's statements taken on a full queue.

Logging is filtered to warnings (as in ``board_queries.py``): the queue's ``task.*``
info lines are not part of the measurement. This is a benchmark, not a test: it exits 0
whether or not the target is met, and non-zero only when something crashed or
PostgreSQL is unreachable.

PostgreSQL: the admin URL comes from ``FORGEHALL_BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``).

Run it from the repository root::

    uv run python bench/queue_throughput.py                       # 5,000 jobs, 4 workers, 3 rounds
    uv run python bench/queue_throughput.py --jobs 2000 --workers 8 --batch 20 --explain

Options: ``--jobs`` (5000), ``--workers`` (4), ``--batch`` (10), ``--agents`` (8),
``--rounds`` (3), ``--explain``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from importlib.metadata import version
from typing import Any

import asyncpg
import sqlalchemy
import structlog
from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager
from pgqueuer.domain.types import QueueExecutionMode
from sqlalchemy import event, insert, select, text
from sqlalchemy.engine import make_url

from forgehall.agents import queue
from forgehall.agents.models import Agent, Runtime
from forgehall.db.engine import Database
from forgehall.db.migrate import upgrade_to_head
from forgehall.db.url import resolve_database
from forgehall.identity.models import User
from forgehall.issues.models import Issue, Status
from forgehall.issues.service import create_default_statuses
from forgehall.settings import Settings
from forgehall.workspaces.models import Member, Workspace

TARGET_RATIO = 1.0
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PROVIDER = "claude"
ENTRYPOINT = "noop"
ENQUEUE_BATCH = 500
ROUND_TIMEOUT_S = 900.0
TABLES = Issue.metadata.tables


def asyncpg_dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url)
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql", query={}).render_as_string(hide_password=False)


@dataclass
class Clock:
    """First claim to last completion, shared by the workers of one run."""

    started: float | None = None
    finished: float | None = None
    done: int = 0
    phases: dict[str, list[float]] = field(default_factory=dict)

    def phase(self, name: str, since: float) -> float:
        """Record the milliseconds since ``since`` under ``name``; return the time now."""
        now = time.perf_counter()
        self.phases.setdefault(name, []).append((now - since) * 1000)
        return now

    def start(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        assert self.started is not None
        assert self.finished is not None
        return self.finished - self.started


@dataclass
class Result:
    queue: str
    jobs: int
    seconds: float
    enqueue_seconds: float
    phases: dict[str, list[float]] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


@dataclass
class Setup:
    workspace_id: str
    issue_ids: list[str]
    agent_ids: list[str]
    runtimes: list[Runtime]


# --- the data set ------------------------------------------------------------------------


async def build(db: Database, jobs: int, agents: int, workers: int) -> Setup:
    async with db.session() as session:
        owner = User(email="owner@bench.example", name="owner")
        session.add(owner)
        await session.flush()
        workspace = Workspace(slug="bench", name="Bench", key_prefix="ENG", created_by=owner.id)
        session.add(workspace)
        await session.flush()
        session.add(Member(workspace_id=workspace.id, user_id=owner.id, role="OWNER"))
        await create_default_statuses(session, workspace.id)
        agent_rows = [
            Agent(
                workspace_id=workspace.id,
                name=f"agent-{i}",
                provider=PROVIDER,
                max_concurrent_tasks=jobs + 1,
            )
            for i in range(agents)
        ]
        runtimes = [
            Runtime(
                workspace_id=workspace.id,
                daemon_id=f"daemon-{i}",
                machine=f"host-{i}",
                providers='{"claude": "2.0.1"}',
                capacity=jobs + 1,
            )
            for i in range(workers)
        ]
        session.add_all([*agent_rows, *runtimes])
        await session.commit()
        todo = await session.scalar(
            select(Status.id).where(Status.workspace_id == workspace.id, Status.category == "todo")
        )
        assert todo is not None
    issue_ids: list[str] = []
    rows: list[dict[str, Any]] = []
    for number in range(1, jobs + 1):
        issue_id = f"{number:032x}"
        issue = {
            "id": issue_id,
            "workspace_id": workspace.id,
            "number": number,
            "title": f"Bench issue {number}",
            "description": "",
            "status_id": todo,
            "priority": "none",
            "position": float(number),
        }
        rows.append(issue)
        issue_ids.append(issue_id)
    async with db.engine.begin() as conn:
        for start in range(0, len(rows), 2000):
            await conn.execute(insert(TABLES["issues"]), rows[start : start + 2000])
        await conn.execute(
            insert(TABLES["issue_counters"]).values(workspace_id=workspace.id, last_number=jobs)
        )
    return Setup(workspace.id, issue_ids, [a.id for a in agent_rows], runtimes)


async def analyze(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ANALYZE tasks; ANALYZE agents; ANALYZE pgqueuer")
    finally:
        await conn.close()


# --- forgehall ---------------------------------------------------------------------------


async def enqueue_ours(db: Database, setup: Setup) -> float:
    t0 = time.perf_counter()
    n_agents = len(setup.agent_ids)
    for start in range(0, len(setup.issue_ids), ENQUEUE_BATCH):
        async with db.session() as session:
            for i in range(start, min(start + ENQUEUE_BATCH, len(setup.issue_ids))):
                done = await queue.enqueue(
                    session,
                    workspace_id=setup.workspace_id,
                    issue_id=setup.issue_ids[i],
                    agent_id=setup.agent_ids[i % n_agents],
                    trigger="assigned",
                )
                assert done.outcome == "queued", done.outcome
            await session.commit()
    return time.perf_counter() - t0


async def ours_worker(db: Database, runtime: Runtime, batch: int, clock: Clock) -> None:
    while True:
        clock.start()
        t0 = time.perf_counter()
        async with db.session() as session:
            claimed = await queue.claim(session, runtime, [PROVIDER], batch)
            leases = [queue.Lease(t.id, t.lease_token or "") for t in claimed]
            await session.commit()
        if not leases:
            return
        t0 = clock.phase("claim", t0)
        async with db.session() as session:
            started, refused = await queue.start_many(session, leases)
            await session.commit()
        if refused or len(started) != len(leases):
            raise RuntimeError(f"forgehall: start refused {refused}")
        t0 = clock.phase("start", t0)
        async with db.session() as session:
            done, refused = await queue.complete_many(session, leases)
            await session.commit()
        if refused or len(done) != len(leases):
            raise RuntimeError(f"forgehall: complete refused {refused}")
        t0 = clock.phase("complete", t0)
        clock.done += len(leases)
        clock.finished = t0


async def run_ours(db: Database, dsn: str, setup: Setup, args: argparse.Namespace) -> Result:
    enqueue_seconds = await enqueue_ours(db, setup)
    await analyze(dsn)
    clock = Clock()
    await asyncio.wait_for(
        asyncio.gather(*(ours_worker(db, rt, args.batch, clock) for rt in setup.runtimes)),
        ROUND_TIMEOUT_S,
    )
    async with db.read_session() as session:
        left = await session.scalar(
            text("SELECT count(*) FROM tasks WHERE status NOT IN ('completed')")
        )
    if clock.done != args.jobs or left:
        raise RuntimeError(f"forgehall: {clock.done} of {args.jobs} completed, {left} left")
    return Result("forgehall", clock.done, clock.seconds, enqueue_seconds, clock.phases)


# --- pgqueuer ----------------------------------------------------------------------------


async def enqueue_pgqueuer(dsn: str, jobs: int) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        t0 = time.perf_counter()
        for start in range(0, jobs, 1000):
            n = min(1000, jobs - start)
            await queries.enqueue([ENTRYPOINT] * n, [None] * n, [0] * n)
        return time.perf_counter() - t0
    finally:
        await conn.close()


def pgqueuer_manager(
    conn: asyncpg.Connection, jobs: int, clock: Clock, stop: asyncio.Event
) -> QueueManager:
    queries = Queries(AsyncpgDriver(conn))
    dequeue = queries.dequeue
    log_jobs = queries.log_jobs

    async def timed_dequeue(*a: Any, **kw: Any) -> list[Job]:
        clock.start()
        return await dequeue(*a, **kw)

    async def counted_log_jobs(job_status: Any) -> None:
        await log_jobs(job_status)
        clock.done += sum(1 for _, status, _ in job_status if status == "successful")
        if clock.done >= jobs and clock.finished is None:
            clock.finished = time.perf_counter()
            stop.set()

    queries.dequeue = timed_dequeue  # type: ignore[method-assign]
    queries.log_jobs = counted_log_jobs  # type: ignore[method-assign]
    manager = QueueManager(queries)

    @manager.entrypoint(ENTRYPOINT)
    async def noop(job: Job) -> None:
        return None

    return manager


async def run_pgqueuer(dsn: str, args: argparse.Namespace) -> Result:
    enqueue_seconds = await enqueue_pgqueuer(dsn, args.jobs)
    await analyze(dsn)
    clock = Clock()
    stop = asyncio.Event()
    conns = [await asyncpg.connect(dsn) for _ in range(args.workers)]
    try:
        managers = [pgqueuer_manager(c, args.jobs, clock, stop) for c in conns]

        async def stopper() -> None:
            await stop.wait()
            for manager in managers:
                manager.shutdown.set()

        watcher = asyncio.create_task(stopper())
        runs = [
            manager.run(
                batch_size=args.batch,
                mode=QueueExecutionMode.drain,
                log_aggregation_interval=timedelta(0),
            )
            for manager in managers
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*runs), ROUND_TIMEOUT_S)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    finally:
        for conn in conns:
            await conn.close()
    if clock.done != args.jobs or clock.finished is None:
        raise RuntimeError(f"pgqueuer: {clock.done} of {args.jobs} jobs logged as successful")
    return Result("pgqueuer", clock.done, clock.seconds, enqueue_seconds)


# --- explain -----------------------------------------------------------------------------


async def explain_claim(db: Database, dsn: str, setup: Setup, batch: int) -> None:
    """EXPLAIN ANALYZE every statement one claim sends, on a full queue (rolled back)."""
    await enqueue_ours(db, setup)
    await analyze(dsn)
    captured: list[tuple[str, Any]] = []

    def listener(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    event.listen(db.engine.sync_engine, "before_cursor_execute", listener)
    try:
        async with db.session() as session:
            await queue.claim(session, setup.runtimes[0], [PROVIDER], batch)
            await session.rollback()
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", listener)
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            for statement, parameters in captured:
                if not statement.lstrip().upper().startswith(("SELECT", "UPDATE")):
                    continue
                print(f"\n--- {' '.join(statement.split())[:400]}")
                rows = await conn.fetch(
                    "EXPLAIN (ANALYZE, BUFFERS) " + statement, *tuple(parameters)
                )
                for row in rows:
                    print("  " + row[0])
            raise asyncpg.exceptions.RaiseError("roll back")  # undo the explained UPDATE
    except asyncpg.exceptions.RaiseError:
        pass
    finally:
        await conn.close()
    async with db.session() as session:  # empty the queue again for what follows
        await session.execute(text("DELETE FROM tasks WHERE status = 'queued'"))
        await session.commit()


# --- main --------------------------------------------------------------------------------


def report(results: Sequence[Result], args: argparse.Namespace) -> None:
    print(f"\n{'round':>5}  {'queue':<10} {'jobs':>6} {'seconds':>8} {'jobs/s':>9}  enqueue s")
    for i, result in enumerate(results):
        print(
            f"{i // 2 + 1:>5}  {result.queue:<10} {result.jobs:>6} {result.seconds:>8.2f} "
            f"{result.rate:>9,.0f}  {result.enqueue_seconds:8.2f}"
        )
    phases: dict[str, list[float]] = {}
    for result in results:
        for name, samples in result.phases.items():
            phases.setdefault(name, []).extend(samples)
    print(
        "\nforgehall, one transaction each (commit included), all rounds: "
        + ", ".join(
            f"{name} p50 {statistics.median(v):.1f} ms / mean {statistics.mean(v):.1f} ms "
            f"(n={len(v)})"
            for name, v in phases.items()
        )
    )
    ours = statistics.median(r.rate for r in results if r.queue == "forgehall")
    theirs = statistics.median(r.rate for r in results if r.queue == "pgqueuer")
    print(f"\nforgehall: {ours:,.0f} jobs/s (median of {args.rounds} rounds)")
    print(f"pgqueuer:  {theirs:,.0f} jobs/s (median of {args.rounds} rounds)")
    ratio = ours / theirs
    verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
    print(
        f"ratio forgehall / pgqueuer = {ours:,.0f} / {theirs:,.0f} jobs/s = {ratio:.2f}x  "
        f"(target >= {TARGET_RATIO:.1f}: {verdict})"
    )


async def measure(db: Database, dsn: str, args: argparse.Namespace) -> list[Result]:
    t0 = time.perf_counter()
    await upgrade_to_head(db)
    setup = await build(db, args.jobs, args.agents, args.workers)
    conn = await asyncpg.connect(dsn)
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()
    print(f"migrated, built and pgqueuer installed in {time.perf_counter() - t0:.1f} s", flush=True)
    if args.explain:
        await explain_claim(db, dsn, setup, args.batch)
    runners: dict[str, Callable[[], Awaitable[Result]]] = {
        "forgehall": lambda: run_ours(db, dsn, setup, args),
        "pgqueuer": lambda: run_pgqueuer(dsn, args),
    }
    results: list[Result] = []
    for round_no in range(1, args.rounds + 1):
        order = ["forgehall", "pgqueuer"] if round_no % 2 else ["pgqueuer", "forgehall"]
        by_name: dict[str, Result] = {}
        for name in order:
            by_name[name] = await runners[name]()
            print(
                f"  round {round_no}: {name:<9} {by_name[name].rate:>8,.0f} jobs/s "
                f"({by_name[name].seconds:.2f} s)",
                flush=True,
            )
        results += [by_name["forgehall"], by_name["pgqueuer"]]
    return results


async def run(args: argparse.Namespace) -> int:
    admin_url = os.environ.get("FORGEHALL_BENCH_DATABASE_URL", DEFAULT_ADMIN_URL)
    name = f"fh_bench_{os.getpid()}"
    admin = await asyncio.wait_for(asyncpg.connect(asyncpg_dsn(admin_url)), 10)
    try:
        version = await admin.fetchval("SHOW server_version")
        commit_mode = await admin.fetchval("SHOW synchronous_commit")
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    dsn = asyncpg_dsn(url)
    print(
        f"=== PostgreSQL {version} (synchronous_commit={commit_mode}), scratch database {name}",
        flush=True,
    )
    pool = max(args.workers + 2, 5)
    db = Database(
        resolve_database(
            Settings(database_url=url, database_max_conns=pool, database_min_conns=pool)
        )
    )
    try:
        results = await measure(db, dsn, args)
    finally:
        await db.dispose()
        with contextlib.suppress(Exception):
            conn = await asyncpg.connect(dsn)
            try:
                await Queries(AsyncpgDriver(conn)).uninstall()
            finally:
                await conn.close()
        admin = await asyncpg.connect(asyncpg_dsn(admin_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        print(f"dropped scratch database {name} (pgqueuer uninstalled first)")
    report(results, args)
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per queue per round")
    parser.add_argument("--workers", type=int, default=4, help="concurrent workers per queue")
    parser.add_argument("--batch", type=int, default=10, help="jobs per claim / dequeue")
    parser.add_argument("--agents", type=int, default=8, help="agents the tasks are spread over")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating the order")
    parser.add_argument("--explain", action="store_true", help="print the claim's query plans")
    args = parser.parse_args(argv)
    if min(args.jobs, args.workers, args.batch, args.agents, args.rounds) < 1:
        parser.error("--jobs, --workers, --batch, --agents and --rounds must be >= 1")
    return args


async def main(args: argparse.Namespace) -> int:
    print(
        f"queue_throughput: {args.jobs:,} jobs, {args.workers} workers, batch {args.batch}, "
        f"{args.agents} agents, {args.rounds} rounds"
    )
    print(
        f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
        f"asyncpg {asyncpg.__version__}, pgqueuer {version('pgqueuer')}, "
        f"{os.cpu_count()} CPUs, {platform.platform()}"
    )
    return await run(args)


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("pgqueuer").setLevel(logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main(parse_args())))
    sys.exit(130)
