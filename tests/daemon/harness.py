"""A real server, a real daemon and the fake agent CLIs, as subprocesses.

:func:`start_board` starts ``forgehall serve`` on a fresh database, makes the first
admin, the workspace ``team`` (prefix ENG), a git repository the workspace checks out,
and a daemon token. :class:`DaemonProcess` runs ``forgehall daemon`` with tests/fakes
first on PATH, its data and work directories under the test's tmp path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.process import PYTHON, ServerProcess, base_env
from tests.test_live import admin_token

FAKES = Path(__file__).resolve().parent.parent / "fakes"
WS = "/api/v1/workspaces/team"
T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def make_origin(path: Path) -> Path:
    path.mkdir(parents=True)
    git("init", "--quiet", "-b", "main", cwd=path)
    (path / "README.md").write_text("# app\n")
    git("add", "README.md", cwd=path)
    git("commit", "--quiet", "-m", "first", cwd=path)
    return path


def _stat_fields(pid: int | str) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (state, ppid, pgrp, …); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """The live (non-zombie) processes of a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


@dataclass
class Board:
    tmp: Path
    server: ServerProcess
    api: httpx.Client  # an admin of `team`, base URL = the server
    daemon_token: str
    origin: Path
    agents: dict[str, str] = field(default_factory=dict)  # name -> id

    def add_agent(self, name: str, provider: str = "claude", **env: str) -> str:
        response = self.api.post(
            f"{WS}/agents", json={"name": name, "provider": provider, "env": env}
        )
        assert response.status_code == 201, response.text
        self.agents[name] = response.json()["id"]
        return self.agents[name]

    def assign(self, title: str, agent: str) -> str:
        created = self.api.post(
            f"{WS}/issues",
            json={"title": title, "assignee": {"kind": "agent", "id": self.agents[agent]}},
        )
        assert created.status_code == 201, created.text
        key: str = created.json()["key"]
        return key

    def tasks(self, key: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.api.get(f"{WS}/tasks").json()
        return [t for t in rows if t["issue_key"] == key]

    def task(self, key: str) -> dict[str, Any] | None:
        rows = self.tasks(key)
        return rows[0] if rows else None

    def wait_task(self, key: str, *statuses: str, timeout: float = 45) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            task = self.task(key)
            return task if task is not None and task["status"] in statuses else None

        try:
            return wait_for(f"{key} to be {'/'.join(statuses)}", check, timeout)
        except AssertionError:
            raise AssertionError(f"{key}: {self.task(key)}") from None

    def messages(self, task_id: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.api.get(f"{WS}/tasks/{task_id}/messages").json()
        return rows

    def all_messages(self, task_id: str) -> list[dict[str, Any]]:
        """The whole transcript of the latest attempt, page by page."""
        rows: list[dict[str, Any]] = []
        while True:
            after = rows[-1]["seq"] if rows else 0
            page = self.api.get(
                f"{WS}/tasks/{task_id}/messages", params={"after": after, "limit": 1000}
            ).json()
            if not page:
                return rows
            rows.extend(page)

    def issue(self, key: str) -> dict[str, Any]:
        data: dict[str, Any] = self.api.get(f"{WS}/issues/{key}").json()
        return data

    def comments(self, key: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.api.get(f"{WS}/issues/{key}/comments").json()
        return rows


def start_board(
    tmp: Path, database_url: str, *, command: str = "serve", **server_env: str
) -> Board:
    env = base_env(tmp, DATABASE_URL=database_url, **server_env)
    server = ServerProcess(tmp, env=dict(env), command=command).start()
    try:
        return _set_up_board(tmp, server, env)
    except BaseException:
        server.stop()  # never leave a server running behind a failed set-up
        raise


def _set_up_board(tmp: Path, server: ServerProcess, env: dict[str, str]) -> Board:
    server.wait_ready()
    token = admin_token(server, env)
    api = httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {token}"}, timeout=15
    )
    created = api.post(
        "/api/v1/workspaces", json={"slug": "team", "name": "T", "key_prefix": "ENG"}
    )
    assert created.status_code == 201, created.text
    origin = make_origin(tmp / "origin")
    repo = api.post(
        f"{WS}/repositories", json={"name": "app", "url": str(origin), "default_branch": "main"}
    )
    assert repo.status_code == 201, repo.text
    minted = api.post(f"{WS}/daemon-tokens", json={"name": "laptop"})
    assert minted.status_code == 201, minted.text
    return Board(tmp, server, api, minted.json()["token"], origin)


class DaemonProcess:
    def __init__(
        self,
        board: Board,
        *,
        name: str = "daemon",
        data_dir: Path | None = None,
        prefix: tuple[str, ...] = (),
        **extra: str,
    ) -> None:
        self.board = board
        self.prefix = prefix  # a command the daemon runs under (e.g. unshare … exec "$0")
        self.data_dir = data_dir or board.tmp / f"{name}-data"
        self.work_dir = board.tmp / "work"
        self.fake_log = board.tmp / "fake-agents.jsonl"
        self.log_path = board.tmp / f"{name}.out"
        self.env = base_env(
            board.tmp,
            PATH=f"{FAKES}{os.pathsep}{os.environ.get('PATH', '')}",
            FORGEHALL_SERVER_URL=board.server.url,
            FORGEHALL_DAEMON_TOKEN=board.daemon_token,
            FORGEHALL_DAEMON_DIR=str(self.data_dir),
            FORGEHALL_DAEMON_WORKDIR=str(self.work_dir),
            FORGEHALL_DAEMON_CLAIM_WAIT="5",
            FORGEHALL_DAEMON_DRAIN_SECONDS="5",
            FORGEHALL_DAEMON_KILL_GRACE="2",
            FAKE_AGENT_LOG=str(self.fake_log),
        )
        self.env.pop("FORGEHALL_DATA_DIR", None)
        self.env.update(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        self._out = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.prefix, PYTHON, "-m", "forgehall", "daemon"],
            env=self.env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def health(self) -> dict[str, Any] | None:
        try:
            where = json.loads((self.data_dir / "health.json").read_text())
            response = httpx.get(f"http://{where['host']}:{where['port']}/health", timeout=2)
        except (OSError, ValueError, httpx.HTTPError):
            return None
        data: dict[str, Any] = response.json()
        return data

    def wait_running(self, timeout: float = 30) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.output()}")
            health = self.health()
            return health if health and health["status"] == "running" else None

        return wait_for("the daemon to run", check, timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._out.close()
        return self.proc.returncode

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._out.close()
        return code

    def fake_runs(self) -> list[dict[str, Any]]:
        if not self.fake_log.exists():
            return []
        return [json.loads(line) for line in self.fake_log.read_text().splitlines() if line]

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, "-m", "forgehall", "daemon", *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
