"""The runtime ``forgehall up`` runs inside its own process.

One person on one machine should not have to start a second program before an agent
can work: ``up`` runs the same daemon ``forgehall daemon`` runs (:mod:`forgehall.daemon`,
which talks HTTP only), one per workspace, against the server's own loopback address.

For each workspace it finds (at start, then every ``SCAN_SECONDS``, so a workspace made
later is served too) it revokes the daemon tokens it minted before (named
``EMBEDDED_TOKEN_NAME``), mints a fresh one in the name of the workspace's creator, and
runs a :class:`~forgehall.daemon.loop.Daemon` with it. The token lives only in memory; a
restart mints another. Each daemon keeps its own data directory
(``FORGEHALL_DATA_DIR/daemon/<workspace id>``: its persistent id, so a restart is the same
runtime, its held tasks and its journal); worktrees go under
``<FORGEHALL_DAEMON_WORKDIR>/<workspace id>`` (default ``FORGEHALL_DATA_DIR/work``), a
directory per workspace since two workspaces may both have an agent ``claude`` and an
issue ``ENG-1``. Every other ``FORGEHALL_DAEMON_*`` variable applies
as it does to a separate daemon.

Stopping drains: the server keeps answering while the daemons stop claiming, let their
running agents finish within ``FORGEHALL_DAEMON_DRAIN_SECONDS`` and report; only then
does the server stop. ``serve`` never runs this; ``FORGEHALL_EMBEDDED_RUNTIME=false``
turns it off for ``up``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select, update

from forgehall.daemon.config import ConfigError, load_config
from forgehall.daemon.loop import Daemon
from forgehall.daemon.state import AlreadyRunning
from forgehall.db.engine import Database
from forgehall.identity.models import ApiToken, User
from forgehall.identity.service import create_token
from forgehall.identity.service import now as utc_now
from forgehall.workspaces.models import Workspace

log = structlog.get_logger("forgehall.embedded_runtime")

EMBEDDED_TOKEN_NAME = "embedded runtime (forgehall up)"  # noqa: S105 - a label
SCAN_SECONDS = 5.0


class EmbeddedRuntime:
    """Daemons for every workspace, run as tasks of the server's event loop."""

    def __init__(
        self,
        db: Database,
        *,
        server_url: str,
        data_dir: Path,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.db = db
        self.server_url = server_url
        self.data_dir = data_dir
        self.environ = dict(os.environ if environ is None else environ)
        configured = self.environ.get("FORGEHALL_DAEMON_WORKDIR")
        self.work_root = Path(configured).expanduser() if configured else data_dir / "work"
        self.daemons: dict[str, Daemon] = {}
        self._runs: dict[str, asyncio.Task[int]] = {}
        self._stop = asyncio.Event()
        self._scanner: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._scanner = asyncio.create_task(self._scan_loop(), name="embedded-runtime")

    async def _scan_loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.serve_new_workspaces()
            except Exception as exc:  # the next scan tries again
                log.warning("embedded_runtime.scan_failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), SCAN_SECONDS)

    async def serve_new_workspaces(self) -> list[str]:
        """Start a daemon for each workspace that has none yet; returns their ids."""
        async with self.db.read_session() as session:
            rows = (await session.execute(select(Workspace.id, Workspace.created_by))).all()
        started: list[str] = []
        for workspace_id, creator_id in rows:
            if workspace_id in self._runs or self._stop.is_set():
                continue
            token = await self._mint(workspace_id, creator_id)
            if token is None:
                continue
            env = {
                **self.environ,
                "FORGEHALL_SERVER_URL": self.server_url,
                "FORGEHALL_DAEMON_TOKEN": token,
                "FORGEHALL_DAEMON_DIR": str(self.data_dir / "daemon" / workspace_id),
                # One work directory per workspace: two workspaces may both have an
                # agent "claude" and an issue ENG-1.
                "FORGEHALL_DAEMON_WORKDIR": str(self.work_root / workspace_id),
            }
            try:
                config = load_config(env)
            except ConfigError as exc:
                log.error("embedded_runtime.config_error", error=str(exc))
                self._stop.set()  # the same for every workspace: say it once
                return started
            daemon = Daemon(
                config, custom_commands=env.get("FORGEHALL_DAEMON_CUSTOM_COMMANDS") == "1"
            )
            daemon.data.prepare()
            try:
                daemon.data.acquire_lock()
            except AlreadyRunning as exc:
                log.error("embedded_runtime.locked", workspace_id=workspace_id, error=str(exc))
                continue
            self.daemons[workspace_id] = daemon
            self._runs[workspace_id] = asyncio.create_task(
                self._run(workspace_id, daemon), name=f"embedded-daemon-{workspace_id}"
            )
            log.info("embedded_runtime.started", workspace_id=workspace_id)
            started.append(workspace_id)
        return started

    async def _run(self, workspace_id: str, daemon: Daemon) -> int:
        try:
            code = await daemon.run(handle_signals=False)
        finally:
            daemon.data.release_lock()
        if not self._stop.is_set():
            # It gave up on its own (its token was revoked, say): the next scan mints a
            # new token and starts it again.
            log.warning("embedded_runtime.daemon_exited", workspace_id=workspace_id, code=code)
            self._runs.pop(workspace_id, None)
            self.daemons.pop(workspace_id, None)
        return code

    async def _mint(self, workspace_id: str, creator_id: str | None) -> str | None:
        async with self.db.session() as session:
            creator = await session.get(User, creator_id) if creator_id else None
            if creator is None:
                log.warning("embedded_runtime.no_creator", workspace_id=workspace_id)
                return None
            await session.execute(
                update(ApiToken)
                .where(
                    ApiToken.workspace_id == workspace_id,
                    ApiToken.kind == "dmn",
                    ApiToken.name == EMBEDDED_TOKEN_NAME,
                    ApiToken.revoked_at.is_(None),
                )
                .values(revoked_at=utc_now())
            )
            issued = await create_token(
                session, creator, kind="dmn", name=EMBEDDED_TOKEN_NAME, workspace_id=workspace_id
            )
            return issued.plaintext

    async def stop(self) -> None:
        """Drain every daemon (they report what they ran), then return. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._scanner is not None:
            await asyncio.gather(self._scanner, return_exceptions=True)
        for daemon in self.daemons.values():
            daemon.request_stop()
        runs = dict(self._runs)
        results: list[Any] = await asyncio.gather(*runs.values(), return_exceptions=True)
        for workspace_id, result in zip(runs, results, strict=True):
            if isinstance(result, BaseException):
                log.error(
                    "embedded_runtime.daemon_failed",
                    workspace_id=workspace_id,
                    error=f"{type(result).__name__}: {result}",
                )
        log.info("embedded_runtime.stopped", daemons=len(runs))
