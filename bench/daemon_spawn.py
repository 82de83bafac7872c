"""Daemon spawn latency: from assigning an issue to an agent to its CLI process running.

What it builds, per backend: a fresh database migrated to head (a SQLite file in a
temporary directory; on PostgreSQL a scratch database ``fh_bench_<pid>``, dropped at the
end, failure included) holding one owner with a personal access token, one workspace with
its default statuses and ``--tasks`` + ``--warmup`` unassigned issues in the todo column —
written directly through the models before the server starts. Then a real ``forgehall
serve`` process on that database (as in ``dispatch_latency.py``), and over HTTP: an agent
(provider ``claude``), a workspace repository (a local git repository with one commit,
unless ``--no-repository``) and a daemon token. Then the real daemon: ``forgehall daemon``
as a subprocess (``sys.executable -m forgehall daemon``, claims long-polling 30 s, its
data and work directories in the temporary directory) with the fake Claude CLI of
``tests/fakes`` first on PATH, in its default mode (replay a recorded run, exit 0). A
``python3`` link to this interpreter comes first of all, so the fake's ``#!/usr/bin/env
python3`` does not go through a version manager's shim (pyenv's costs ~100 ms a start:
the fake's start-up, not the daemon's).

What it measures: the fake appends a JSON line per run to ``FAKE_AGENT_LOG`` with
``started``, its ``time.time()`` when its engine was imported. For each issue, one at a
time: wait until the daemon is idle (its health endpoint shows no task and an empty
journal: the previous task was reported) and give its claim ``--gap`` seconds to park;
note ``time.time()`` and send ``PATCH /api/v1/workspaces/bench/issues/{key}`` assigning
the agent; wait for the fake's line for that issue. The latency is ``started`` minus the
time noted — one clock, one machine. The path it covers: the PATCH commits the task → the
daemon's waiting claim is answered (see ``dispatch_latency.py``) → the daemon records the
task in ``held/`` (fsync) → prepares the worktree (``git fetch`` of the cached bare clone,
``git worktree add`` on a new branch, the brief excluded from git) → writes the brief →
``create_subprocess_exec`` (the agent's own process group) → the fake's interpreter starts
and imports its engine. The last step is the fake's own cost, printed for context as the
"fake CLI start" floor: the same measurement with the bench spawning the fake directly.

The breakdown comes from the daemon's log (``daemon.log``, millisecond timestamps):
``task.claimed`` (the claim's answer received and held), ``task.workspace_ready``,
``agent.started`` (the process spawned), then the fake's ``started``.

``--warmup`` assignments (default 10) come first and are not recorded. Printed per
backend: n / p50 / p90 / p99 / max of the latency, the p50 of each step, and ``met`` /
``MISSED`` against the targets p50 <= 100 ms and p99 <= 300 ms. This is a benchmark, not a
test: it exits 0 whether or not targets are met, and non-zero only when something failed
(a server or daemon that does not start, an agent never spawned, an unreachable
PostgreSQL).

PostgreSQL: the admin URL comes from ``FORGEHALL_BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``).

Run it from the repository root::

    uv run python bench/daemon_spawn.py                        # both backends, 200 tasks each
    uv run python bench/daemon_spawn.py --backend sqlite --tasks 50

Options: ``--tasks`` (200), ``--warmup`` (10), ``--gap`` seconds the daemon's claim gets
to park before the next assignment (0.05), ``--backend sqlite|postgresql|both`` (both),
``--no-repository`` (the workspace has none: the daemon makes an empty git repository).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import structlog
from _server_bench import (
    BenchError,
    asyncpg_dsn,
    clean_env,
    expect,
    free_port,
    percentile,
    prepare,
    server_env,
)
from sqlalchemy.engine import make_url

TARGET_P50_MS = 100.0
TARGET_P99_MS = 300.0
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
FAKES = Path(__file__).resolve().parent.parent / "tests" / "fakes"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
SPAWN_TIMEOUT_S = 30.0
IDLE_TIMEOUT_S = 60.0
POLL_S = 0.005  # how often the bench looks for the spawn (not part of the figure)
WS = "/api/v1/workspaces/bench"


def git(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "user.name=Bench", "-c", "user.email=bench@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


# --- data, server, daemon ------------------------------------------------------------------


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return textwrap.indent(text[-4000:].rstrip() or "(no output)", "    | ")


def start_process(argv: list[str], env: dict[str, str], workdir: Path, name: str) -> Process:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Process(proc, log_path)


def stop_process(process: Process) -> None:
    proc = process.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@contextlib.contextmanager
def serving(database_url: str, workdir: Path) -> Iterator[str]:
    """``forgehall serve`` on ``database_url``; yields its URL; always stopped."""
    port = free_port()
    env = server_env(database_url, workdir, port)
    server = start_process([sys.executable, "-m", "forgehall", "serve"], env, workdir, "server")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        with httpx.Client(trust_env=False) as client:
            while True:
                if server.proc.poll() is not None:
                    raise BenchError(
                        f"server exited with {server.proc.returncode}:\n" + server.output()
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise BenchError("server not ready in time:\n" + server.output())
                time.sleep(0.05)
        yield url
    finally:
        stop_process(server)


def fake_path_dir(workdir: Path) -> Path:
    """A directory with ``python3`` -> this interpreter, to go first on PATH."""
    bin_dir = workdir / "bin"
    bin_dir.mkdir(exist_ok=True)
    link = bin_dir / "python3"
    if not link.exists():
        link.symlink_to(sys.executable)
    return bin_dir


def fake_env(workdir: Path, fake_log: Path) -> dict[str, str]:
    env = clean_env()
    env["PATH"] = os.pathsep.join([str(fake_path_dir(workdir)), str(FAKES), env.get("PATH", "")])
    env["FAKE_AGENT_LOG"] = str(fake_log)
    return env


@dataclass
class Daemon:
    process: Process
    data_dir: Path
    fake_log: Path
    http: httpx.Client = field(default_factory=lambda: httpx.Client(trust_env=False))
    _log_offset: int = 0

    def health(self) -> dict[str, Any] | None:
        try:
            where = json.loads((self.data_dir / "health.json").read_text())
            response = self.http.get(f"http://{where['host']}:{where['port']}/health", timeout=2)
            body: dict[str, Any] = response.json()
        except (OSError, ValueError, httpx.HTTPError):
            return None
        return body

    def check_alive(self) -> None:
        if self.process.proc.poll() is not None:
            raise BenchError(
                f"the daemon exited with {self.process.proc.returncode}:\n" + self.process.output()
            )

    def wait_status(self, what: str, ok: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            health = self.health()
            if health is not None and ok(health):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"the daemon did not get {what}: {health}")
            time.sleep(0.01)

    def new_runs(self) -> list[dict[str, Any]]:
        """The fake's log lines written since the last call."""
        with self.fake_log.open("rb") as handle:
            handle.seek(self._log_offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._log_offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line]


@contextlib.contextmanager
def running_daemon(server_url: str, daemon_token: str, workdir: Path) -> Iterator[Daemon]:
    data_dir, fake_log = workdir / "daemon-data", workdir / "fake-agents.jsonl"
    fake_log.touch()
    env = fake_env(workdir, fake_log)
    env.update(
        {
            "FORGEHALL_SERVER_URL": server_url,
            "FORGEHALL_DAEMON_TOKEN": daemon_token,
            "FORGEHALL_DAEMON_DIR": str(data_dir),
            "FORGEHALL_DAEMON_WORKDIR": str(workdir / "work"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    process = start_process([sys.executable, "-m", "forgehall", "daemon"], env, workdir, "daemon")
    daemon = Daemon(process, data_dir, fake_log)
    try:
        daemon.wait_status("running", lambda h: h["status"] == "running", READY_TIMEOUT_S)
        yield daemon
    finally:
        daemon.http.close()
        stop_process(process)


# --- the measurement -----------------------------------------------------------------------


@dataclass
class Sample:
    key: str
    sent: float  # time.time() just before the PATCH
    started: float  # the fake's time.time() at its start
    task_id: str = ""

    @property
    def latency_ms(self) -> float:
        return (self.started - self.sent) * 1000


def set_up_workspace(owner: httpx.Client, workdir: Path, *, repository: bool) -> tuple[str, str]:
    """The agent's id and a daemon token."""
    agent = expect(
        owner.post(f"{WS}/agents", json={"name": "claude", "provider": "claude"}),
        201,
        "create agent",
    )
    if repository:
        origin = workdir / "origin"
        origin.mkdir()
        git("init", "--quiet", "-b", "main", cwd=origin)
        (origin / "README.md").write_text("# bench\n")
        git("add", "README.md", cwd=origin)
        git("commit", "--quiet", "-m", "first", cwd=origin)
        expect(
            owner.post(
                f"{WS}/repositories",
                json={"name": "app", "url": str(origin), "default_branch": "main"},
            ),
            201,
            "add repository",
        )
    token = expect(owner.post(f"{WS}/daemon-tokens", json={"name": "bench"}), 201, "token")
    return agent["id"], token["token"]


def measure(server_url: str, token: str, workdir: Path, args: argparse.Namespace) -> list[Sample]:
    with httpx.Client(
        base_url=server_url,
        headers={"Authorization": f"Bearer {token}"},
        trust_env=False,
        timeout=30,
    ) as owner:
        agent_id, daemon_token = set_up_workspace(owner, workdir, repository=args.repository)
        with running_daemon(server_url, daemon_token, workdir) as daemon:
            samples: list[Sample] = []
            for n in range(1, args.warmup + args.tasks + 1):
                daemon.wait_status(
                    "idle", lambda h: not h["tasks"] and not h["journal"], IDLE_TIMEOUT_S
                )
                time.sleep(args.gap)
                key = f"ENG-{n}"
                body = {"revision": 1, "assignee": {"kind": "agent", "id": agent_id}}
                sent = time.time()
                expect(owner.patch(f"{WS}/issues/{key}", json=body), 200, f"assign {key}")
                run = wait_for_spawn(daemon, key)
                if n > args.warmup:
                    samples.append(
                        Sample(key, sent, run["started"], run["env"]["FORGEHALL_TASK_ID"])
                    )
            return samples


def wait_for_spawn(daemon: Daemon, key: str) -> dict[str, Any]:
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while time.monotonic() < deadline:
        for run in daemon.new_runs():
            if run["env"].get("FORGEHALL_ISSUE_KEY") == key:
                return run
            raise BenchError(f"an agent ran for {run['env'].get('FORGEHALL_ISSUE_KEY')}, not {key}")
        daemon.check_alive()
        time.sleep(POLL_S)
    raise BenchError(f"{key}: no agent spawned within {SPAWN_TIMEOUT_S:.0f} s")


def fake_start_floor(workdir: Path, runs: int = 30) -> list[float]:
    """ms from the bench spawning the fake claude to its ``started``: the fake's own cost."""
    fake_log = workdir / "floor.jsonl"
    env = fake_env(workdir, fake_log)
    argv = [str(FAKES / "claude"), "-p", "--output-format", "stream-json", "--verbose"]
    values = []
    for _ in range(runs):
        fake_log.unlink(missing_ok=True)
        sent = time.time()
        subprocess.run(argv, input=b"hello", env=env, cwd=workdir, capture_output=True, check=True)
        started = json.loads(fake_log.read_text().splitlines()[0])["started"]
        values.append((started - sent) * 1000)
    return values


# --- the breakdown from the daemon's log ---------------------------------------------------


def log_times(log_path: Path) -> dict[str, dict[str, float]]:
    """task id -> event -> time.time() of the daemon's log line (millisecond resolution)."""
    events = ("task.claimed", "task.workspace_ready", "agent.started")
    found: dict[str, dict[str, float]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        parts = line.split(" ")
        if len(parts) < 5 or parts[3] not in events:
            continue
        task_id = next((p.split("=", 1)[1] for p in parts if p.startswith("task_id=")), None)
        if task_id is None:
            continue
        when = datetime.strptime(f"{parts[0]} {parts[1]}", "%Y-%m-%d %H:%M:%S,%f").timestamp()
        found.setdefault(task_id, {})[parts[3]] = when
    return found


def report(label: str, samples: list[Sample], log_path: Path, floor: list[float]) -> None:
    values = [s.latency_ms for s in samples]
    p50, p99 = statistics.median(values), percentile(values, 99)
    print(
        f"[{label}] assignment -> agent process started: n={len(values)}  "
        f"p50 {p50:.1f} ms  p90 {percentile(values, 90):.1f} ms  p99 {p99:.1f} ms  "
        f"max {max(values):.1f} ms"
    )
    times = log_times(log_path)
    steps: dict[str, list[float]] = {
        "PATCH sent -> task.claimed (server, claim, held/)": [],
        "task.claimed -> task.workspace_ready (git)": [],
        "task.workspace_ready -> agent.started (brief, exec)": [],
        "agent.started -> fake started (its interpreter)": [],
    }
    names = list(steps)
    for sample in samples:
        at = times.get(sample.task_id, {})
        if len(at) < 3:
            continue
        points = [
            sample.sent,
            at["task.claimed"],
            at["task.workspace_ready"],
            at["agent.started"],
            sample.started,
        ]
        for name, start, end in zip(names, points, points[1:], strict=False):
            steps[name].append((end - start) * 1000)
    for name, durations in steps.items():
        if durations:
            print(
                f"[{label}]   {name}: p50 {statistics.median(durations):.1f} ms  "
                f"p99 {percentile(durations, 99):.1f} ms"
            )
    print(
        f"[{label}] fake CLI start alone (context, the bench spawning it): "
        f"p50 {statistics.median(floor):.1f} ms"
    )
    print(
        f"[{label}] p50 {p50:.1f} ms <= {TARGET_P50_MS:.0f} ms: "
        f"{'met' if p50 <= TARGET_P50_MS else 'MISSED'};  "
        f"p99 {p99:.1f} ms <= {TARGET_P99_MS:.0f} ms: "
        f"{'met' if p99 <= TARGET_P99_MS else 'MISSED'}",
        flush=True,
    )


# --- backends ------------------------------------------------------------------------------


def run_on(label: str, url: str, root: Path, args: argparse.Namespace) -> None:
    token = asyncio.run(prepare(url, args.warmup + args.tasks, "Daemon spawn latency benchmark."))
    floor = fake_start_floor(root)
    with serving(url, root) as server_url:
        samples = measure(server_url, token, root, args)
    report(label, samples, root / "daemon-data" / "daemon.log", floor)


def run_sqlite(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="fh_bench_") as tmp:
        root = Path(tmp)
        print(f"\n=== SQLite, database file {root / 'bench.db'}", flush=True)
        run_on("sqlite", f"sqlite:///{root / 'bench.db'}", root, args)


async def _admin(admin_url: str, *statements: str) -> str:
    admin = await asyncio.wait_for(asyncpg.connect(asyncpg_dsn(admin_url)), 10)
    try:
        version: str = await admin.fetchval("SHOW server_version")
        for statement in statements:
            await admin.execute(statement)
        return version
    finally:
        await admin.close()


def run_postgresql(args: argparse.Namespace) -> None:
    admin_url = os.environ.get("FORGEHALL_BENCH_DATABASE_URL", DEFAULT_ADMIN_URL)
    name = f"fh_bench_{os.getpid()}"
    drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    version = asyncio.run(_admin(admin_url, drop, f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    print(f"\n=== PostgreSQL {version}, scratch database {name}", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="fh_bench_") as tmp:
            run_on("postgresql", url, Path(tmp), args)
    finally:
        asyncio.run(_admin(admin_url, drop))
        print(f"[postgresql] dropped scratch database {name}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=200, help="timed assignments (200)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed assignments first (10)")
    parser.add_argument(
        "--gap",
        type=float,
        default=0.05,
        help="seconds the daemon's claim gets to park before the next assignment (0.05)",
    )
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument(
        "--repository",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="give the workspace a (local) git repository to check out (default: yes)",
    )
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.warmup < 0 or args.gap < 0:
        parser.error("--tasks must be >= 1; --warmup and --gap >= 0")
    return args


def main(args: argparse.Namespace) -> int:
    print(
        f"daemon_spawn: {args.tasks} timed assignments after {args.warmup} warm-up, gap "
        f"{args.gap * 1000:.0f} ms, {'a' if args.repository else 'no'} repository; targets "
        f"p50 <= {TARGET_P50_MS:.0f} ms, p99 <= {TARGET_P99_MS:.0f} ms"
    )
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}",
        flush=True,
    )
    try:
        if args.backend in ("sqlite", "both"):
            run_sqlite(args)
        if args.backend in ("postgresql", "both"):
            run_postgresql(args)
    except (BenchError, subprocess.CalledProcessError, OSError) as exc:
        print(f"daemon_spawn: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(parse_args()))
    sys.exit(130)
