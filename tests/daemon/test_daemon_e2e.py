"""The runtime daemon end to end: a real server, the real daemon, the fake Claude CLI.

Each test starts ``forgehall serve`` on a fresh database (SQLite and PostgreSQL) and
``forgehall daemon`` against it; members act through the HTTP API.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.harness import (
    WS,
    Board,
    DaemonProcess,
    alive,
    git,
    start_board,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def board(tmp_path: Path, database_url: str) -> Iterator[Board]:
    board = start_board(tmp_path, database_url)
    yield board
    board.api.close()
    board.server.stop()


def test_an_assigned_issue_is_worked_on_and_completed(board: Board) -> None:
    board.add_agent("claude", FAKE_AGENT_MODE="comment")
    board.add_agent("quiet", FAKE_AGENT_MODE="ok")
    daemon = DaemonProcess(board).start()
    try:
        health = daemon.wait_running()
        # Every fake CLI in tests/fakes is detected through PATH and its --version.
        assert health["providers"]["claude"] == "claude 0.0.0-fake (forgehall test double)"
        assert set(health["providers"]) == {
            "claude",
            "codex",
            "cursor",
            "opencode",
            "copilot",
            "gemini",
            "qwen",
            "acp",
        }
        commented = board.assign("Fix the login redirect", "claude")
        quiet = board.assign("Tidy the proxy", "quiet")
        done = board.wait_task(commented, "completed", "failed")
        other = board.wait_task(quiet, "completed", "failed")
        assert done["status"] == "completed", (done, daemon.output())
        assert other["status"] == "completed", (other, daemon.output())

        # The worktree: on the agent's branch, with the brief kept out of git.
        work = daemon.work_dir / "claude" / commented / "work"
        assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=work) == f"forgehall/claude/{commented}"
        assert (work / "README.md").read_text() == "# app\n"
        brief = (work / "CLAUDE.md").read_text()
        assert "Fix the login redirect" in brief
        assert git("status", "--porcelain", cwd=work) == ""
        quiet_work = daemon.work_dir / "quiet" / quiet / "work"
        assert quiet_work != work
        assert (quiet_work / "CLAUDE.md").exists()

        # The transcript, in order, and the usage.
        messages = board.messages(done["id"])
        assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
        assert {"text", "tool_use", "tool_result"} <= {m["kind"] for m in messages}
        assert done["usage"], done
        assert any(u["model"].startswith("claude-sonnet-4-5") for u in done["usage"]), done
        assert done["session_id"] == "9f1c2e7a-4b3d-4f6e-8a21-5c7d9e0b1a23"
        assert done["result"].startswith("Fixed: the proxy no longer strips")

        # The agent commented and moved the issue itself: no fallback comment.
        comments = board.comments(commented)
        assert [c["author"]["kind"] for c in comments] == ["agent"], comments
        assert comments[0]["body"].startswith("Working on it")
        assert board.issue(commented)["status"]["name"] == "In Review"
        # The quiet agent said nothing: its final answer became its comment.
        (fallback,) = board.comments(quiet)
        assert fallback["author"] == {"kind": "agent", "id": board.agents["quiet"]}
        assert fallback["body"].startswith("Fixed: the proxy no longer strips")

        # What the agent process saw: the task token, never the daemon's.
        runs = {run["env"]["FORGEHALL_ISSUE_KEY"]: run for run in daemon.fake_runs()}
        env = runs[commented]["env"]
        assert env["FORGEHALL_TOKEN"] == "<set>"
        assert env["FORGEHALL_TASK_ID"] == done["id"]
        assert env["FORGEHALL_SERVER_URL"] == board.server.url
        assert not any(k.startswith("FORGEHALL_DAEMON_") for k in env), env
        assert runs[commented]["cwd"] == str(work)
        assert "Fix the login redirect" in runs[commented]["prompt"]
        # No token is written into the worktree, the task's logs or the daemon's log.
        for path in [*daemon.work_dir.rglob("*"), daemon.data_dir / "daemon.log"]:
            if path.is_file() and ".git" not in path.parts:
                assert board.daemon_token not in path.read_text(errors="replace"), path
        assert list((daemon.data_dir / "journal").iterdir()) == []
        assert list((daemon.data_dir / "held").iterdir()) == []

        status = daemon.cli("status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["status"] == "running"
        assert " WARNING " not in daemon.output(), "clean runs log no warning"
    finally:
        assert daemon.stop() == 0, daemon.output()
    assert "daemon.stopped" in daemon.output()
    assert daemon.cli("status").returncode == 1


def test_a_second_daemon_on_the_same_data_dir_is_refused(board: Board) -> None:
    first = DaemonProcess(board).start()
    try:
        first.wait_running()
        second = DaemonProcess(board, name="second", data_dir=first.data_dir).start()
        assert second.wait_exit() == 3
        assert "another forgehall daemon" in second.output()
        assert first.health() is not None, "the first one runs on"
    finally:
        assert first.stop() == 0


def test_cancel_stops_the_agents_whole_process_group(board: Board) -> None:
    pidfile = board.tmp / "child.pid"
    board.add_agent("claude", FAKE_AGENT_MODE="spawn", FAKE_AGENT_PIDFILE=str(pidfile))
    daemon = DaemonProcess(board).start()
    try:
        daemon.wait_running()
        key = board.assign("Spin forever", "claude")
        task = board.wait_task(key, "running")
        child = int(wait_for("the child pid", lambda: pidfile.exists() and pidfile.read_text()))
        (run,) = daemon.fake_runs()
        leader = run["pid"]
        assert alive(leader)
        assert alive(child)
        wait_for("messages", lambda: board.messages(task["id"]))

        cancelled = board.api.post(f"{WS}/tasks/{task['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        ended = board.wait_task(key, "cancelled", "failed", "completed", timeout=20)
        assert ended["status"] == "cancelled", ended
        assert not alive(leader)
        assert not alive(child)
        assert ended["usage"], "usage so far is reported with the cancellation"
    finally:
        assert daemon.stop() == 0, daemon.output()


def test_a_result_produced_while_the_server_is_down_is_delivered(board: Board) -> None:
    board.add_agent("claude", FAKE_AGENT_MODE="long", FAKE_AGENT_SECONDS="6")
    daemon = DaemonProcess(board).start()
    try:
        daemon.wait_running()
        key = board.assign("Take your time", "claude")
        task = board.wait_task(key, "running")
        wait_for("the first messages", lambda: board.messages(task["id"]))
        board.server.stop()
        # The agent finishes while the server is away: the report waits in the journal.
        journal = daemon.data_dir / "journal"
        wait_for("the journaled report", lambda: list(journal.glob("*.json")), timeout=30)
        board.server.start()
        board.server.wait_ready()
        done = board.wait_task(key, "completed", "failed", timeout=60)
        assert done["status"] == "completed", (done, daemon.output())
        assert done["attempt"] == 1
        wait_for("the journal to empty", lambda: not list(journal.glob("*.json")))
        # The transcript written while the server was down arrived too, in order.
        messages = board.messages(task["id"])
        assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
        steps = [m for m in messages if m["content"].startswith("still working")]
        assert len(steps) >= 8, [m["content"][:40] for m in messages]
        assert messages[-1]["content"].startswith("Fixed: the proxy")
        assert "server.connected" in daemon.output()
    finally:
        assert daemon.stop() == 0, daemon.output()


def test_a_killed_daemon_is_replaced_and_nothing_runs_twice(board: Board) -> None:
    board.add_agent("claude", FAKE_AGENT_MODE="long", FAKE_AGENT_SECONDS="4")
    first = DaemonProcess(board).start()
    first.wait_running()
    key = board.assign("Survive a crash", "claude")
    task = board.wait_task(key, "running")
    wait_for("the first messages", lambda: board.messages(task["id"]))
    (run,) = first.fake_runs()
    first.stop(signal.SIGKILL)
    assert alive(run["pid"]), "the agent outlives a SIGKILLed daemon"

    second = DaemonProcess(board, name="second", data_dir=first.data_dir).start()
    try:
        second.wait_running()
        done = board.wait_task(key, "completed", "failed", timeout=60)
        assert done["status"] == "completed", (done, second.output())
        assert done["attempt"] == 2, "given back as an orphan and claimed again"
        assert not alive(run["pid"]), "the leftover agent was stopped"
        assert "daemon.orphans_reported" in second.output()
        assert len(board.tasks(key)) == 1
        comments = board.comments(key)
        assert len(comments) == 1, comments  # one answer, from the run that completed
        assert len(second.fake_runs()) == 2
    finally:
        assert second.stop() == 0, second.output()
