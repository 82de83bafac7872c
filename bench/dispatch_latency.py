"""Dispatch latency: from assigning an issue to an agent to a waiting daemon holding the task.

What it builds, per backend: a fresh database migrated to head (a SQLite file in a
temporary directory; on PostgreSQL a scratch database ``fh_bench_<pid>``, dropped at the
end, failure included) holding one owner with a personal access token, one workspace
with its default statuses and ``--assignments`` + ``--warmup`` unassigned issues in the
todo column — written directly through the models before the server starts. Then a real
``forgehall serve`` process is started on that database (``sys.executable -m forgehall
serve`` in a temporary working directory, the caller's ``FORGEHALL_*`` / ``DATABASE_URL``
/ ``PORT`` removed, logs at warning), and over HTTP the script creates an agent
(provider ``claude``), mints a daemon token and registers a runtime (capacity 4).

What it measures: a daemon runs concurrently in this process — an asyncio task with its
own HTTP client — looping ``POST /api/v1/daemon/runtimes/{id}/claim {"wait": 30,
"limit": 1}``; when a claim returns a task it notes the time, then reports ``start`` and
``complete`` so the next assignment finds free capacity. The assigner (another HTTP
client) waits until the daemon's claim has been sent and has had ``--gap`` seconds to
park (run its first, empty attempt and wait on the event bus), then notes the time and
sends ``PATCH /api/v1/workspaces/bench/issues/{key} {"revision": r, "assignee":
{"kind": "agent", "id": …}}``. The latency of one assignment is the time from just before
that PATCH is sent to the moment the waiting claim's answer carrying that issue's task
has been received. The path it covers: the PATCH commits the task with the issue change
→ the outbox publishes (``domain_events`` row + ``NOTIFY`` on PostgreSQL) → the replica's
event pump reads it and hands it to subscribers → the waiting claim wakes
(``dispatch._wait_for_work``) → ``claim_once`` (one transaction: lease, task token,
brief) → its ``task.claimed`` event is published → the answer goes out.

``--warmup`` assignments (default 20) come first and are not recorded. Printed per
backend: n / p50 / p90 / p99 / max of the latency and p50 of the PATCH round trip (for
context), and ``met`` / ``MISSED`` against the targets p50 <= 20 ms and p99 <= 100 ms.
This is a benchmark, not a test: it exits 0 whether or not targets are met, and non-zero
only when something failed (a server that does not start, a task never handed out, an
unreachable PostgreSQL).

PostgreSQL: the admin URL comes from ``FORGEHALL_BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``).

Run it from the repository root::

    uv run python bench/dispatch_latency.py                        # both backends, 1,000 each
    uv run python bench/dispatch_latency.py --backend sqlite --assignments 200

Options: ``--assignments`` (1000), ``--warmup`` (20), ``--gap`` seconds between the
daemon's claim being sent and the next assignment (0.05), ``--backend
sqlite|postgresql|both`` (both).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import structlog
from _server_bench import (
    BenchError,
    asyncpg_dsn,
    expect,
    free_port,
    percentile,
    prepare,
    server_env,
)
from sqlalchemy.engine import make_url

TARGET_P50_MS = 20.0
TARGET_P99_MS = 100.0
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
HANDOUT_TIMEOUT_S = 30.0
CLAIM_WAIT_S = 30
WS = "/api/v1/workspaces/bench"
DAEMON = "/api/v1/daemon"
DESCRIPTION = "Dispatch latency benchmark."


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def output(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return textwrap.indent(text[-4000:].rstrip() or "(no output)", "    | ")


@contextlib.contextmanager
def serving(database_url: str, workdir: Path) -> Iterator[Server]:
    """``forgehall serve`` on ``database_url``; always stopped (or killed) on the way out."""
    port = free_port()
    env = server_env(database_url, workdir, port)
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "forgehall", "serve"],
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        server = Server(proc, f"http://127.0.0.1:{port}", log_path)
        try:
            wait_ready(server)
            yield server
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(trust_env=False) as client:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise BenchError(
                    f"server exited with {server.proc.returncode}:\n" + server.output()
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
    raise BenchError("server not ready in time:\n" + server.output())


# --- the measurement -----------------------------------------------------------------------


@dataclass
class Daemon:
    """The runtime daemon's claim loop: claim (long poll), start, complete, again."""

    client: httpx.AsyncClient
    runtime_id: str
    parked: asyncio.Event = field(default_factory=asyncio.Event)
    handed: dict[str, asyncio.Future[float]] = field(default_factory=dict)

    def expect_task(self, issue_key: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.handed[issue_key] = future
        return future

    async def run(self) -> None:
        while True:
            self.parked.set()
            response = await self.client.post(
                f"{DAEMON}/runtimes/{self.runtime_id}/claim",
                json={"wait": CLAIM_WAIT_S, "limit": 1},
                timeout=CLAIM_WAIT_S + 10,
            )
            received = time.perf_counter()
            self.parked.clear()
            body = expect(response, 200, "claim")
            for task in body["tasks"]:
                future = self.handed.pop(task["issue"]["key"], None)
                if future is not None and not future.done():
                    future.set_result(received)
                lease = {"lease_token": task["lease_token"]}
                expect(
                    await self.client.post(f"{DAEMON}/tasks/{task['id']}/start", json=lease),
                    200,
                    "start",
                )
                expect(
                    await self.client.post(
                        f"{DAEMON}/tasks/{task['id']}/complete",
                        json={**lease, "summary": "nothing to do"},
                    ),
                    200,
                    "complete",
                )


@contextlib.asynccontextmanager
async def client(base_url: str, token: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}"},
        trust_env=False,
        timeout=30,
    ) as http:
        yield http


@dataclass
class Samples:
    latency_ms: list[float] = field(default_factory=list)
    patch_ms: list[float] = field(default_factory=list)


async def measure(server: Server, token: str, args: argparse.Namespace) -> Samples:
    async with client(server.url, token) as owner:
        agent = expect(
            await owner.post(f"{WS}/agents", json={"name": "claude", "provider": "claude"}),
            201,
            "create agent",
        )
        daemon_token = expect(
            await owner.post(f"{WS}/daemon-tokens", json={"name": "bench"}), 201, "daemon token"
        )["token"]
        async with client(server.url, daemon_token) as daemon_http:
            runtime = expect(
                await daemon_http.post(
                    f"{DAEMON}/runtimes",
                    json={
                        "daemon_id": "bench-daemon",
                        "machine": "bench",
                        "providers": {"claude": "2.0.1"},
                        "capacity": 4,
                    },
                ),
                200,
                "register runtime",
            )
            daemon = Daemon(daemon_http, runtime["runtime_id"])
            loop_task = asyncio.create_task(daemon.run(), name="daemon")
            samples = Samples()
            try:
                total = args.warmup + args.assignments
                for n in range(1, total + 1):
                    if loop_task.done():
                        loop_task.result()  # the daemon loop failed: raise its error
                        raise BenchError("the daemon loop stopped")
                    await asyncio.wait_for(daemon.parked.wait(), HANDOUT_TIMEOUT_S)
                    await asyncio.sleep(args.gap)
                    key = f"ENG-{n}"
                    handed = daemon.expect_task(key)
                    body = {"revision": 1, "assignee": {"kind": "agent", "id": agent["id"]}}
                    sent = time.perf_counter()
                    response = await owner.patch(f"{WS}/issues/{key}", json=body)
                    answered = time.perf_counter()
                    expect(response, 200, f"assign {key}")
                    try:
                        received = await asyncio.wait_for(handed, HANDOUT_TIMEOUT_S)
                    except TimeoutError:
                        raise BenchError(
                            f"{key}: no claim handed its task out within {HANDOUT_TIMEOUT_S:.0f} s"
                        ) from None
                    if n > args.warmup:
                        samples.latency_ms.append((received - sent) * 1000)
                        samples.patch_ms.append((answered - sent) * 1000)
            finally:
                loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                    await loop_task
    return samples


def report(label: str, samples: Samples) -> None:
    values = samples.latency_ms
    p50, p99 = statistics.median(values), percentile(values, 99)
    print(
        f"[{label}] assignment -> waiting claim answered: n={len(values)}  "
        f"p50 {p50:.1f} ms  p90 {percentile(values, 90):.1f} ms  p99 {p99:.1f} ms  "
        f"max {max(values):.1f} ms"
    )
    print(f"[{label}] PATCH round trip (context): p50 {statistics.median(samples.patch_ms):.1f} ms")
    print(
        f"[{label}] p50 {p50:.1f} ms <= {TARGET_P50_MS:.0f} ms: "
        f"{'met' if p50 <= TARGET_P50_MS else 'MISSED'};  "
        f"p99 {p99:.1f} ms <= {TARGET_P99_MS:.0f} ms: "
        f"{'met' if p99 <= TARGET_P99_MS else 'MISSED'}",
        flush=True,
    )


# --- backends ------------------------------------------------------------------------------


async def run_sqlite(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="fh_bench_") as tmp:
        root = Path(tmp)
        url = f"sqlite:///{root / 'bench.db'}"
        print(f"\n=== SQLite, database file {root / 'bench.db'}", flush=True)
        token = await prepare(url, args.warmup + args.assignments, DESCRIPTION)
        with serving(url, root) as server:
            samples = await measure(server, token, args)
        report("sqlite", samples)


async def run_postgresql(args: argparse.Namespace) -> None:
    admin_url = os.environ.get("FORGEHALL_BENCH_DATABASE_URL", DEFAULT_ADMIN_URL)
    name = f"fh_bench_{os.getpid()}"
    admin = await asyncio.wait_for(asyncpg.connect(asyncpg_dsn(admin_url)), 10)
    try:
        version = await admin.fetchval("SHOW server_version")
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    print(f"\n=== PostgreSQL {version}, scratch database {name}", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="fh_bench_") as tmp:
            token = await prepare(
                url, args.warmup + args.assignments, "Dispatch latency benchmark."
            )
            with serving(url, Path(tmp)) as server:
                samples = await measure(server, token, args)
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(admin_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        print(f"[postgresql] dropped scratch database {name}")
    report("postgresql", samples)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--assignments", type=int, default=1000, help="timed assignments")
    parser.add_argument("--warmup", type=int, default=20, help="untimed assignments first")
    parser.add_argument(
        "--gap",
        type=float,
        default=0.05,
        help="seconds the daemon's claim gets to park before the next assignment (0.05)",
    )
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args(argv)
    if args.assignments < 1 or args.warmup < 0 or args.gap < 0:
        parser.error("--assignments must be >= 1; --warmup and --gap >= 0")
    return args


async def main(args: argparse.Namespace) -> int:
    print(
        f"dispatch_latency: {args.assignments:,} timed assignments after {args.warmup} warm-up, "
        f"gap {args.gap * 1000:.0f} ms; targets p50 <= {TARGET_P50_MS:.0f} ms, "
        f"p99 <= {TARGET_P99_MS:.0f} ms"
    )
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}",
        flush=True,
    )
    try:
        if args.backend in ("sqlite", "both"):
            await run_sqlite(args)
        if args.backend in ("postgresql", "both"):
            await run_postgresql(args)
    except BenchError as exc:
        print(f"dispatch_latency: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main(parse_args())))
    sys.exit(130)
