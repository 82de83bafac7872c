"""``forgehall up`` runs a runtime daemon in its own process: assign, and it works.

The server is ``forgehall up`` on SQLite with tests/fakes first on PATH (the embedded
daemon finds the fake CLIs there); nothing else is started.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.harness import FAKES, WS, Board, start_board, wait_for
from tests.process import ServerProcess

pytestmark = pytest.mark.slow


def up_board(tmp_path: Path, **extra: str) -> Board:
    return start_board(
        tmp_path,
        f"sqlite:///{tmp_path / 'up.db'}",
        command="up",
        PATH=f"{FAKES}{os.pathsep}{os.environ.get('PATH', '')}",
        FORGEHALL_DAEMON_CLAIM_WAIT="5",
        FORGEHALL_DAEMON_DRAIN_SECONDS="10",
        FAKE_AGENT_LOG=str(tmp_path / "fake-agents.jsonl"),
        **extra,
    )


@pytest.fixture
def board(tmp_path: Path) -> Iterator[Board]:
    board = up_board(tmp_path)
    yield board
    board.api.close()
    board.server.stop()


def runtimes(board: Board) -> list[dict[str, object]]:
    response = board.api.get(f"{WS}/runtimes")
    assert response.status_code == 200, response.text
    rows: list[dict[str, object]] = response.json()
    return rows


def test_up_runs_a_runtime_that_takes_the_work(board: Board) -> None:
    (runtime,) = wait_for("the embedded runtime to register", lambda: runtimes(board), 20)
    assert runtime["online"] is True
    assert "claude" in runtime["providers"]  # type: ignore[operator]

    board.add_agent("claude", FAKE_AGENT_MODE="comment")
    key = board.assign("Fix the login redirect", "claude")
    done = board.wait_task(key, "completed", "failed")
    assert done["status"] == "completed", (done, board.server.log_path.read_text())
    assert done["runtime_id"] == runtime["id"]
    (comment,) = board.comments(key)
    assert comment["author"]["kind"] == "agent"
    assert board.issue(key)["status"]["name"] == "In Review"
    work_root = board.tmp / "data" / "work"
    (workspace_dir,) = work_root.iterdir()  # one per workspace
    work = workspace_dir / "claude" / key / "work"
    assert (work / "README.md").read_text() == "# app\n", "checked out under the data dir"

    # Its token is an ordinary daemon token of the workspace, listed and revocable.
    tokens = board.api.get(f"{WS}/daemon-tokens").json()
    assert "embedded runtime (forgehall up)" in [t["name"] for t in tokens]


def test_stopping_up_drains_a_running_agent_before_the_server_goes(board: Board) -> None:
    wait_for("the embedded runtime to register", lambda: runtimes(board), 20)
    board.add_agent("claude", FAKE_AGENT_MODE="long", FAKE_AGENT_SECONDS="3")
    key = board.assign("Take a while", "claude")
    board.wait_task(key, "running")
    assert board.server.proc is not None
    board.server.proc.send_signal(signal.SIGTERM)
    assert board.server.proc.wait(60) == 0
    log = board.server.log_path.read_text()
    assert "embedded_runtime.stopped" in log
    assert log.index("embedded_runtime.stopped") < log.index("server.stopped")

    board.server.stop()  # already gone: closes its log
    # Started again on the same data: the run finished and was reported before the stop.
    board.server = ServerProcess(
        board.tmp, env=dict(board.server.env), command="up", port=board.server.port
    ).start()
    board.server.wait_ready()
    done = board.wait_task(key, "completed", "failed", timeout=5)
    assert done["status"] == "completed", done
    assert done["attempt"] == 1, "reported before the server stopped, not retried"


def test_up_without_the_embedded_runtime(tmp_path: Path) -> None:
    board = up_board(tmp_path, FORGEHALL_EMBEDDED_RUNTIME="false")
    try:
        wait_for(
            "the server's first background passes",
            lambda: "service.started" in board.server.log_path.read_text(),
        )
        assert "embedded_runtime" not in board.server.log_path.read_text()
        assert runtimes(board) == []
    finally:
        board.api.close()
        board.server.stop()
