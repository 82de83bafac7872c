"""One task: prepare its directory, run the agent CLI, stream what it does, report the end.

The agent runs in its own process group (``start_new_session``) in the worktree, with the
agent's env plus ``FORGEHALL_SERVER_URL``, ``FORGEHALL_TOKEN`` (the task token),
``FORGEHALL_WORKSPACE``, ``FORGEHALL_TASK_ID``, ``FORGEHALL_ISSUE_KEY`` and a private
``TMPDIR``; nothing of the daemon's own ``FORGEHALL_DAEMON_*`` configuration (its token
above all) reaches it. Stopping a run — cancelled by a member, a watchdog, the daemon
draining — kills the whole group: SIGTERM, SIGKILL after a grace period.

The agent never waits for the server: its output goes to the transcript file at once and
a sender ships batches from there every ≤ 0.5 s. The terminal report goes through the
journal (:mod:`forgehall.daemon.delivery`). A 409 ``stale-lease`` on any report means the
task is not ours any more: the agent is killed and nothing more is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Literal

from forgehall.agents.schemas import ClaimedTask
from forgehall.daemon.adapters.base import Invocation, Provider, Session, Usage
from forgehall.daemon.agentcli import (
    AgentCliMissing,
    build_agent_invocation,
    resolve_provider,
    start_session,
)
from forgehall.daemon.brief import render_brief, render_prompt
from forgehall.daemon.client import Backoff, ProtocolClient, Refused, Unreachable
from forgehall.daemon.config import DaemonConfig
from forgehall.daemon.state import DataDir, HeldTask, JournalEntry
from forgehall.daemon.transcript import Transcript, read_batch
from forgehall.daemon.workdir import TaskDir, Workdirs, WorkspaceError
from forgehall.gates.config import GATES_FILE, ConfigError, load_gates
from forgehall.gates.runner import detect_scope, run_gates, runner_identity, select_gates
from forgehall.gates.schemas import GatesFile
from forgehall.gates.submit import check_receipt, submission_bodies

log = logging.getLogger("forgehall.daemon")

StopReason = Literal["cancelled", "idle", "timeout", "shutdown", "lost"]
SEND_INTERVAL = 0.5
USAGE_INTERVAL = 2.0
STDERR_TAIL = 3000
LINE_LIMIT = 64 * 1024 * 1024  # one stdout line of a CLI can be a large JSON event
DETAIL_MAX = 4000
GATE_SUBMIT_ATTEMPTS = 5


def usage_rows(usage: Mapping[str, Usage]) -> list[dict[str, Any]]:
    rows = []
    for model, figures in list(usage.items())[:50]:
        row: dict[str, Any] = {"model": model[:200] or "unknown", **asdict(figures)}
        if row["cost_usd"] is None:
            del row["cost_usd"]
        rows.append(row)
    return rows


def agent_environment(
    base: Mapping[str, str], task: ClaimedTask, server_url: str, tmpdir: str
) -> dict[str, str]:
    """The daemon's environment without its own secrets, then the agent's, then ours."""
    ours = ("FORGEHALL_TOKEN", "FORGEHALL_SERVER_URL", "FORGEHALL_WORKSPACE")
    env = {k: v for k, v in base.items() if not k.startswith("FORGEHALL_DAEMON_") and k not in ours}
    env.update(task.agent.env)
    env.update(
        {
            "FORGEHALL_SERVER_URL": server_url,
            "FORGEHALL_TOKEN": task.task_token,
            "FORGEHALL_WORKSPACE": task.workspace_id,
            "FORGEHALL_TASK_ID": task.id,
            "FORGEHALL_ISSUE_KEY": task.issue.key,
            "TMPDIR": tmpdir,
        }
    )
    return env


def kill_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("agent.kill_refused pgid=%d", pgid)
        return False
    return True


class TaskRun:
    def __init__(
        self,
        task: ClaimedTask,
        *,
        config: DaemonConfig,
        client: ProtocolClient,
        data: DataDir,
        workdirs: Workdirs,
        on_journal: Callable[[], None],
        runtime_id: str = "",
    ) -> None:
        self.task = task
        self.runtime_id = runtime_id
        self.config = config
        self.client = client
        self.data = data
        self.workdirs = workdirs
        self.on_journal = on_journal
        self.stop_reason: StopReason | None = None
        self._stopped = asyncio.Event()
        self.process: asyncio.subprocess.Process | None = None
        self.session: Session | None = None
        self.transcript: Transcript | None = None
        self._sent_offset = 0
        self._sent_usage: list[dict[str, Any]] = []
        self._last_output = time.monotonic()
        self._stderr: deque[str] = deque(maxlen=200)
        self._comment_baseline: list[str] | None = None
        self._started_at = ""

    @property
    def id(self) -> str:
        return self.task.id

    def stop(self, reason: StopReason) -> None:
        """Ask the run to stop (idempotent; the first reason wins)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.info("task.stopping task_id=%s reason=%s", self.id, reason)
        self._stopped.set()

    # --- the run ----------------------------------------------------------------------

    async def run(self) -> None:
        task = self.task
        log.info(
            "task.claimed task_id=%s issue=%s agent=%s provider=%s attempt=%d",
            task.id,
            task.issue.key,
            task.agent.name,
            task.agent.provider,
            task.attempt,
        )
        try:
            await self._run()
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.exception("task.crashed task_id=%s", task.id)
                self._journal_fail("runtime_offline", f"the daemon failed running it: {exc!r}")
            else:
                log.error("task.disk_full task_id=%s reason=%s", task.id, exc)
                self._journal_fail(
                    "runtime_offline",
                    f"the disk of runtime {self.config.machine or 'this runtime'} is full "
                    f"({exc.strerror}: {exc.filename or ''}); free space there — the task is "
                    "retried, perhaps on another runtime",
                )
        except Exception as exc:
            log.exception("task.crashed task_id=%s", task.id)
            self._journal_fail("runtime_offline", f"the daemon failed running it: {exc!r}")
        finally:
            if self.transcript is not None:
                self.transcript.close()

    async def _run(self) -> None:
        task = self.task
        if self.stop_reason is not None:  # claimed while draining, or cancelled at once
            self._journal_stopped()
            return
        provider = resolve_provider(task.agent)
        if provider is None:
            self._journal_fail(
                "agent_error", f"this runtime has no adapter for provider {task.agent.provider!r}"
            )
            return
        preparing = time.monotonic()
        try:
            taskdir = await self.workdirs.prepare(
                task.agent.name, task.issue.key, task.repositories, provider.brief_file
            )
        except WorkspaceError as exc:
            log.warning("task.workspace_failed task_id=%s reason=%s", task.id, exc)
            self._journal_fail(
                "runtime_offline" if exc.retryable else "agent_error",
                f"could not prepare the workspace: {exc}",
            )
            return
        log.info(
            "task.workspace_ready task_id=%s seconds=%.3f",
            task.id,
            time.monotonic() - preparing,
        )
        if self.stop_reason is not None:
            self._journal_stopped()
            return
        brief = render_brief(task, {k: str(v) for k, v in taskdir.extra.items()})
        (taskdir.work / provider.brief_file).write_text(brief, encoding="utf-8")
        await self._spawn_and_follow(provider, taskdir)

    async def _spawn_and_follow(self, provider: Provider, taskdir: TaskDir) -> None:
        task = self.task
        prompt = render_prompt(task, provider.brief_file)
        session = start_session(provider, task.agent)
        self.session = session
        try:
            invocation: Invocation = build_agent_invocation(
                provider,
                task.agent,
                prompt=prompt,
                workdir=str(taskdir.work),
                resume=task.prior_session_id,
            )
        except AgentCliMissing as exc:
            self._journal_fail("runtime_offline", str(exc))
            return
        except ValueError as exc:
            self._journal_fail("agent_error", f"cannot build the command line: {exc}")
            return
        first_lines = session.start(prompt, str(taskdir.work), task.prior_session_id)
        argv = [*self.config.wrapper, *invocation.argv]
        env = agent_environment(os.environ, task, self.config.server_url, str(taskdir.tmp))
        stem = f"{task.id}-{task.attempt}"
        self.transcript = Transcript(taskdir.logs / f"{stem}.jsonl")
        stderr_log = (taskdir.logs / f"{stem}.stderr").open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=taskdir.work,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                limit=LINE_LIMIT,
            )
        except OSError as exc:
            stderr_log.close()
            self._journal_fail("agent_error", f"could not start {argv[0]}: {exc}")
            return
        process = self.process
        self._started_at = datetime.now(UTC).isoformat()
        self._last_output = time.monotonic()  # the idle clock starts with the agent, not the clone
        self.data.hold(
            HeldTask(
                task_id=task.id,
                lease_token=task.lease_token,
                issue_key=task.issue.key,
                workdir=str(taskdir.work),
                pgid=process.pid,
            )
        )
        log.info("agent.started task_id=%s pid=%d argv0=%s", task.id, process.pid, argv[0])
        stdin_lines = list(first_lines)
        if invocation.stdin is not None:
            stdin_lines.append(invocation.stdin)
        await self._write_stdin(stdin_lines, close=not first_lines)

        sender = asyncio.create_task(self._send_loop())
        readers = asyncio.gather(self._read_stdout(session), self._read_stderr(stderr_log))
        waiter = asyncio.create_task(process.wait())
        watchdog = asyncio.create_task(self._watchdog())
        stopped = asyncio.create_task(self._stopped.wait())
        await asyncio.wait({waiter, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            await self._terminate(waiter)
        watchdog.cancel()
        stopped.cancel()
        exit_code = waiter.result()
        # Whatever the agent left running in its group goes with it (and lets stdout end).
        kill_group(process.pid, signal.SIGKILL)
        try:
            await asyncio.wait_for(readers, 10)
        except TimeoutError:
            log.warning("agent.output_open task_id=%s", task.id)
        stderr_log.close()
        for message in session.finish(exit_code):
            self.transcript.append(message.kind, message.content)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        log.info("agent.exited task_id=%s code=%s stop=%s", task.id, exit_code, self.stop_reason)
        gates_note = None
        if self.stop_reason is None and exit_code == 0 and not session.outcome.error:
            gates_note = await self._gates_after_work(taskdir)
        if self.stop_reason == "lost":
            self.data.release(task.id)
            return
        self._journal_outcome(exit_code, session, gates_note)

    async def _write_stdin(self, lines: list[str], *, close: bool) -> None:
        assert self.process is not None
        assert self.process.stdin is not None
        stdin = self.process.stdin
        if stdin.is_closing():  # closed after the prompt (a one-shot CLI), or the agent is gone
            if lines:
                log.warning("agent.stdin_closed task_id=%s lost=%d", self.id, len(lines))
            return
        try:
            for line in lines:
                stdin.write(line.encode() if line.endswith("\n") else (line + "\n").encode())
            await stdin.drain()
            if close:
                stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            log.warning("agent.stdin_closed task_id=%s", self.id)

    async def _read_stdout(self, session: Session) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        assert self.transcript is not None
        stdout = self.process.stdout
        while True:
            try:
                raw = await stdout.readline()
            except ValueError:  # a line over LINE_LIMIT: take what is there
                raw = await stdout.read(LINE_LIMIT)
            if not raw:
                return
            self._last_output = time.monotonic()
            messages, replies = session.feed(raw.decode(errors="replace").rstrip("\r\n"))
            for message in messages:
                self.transcript.append(message.kind, message.content)
            if replies or session.done:
                await self._write_stdin(replies, close=session.done)

    async def _read_stderr(self, sink: Any) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        while raw := await self.process.stderr.readline():
            self._last_output = time.monotonic()
            sink.write(raw)
            sink.flush()
            self._stderr.append(raw.decode(errors="replace").rstrip("\n"))

    async def _watchdog(self) -> None:
        started = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, self.config.idle_timeout / 4))
            now = time.monotonic()
            if now - self._last_output > self.config.idle_timeout:
                self.stop("idle")
            elif self.config.task_timeout and now - started > self.config.task_timeout:
                self.stop("timeout")

    async def _terminate(self, waiter: asyncio.Task[int]) -> None:
        assert self.process is not None
        pgid = self.process.pid
        kill_group(pgid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.config.kill_grace)
        except TimeoutError:
            log.warning("agent.kill task_id=%s pgid=%d", self.id, pgid)
            kill_group(pgid, signal.SIGKILL)
            await waiter

    # --- reports while it runs --------------------------------------------------------

    async def _send_loop(self) -> None:
        """start, then message batches and usage until cancelled (at the agent's exit)."""
        task = self.task
        backoff = Backoff()
        started = False
        last_usage = 0.0
        while True:
            try:
                if not started:
                    await self._report_start()
                    started = True
                await self._send_messages()
                rows = usage_rows(self.session.outcome.usage) if self.session else []
                now = time.monotonic()
                if rows and rows != self._sent_usage and now - last_usage >= USAGE_INTERVAL:
                    await self.client.usage(task.id, task.lease_token, rows)
                    self._sent_usage, last_usage = rows, now
                backoff.reset()
                await asyncio.sleep(SEND_INTERVAL)
            except Unreachable as exc:
                delay = backoff.next()
                log.warning("task.report_retry task_id=%s in=%.1fs reason=%s", task.id, delay, exc)
                await asyncio.sleep(delay)
            except Refused as exc:
                if exc.lease_lost:
                    log.warning("task.lease_lost task_id=%s state=%s", task.id, exc.current_state)
                    self.stop("lost")
                    return
                log.error("task.report_refused task_id=%s reason=%s", task.id, exc)
                await asyncio.sleep(SEND_INTERVAL)

    async def _report_start(self) -> None:
        task = self.task
        try:
            state = await self.client.start(task.id, task.lease_token, None)
        except Refused as exc:
            if exc.problem != "invalid-transition":  # a repeat whose first answer was lost
                raise
            return
        if state.cancel_requested:
            self.stop("cancelled")
        try:
            comments = await self.client.issue_comments(
                task.workspace_id, task.issue.key, task.task_token
            )
            self._comment_baseline = [
                c["id"] for c in comments if (c.get("author") or {}).get("id") == task.agent.id
            ]
        except (Unreachable, Refused) as exc:
            log.warning("task.comments_unread task_id=%s reason=%s", task.id, exc)

    async def _send_messages(self) -> None:
        assert self.transcript is not None
        while True:
            messages, offset = read_batch(self.transcript.path, self._sent_offset)
            if not messages:
                return
            await self.client.messages(self.task.id, self.task.lease_token, messages)
            self._sent_offset = offset

    # --- gates after the agent's work ----------------------------------------------------

    async def _gates_after_work(self, taskdir: TaskDir) -> str | None:
        """Run the gates the workspace's tier requires in the worktree and submit the
        entries with the task token (while the lease is current). A line for the task's
        result, or None when the worktree has no gates file (or the run was stopped)."""
        task = self.task
        root = taskdir.work
        if not (root / GATES_FILE).is_file():
            return None
        try:
            gates_file = load_gates(root)
        except ConfigError as exc:
            log.warning("task.gates_invalid task_id=%s problems=%d", task.id, len(exc.problems))
            problems = "\n".join(f"- {problem}" for problem in exc.problems[:20])
            return f"The gates did not run: {GATES_FILE} does not validate:\n{problems}"
        selected = select_gates(gates_file, None, task.tier)
        if not selected:
            log.info("task.gates_none task_id=%s tier=%s", task.id, task.tier)
            return f"No gate of {GATES_FILE} is required in tier {task.tier}: none ran."
        env = agent_environment(os.environ, task, self.config.server_url, str(taskdir.tmp))
        env["FORGEHALL_RUNTIME_ID"] = self.runtime_id
        scope = await asyncio.to_thread(detect_scope, root, env)
        runner = runner_identity(env)
        jobs = max(1, min(len(selected), os.cpu_count() or 1))
        running = asyncio.create_task(run_gates(selected, root, jobs=jobs, base_env=env))
        stopped = asyncio.create_task(self._stopped.wait())
        await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not running.done():  # cancelled, shut down or lost while the gates ran
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            return None
        try:
            outcomes = running.result()
        except Exception as exc:  # the agent's work is done: report it, without gates
            log.exception("task.gates_crashed task_id=%s", task.id)
            return f"The gates could not run: {exc!r}"
        entries = [o.entry(scope, runner, task.tier).model_dump(mode="json") for o in outcomes]
        counts = Counter(o.result for o in outcomes)
        log.info(
            "task.gates_run task_id=%s tier=%s pass=%d fail=%d warn=%d skip=%d",
            task.id,
            task.tier,
            counts["PASS"],
            counts["FAIL"],
            counts["WARN"],
            counts["SKIP"],
        )
        line = f"Gates (tier {task.tier}): " + ", ".join(
            f"{counts[r]} {r}" for r in ("PASS", "FAIL", "WARN", "SKIP") if counts[r]
        )
        problem = await self._submit_gates(entries, gates_file)
        if problem is not None:
            log.warning("task.gates_not_submitted task_id=%s reason=%s", task.id, problem)
            return f"{line}; the results could not be submitted: {problem}"
        return line

    async def _submit_gates(
        self, entries: list[dict[str, Any]], gates_file: GatesFile
    ) -> str | None:
        task = self.task
        for chunk, body in submission_bodies(entries, gates_file):
            backoff = Backoff()
            for attempt in range(GATE_SUBMIT_ATTEMPTS):
                try:
                    answer = await self.client.ledger_append(
                        task.workspace_id, task.task_token, body
                    )
                    break
                except Unreachable as exc:
                    if attempt == GATE_SUBMIT_ATTEMPTS - 1 or self.stop_reason is not None:
                        return str(exc)
                    await asyncio.sleep(backoff.next())
                except Refused as exc:
                    return f"{exc.status} {exc.problem}: {exc.detail}"
            _, problem = check_receipt(chunk, answer)
            if problem is not None:
                return problem
        return None

    # --- the end ------------------------------------------------------------------------

    def _stderr_tail(self) -> str:
        return "\n".join(self._stderr)[-STDERR_TAIL:]

    def _journal_outcome(
        self, exit_code: int, session: Session, gates_note: str | None = None
    ) -> None:
        outcome = session.outcome
        reason = self.stop_reason
        if reason == "cancelled":
            self._journal_fail("cancelled", "stopped on request")
        elif reason == "shutdown":
            self._journal_fail("runtime_offline", "the daemon shut down while it ran")
        elif reason == "idle":
            self._journal_fail(
                "agent_error",
                f"no output for {self.config.idle_timeout:g} s (the idle timeout, "
                f"FORGEHALL_DAEMON_IDLE_TIMEOUT): stopped\n{self._stderr_tail()}",
            )
        elif reason == "timeout":
            self._journal_fail(
                "agent_error",
                f"still running after {self.config.task_timeout:g} s (the task timeout, "
                f"FORGEHALL_DAEMON_TASK_TIMEOUT): stopped\n" + self._stderr_tail(),
            )
        elif exit_code != 0 or outcome.error:
            detail = f"{self.task.agent.provider} exited with status {exit_code}"
            if outcome.error:
                detail += f": {outcome.error}"
            tail = self._stderr_tail()
            if tail:
                detail += f"\n{tail}"
            self._journal_fail("agent_error", detail)
        else:
            answer = outcome.final_text
            if answer is None and self.transcript is not None:
                answer = self.transcript.last_text
            answer = (answer or "").strip()
            summary = answer[: 20_000 - len(gates_note) - 2] if gates_note else answer
            if gates_note:
                summary = f"{summary}\n\n{gates_note}".strip()
            self._journal(
                "complete",
                {"summary": summary[:20_000], "session_id": (outcome.session_id or None)},
                comment=answer[:100_000] or None,
            )

    def _journal_stopped(self) -> None:
        if self.stop_reason == "lost":
            self.data.release(self.id)
        elif self.stop_reason == "cancelled":
            self._journal_fail("cancelled", "stopped on request")
        else:
            self._journal_fail("runtime_offline", "the daemon shut down before it started")

    def _journal_fail(self, failure_class: str, detail: str) -> None:
        self._journal("fail", {"failure_class": failure_class, "detail": detail[-DETAIL_MAX:]})

    def _journal(self, kind: str, body: dict[str, Any], comment: str | None = None) -> None:
        task = self.task
        usage = usage_rows(self.session.outcome.usage) if self.session else []
        entry = JournalEntry(
            task_id=task.id,
            lease_token=task.lease_token,
            kind=kind,
            body=body,
            usage=usage,
            comment=comment,
            task_token=task.task_token if comment else None,
            workspace_id=task.workspace_id,
            issue_key=task.issue.key,
            agent_id=task.agent.id,
            started_at=self._started_at,
            comment_baseline=self._comment_baseline,
            transcript=str(self.transcript.path) if self.transcript else "",
            transcript_offset=self._sent_offset,
        )
        self.data.journal(entry)
        log.info(
            "task.finished task_id=%s report=%s %s",
            task.id,
            kind,
            body.get("failure_class", ""),
        )
        self.on_journal()
