"""The daemon: register, give back orphans, claim, heartbeat, drain.

Start-up, in order: take the data directory's lock (one daemon per directory); start the
health endpoint (``starting``); detect the agent CLIs; kill agent process groups left by
a crashed predecessor; register (same ``daemon_id``: same runtime); report the tasks held
before a crash as orphans — except those whose terminal report is in the journal, which
is replayed instead; then ``running``: three loops side by side.

- claim: a long poll (``FORGEHALL_DAEMON_CLAIM_WAIT``, 30 s) for up to the free slots
  (``FORGEHALL_DAEMON_MAX_CONCURRENT``); each task is written to ``held/`` before it runs.
- heartbeat: every ``heartbeat_seconds`` (15 s) whatever else happens; its ``cancel``
  list (and the claim's) stops those tasks.
- journal delivery (:mod:`forgehall.daemon.delivery`).

An unreachable server is retried with exponential backoff and jitter (capped at 15 s, well
inside the 60 s lease); a reconnect wakes the journal delivery. SIGTERM (or SIGINT)
drains: no more claims (``draining``), running tasks get ``FORGEHALL_DAEMON_DRAIN_SECONDS``
to finish, the rest are stopped and reported ``runtime_offline`` (back to the queue,
claimable after its backoff); the journal gets a last chance to be delivered; what is left
is replayed at the next start.
A second signal skips the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from forgehall.agents.schemas import ClaimedTask, RuntimeRegisterIn
from forgehall.daemon.agentcli import detect_providers
from forgehall.daemon.client import Backoff, ProtocolClient, Refused, Unreachable
from forgehall.daemon.config import DaemonConfig
from forgehall.daemon.delivery import Deliverer
from forgehall.daemon.health import HealthServer
from forgehall.daemon.runner import TaskRun, kill_group
from forgehall.daemon.state import DataDir, HeldTask, write_json_durably
from forgehall.daemon.workdir import Collector, Workdirs

log = logging.getLogger("forgehall.daemon")


class FatalError(Exception):
    """The daemon cannot go on (its token was refused): exit with this message."""


def _group_alive_in(pgid: int, workdir: str) -> bool:
    """The process group leader still runs in ``workdir`` (so the pid was not reused)."""
    try:
        cwd = os.readlink(f"/proc/{pgid}/cwd")
    except OSError:
        return False
    return bool(workdir) and Path(cwd).resolve() == Path(workdir).resolve()


class Daemon:
    def __init__(self, config: DaemonConfig, *, custom_commands: bool = False) -> None:
        self.config = config
        self.data = DataDir(config.data_dir)
        self.client = ProtocolClient(config.server_url, config.token)
        self.workdirs = Workdirs(config.work_dir)
        self.deliverer = Deliverer(self.client, self.data)
        self.custom_commands = custom_commands
        self.status = "starting"
        self.daemon_id = ""
        self.runtime_id = ""
        self.heartbeat_seconds = 15.0
        self.providers: dict[str, str] = {}
        self.runs: dict[str, TaskRun] = {}
        self.connected = False
        self._stop = asyncio.Event()
        self._urgent = False
        self._slot_freed = asyncio.Event()
        self._runs_empty = asyncio.Event()
        self._runs_empty.set()
        self._fatal: str | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._delivering: asyncio.Task[Any] | None = None

    # --- start ------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "pid": os.getpid(),
            "daemon_id": self.daemon_id,
            "runtime_id": self.runtime_id,
            "server": self.config.server_url,
            "connected": self.connected,
            "providers": self.providers,
            "tasks": sorted(self.runs),
            "journal": len(self.data.journal_entries()),
        }

    async def run(self, *, handle_signals: bool = True) -> int:
        """Until stopped; 0 after a clean drain, 2 when the server refused the token.

        ``handle_signals=False`` when another program owns the process's signals (the
        runtime ``forgehall up`` embeds): it calls :meth:`request_stop` itself."""
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        health = HealthServer(self.config.health_host, self.config.health_port, self.health)
        port = await health.start()
        write_json_durably(
            self.data.health_path,
            {"host": self.config.health_host, "port": port, "pid": os.getpid()},
        )
        log.info("daemon.starting pid=%d health=%s:%d", os.getpid(), self.config.health_host, port)
        try:
            await self._start()
            if not self._stop.is_set():
                self.status = "running"
                log.info(
                    "daemon.running runtime_id=%s providers=%s capacity=%d",
                    self.runtime_id,
                    ",".join(sorted(self.providers)) or "-",
                    self.config.max_concurrent,
                )
                await self._serve()
        except FatalError as exc:
            self._fatal = str(exc)
        finally:
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            await health.close()
            await self.client.aclose()
            self.data.health_path.unlink(missing_ok=True)
        if self._fatal:
            log.error("daemon.stopped reason=%s", self._fatal)
            return 2
        log.info("daemon.stopped")
        return 0

    def request_stop(self) -> None:
        if self._stop.is_set():
            self._urgent = True
            log.warning("daemon.stop_now: a second signal skips the drain grace")
            for run in self.runs.values():
                run.stop("shutdown")
        self._stop.set()

    async def _start(self) -> None:
        self.daemon_id = self.data.daemon_id()
        self.providers = await asyncio.to_thread(
            detect_providers, dict(os.environ), custom=self.custom_commands
        )
        if not self.providers:
            log.warning(
                "daemon.no_providers: no agent CLI found on PATH; the runtime will get no tasks"
            )
        held = self.data.held()
        self._reap_leftovers(held)
        await self._register()
        journaled = {entry.task_id for entry in self.data.journal_entries()}
        orphans = [h.task_id for h in held if h.task_id not in journaled]
        if orphans:
            answer = await self._retrying(lambda: self.client.orphans(self.runtime_id, orphans))
            if answer is not None:
                log.info(
                    "daemon.orphans_reported retried=%s ended=%s",
                    ",".join(answer.retried) or "-",
                    ",".join(answer.ended) or "-",
                )
            for task_id in orphans:
                self.data.release(task_id)

    def _reap_leftovers(self, held: list[HeldTask]) -> None:
        """Agents of a daemon that died (SIGKILL, a crash) outlive it in their own process
        groups: stop them, or they would go on working on a task given to someone else."""
        for task in held:
            if task.pgid and _group_alive_in(task.pgid, task.workdir):
                log.warning("agent.leftover_killed task_id=%s pgid=%d", task.task_id, task.pgid)
                kill_group(task.pgid, signal.SIGKILL)

    async def _register(self) -> None:
        body = RuntimeRegisterIn(
            daemon_id=self.daemon_id,
            machine=self.config.machine,
            providers=dict(list(self.providers.items())[:20]),
            capacity=self.config.max_concurrent,
        )
        answer = await self._retrying(lambda: self.client.register(body))
        if answer is None:
            return
        self.runtime_id = answer.runtime_id
        self.heartbeat_seconds = answer.heartbeat_seconds
        log.info(
            "runtime.registered runtime_id=%s workspace_id=%s daemon_id=%s",
            answer.runtime_id,
            answer.workspace_id,
            self.daemon_id,
        )

    async def _reregister(self) -> None:
        log.warning("runtime.unknown: registering again")
        try:
            await self._register()
        except FatalError as exc:
            self._fatal = str(exc)
            self.request_stop()
        except Refused as exc:
            log.error("runtime.register_refused reason=%s", exc)

    async def _retrying(self, call: Any) -> Any:
        """``call()`` until the server answers; None when stopped meanwhile."""
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                answer = await call()
            except Unreachable as exc:
                self._set_connected(False)
                delay = backoff.next()
                log.warning("server.unreachable retry_in=%.1fs reason=%s", delay, exc)
                await self._sleep(delay)
                continue
            except Refused as exc:
                if exc.credentials:
                    raise FatalError(
                        f"the server refused the daemon token ({exc.detail}); run "
                        "`forgehall daemon login` with a new token"
                    ) from exc
                raise
            self._set_connected(True)
            return answer
        return None

    def _set_connected(self, connected: bool) -> None:
        if connected and not self.connected:
            self.deliverer.notify()  # a reconnect: replay the journal now
        if connected != self.connected:
            log.info("server.%s", "connected" if connected else "disconnected")
        self.connected = connected

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # --- running ----------------------------------------------------------------------

    async def _serve(self) -> None:
        self._delivering = self._spawn(self.deliverer.run())
        self._spawn(self._heartbeat_loop())
        self._spawn(self._collect_loop())
        claiming = self._spawn(self._claim_loop())
        await self._stop.wait()
        await self._drain(claiming)

    async def _heartbeat_loop(self) -> None:
        backoff = Backoff()
        delay = self.heartbeat_seconds
        while True:
            await asyncio.sleep(delay)
            try:
                held = sorted({h.task_id for h in self.data.held()} | set(self.runs))
                answer = await self.client.heartbeat(self.runtime_id, held)
            except Unreachable as exc:
                self._set_connected(False)
                delay = min(backoff.next(), self.heartbeat_seconds)
                log.warning("heartbeat.failed retry_in=%.1fs reason=%s", delay, exc)
                continue
            except Refused as exc:
                delay = self.heartbeat_seconds
                if exc.status == 404:
                    await self._reregister()
                elif exc.credentials:
                    self._fatal = f"the server refused the daemon token ({exc.detail})"
                    self.request_stop()
                else:
                    log.error("heartbeat.refused reason=%s", exc)
                continue
            backoff.reset()
            delay = self.heartbeat_seconds
            self._set_connected(True)
            self._cancel(answer.cancel)

    async def _collect_loop(self) -> None:
        """Remove worktrees of finished issues: soon after start, then every interval."""
        collector = Collector(
            self.workdirs, after=self.config.gc_after, max_age=self.config.gc_max_age
        )
        delay = min(60.0, self.config.gc_interval)
        while True:
            await asyncio.sleep(delay)
            delay = self.config.gc_interval
            try:
                removed = await collector.collect(
                    in_use=self._dirs_in_use, categories=self._categories, now=time.time()
                )
            except (Unreachable, Refused) as exc:
                log.warning("worktrees.collect_postponed reason=%s", exc)
                continue
            except OSError as exc:
                log.error("worktrees.collect_failed reason=%s", exc)
                continue
            if removed:
                log.info(
                    "worktrees.collected count=%d dirs=%s",
                    len(removed),
                    ",".join(str(p.relative_to(self.workdirs.root)) for p in removed),
                )

    def _dirs_in_use(self) -> set[Path]:
        return {
            self.workdirs.root_of(run.task.agent.name, run.task.issue.key)
            for run in self.runs.values()
        }

    async def _categories(self, keys: list[str]) -> dict[str, str]:
        categories: dict[str, str] = {}
        for start in range(0, len(keys), 1000):
            answer = await self.client.issue_states(self.runtime_id, keys[start : start + 1000])
            categories.update(answer.categories)
        return categories

    def _cancel(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            run = self.runs.get(task_id)
            if run is not None:
                run.stop("cancelled")

    async def _claim_loop(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            free = self.config.max_concurrent - len(self.runs)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                answer = await self.client.claim(
                    self.runtime_id, min(free, 50), self.config.claim_wait
                )
            except Unreachable as exc:
                self._set_connected(False)
                delay = backoff.next()
                log.warning("claim.failed retry_in=%.1fs reason=%s", delay, exc)
                await self._sleep(delay)
                continue
            except Refused as exc:
                if exc.status == 404:
                    await self._reregister()
                elif exc.credentials:
                    self._fatal = f"the server refused the daemon token ({exc.detail})"
                    self.request_stop()
                    return
                else:
                    log.error("claim.refused reason=%s", exc)
                    await self._sleep(backoff.next())
                continue
            backoff.reset()
            self._set_connected(True)
            self._cancel(answer.cancel)
            for task in answer.tasks:
                self._start_task(task)
            if not answer.tasks and self.config.claim_wait < 1:
                await self._sleep(1.0)  # no long poll: do not ask again at once

    def _start_task(self, task: ClaimedTask) -> None:
        self.data.hold(
            HeldTask(task_id=task.id, lease_token=task.lease_token, issue_key=task.issue.key)
        )
        run = TaskRun(
            task,
            config=self.config,
            client=self.client,
            data=self.data,
            workdirs=self.workdirs,
            on_journal=self.deliverer.notify,
            runtime_id=self.runtime_id,
        )
        self.runs[task.id] = run
        self._runs_empty.clear()
        if self._stop.is_set():
            run.stop("shutdown")  # claimed while draining: give it back at once

        async def _run() -> None:
            try:
                await run.run()
            finally:
                self.runs.pop(task.id, None)
                self._slot_freed.set()
                if not self.runs:
                    self._runs_empty.set()

        self._spawn(_run())

    # --- stop ----------------------------------------------------------------------------

    async def _drain(self, claiming: asyncio.Task[Any]) -> None:
        self.status = "draining"
        log.info("daemon.draining tasks=%d grace=%gs", len(self.runs), self.config.drain_seconds)
        # A claim in flight may already have been answered with tasks: let it land (they
        # are given back at once) rather than drop an answer the server acted on.
        try:
            await asyncio.wait_for(asyncio.shield(claiming), self.config.claim_wait + 5)
        except TimeoutError:
            claiming.cancel()
        grace = 0.0 if self._urgent else self.config.drain_seconds
        if self.runs and grace > 0:
            log.info("daemon.waiting tasks=%s", ",".join(sorted(self.runs)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._runs_empty.wait(), grace)
        for run in list(self.runs.values()):
            run.stop("shutdown")
        await self._runs_empty.wait()
        if self._delivering is not None:  # one deliverer at a time: the flush takes over
            self._delivering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._delivering
        if not await self.deliverer.flush(timeout=10):
            log.warning("daemon.journal_pending: delivered at the next start")


def read_health_file(data: DataDir) -> dict[str, Any] | None:
    try:
        value: dict[str, Any] = json.loads(data.health_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value


def configure_logging(data: DataDir, *, level: int = logging.INFO) -> None:
    """Lines of ``time level event key=value`` to stderr and ``daemon.log`` (rotated)."""
    import logging.handlers

    import structlog

    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    root = logging.getLogger("forgehall")
    root.handlers.clear()
    root.setLevel(level)
    root.propagate = False
    stderr = logging.StreamHandler()
    stderr.setFormatter(formatter)
    root.addHandler(stderr)
    rotating = logging.handlers.RotatingFileHandler(
        data.log_path, maxBytes=10 * 1024 * 1024, backupCount=3, encoding="utf-8"
    )
    rotating.setFormatter(formatter)
    root.addHandler(rotating)
    os.chmod(data.log_path, 0o600)
    # The adapters log through structlog: route it into the same handlers.
    structlog.configure(
        processors=[
            structlog.processors.KeyValueRenderer(key_order=["event"], drop_missing=True),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )


def run_daemon(config: DaemonConfig, *, custom_commands: bool = False) -> int:
    """The whole daemon in the calling thread: lock, run, unlock. Returns the exit code.

    Raises:
        AlreadyRunning: another daemon holds this data directory.
    """
    data = DataDir(config.data_dir)
    data.prepare()
    data.acquire_lock()
    try:
        configure_logging(data)
        code: int = asyncio.run(Daemon(config, custom_commands=custom_commands).run())
        return code
    finally:
        data.release_lock()
