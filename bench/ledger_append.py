"""Ledger append throughput on PostgreSQL, through the service layer, with checkpoints.

What it builds: a scratch database ``fh_bench_<pid>`` migrated to head, holding one user
and one workspace; a credential vault with a fresh key (the signing key is stored
encrypted). The database is dropped at the end, failure included.

What it measures, once per value of ``--per-append`` (``1,8`` by default), each on a
fresh workspace: ``--writers`` asyncio writers in this process (8 by default), each
looping over ``ledger.service.append_entries(session, access, settings, EntriesIn(...))``
with that many entries per call for ``--seconds``. One entry per call is the worst case
(a commit for every entry, were the calls not grouped); eight is what ``gates run
--submit`` sends for a gates file of eight gates (one request per run). Each call runs in
its own ``Database.session()`` (SQLAlchemy + asyncpg pool, as the server uses it) and
returns once its entries are committed, before the writer's next call; calls that
overlap share a commit (the service's group commit, ``ledger.grouping``). The
entries are realistic gate results (about 1.3 KB of canonical JSON each, excerpts
included), built and validated before the clock starts — request parsing is the route's
work, not the service's. Meanwhile the ``ledger-sequencer`` service runs under a
``ServiceRunner`` exactly as in a server (leader election on its advisory lock, its
default interval of 0.5 s), giving positions and signing checkpoints.

It prints:

- appends/s and entries/s over the writing window (first call to last commit), with the
  per-call latency p50 / p99;
- checkpoint lag: for each checkpoint, the time from the receipt of the oldest entry it
  newly covers to the checkpoint's signing (p50 / p99 / max), and how long the sequencer
  took after the last append to cover everything (the drain);
- the number of checkpoints and the mean batch.

Target: >= 2,000 entries/s sustained with 8 writers, and checkpoints keeping up (the lag
stays around the sequencer interval, the drain is short); a verdict is printed for each
``--per-append``. On a small machine a single entry per call is bound by the Python
process's CPU (about a millisecond per transaction through SQLAlchemy and asyncpg), not
by the database or the sequencer: the figures say which. Logging is filtered to
warnings. This is a benchmark, not a test: it exits 0 whether or not the target is met,
non-zero only when something crashed or PostgreSQL is unreachable.

PostgreSQL: the admin URL comes from ``FORGEHALL_BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``).

Run it from the repository root::

    uv run python bench/ledger_append.py          # 8 writers; 1, then 8 entries per append
    uv run python bench/ledger_append.py --writers 16 --per-append 1,5 --seconds 10

Options: ``--writers`` (8), ``--per-append`` (``1,8``: comma-separated), ``--seconds``
per configuration (20), ``--warmup`` seconds not measured (2).
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
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
import sqlalchemy
import structlog
from cryptography.fernet import Fernet
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from forgehall.core.security import Vault
from forgehall.core.services import ServiceRunner
from forgehall.db.engine import Database
from forgehall.db.migrate import upgrade_to_head
from forgehall.db.types import install_vault
from forgehall.db.url import resolve_database
from forgehall.identity.auth import Principal
from forgehall.identity.models import User
from forgehall.ledger import service
from forgehall.ledger.models import LedgerCheckpoint, LedgerEntry, LedgerPending
from forgehall.ledger.schemas import EntriesIn
from forgehall.settings import Settings
from forgehall.workspaces.access import Access, Role
from forgehall.workspaces.models import Member, Workspace

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET = 2000.0


def asyncpg_dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url)
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql", query={}).render_as_string(hide_password=False)


def gate_entry(writer: int, number: int) -> dict[str, object]:
    """A gate result shaped like real ones (test output excerpts included)."""
    return {
        "gate_id": f"unit-{number % 7}",
        "gate_name": "Unit tests",
        "result": "PASS" if number % 11 else "FAIL",
        "reason": None if number % 11 else "exit 1",
        "scope": {
            "repository": "https://git.example.com/team/app.git",
            "commit": f"{writer:08x}{number:032x}",
            "branch": "main",
            "dirty": False,
            "issue_key": f"ENG-{number % 500}",
            "task_id": None,
        },
        "command": "uv run pytest -q -p no:cacheprovider tests/",
        "command_sha256": f"{number:064x}",
        "exit_code": 0 if number % 11 else 1,
        "started_at": "2031-05-01T12:00:00.123Z",
        "finished_at": "2031-05-01T12:01:10.456Z",
        "duration_ms": 70333,
        "stdout_sha256": f"{writer:064x}",
        "stderr_sha256": f"{number + 1:064x}",
        "stdout_excerpt": ("tests/test_module.py ........................ [ 42%]\n" * 14)
        + f"{number} passed in 70.1s\n",
        "stderr_excerpt": "",
        "runner": {"host": f"build-{writer}", "runtime_id": None},
        "tier": "pilot",
    }


@dataclass
class Writing:
    calls: int = 0
    entries: int = 0
    latencies: list[float] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0


async def build(db: Database, slug: str) -> Access:
    async with db.session() as session:
        user = User(email=f"{slug}@example.com", name=slug)
        session.add(user)
        await session.flush()
        workspace = Workspace(slug=slug, name=slug, key_prefix="ENG", created_by=user.id)
        session.add(workspace)
        await session.flush()
        session.add(Member(workspace_id=workspace.id, user_id=user.id, role="OWNER"))
        await session.commit()
    return Access(
        workspace=workspace,
        principal=Principal(user=user, kind="pat"),
        role=Role.OWNER,
        member_role=Role.OWNER,
    )


async def writer(
    db: Database,
    access: Access,
    settings: Settings,
    requests: list[EntriesIn],
    until: float,
    measured_from: float,
    stats: Writing,
) -> None:
    index = 0
    while True:
        t0 = time.perf_counter()
        if t0 >= until:
            return
        body = requests[index % len(requests)]
        index += 1
        async with db.session() as session:
            await service.append_entries(session, access, settings, body)
        t1 = time.perf_counter()
        if t0 >= measured_from:
            stats.calls += 1
            stats.entries += len(body.entries)
            stats.latencies.append((t1 - t0) * 1000)
            stats.finished = max(stats.finished, t1)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Outcome:
    per_append: int
    rate: float
    lag_max: float


async def measure_one(
    db: Database, settings: Settings, args: argparse.Namespace, per_append: int
) -> Outcome:
    access = await build(db, f"bench-{per_append}")
    workspace_id = access.workspace.id
    requests_per_writer = [
        [
            EntriesIn.model_validate(
                {"entries": [gate_entry(w, i * per_append + j) for j in range(per_append)]}
            )
            for i in range(200)
        ]
        for w in range(args.writers)
    ]
    stats = Writing()
    start = time.perf_counter()
    measured_from = start + args.warmup
    until = measured_from + args.seconds
    stats.started = measured_from
    await asyncio.gather(
        *(
            writer(db, access, settings, requests_per_writer[w], until, measured_from, stats)
            for w in range(args.writers)
        )
    )
    last_append = time.perf_counter()
    while True:  # the drain: until nothing is pending
        async with db.read_session() as session:
            pending = await session.scalar(select(func.count()).select_from(LedgerPending))
        if not pending:
            break
        await asyncio.sleep(0.01)
    drain = time.perf_counter() - last_append

    async with db.read_session() as session:
        checkpoints = (
            await session.execute(
                select(LedgerCheckpoint.size, LedgerCheckpoint.created_at)
                .where(LedgerCheckpoint.workspace_id == workspace_id)
                .order_by(LedgerCheckpoint.size)
            )
        ).all()
        received = [
            r
            for (r,) in (
                await session.execute(
                    select(LedgerEntry.received_at)
                    .where(LedgerEntry.workspace_id == workspace_id)
                    .order_by(LedgerEntry.position)
                )
            ).all()
        ]
    lags = []
    previous = 0
    for size, created_at in checkpoints:
        oldest = min(received[previous:size])
        lags.append((created_at - oldest).total_seconds() * 1000)
        previous = size
    seconds = stats.finished - stats.started
    rate = stats.entries / seconds
    print(f"\n--- {per_append} entr{'y' if per_append == 1 else 'ies'} per append")
    print(
        f"writing: {stats.calls:,} appends, {stats.entries:,} entries in {seconds:.2f} s "
        f"(after {args.warmup:.0f} s of warm-up)"
    )
    print(
        f"  append call (its commit included): p50 "
        f"{statistics.median(stats.latencies):.2f} ms, p99 "
        f"{percentile(stats.latencies, 0.99):.2f} ms"
    )
    print(
        f"checkpoints: {len(checkpoints):,} for {len(received):,} entries (mean batch "
        f"{len(received) / max(len(checkpoints), 1):,.0f}); lag (oldest entry received -> "
        f"checkpoint signed) p50 {statistics.median(lags):.0f} ms, p99 "
        f"{percentile(lags, 0.99):.0f} ms, max {max(lags):.0f} ms; drain after the last "
        f"append {drain * 1000:.0f} ms"
    )
    verdict = "met" if rate >= TARGET else "MISSED"
    print(
        f"entries/s = {rate:,.0f} with {args.writers} writers, {per_append} per append "
        f"(target >= {TARGET:,.0f}: {verdict}); checkpoint lag max {max(lags):.0f} ms"
    )
    return Outcome(per_append, rate, max(lags))


async def measure(db: Database, settings: Settings, args: argparse.Namespace) -> None:
    await upgrade_to_head(db)
    runner = ServiceRunner([service.LedgerSequencer(db)], stop_grace=10)
    runner.start()
    try:
        outcomes = [await measure_one(db, settings, args, n) for n in args.per_append]
    finally:
        await runner.stop()
    print("\nsummary:")
    for outcome in outcomes:
        verdict = "met" if outcome.rate >= TARGET else "MISSED"
        print(
            f"  {outcome.per_append:>3} per append: {outcome.rate:>7,.0f} entries/s "
            f"(target >= {TARGET:,.0f}: {verdict}), checkpoint lag max "
            f"{outcome.lag_max:,.0f} ms"
        )


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
    print(
        f"=== PostgreSQL {version} (synchronous_commit={commit_mode}), scratch database {name}",
        flush=True,
    )
    key = Fernet.generate_key().decode()
    install_vault(Vault(key))
    pool = args.writers + 4
    settings = Settings(
        database_url=url,
        database_max_conns=pool,
        database_min_conns=pool,
        encryption_key=key,
        public_origin="https://forgehall.bench.example",
    )
    db = Database(resolve_database(settings))
    try:
        await measure(db, settings, args)
    finally:
        await db.dispose()
        admin = await asyncpg.connect(asyncpg_dsn(admin_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        print(f"dropped scratch database {name}")
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--writers", type=int, default=8, help="concurrent appenders")
    parser.add_argument(
        "--per-append",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 8],
        help="entries per append call, comma-separated configurations (1,8)",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    args = parser.parse_args(argv)
    if min(args.writers, *args.per_append) < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--writers and --per-append >= 1, --seconds > 0, --warmup >= 0")
    return args


async def main(args: argparse.Namespace) -> int:
    print(
        f"ledger_append: {args.writers} writers, {args.per_append} entries per append, "
        f"{args.seconds:.0f} s each (+{args.warmup:.0f} s warm-up), sequencer every "
        f"{service.LedgerSequencer.default_interval} s"
    )
    print(
        f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
        f"asyncpg {asyncpg.__version__}, {os.cpu_count()} CPUs, {platform.platform()}"
    )
    return await run(args)


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main(parse_args())))
    sys.exit(130)
