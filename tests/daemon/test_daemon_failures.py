"""The runtime daemon's failure paths end to end: watchdogs, a repository that cannot be
cloned, draining on SIGTERM, the wrapper, a missing CLI, the ``daemon`` commands and a
huge transcript.

A real ``forgehall serve`` and the real ``forgehall daemon`` as subprocesses, the fake
agent CLIs of tests/fakes. None of this depends on the database, so the board runs on
SQLite only. Short limits come through the daemon's environment; the outcomes are read
through the HTTP API (task, transcript, comments, issue) and from /proc (the agent's
process group, by the pid the fake logged).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.harness import (
    FAKES,
    WS,
    Board,
    DaemonProcess,
    group_members,
    start_board,
    wait_for,
)

pytestmark = pytest.mark.slow

FAILED_COMMENT = "**The task failed** and will not be retried."


@pytest.fixture
def board(tmp_path: Path, sqlite_database_url: str) -> Iterator[Board]:
    board = start_board(tmp_path, sqlite_database_url)
    yield board
    board.api.close()
    board.server.stop()


def quick_daemon(board: Board, **env: str) -> DaemonProcess:
    """A daemon whose claims return within a second, so a drain does not wait on one."""
    return DaemonProcess(board, FORGEHALL_DAEMON_CLAIM_WAIT="1", **env)


def agent_pid(daemon: DaemonProcess) -> int:
    """The agent's pid (its process group's id: it leads its own group), from the fake's log."""
    runs = wait_for("the agent to start", daemon.fake_runs)
    pid: int = runs[0]["pid"]
    return pid


def assert_failed_for_good(board: Board, key: str, task: dict[str, Any]) -> None:
    """A final failure is commented on the issue by the agent, with its detail."""
    (comment,) = board.comments(key)
    assert comment["author"]["kind"] == "agent", comment
    assert comment["body"].startswith(FAILED_COMMENT), comment
    assert "Failure class `agent_error`" in comment["body"], comment
    assert str(task["failure_detail"]).splitlines()[0] in comment["body"], comment


def test_an_agent_that_prints_nothing_is_stopped_by_the_idle_watchdog(board: Board) -> None:
    board.add_agent("claude", FAKE_AGENT_MODE="hang")
    daemon = quick_daemon(
        board, FORGEHALL_DAEMON_IDLE_TIMEOUT="2", FORGEHALL_DAEMON_KILL_GRACE="1"
    ).start()
    try:
        daemon.wait_running()
        key = board.assign("Think very hard", "claude")
        leader = agent_pid(daemon)
        failed = board.wait_task(key, "failed", "completed", "cancelled")
        assert failed["status"] == "failed", failed
        assert failed["failure_class"] == "agent_error"
        assert failed["failure_detail"].startswith(
            "no output for 2 s (the idle timeout, FORGEHALL_DAEMON_IDLE_TIMEOUT): stopped"
        ), failed
        assert group_members(leader) == [], "the agent's whole process group is gone"
        assert_failed_for_good(board, key, failed)
        assert "reason=idle" in daemon.output()
    finally:
        assert daemon.stop() == 0, daemon.output()


def test_a_run_longer_than_the_task_timeout_is_stopped(board: Board) -> None:
    board.add_agent(
        "claude", FAKE_AGENT_MODE="long", FAKE_AGENT_SECONDS="120", FAKE_AGENT_INTERVAL="0.2"
    )
    daemon = quick_daemon(
        board, FORGEHALL_DAEMON_TASK_TIMEOUT="2", FORGEHALL_DAEMON_KILL_GRACE="1"
    ).start()
    try:
        daemon.wait_running()
        key = board.assign("Boil the ocean", "claude")
        leader = agent_pid(daemon)
        failed = board.wait_task(key, "failed", "completed", "cancelled")
        assert failed["status"] == "failed", failed
        assert failed["failure_class"] == "agent_error"
        assert failed["failure_detail"].startswith(
            "still running after 2 s (the task timeout, FORGEHALL_DAEMON_TASK_TIMEOUT): stopped"
        ), failed
        assert group_members(leader) == []
        assert_failed_for_good(board, key, failed)
        # What it printed before it was stopped reached the board, in order.
        messages = board.messages(failed["id"])
        assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
        assert any("still working, step 1" in m["content"] for m in messages)
    finally:
        assert daemon.stop() == 0, daemon.output()


def test_a_repository_that_cannot_be_cloned_fails_the_task_for_good(board: Board) -> None:
    missing = board.tmp / "no-such-repository"
    added = board.api.post(
        f"{WS}/repositories",
        json={"name": "docs", "url": str(missing), "default_branch": "main"},
    )
    assert added.status_code == 201, added.text
    board.add_agent("claude")
    daemon = quick_daemon(board).start()
    try:
        daemon.wait_running()
        key = board.assign("Update the docs", "claude")
        failed = board.wait_task(key, "failed", "completed")
        # Not a network error (workdir._NETWORK_ERRORS): final, so a person looks.
        assert failed["status"] == "failed", failed
        assert failed["failure_class"] == "agent_error"
        assert failed["attempt"] == 1
        detail = failed["failure_detail"]
        assert detail.startswith("could not prepare the workspace: git fetch"), detail
        assert str(missing) in detail
        assert "does not appear to be a git repository" in detail
        assert daemon.fake_runs() == [], "the agent never ran"
        assert_failed_for_good(board, key, failed)
        assert board.issue(key)["status"]["category"] == "todo"
    finally:
        assert daemon.stop() == 0, daemon.output()


def test_a_drain_lets_a_short_run_finish_and_report(board: Board) -> None:
    board.add_agent("claude", FAKE_AGENT_MODE="long", FAKE_AGENT_SECONDS="3")
    daemon = quick_daemon(board, FORGEHALL_DAEMON_DRAIN_SECONDS="30").start()
    daemon.wait_running()
    key = board.assign("Finish what you started", "claude")
    task = board.wait_task(key, "running")
    wait_for("the first messages", lambda: board.messages(task["id"]))
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0, daemon.output()
    # Reported before the daemon exited: no waiting here.
    done = board.task(key)
    assert done is not None
    assert done["status"] == "completed", (done, daemon.output())
    assert done["result"].startswith("Fixed: the proxy no longer strips")
    assert list((daemon.data_dir / "journal").iterdir()) == []
    assert list((daemon.data_dir / "held").iterdir()) == []
    assert "daemon.draining tasks=1" in daemon.output()


def test_a_drain_stops_a_run_longer_than_the_grace_and_gives_it_back(board: Board) -> None:
    board.add_agent("claude", FAKE_AGENT_MODE="long", FAKE_AGENT_SECONDS="120")
    daemon = quick_daemon(
        board, FORGEHALL_DAEMON_DRAIN_SECONDS="1", FORGEHALL_DAEMON_KILL_GRACE="1"
    ).start()
    daemon.wait_running()
    key = board.assign("Never ends", "claude")
    task = board.wait_task(key, "running")
    leader = agent_pid(daemon)
    wait_for("the first messages", lambda: board.messages(task["id"]))
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0, daemon.output()
    assert group_members(leader) == []
    # runtime_offline is retryable: back in the queue for another attempt (after the
    # queue's backoff), not failed, so nothing is commented on the issue.
    back = board.task(key)
    assert back is not None
    assert back["status"] == "queued", back
    assert back["failure_class"] == "runtime_offline"
    assert back["failure_detail"] == "the daemon shut down while it ran"
    assert back["attempt"] == 1
    assert back["runtime_id"] is None
    assert board.comments(key) == []
    assert list((daemon.data_dir / "journal").iterdir()) == []
    assert list((daemon.data_dir / "held").iterdir()) == []


def test_the_agent_runs_through_the_wrapper(board: Board) -> None:
    recorded = board.tmp / "wrapper-argv"
    wrapper = board.tmp / "wrap.sh"
    wrapper.write_text(
        # Its own option first (the wrapper line is split like a shell would), then the
        # agent's argv: record them all, then become the agent.
        '#!/bin/sh\necho "$$" > "$WRAP_LOG"\nprintf \'%s\\n\' "$@" >> "$WRAP_LOG"\n'
        'shift\nexec "$@"\n'
    )
    wrapper.chmod(0o755)
    board.add_agent("claude")
    daemon = quick_daemon(
        board, FORGEHALL_DAEMON_WRAPPER=f"{wrapper} --confined", WRAP_LOG=str(recorded)
    ).start()
    try:
        daemon.wait_running()
        key = board.assign("Stay in your box", "claude")
        done = board.wait_task(key, "completed", "failed")
        assert done["status"] == "completed", (done, daemon.output())
        pid, *argv = recorded.read_text().splitlines()
        assert argv[0] == "--confined"
        assert Path(argv[1]).resolve() == FAKES / "claude"
        assert "-p" in argv
        (run,) = daemon.fake_runs()
        assert run["pid"] == int(pid), "the wrapper exec'd the agent"
        assert run["argv"] == argv[2:]
        assert run["env"]["FORGEHALL_ISSUE_KEY"] == key, "the environment passed through"
        assert f"argv0={wrapper}" in daemon.output()
    finally:
        assert daemon.stop() == 0, daemon.output()


def test_a_provider_whose_cli_is_missing_is_not_advertised(board: Board) -> None:
    # A PATH with the fake claude and what the fakes and the daemon need, but no gemini.
    bin_dir = board.tmp / "bin"
    bin_dir.mkdir()
    for name, target in {
        "claude": FAKES / "claude",
        "python3": shutil.which("python3"),
        "git": shutil.which("git"),
    }.items():
        assert target is not None, name
        (bin_dir / name).symlink_to(target)
    board.add_agent("claude")
    board.add_agent("gem", provider="gemini")
    daemon = quick_daemon(board, PATH=str(bin_dir)).start()
    try:
        health = daemon.wait_running()
        assert set(health["providers"]) == {"claude"}
        (runtime,) = board.api.get(f"{WS}/runtimes").json()
        assert set(runtime["providers"]) == {"claude"}
        agents = {a["name"]: a for a in board.api.get(f"{WS}/agents").json()}
        assert agents["gem"]["status"] == "offline", "no runtime can run it"
        assert agents["claude"]["status"] == "idle"

        waiting = board.assign("For gemini", "gem")
        done_key = board.assign("For claude", "claude")
        done = board.wait_task(done_key, "completed", "failed")
        assert done["status"] == "completed", (done, daemon.output())
        # The claim that took the claude task, queued after it, left the gemini one.
        queued = board.task(waiting)
        assert queued is not None
        assert queued["status"] == "queued", queued
        assert queued["attempt"] == 0
        assert queued["runtime_id"] is None
        assert queued["failure_class"] is None
        assert board.comments(waiting) == []
        assert [run["binary"] for run in daemon.fake_runs()] == ["claude"]
    finally:
        assert daemon.stop() == 0, daemon.output()


def test_the_daemon_commands(board: Board) -> None:
    daemon = quick_daemon(board).start()
    try:
        daemon.wait_running()
        status = daemon.cli("status", "--json")
        assert status.returncode == 0, status.stderr
        running = json.loads(status.stdout)
        assert running["status"] == "running"
        assert running["pid"] == daemon.pid
        assert running["server"] == board.server.url
        assert running["runtime_id"]
        assert running["tasks"] == []
        assert running["journal"] == 0

        fake_claude = str(FAKES / "claude")
        listed = daemon.cli(
            "providers", "--json", FORGEHALL_CLAUDE_PATH=fake_claude, FORGEHALL_CLAUDE_MODEL="m1"
        )
        assert listed.returncode == 0, listed.stderr
        rows = {row["name"]: row for row in json.loads(listed.stdout)}
        assert rows["claude"]["path"] == fake_claude
        assert rows["claude"]["version"] == "claude 0.0.0-fake (forgehall test double)"
        assert rows["claude"]["overrides"] == {"path": fake_claude, "model": "m1"}
        assert rows["gemini"]["path"] == str(FAKES / "gemini")
        assert rows["gemini"]["overrides"] == {}
        table = daemon.cli("providers", FORGEHALL_CLAUDE_MODEL="m1")
        assert table.returncode == 0, table.stderr
        assert "Agent CLIs" in table.stdout
        assert "model=m1" in table.stdout
        assert "0.0.0-fake" in table.stdout

        logs = daemon.cli("logs", "-n", "100")
        assert logs.returncode == 0, logs.stderr
        assert "daemon.running" in logs.stdout
        assert f"runtime.registered runtime_id={running['runtime_id']}" in logs.stdout

        stopped = daemon.cli("stop", "--timeout", "30")
        assert stopped.returncode == 0, stopped.stderr
        assert f"Daemon {daemon.pid} stopped." in stopped.stdout
        assert daemon.wait_exit() == 0, daemon.output()
        after = daemon.cli("status", "--json")
        assert after.returncode == 1
        assert json.loads(after.stdout) == {"status": "stopped"}
        assert "daemon.stopped" in daemon.cli("logs").stdout
    finally:
        daemon.stop()


def test_a_huge_transcript_arrives_whole_and_in_order(board: Board) -> None:
    board.add_agent("claude", FAKE_AGENT_MODE="huge", FAKE_AGENT_MB="8")
    daemon = quick_daemon(board).start()
    try:
        daemon.wait_running()
        key = board.assign("Say a lot", "claude")
        done = board.wait_task(key, "completed", "failed", timeout=90)
        assert done["status"] == "completed", (done, daemon.output())
        messages = board.all_messages(done["id"])
        assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
        steps = [
            int(m["content"].split(" ", 1)[0])
            for m in messages
            if m["kind"] == "text" and m["content"].endswith("x" * 100)
        ]
        chunks = int(8 * 1024 * 1024 / 32_000) + 1
        assert steps == list(range(chunks)), "every chunk, once, in order"
        assert done["result"].startswith("Fixed: the proxy no longer strips")
    finally:
        assert daemon.stop() == 0, daemon.output()


def test_preparing_the_workspace_does_not_count_as_the_agents_silence(board: Board) -> None:
    # A slow fetch (a big repository) and an agent that takes a second to say anything:
    # the idle clock starts when the agent does, not when the task was claimed.
    real_git = shutil.which("git")
    assert real_git is not None
    slow = board.tmp / "slow-git"
    slow.mkdir()
    (slow / "git").write_text(
        f'#!/bin/sh\nif [ "$1" = fetch ]; then sleep 4; fi\nexec {real_git} "$@"\n'
    )
    (slow / "git").chmod(0o755)
    board.add_agent("claude", FAKE_AGENT_DELAY="1")
    daemon = quick_daemon(board, FORGEHALL_DAEMON_IDLE_TIMEOUT="3")
    daemon.env["PATH"] = f"{slow}{os.pathsep}{daemon.env['PATH']}"
    daemon.start()
    try:
        daemon.wait_running()
        key = board.assign("Clone the monorepo", "claude")
        done = board.wait_task(key, "completed", "failed")
        assert done["status"] == "completed", (done, daemon.output())
    finally:
        assert daemon.stop() == 0, daemon.output()


def test_a_full_disk_fails_the_attempt_cleanly_and_gives_the_task_back(board: Board) -> None:
    """The work directory is an 8 KiB tmpfs, mounted in a private mount namespace the
    daemon runs in (``unshare``): a real full disk, for the daemon only."""
    small = board.tmp / "small-disk"
    small.mkdir()
    mount_then_run = f'mount -t tmpfs -o size=8k tmpfs "{small}" && exec "$0" "$@"'
    board.add_agent("claude", FAKE_AGENT_MODE="ok")
    daemon = quick_daemon(board, FORGEHALL_DAEMON_WORKDIR=str(small))
    daemon.prefix = ("unshare", "--map-root-user", "--mount", "sh", "-c", mount_then_run)
    daemon.start()
    try:
        daemon.wait_running()
        key = board.assign("Fill the disk", "claude")

        def given_back() -> dict[str, Any] | None:
            task = board.task(key)
            return task if task and task["failure_class"] == "runtime_offline" else None

        task = wait_for("the attempt to fail", given_back)
        assert task["status"] == "queued", "retryable: perhaps another runtime has room"
        assert task["attempt"] == 1
        assert "the disk is full" in task["failure_detail"], task["failure_detail"]
        assert "No space left on device" in task["failure_detail"]
        assert daemon.health() is not None, "the daemon runs on"
        assert daemon.fake_runs() == [], "no agent was started"
        assert board.comments(key) == [], "not a final failure: no comment yet"
    finally:
        assert daemon.stop() == 0, daemon.output()
