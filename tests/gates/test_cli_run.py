"""``forgehall gates run`` and ``gates readiness`` as a person runs them: real git
repositories, results in the local ledger, exit codes, JSON, selection, readiness."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from forgehall.ledger.chain import verify_chain
from tests.gates.project import (
    LEDGER,
    alive,
    commit_all,
    forgehall,
    git,
    ledger_entries,
    make_project,
)
from tests.process import PYTHON, base_env

GATES = """\
version: 1
gates:
  - id: lint
    name: Lint
    command: "echo linted"
    category: lint
    required_in: [pilot, production]
  - id: unit
    command: "test ! -f fail-unit"
    category: test
    required_in: [prototype, pilot, production]
  - id: e2e
    command: "echo e2e"
    depends_on: [unit]
    required_in: [production]
  - id: audit
    command: "exit 4"
    allow_failure: true
    required_in: [production]
"""


def test_run_records_every_result_and_exits_by_the_worst(tmp_path: Path) -> None:
    project = make_project(tmp_path / "repo", GATES)
    head = git("rev-parse", "HEAD", cwd=project)
    done = forgehall(project, "gates", "run")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Recorded 4 results in .forgehall/evidence/ledger.jsonl" in done.stdout
    entries = ledger_entries(project)
    assert sorted((e["gate_id"], e["result"]) for e in entries) == [
        ("audit", "WARN"),
        ("e2e", "PASS"),
        ("lint", "PASS"),
        ("unit", "PASS"),
    ]
    lint = next(e for e in entries if e["gate_id"] == "lint")
    assert set(lint) == {
        "gate_id", "gate_name", "result", "reason", "scope", "command", "command_sha256",
        "exit_code", "started_at", "finished_at", "duration_ms", "stdout_sha256",
        "stderr_sha256", "stdout_excerpt", "stderr_excerpt", "runner", "tier",
    }  # fmt: skip
    assert lint["gate_name"] == "Lint"
    assert lint["scope"] == {
        "repository": "repo",
        "commit": head,
        "branch": "main",
        "dirty": False,
        "issue_key": None,
        "task_id": None,
    }
    assert lint["stdout_excerpt"] == "linted\n"
    assert lint["exit_code"] == 0
    assert lint["tier"] == "prototype"
    assert lint["started_at"].endswith("Z")
    assert verify_chain(project / LEDGER).ok

    (project / "fail-unit").write_text("")
    done = forgehall(project, "gates", "run")
    assert done.returncode == 1
    assert "SKIP e2e  (dependency unit failed)" in done.stdout
    latest = {e["gate_id"]: e for e in ledger_entries(project)}
    assert latest["unit"]["result"] == "FAIL"
    assert latest["unit"]["reason"] == "exit 1"
    assert latest["unit"]["scope"]["dirty"] is True
    assert latest["e2e"]["result"] == "SKIP"
    assert len(ledger_entries(project)) == 8


def test_json_output_gate_selection_and_no_record(tmp_path: Path) -> None:
    project = make_project(tmp_path / "repo", GATES)
    done = forgehall(project, "gates", "run", "--gate", "e2e", "--json", "--no-record")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert [e["gate_id"] for e in document["entries"]] == ["unit", "e2e"]
    assert document["recorded"] is False
    assert document["readiness"]["tier"] == "prototype"
    assert document["readiness"]["ready"] is True  # unit is all prototype needs
    assert not (project / LEDGER).exists()

    done = forgehall(project, "gates", "run", "--tier", "pilot", "--json")
    document = json.loads(done.stdout)
    assert sorted(e["gate_id"] for e in document["entries"]) == ["lint", "unit"]
    assert {e["tier"] for e in document["entries"]} == {"pilot"}
    assert document["readiness"]["ready"] is True
    assert document["recorded"] is True
    assert len(ledger_entries(project)) == 2


def test_usage_errors_exit_2_and_record_nothing(tmp_path: Path) -> None:
    project = make_project(tmp_path / "repo", GATES)
    done = forgehall(project, "gates", "run", "--gate", "nope")
    assert done.returncode == 2
    assert "no gate 'nope' (gates: lint, unit, e2e, audit)" in done.stderr
    done = forgehall(project, "gates", "run", "--tier", "staging")
    assert done.returncode == 2
    assert "unknown tier 'staging'" in done.stderr
    assert not (project / LEDGER).exists()


def test_a_torn_ledger_refuses_to_record_before_running(tmp_path: Path) -> None:
    project = make_project(tmp_path / "repo", GATES)
    assert forgehall(project, "gates", "run", "--gate", "lint").returncode == 0
    with (project / LEDGER).open("ab") as handle:
        handle.write(b'{"entry":{"gate')
    done = forgehall(project, "gates", "run", "--gate", "unit")
    assert done.returncode == 2
    assert "line 2 is incomplete" in done.stderr
    assert len((project / LEDGER).read_bytes().splitlines()) == 2


def test_two_concurrent_runs_share_one_valid_ledger(tmp_path: Path) -> None:
    gates = "version: 1\ngates:\n" + "".join(
        f"  - id: g{i}\n    command: 'sleep 0.{i}'\n" for i in range(4)
    )
    project = make_project(tmp_path / "repo", gates)
    runs = [
        subprocess.Popen(
            [PYTHON, "-m", "forgehall", "gates", "run", "--jobs", "4"],
            cwd=project,
            env=base_env(tmp_path),
            stdout=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    assert [run.wait(60) for run in runs] == [0, 0]
    report = verify_chain(project / LEDGER)
    assert report.ok
    assert report.entries == 8


def readiness(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return forgehall(project, "gates", "readiness", *args)


def test_readiness_missing_fail_stale_and_ready(tmp_path: Path) -> None:
    project = make_project(tmp_path / "repo", GATES)
    done = readiness(project, "--tier", "production")
    assert done.returncode == 1
    assert "NOT READY for production" in done.stdout
    assert "blocked  unit: missing" in done.stdout

    forgehall(project, "gates", "run")
    done = readiness(project, "--tier", "production")
    assert done.returncode == 0, done.stdout
    assert done.stdout.startswith("READY for production: repo at ")
    assert "ok       audit" in done.stdout  # WARN, and the gate allows failure

    commit_all(project, "new work")
    done = readiness(project, "--json")  # the intent's tier: prototype
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["tier"] == "prototype"
    assert result["ready"] is False
    assert [(b["gate_id"], b["reason"]) for b in result["blockers"]] == [("unit", "stale commit")]

    (project / "fail-unit").write_text("")
    commit_all(project, "break unit")
    forgehall(project, "gates", "run", "--gate", "unit")
    done = readiness(project)
    assert done.returncode == 1
    assert "blocked  unit: FAIL (exit 1)" in done.stdout

    (project / "fail-unit").unlink()
    commit_all(project, "fix unit")
    forgehall(project, "gates", "run", "--gate", "e2e")
    assert readiness(project).returncode == 0
    done = readiness(project, "--tier", "production")
    assert done.returncode == 1
    assert "blocked  lint: stale commit" in done.stdout
    assert "blocked  audit: stale commit" in done.stdout


def test_readiness_refuses_dirty_results_and_a_tampered_ledger(tmp_path: Path) -> None:
    project = make_project(tmp_path / "repo", GATES)
    (project / "notes.txt").write_text("uncommitted")
    forgehall(project, "gates", "run", "--gate", "unit")
    done = readiness(project)
    assert done.returncode == 1
    assert "blocked  unit: dirty" in done.stdout

    (project / "notes.txt").unlink()
    forgehall(project, "gates", "run", "--gate", "unit")
    assert readiness(project).returncode == 0
    ledger = project / LEDGER
    ledger.write_bytes(ledger.read_bytes().replace(b'"dirty":true', b'"dirty":false', 1))
    done = readiness(project)
    assert done.returncode == 1
    assert "TAMPERED: line 1" in done.stderr
    assert "does not verify" in done.stderr


def test_readiness_needs_a_tier_and_a_commit(tmp_path: Path) -> None:
    project = make_project(tmp_path / "repo", GATES, tier=None)
    done = readiness(project)
    assert done.returncode == 2
    assert "no tier: pass --tier or write .forgehall/intent.yaml" in done.stderr
    plain = make_project(tmp_path / "plain", GATES, use_git=False)
    forgehall(plain, "gates", "run", "--gate", "unit")
    done = readiness(plain)
    assert done.returncode == 1
    assert "blocked  unit: no commit" in done.stdout


def test_on_a_terminal_progress_is_live_and_the_summary_follows(tmp_path: Path) -> None:
    project = make_project(tmp_path / "repo", GATES)
    leader, follower = os.openpty()
    env = {**base_env(tmp_path), "COLUMNS": "100", "TERM": "xterm"}
    process = subprocess.Popen(
        [PYTHON, "-m", "forgehall", "gates", "run"],
        cwd=project,
        env=env,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(60) == 0
    text = output.decode(errors="replace")
    assert "\x1b[" in text  # drawn with terminal control sequences
    assert "Gates" in text
    assert "READY for prototype" in text
    assert "…    lint" not in text  # the plain-line progress is for pipes only
    assert len(ledger_entries(project)) == 4


def test_an_interrupted_run_takes_its_gates_down(tmp_path: Path) -> None:
    gates = (
        "version: 1\ngates:\n  - id: hang\n    command: 'sleep 300 & echo $! > child.pid; wait'\n"
    )
    project = make_project(tmp_path / "repo", gates)
    process = subprocess.Popen(
        [PYTHON, "-m", "forgehall", "gates", "run"],
        cwd=project,
        env=base_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pid_file = project / "child.pid"
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline, "the gate never started"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 130
    assert not alive(int(pid_file.read_text()))
    assert ledger_entries(project) == []
