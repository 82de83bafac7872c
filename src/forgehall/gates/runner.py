"""Run gates as a dependency graph of subprocesses and describe what happened.

Each gate runs in its own session, hence its own process group (``start_new_session``),
so a timeout, or the end of the gate's main process, takes everything it started with
it: SIGTERM to the group, then SIGKILL once ``kill_grace`` (5 s) has passed. Output is
streamed through a SHA-256 and a bounded tail (the last :data:`EXCERPT_BYTES` of each
stream): a gate may print gigabytes and the runner holds a few KiB.

Results: PASS (exit 0); FAIL (non-zero exit, a signal, a timeout, or it could not
start); WARN (a failure of a gate with ``allow_failure``); SKIP (a dependency did not
PASS or WARN — a WARN does not block what depends on it). Independent gates run in
parallel, at most ``jobs`` at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from forgehall.gates.graph import dependency_closure, topological_order
from forgehall.gates.schemas import (
    EntryScope,
    Gate,
    GateEntry,
    GatesFile,
    Result,
    RunnerInfo,
    Tier,
)

EXCERPT_BYTES = 4096
KILL_GRACE = 5.0
_READ_CHUNK = 64 * 1024
# Secrets of the CLI and the daemon that a repository's own scripts have no use for.
_WITHHELD_ENV = ("FORGEHALL_TOKEN", "FORGEHALL_DAEMON_TOKEN")


class SelectionError(ValueError):
    """``--gate`` names no gate, or a tier selects nothing runnable."""


def select_gates(gates_file: GatesFile, gate_id: str | None, tier: Tier | None) -> list[Gate]:
    """The gates to run, dependencies first: ``gate_id`` and what it depends on, else the
    gates required in ``tier`` and what they depend on, else all of them."""
    gates = gates_file.gates
    if gate_id is not None:
        if gate_id not in gates_file.by_id():
            known = ", ".join(gate.id for gate in gates) or "none"
            raise SelectionError(f"no gate {gate_id!r} (gates: {known})")
        wanted = dependency_closure(gates, [gate_id])
    elif tier is not None:
        wanted = dependency_closure(gates, [g.id for g in gates if tier in g.required_in])
    else:
        wanted = {gate.id for gate in gates}
    return [gate for gate in topological_order(gates) if gate.id in wanted]


def utc_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a ``Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def command_identity(gate: Gate, root: Path) -> tuple[str, str]:
    """What the entry records as the command, and its SHA-256.

    A command is hashed as its UTF-8 text; a script as the bytes of the file, so the
    evidence pins what actually ran.
    """
    if gate.command is not None:
        return gate.command, hashlib.sha256(gate.command.encode()).hexdigest()
    assert gate.script is not None
    try:
        digest = hashlib.sha256((root / gate.script).read_bytes()).hexdigest()
    except OSError:
        digest = hashlib.sha256(b"").hexdigest()
    return gate.script, digest


@dataclass(frozen=True)
class StreamDigest:
    sha256: str
    excerpt: str
    size: int


class _OutputTap:
    """A running digest of a stream and its last ``limit`` bytes."""

    def __init__(self, limit: int = EXCERPT_BYTES) -> None:
        self._hash = hashlib.sha256()
        self._tail = bytearray()
        self._limit = limit
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._size += len(chunk)
        self._tail += chunk
        if len(self._tail) > self._limit:
            del self._tail[: len(self._tail) - self._limit]

    def digest(self) -> StreamDigest:
        tail = bytes(self._tail)
        if self._size > len(tail):  # cut: do not start inside a UTF-8 character
            skip = 0
            while skip < min(3, len(tail)) and tail[skip] & 0xC0 == 0x80:
                skip += 1
            tail = tail[skip:]
        return StreamDigest(
            self._hash.hexdigest(), tail.decode("utf-8", errors="replace"), self._size
        )


@dataclass(frozen=True)
class GateOutcome:
    gate: Gate
    result: Result
    reason: str | None
    command: str
    command_sha256: str
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: int | None = None
    stdout: StreamDigest | None = None
    stderr: StreamDigest | None = None

    def entry(self, scope: EntryScope, runner: RunnerInfo, tier: Tier | None) -> GateEntry:
        """The ledger entry of this outcome."""
        return GateEntry(
            gate_id=self.gate.id,
            gate_name=self.gate.display_name,
            result=self.result,
            reason=self.reason,
            scope=scope,
            command=self.command,
            command_sha256=self.command_sha256,
            exit_code=self.exit_code,
            started_at=utc_timestamp(self.started_at) if self.started_at else None,
            finished_at=utc_timestamp(self.finished_at) if self.finished_at else None,
            duration_ms=self.duration_ms,
            stdout_sha256=self.stdout.sha256 if self.stdout else None,
            stderr_sha256=self.stderr.sha256 if self.stderr else None,
            stdout_excerpt=self.stdout.excerpt if self.stdout else "",
            stderr_excerpt=self.stderr.excerpt if self.stderr else "",
            runner=runner,
            tier=tier,
        )


class RunObserver(Protocol):
    def gate_started(self, gate: Gate) -> None: ...

    def gate_finished(self, outcome: GateOutcome) -> None: ...


class _NoObserver:
    def gate_started(self, gate: Gate) -> None:
        pass

    def gate_finished(self, outcome: GateOutcome) -> None:
        pass


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies waiting for a reaper that
    never comes, as under some container inits, do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _terminate_group(pgid: int, grace: float) -> None:
    """SIGTERM the group, then SIGKILL whatever is left after ``grace`` seconds."""
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        await asyncio.sleep(0.05)
    _signal_group(pgid, signal.SIGKILL)


async def _wait_exit(process: asyncio.subprocess.Process) -> int:
    # Not process.wait(): on some Python versions it also waits for the pipes to close,
    # which a background grandchild can hold open for ever.
    delay = 0.005
    while process.returncode is None:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    return process.returncode


async def _pump(stream: asyncio.StreamReader | None, tap: _OutputTap) -> None:
    if stream is None:
        return
    while chunk := await stream.read(_READ_CHUNK):
        tap.feed(chunk)


def gate_environment(base: Mapping[str, str], gate: Gate) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in _WITHHELD_ENV}
    env.update(gate.env)
    env["FORGEHALL_GATE_ID"] = gate.id
    return env


async def run_gate(
    gate: Gate, root: Path, *, base_env: Mapping[str, str], kill_grace: float = KILL_GRACE
) -> GateOutcome:
    """Run one gate to its end (or its timeout) and classify the result."""
    command, command_sha = command_identity(gate, root)
    if gate.command is not None:
        argv = ["/bin/sh", "-c", gate.command]
    else:
        assert gate.script is not None
        argv = [str((root / gate.script).resolve())]
    cwd = root / gate.workdir if gate.workdir else root
    started = datetime.now(UTC)
    clock = time.monotonic()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=gate_environment(base_env, gate),
            stdin=subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        finished = datetime.now(UTC)
        return _classify(
            gate,
            command,
            command_sha,
            f"could not start: {exc.strerror or exc}",
            None,
            started,
            finished,
            int((time.monotonic() - clock) * 1000),
            None,
            None,
        )
    out, err = _OutputTap(), _OutputTap()
    readers = [
        asyncio.create_task(_pump(process.stdout, out)),
        asyncio.create_task(_pump(process.stderr, err)),
    ]
    timed_out = False
    try:
        try:
            await asyncio.wait_for(_wait_exit(process), gate.timeout)
        except TimeoutError:
            timed_out = True
            await _terminate_group(process.pid, kill_grace)
            _signal_group(process.pid, signal.SIGKILL)
            await _wait_exit(process)
        # Whatever the gate left running in its group ends with it, so the pipes close.
        if _group_alive(process.pid):
            await _terminate_group(process.pid, kill_grace)
        _, pending = await asyncio.wait(readers, timeout=kill_grace + 1)
        for task in pending:  # held open by a process that left the group (setsid)
            task.cancel()
    except asyncio.CancelledError:
        _signal_group(process.pid, signal.SIGKILL)
        for task in readers:
            task.cancel()
        raise
    finished = datetime.now(UTC)
    duration = int((time.monotonic() - clock) * 1000)
    code = process.returncode
    if timed_out:
        reason: str | None = "timeout"
        exit_code = None
    elif code is not None and code < 0:
        reason = f"killed by {signal.Signals(-code).name}"
        exit_code = None
    else:
        reason = None if code == 0 else f"exit {code}"
        exit_code = code
    return _classify(
        gate,
        command,
        command_sha,
        reason,
        exit_code,
        started,
        finished,
        duration,
        out.digest(),
        err.digest(),
    )


def _classify(
    gate: Gate,
    command: str,
    command_sha: str,
    failure: str | None,
    exit_code: int | None,
    started: datetime,
    finished: datetime,
    duration: int,
    stdout: StreamDigest | None,
    stderr: StreamDigest | None,
) -> GateOutcome:
    result: Result = "PASS" if failure is None else "WARN" if gate.allow_failure else "FAIL"
    return GateOutcome(
        gate=gate,
        result=result,
        reason=failure,
        command=command,
        command_sha256=command_sha,
        exit_code=exit_code,
        started_at=started,
        finished_at=finished,
        duration_ms=duration,
        stdout=stdout,
        stderr=stderr,
    )


async def run_gates(
    gates: Sequence[Gate],
    root: Path,
    *,
    jobs: int,
    observer: RunObserver | None = None,
    base_env: Mapping[str, str] | None = None,
    kill_grace: float = KILL_GRACE,
) -> list[GateOutcome]:
    """Run ``gates`` (which must include their dependencies) as a DAG, at most ``jobs``
    at a time; outcomes come back in dependency order."""
    if jobs < 1:
        raise SelectionError("jobs must be at least 1")
    present = {gate.id for gate in gates}
    for gate in gates:
        missing = [dep for dep in gate.depends_on if dep not in present]
        if missing:
            raise SelectionError(f"gate {gate.id} depends on {missing}, which are not selected")
    seen = observer or _NoObserver()
    env = dict(os.environ if base_env is None else base_env)
    slots = asyncio.Semaphore(jobs)
    tasks: dict[str, asyncio.Task[GateOutcome]] = {}

    async def run(gate: Gate) -> GateOutcome:
        for dep in gate.depends_on:
            before = await tasks[dep]
            if before.result not in ("PASS", "WARN"):
                verb = "failed" if before.result == "FAIL" else "was skipped"
                command, command_sha = command_identity(gate, root)
                outcome = GateOutcome(
                    gate, "SKIP", f"dependency {dep} {verb}", command, command_sha
                )
                seen.gate_finished(outcome)
                return outcome
        async with slots:
            seen.gate_started(gate)
            outcome = await run_gate(gate, root, base_env=env, kill_grace=kill_grace)
        seen.gate_finished(outcome)
        return outcome

    async with asyncio.TaskGroup() as group:
        for gate in topological_order(gates):
            tasks[gate.id] = group.create_task(run(gate))
    return [tasks[gate.id].result() for gate in topological_order(gates)]


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(  # noqa: S603 - fixed git arguments, no shell
            ["git", "--no-optional-locks", *args],  # noqa: S607 - git from PATH, as a user runs it
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _without_credentials(url: str) -> str:
    """A remote URL without a user or token in it (``https://tok@host/x`` → host only)."""
    parts = urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=host))
    return url


def detect_scope(root: Path, env: Mapping[str, str] | None = None) -> EntryScope:
    """The repository, commit, branch and dirtiness of ``root``, plus the issue and task
    the daemon names in ``FORGEHALL_ISSUE_KEY`` / ``FORGEHALL_TASK_ID``.

    The repository is the ``origin`` remote (credentials removed) or the directory name;
    outside git the commit and branch are None. The ledger's own directory
    (``.forgehall/evidence``) does not make the worktree dirty.
    """
    env = os.environ if env is None else env
    extra = {"issue_key": env.get("FORGEHALL_ISSUE_KEY"), "task_id": env.get("FORGEHALL_TASK_ID")}
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None:
        return EntryScope(
            repository=root.resolve().name, commit=None, branch=None, dirty=False, **extra
        )
    origin = _git(root, "remote", "get-url", "origin")
    status = _git(
        root,
        "status",
        "--porcelain",
        "--untracked-files=normal",
        "--",
        ":/",
        ":(exclude).forgehall/evidence",
    )
    return EntryScope(
        repository=_without_credentials(origin) if origin else Path(top).name,
        commit=_git(root, "rev-parse", "--verify", "-q", "HEAD"),
        branch=_git(root, "symbolic-ref", "--short", "-q", "HEAD"),
        dirty=bool(status),
        **extra,
    )


def runner_identity(env: Mapping[str, str] | None = None) -> RunnerInfo:
    """This machine, and the daemon's runtime id when it runs the gates."""
    env = os.environ if env is None else env
    return RunnerInfo(host=socket.gethostname(), runtime_id=env.get("FORGEHALL_RUNTIME_ID"))
