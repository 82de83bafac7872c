"""Gates after an agent's work, end to end: a real server, the real daemon, the fake
Claude CLI, and a repository whose ``.forgehall/gates.yaml`` fails once, then passes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from tests.daemon.harness import WS, Board, DaemonProcess, alive, git, start_board, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def board(tmp_path: Path, sqlite_database_url: str) -> Iterator[Board]:
    board = start_board(
        tmp_path, sqlite_database_url, FORGEHALL_ENCRYPTION_KEY=Fernet.generate_key().decode()
    )
    yield board
    board.api.close()
    board.server.stop()


def add_gates(board: Board, counter: Path) -> str:
    """Commit a gates file to the origin: ``unit`` fails on its first run only (it counts
    its runs in ``counter``, outside the worktree), ``lint`` always passes."""
    (board.origin / ".forgehall").mkdir()
    (board.origin / ".forgehall" / "gates.yaml").write_text(
        "version: 1\n"
        "gates:\n"
        "  - id: unit\n"
        "    command: >-\n"
        f"      n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter};\n"
        '      if [ "$n" -lt 1 ]; then echo "boom: test_redirect failed"; exit 1; fi; echo ok\n'
        "  - id: lint\n"
        "    command: echo clean\n"
        "    required_in: [production]\n"
    )
    git("add", ".forgehall/gates.yaml", cwd=board.origin)
    git("commit", "--quiet", "-m", "gates", cwd=board.origin)
    return git("rev-parse", "HEAD", cwd=board.origin)


def test_gates_run_after_the_agent_and_decide_where_the_issue_goes(
    board: Board, tmp_path: Path
) -> None:
    commit = add_gates(board, tmp_path / "unit-runs")
    board.add_agent("claude", FAKE_AGENT_MODE="ok")
    daemon = DaemonProcess(board, FORGEHALL_DAEMON_CLAIM_WAIT="1").start()
    try:
        health = daemon.wait_running()
        key = board.assign("Fix the login redirect", "claude")

        def two_done() -> list[dict[str, Any]] | None:
            rows = board.tasks(key)
            finished = [t for t in rows if t["status"] in ("completed", "failed")]
            return rows if len(rows) == 2 and len(finished) == 2 else None

        rows = wait_for("the task and its gates follow-up", two_done, 60)
        first, second = sorted(rows, key=lambda t: t["created_at"])
        assert [first["status"], second["status"]] == ["completed", "completed"], rows
        assert [first["trigger"], second["trigger"]] == ["assigned", "gates_failed"]
        assert "Gates (tier prototype): 1 FAIL" in first["result"], first["result"]
        assert "Gates (tier prototype): 1 PASS" in second["result"], second["result"]

        # The failing gate went back to the agent, with the end of its output.
        reports = [c for c in board.comments(key) if "The gates do not pass" in c["body"]]
        (report,) = reports
        assert report["author"] == {"kind": "agent", "id": board.agents["claude"]}
        assert "`unit` — FAIL: exit 1" in report["body"]
        assert "boom: test_redirect failed" in report["body"]
        # The second run passed: the server moved the issue to review.
        assert board.issue(key)["status"]["category"] == "in_review"

        # The entries, in the ledger with the task's scope (once sequenced).
        def sequenced() -> list[dict[str, Any]] | None:
            page = board.api.get(
                f"{WS}/ledger/entries", params={"issue_key": key, "order": "oldest"}
            ).json()
            return page["items"] if len(page["items"]) == 2 else None

        entries = [row["entry"] for row in wait_for("the entries", sequenced, 30)]
        assert [(e["gate_id"], e["result"]) for e in entries] == [
            ("unit", "FAIL"),
            ("unit", "PASS"),
        ]
        for entry, task in zip(entries, (first, second), strict=True):
            scope = entry["scope"]
            assert scope["task_id"] == task["id"]
            assert scope["issue_key"] == key
            assert scope["commit"] == commit
            assert scope["branch"] == f"forgehall/claude/{key}"
            assert scope["dirty"] is False
            assert entry["tier"] == "prototype"
            assert entry["runner"]["runtime_id"] == health["runtime_id"]
        assert "boom: test_redirect failed" in entries[0]["stdout_excerpt"]
        log = daemon.output()
        for task, counts in ((first, "pass=0 fail=1"), (second, "pass=1 fail=0")):
            line = f"task.gates_run task_id={task['id']} tier=prototype {counts} warn=0 skip=0"
            assert line in log, log
    finally:
        assert daemon.stop() == 0, daemon.output()


def test_an_invalid_gates_file_is_reported_and_nothing_is_submitted(board: Board) -> None:
    (board.origin / ".forgehall").mkdir()
    (board.origin / ".forgehall" / "gates.yaml").write_text(
        "version: 1\ngates:\n  - id: unit\n    command: pytest\n    colour: red\n"
    )
    git("add", ".forgehall/gates.yaml", cwd=board.origin)
    git("commit", "--quiet", "-m", "broken gates", cwd=board.origin)
    board.add_agent("claude", FAKE_AGENT_MODE="ok")
    daemon = DaemonProcess(board, FORGEHALL_DAEMON_CLAIM_WAIT="1").start()
    try:
        daemon.wait_running()
        key = board.assign("Fix the login redirect", "claude")
        done = board.wait_task(key, "completed", "failed")
        assert done["status"] == "completed", "the agent's work is reported all the same"
        assert "does not validate" in done["result"], done["result"]
        assert "colour" in done["result"], "the problem is named"
        entries = board.api.get(f"{WS}/ledger/entries", params={"issue_key": key})
        assert entries.status_code == 200, entries.text
        assert entries.json()["items"] == [], "nothing recorded"
        assert len(board.tasks(key)) == 1, "no gates_failed follow-up"
        assert "task.gates_invalid" in daemon.output()
    finally:
        assert daemon.stop() == 0, daemon.output()


def commit_gate(board: Board, command: str) -> None:
    """Commit a gates file with one gate, ``unit``, running ``command``."""
    (board.origin / ".forgehall").mkdir()
    (board.origin / ".forgehall" / "gates.yaml").write_text(
        f"version: 1\ngates:\n  - id: unit\n    command: {json.dumps(command)}\n"
    )
    git("add", ".forgehall/gates.yaml", cwd=board.origin)
    git("commit", "--quiet", "-m", "gates", cwd=board.origin)


def read_pid(path: Path) -> int:
    def written() -> str | None:
        text = path.read_text().strip() if path.exists() else ""
        return text or None

    return int(wait_for(path.name, written, 45))


def test_a_cancel_while_the_gates_run_kills_them_and_records_nothing(board: Board) -> None:
    gate_pid, child_pid = board.tmp / "gate.pid", board.tmp / "child.pid"
    commit_gate(board, f"echo $$ > {gate_pid}; sleep 120 & echo $! > {child_pid}; wait")
    board.add_agent("claude", FAKE_AGENT_MODE="ok")
    daemon = DaemonProcess(board, FORGEHALL_DAEMON_CLAIM_WAIT="1").start()
    try:
        daemon.wait_running()
        key = board.assign("Fix the login redirect", "claude")
        pids = [read_pid(path) for path in (gate_pid, child_pid)]
        assert all(alive(pid) for pid in pids), "the gate is running"
        (task,) = board.tasks(key)
        assert task["status"] == "running", "the task holds its lease while its gates run"

        cancelled = board.api.post(f"{WS}/tasks/{task['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        ended = board.wait_task(key, "cancelled", "failed", "completed", timeout=20)
        assert ended["status"] == "cancelled", ended
        wait_for("the gate's processes to end", lambda: not any(alive(p) for p in pids), 10)

        entries = board.api.get(f"{WS}/ledger/entries", params={"issue_key": key})
        assert entries.status_code == 200, entries.text
        assert entries.json()["items"] == [], "a gate run that was stopped records nothing"
        assert len(board.tasks(key)) == 1, "no gates_failed follow-up"
        assert board.issue(key)["status"]["category"] != "in_review"
        assert "task.gates_run" not in daemon.output()
    finally:
        assert daemon.stop() == 0, daemon.output()


def test_results_refused_by_the_server_are_reported_and_change_nothing(
    board: Board, tmp_path: Path
) -> None:
    """The lease runs out while the gates run (as for a daemon presumed dead): the server
    refuses the entries; the daemon says so in the task's result, once, and the issue
    does not move — a refused submission is not a verdict."""
    started, go = board.tmp / "gate.started", board.tmp / "gate.go"
    commit_gate(
        board,
        f"touch {started}; i=0; while [ ! -f {go} ] && [ $i -lt 600 ]; do sleep 0.1; "
        "i=$((i+1)); done; echo ok",
    )
    board.add_agent("claude", FAKE_AGENT_MODE="ok")
    daemon = DaemonProcess(board, FORGEHALL_DAEMON_CLAIM_WAIT="1").start()
    try:
        daemon.wait_running()
        key = board.assign("Fix the login redirect", "claude")
        wait_for("the gate to start", started.exists, 45)
        (task,) = board.tasks(key)
        status = board.issue(key)["status"]
        # The lease ends (the server's watchdog waits out its start-up grace, so the task
        # is not retried meanwhile): what a daemon frozen for a minute would come back to.
        with sqlite3.connect(tmp_path / "forgehall.db") as db:
            changed = db.execute(
                "UPDATE tasks SET lease_expires_at = ? WHERE id = ?",
                ("2000-01-01 00:00:00.000000", task["id"]),
            ).rowcount
        assert changed == 1
        go.touch()

        done = board.wait_task(key, "completed", "failed")
        assert done["status"] == "completed", "the agent's work is reported all the same"
        assert "Gates (tier prototype): 1 PASS" in done["result"], done["result"]
        assert "could not be submitted: 403 task-lease-ended" in done["result"], done["result"]
        entries = board.api.get(f"{WS}/ledger/entries", params={"issue_key": key})
        assert entries.json()["items"] == [], "nothing recorded"
        assert len(board.tasks(key)) == 1, "no follow-up: nothing was judged"
        assert board.issue(key)["status"] == status, "the issue did not move"
        log = daemon.output()
        assert log.count(f"task.gates_not_submitted task_id={task['id']}") == 1, log
        assert "reason=403 task-lease-ended" in log
    finally:
        assert daemon.stop() == 0, daemon.output()
