"""How long ``forgehall serve`` takes to become ready on embedded SQLite, next to a peer.

What it measures: wall-clock time from just before the server process is spawned to the
first ``GET /readyz`` that answers 200, polling every 10 ms. Three variants run
interleaved (one round = one run of each), so drift in machine load hits all alike:

- ``forgehall serve, fresh database``: a new, empty data directory per run, so each run
  includes creating the SQLite database and applying every migration;
- ``forgehall serve, existing database``: one data directory reused by every run (already
  migrated), i.e. an ordinary restart;
- ``peer: FastAPI + uvicorn``: a minimal FastAPI app with a single ``/readyz`` route served
  by ``python -m uvicorn``. It is the floor cost of Python + FastAPI + uvicorn start-up on
  this machine; the ratio printed is forgehall (fresh database) p50 / peer p50.

Every server is started as ``sys.executable -m ...`` (no ``uv`` process in the timing), in
its own temporary working directory (so no ``.env`` file is picked up), with any
``FORGEHALL_*``, ``DATABASE_URL`` and ``PORT`` variables of the caller removed. Each is
stopped with SIGTERM after its run (exit statuses are reported, not timed), and is killed
in every case, failure included. One untimed warm-up run of forgehall and of the peer
comes first, so the OS file cache and bytecode caches do not favour whichever variant
happens to run first.

Target: ``forgehall serve`` is ready in under 2 s (2000 ms, p50) on a fresh SQLite
database. The script reports whether the target is met; it is a benchmark, not a test, and
exits 0 either way. It exits 1 only when a server failed to start, exited early or did not
become ready within 30 s.

Run it from the repository root::

    uv run python bench/serve_ready.py --runs 10
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from _server_bench import clean_env, free_port

TARGET_MS = 2000.0
POLL_INTERVAL_S = 0.010
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
LOG_TAIL_CHARS = 4000

FRESH = "forgehall serve, fresh database"
EXISTING = "forgehall serve, existing database"
PEER = "peer: FastAPI + uvicorn"

PEER_MODULE = "peer_app"
PEER_SOURCE = textwrap.dedent(
    '''\
    """Minimal FastAPI app: the floor cost of Python + FastAPI + uvicorn start-up."""

    from fastapi import FastAPI

    app = FastAPI()


    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ok"}
    '''
)


class BenchError(Exception):
    """A server failed to start, exited early or was not ready in time."""


@dataclass(frozen=True)
class Launch:
    """How to start one server process."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    port: int


@dataclass
class Variant:
    """One measured configuration and its timings in milliseconds."""

    name: str
    slug: str
    launch: Callable[[str], Launch]
    timings_ms: list[float] = field(default_factory=list)
    exit_codes: list[int | None] = field(default_factory=list)


def forgehall_launch(data_dir: Path, workdir: Path) -> Launch:
    port = free_port()
    env = clean_env()
    env.update(
        {
            "PORT": str(port),
            "FORGEHALL_DATA_DIR": str(data_dir),
            "FORGEHALL_LOG_LEVEL": "warning",
        }
    )
    workdir.mkdir(parents=True, exist_ok=True)
    return Launch([sys.executable, "-m", "forgehall", "serve"], env, workdir, port)


def peer_launch(app_dir: Path) -> Launch:
    port = free_port()
    env = clean_env()
    inherited = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(app_dir) + (os.pathsep + inherited if inherited else "")
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        f"{PEER_MODULE}:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    return Launch(argv, env, app_dir, port)


def log_tail(path: Path) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    text = text[-LOG_TAIL_CHARS:].rstrip()
    return textwrap.indent(text, "    | ") if text else "    (no output)"


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM the server, then SIGKILL its process group if it does not exit in time.

    Returns the exit code, or None when it had to be killed.
    """
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        return None


@dataclass
class Child:
    """A started server; ``exit_code`` is filled in once it has been stopped."""

    proc: subprocess.Popen[bytes]
    exit_code: int | None = None


@contextlib.contextmanager
def running(launch: Launch, log_path: Path) -> Iterator[Child]:
    """Start the server; always stop (or kill) it on the way out, failure included."""
    with log_path.open("wb") as log:
        child = Child(
            subprocess.Popen(
                launch.argv,
                env=launch.env,
                cwd=launch.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        try:
            yield child
        finally:
            child.exit_code = stop(child.proc)


def time_to_ready(name: str, launch: Launch, log_path: Path) -> tuple[float, int | None]:
    """Milliseconds from just before Popen to the first 200 from ``/readyz``.

    Also returns the exit code once the server was stopped with SIGTERM (None: killed).
    """
    url = f"http://127.0.0.1:{launch.port}/readyz"
    elapsed_ms: float | None = None
    with httpx.Client(trust_env=False) as client:
        started = time.perf_counter()
        deadline = started + READY_TIMEOUT_S
        with running(launch, log_path) as child:
            while elapsed_ms is None:
                code = child.proc.poll()
                if code is not None:
                    raise BenchError(
                        f"{name}: server exited with {code} before it was ready; its output:\n"
                        + log_tail(log_path)
                    )
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    raise BenchError(
                        f"{name}: /readyz did not answer 200 within {READY_TIMEOUT_S:.0f} s "
                        f"({url}); server output:\n" + log_tail(log_path)
                    )
                try:
                    response = client.get(url, timeout=min(1.0, remaining))
                except httpx.HTTPError:
                    response = None
                if response is not None and response.status_code == 200:
                    elapsed_ms = (time.perf_counter() - started) * 1000.0
                else:
                    time.sleep(POLL_INTERVAL_S)
    return elapsed_ms, child.exit_code


def describe_exit(code: int | None) -> str:
    if code is None:
        return f"killed (no exit within {STOP_TIMEOUT_S:.0f} s of SIGTERM)"
    if code < 0:
        return f"{code} (ended by {signal.Signals(-code).name})"
    return str(code)


def percentile_50(values: list[float]) -> float:
    return statistics.median(values)


def report(variants: list[Variant], runs: int) -> None:
    print(
        f"Time from spawn to first 200 on GET /readyz: {runs} runs per variant, interleaved, "
        f"polled every {POLL_INTERVAL_S * 1000:.0f} ms"
    )
    print(
        f"python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )
    print()
    width = max(len(v.name) for v in variants)
    print(f"{'variant':<{width}}  {'runs':>4}  {'min ms':>8}  {'p50 ms':>8}  {'max ms':>8}")
    for variant in variants:
        values = variant.timings_ms
        print(
            f"{variant.name:<{width}}  {len(values):>4}  {min(values):>8.0f}  "
            f"{percentile_50(values):>8.0f}  {max(values):>8.0f}"
        )
    print()
    by_name = {v.name: v for v in variants}
    fresh_p50 = percentile_50(by_name[FRESH].timings_ms)
    existing_p50 = percentile_50(by_name[EXISTING].timings_ms)
    peer_p50 = percentile_50(by_name[PEER].timings_ms)
    print(
        f"ratio forgehall (fresh database) p50 / peer p50: {fresh_p50 / peer_p50:.2f}x "
        f"({fresh_p50:.0f} ms / {peer_p50:.0f} ms)"
    )
    print(
        f"ratio forgehall (existing database) p50 / peer p50: {existing_p50 / peer_p50:.2f}x "
        f"({existing_p50:.0f} ms / {peer_p50:.0f} ms)"
    )
    if fresh_p50 < TARGET_MS:
        verdict = f"target met: forgehall p50 on a fresh database ({fresh_p50:.0f} ms) is under"
    else:
        verdict = (
            f"target MISSED: forgehall p50 on a fresh database ({fresh_p50:.0f} ms) is not under"
        )
    print(f"{verdict} the {TARGET_MS:.0f} ms target")
    print()
    print("exit status after SIGTERM (expected 0), per variant:")
    for variant in variants:
        counts = Counter(variant.exit_codes)
        rendered = ", ".join(f"{describe_exit(code)} x{n}" for code, n in counts.items())
        print(f"  {variant.name:<{width}}  {rendered}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time `forgehall serve` to readiness on SQLite, next to a minimal "
        "FastAPI + uvicorn app."
    )
    parser.add_argument("--runs", type=int, default=10, help="timed runs per variant (default: 10)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs: int = args.runs
    with tempfile.TemporaryDirectory(prefix="forgehall-bench-") as tmp:
        root = Path(tmp)
        peer_dir = root / "peer"
        peer_dir.mkdir()
        (peer_dir / f"{PEER_MODULE}.py").write_text(PEER_SOURCE)
        existing_dir = root / "existing"

        def fresh(tag: str) -> Launch:
            run_dir = root / f"fresh-{tag}"  # a new directory: a new database every run
            return forgehall_launch(run_dir / "data", run_dir)

        def existing(tag: str) -> Launch:
            return forgehall_launch(existing_dir / "data", existing_dir)

        def peer(tag: str) -> Launch:
            return peer_launch(peer_dir)

        variants = [
            Variant(FRESH, "fresh", fresh),
            Variant(EXISTING, "existing", existing),
            Variant(PEER, "peer", peer),
        ]
        try:
            # Untimed warm-up: fills OS and bytecode caches, and creates + migrates the
            # database that the "existing database" variant then reuses.
            time_to_ready(f"{EXISTING} (warm-up)", existing("warmup"), root / "warmup-fh.log")
            time_to_ready(f"{PEER} (warm-up)", peer("warmup"), root / "warmup-peer.log")
            for round_no in range(1, runs + 1):
                for variant in variants:
                    log_path = root / f"{variant.slug}-{round_no}.log"
                    launch = variant.launch(str(round_no))
                    elapsed_ms, exit_code = time_to_ready(variant.name, launch, log_path)
                    variant.timings_ms.append(elapsed_ms)
                    variant.exit_codes.append(exit_code)
        except BenchError as exc:
            print(f"serve_ready: error: {exc}", file=sys.stderr)
            return 1
    report(variants, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
