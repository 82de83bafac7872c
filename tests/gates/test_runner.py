"""The runner, with real subprocesses: DAG order, parallelism, SKIP and WARN, timeouts
that take the whole process group, bounded output with exact digests, selection."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from forgehall.gates.config import load_gates
from forgehall.gates.runner import (
    EXCERPT_BYTES,
    GateOutcome,
    SelectionError,
    detect_scope,
    run_gates,
    select_gates,
)
from forgehall.gates.schemas import Gate, GatesFile
from tests.gates.project import alive, git, make_project


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def gate_started(self, gate: Gate) -> None:
        self.events.append(("start", gate.id))

    def gate_finished(self, outcome: GateOutcome) -> None:
        self.events.append((outcome.result, outcome.gate.id))


def gates(*specs: dict[str, object]) -> list[Gate]:
    return GatesFile.model_validate({"version": 1, "gates": list(specs)}).gates


def by_id(outcomes: list[GateOutcome]) -> dict[str, GateOutcome]:
    return {o.gate.id: o for o in outcomes}


# Each gate announces itself, then waits for the other: both pass only if they overlap.
HANDSHAKE = "touch {me}.ready; while [ ! -f {other}.ready ]; do sleep 0.02; done"


async def test_independent_gates_run_at_the_same_time(tmp_path: Path) -> None:
    pair = gates(
        {"id": "a", "command": HANDSHAKE.format(me="a", other="b"), "timeout": 60},
        {"id": "b", "command": HANDSHAKE.format(me="b", other="a"), "timeout": 60},
    )
    outcomes = await run_gates(pair, tmp_path, jobs=2)
    assert [o.result for o in outcomes] == ["PASS", "PASS"]


async def test_jobs_bounds_how_many_run_at_once(tmp_path: Path) -> None:
    # With one slot the handshake cannot complete: the first gate runs out of time.
    pair = gates(
        {"id": "a", "command": HANDSHAKE.format(me="a", other="b"), "timeout": 1},
        {"id": "b", "command": "touch b.started"},
    )
    recorder = Recorder()
    outcomes = by_id(await run_gates(pair, tmp_path, jobs=1, observer=recorder))
    assert outcomes["a"].result == "FAIL"
    assert outcomes["a"].reason == "timeout"
    assert outcomes["b"].result == "PASS"
    assert recorder.events.index(("FAIL", "a")) < recorder.events.index(("start", "b"))


async def test_dependencies_finish_before_their_dependents_start(tmp_path: Path) -> None:
    dag = gates(
        {
            "id": "report",
            "command": "test -f one.done && test -f two.done",
            "depends_on": ["one", "two"],
        },
        {"id": "one", "command": "sleep 0.2; touch one.done"},
        {"id": "two", "command": "touch two.done", "depends_on": ["zero"]},
        {"id": "zero", "command": "true"},
    )
    recorder = Recorder()
    outcomes = await run_gates(dag, tmp_path, jobs=4, observer=recorder)
    assert [o.gate.id for o in outcomes] == ["one", "zero", "two", "report"]
    assert all(o.result == "PASS" for o in outcomes)
    events = recorder.events
    for before, after in [("one", "report"), ("two", "report"), ("zero", "two")]:
        assert events.index(("PASS", before)) < events.index(("start", after))


async def test_a_failure_skips_everything_downstream(tmp_path: Path) -> None:
    dag = gates(
        {"id": "lint", "command": "echo bad style >&2; exit 3"},
        {"id": "test", "command": "touch test.ran", "depends_on": ["lint"]},
        {"id": "deploy", "command": "touch deploy.ran", "depends_on": ["test"]},
        {"id": "docs", "command": "true"},
    )
    outcomes = by_id(await run_gates(dag, tmp_path, jobs=2))
    assert (outcomes["lint"].result, outcomes["lint"].reason) == ("FAIL", "exit 3")
    assert outcomes["lint"].exit_code == 3
    assert outcomes["lint"].stderr is not None
    assert outcomes["lint"].stderr.excerpt == "bad style\n"
    assert (outcomes["test"].result, outcomes["test"].reason) == ("SKIP", "dependency lint failed")
    assert outcomes["deploy"].reason == "dependency test was skipped"
    assert outcomes["test"].exit_code is None
    assert outcomes["test"].started_at is None
    assert outcomes["docs"].result == "PASS"
    assert not (tmp_path / "test.ran").exists()
    assert not (tmp_path / "deploy.ran").exists()


async def test_allowed_failures_warn_and_do_not_block(tmp_path: Path) -> None:
    dag = gates(
        {"id": "audit", "command": "exit 1", "allow_failure": True},
        {"id": "slow-audit", "command": "sleep 30", "allow_failure": True, "timeout": 0.5},
        {"id": "test", "command": "touch test.ran", "depends_on": ["audit", "slow-audit"]},
    )
    outcomes = by_id(await run_gates(dag, tmp_path, jobs=2))
    assert (outcomes["audit"].result, outcomes["audit"].reason) == ("WARN", "exit 1")
    assert (outcomes["slow-audit"].result, outcomes["slow-audit"].reason) == ("WARN", "timeout")
    assert outcomes["test"].result == "PASS"
    assert (tmp_path / "test.ran").exists()


async def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    dag = gates(
        {"id": "hang", "command": "sleep 300 & echo $! > child.pid; wait", "timeout": 1},
    )
    (outcome,) = await run_gates(dag, tmp_path, jobs=1)
    assert (outcome.result, outcome.reason, outcome.exit_code) == ("FAIL", "timeout", None)
    child = int((tmp_path / "child.pid").read_text())
    assert not alive(child)


async def test_a_child_that_ignores_sigterm_gets_sigkill_after_the_grace(tmp_path: Path) -> None:
    command = "(trap '' TERM; exec sleep 300) & echo $! > stubborn.pid; wait"
    dag = gates({"id": "hang", "command": command, "timeout": 0.5})
    (outcome,) = await run_gates(dag, tmp_path, jobs=1, kill_grace=0.5)
    assert outcome.reason == "timeout"
    assert not alive(int((tmp_path / "stubborn.pid").read_text()))


async def test_what_a_gate_leaves_running_ends_with_it(tmp_path: Path) -> None:
    dag = gates({"id": "leaky", "command": "sleep 300 & echo $! > bg.pid"})
    (outcome,) = await run_gates(dag, tmp_path, jobs=1)
    assert outcome.result == "PASS"
    assert not alive(int((tmp_path / "bg.pid").read_text()))


async def test_large_output_is_digested_whole_and_kept_as_a_bounded_excerpt(
    tmp_path: Path,
) -> None:
    size = 5_000_000
    command = f"yes 0123456789abcdef | head -c {size}; yes é | head -c {size} >&2"
    (outcome,) = await run_gates(gates({"id": "loud", "command": command}), tmp_path, jobs=1)
    expected_out = (b"0123456789abcdef\n" * (size // 17 + 1))[:size]
    expected_err = ("é\n".encode() * (size // 3 + 1))[:size]
    assert outcome.result == "PASS"
    assert outcome.stdout is not None
    assert outcome.stderr is not None
    assert (outcome.stdout.size, outcome.stderr.size) == (size, size)
    assert outcome.stdout.sha256 == hashlib.sha256(expected_out).hexdigest()
    assert outcome.stderr.sha256 == hashlib.sha256(expected_err).hexdigest()
    assert outcome.stdout.excerpt == expected_out[-EXCERPT_BYTES:].decode()
    assert len(outcome.stderr.excerpt.encode()) <= EXCERPT_BYTES
    assert expected_err.decode("utf-8", errors="replace").endswith(outcome.stderr.excerpt)
    assert "\ufffd" not in outcome.stderr.excerpt[:1]  # not cut inside a character


async def test_scripts_workdir_and_environment(tmp_path: Path) -> None:
    project = make_project(
        tmp_path / "repo",
        "version: 1\ngates:\n"
        "  - id: check\n    script: tools/check.sh\n    workdir: sub\n"
        "    env: {GREETING: hello}\n",
        use_git=False,
        files={
            "tools/check.sh": '#!/bin/sh\necho "$GREETING from $(basename "$PWD") '
            '$FORGEHALL_GATE_ID token=${FORGEHALL_TOKEN:-none}"\n',
            "sub/.keep": "",
        },
    )
    os.chmod(project / "tools" / "check.sh", 0o755)
    gates_file = load_gates(project)
    env = {**os.environ, "FORGEHALL_TOKEN": "fh_pat_secret"}
    (outcome,) = await run_gates(gates_file.gates, project, jobs=1, base_env=env)
    assert outcome.result == "PASS", outcome
    assert outcome.stdout is not None
    assert outcome.stdout.excerpt == "hello from sub check token=none\n"
    assert outcome.command == "tools/check.sh"
    script_bytes = (project / "tools" / "check.sh").read_bytes()
    assert outcome.command_sha256 == hashlib.sha256(script_bytes).hexdigest()


async def test_a_gate_that_cannot_start_fails(tmp_path: Path) -> None:
    dag = gates({"id": "gone", "command": "true", "workdir": "missing-dir"})
    (outcome,) = await run_gates(dag, tmp_path, jobs=1)
    assert outcome.result == "FAIL"
    assert outcome.reason is not None
    assert outcome.reason.startswith("could not start")


def test_selection_by_gate_and_by_tier() -> None:
    gates_file = GatesFile.model_validate(
        {
            "version": 1,
            "gates": [
                {"id": "build", "command": "true", "required_in": []},
                {
                    "id": "unit",
                    "command": "true",
                    "depends_on": ["build"],
                    "required_in": ["prototype"],
                },
                {"id": "lint", "command": "true", "required_in": ["pilot"]},
                {
                    "id": "e2e",
                    "command": "true",
                    "depends_on": ["unit"],
                    "required_in": ["production"],
                },
            ],
        }
    )
    ids = lambda selected: [g.id for g in selected]  # noqa: E731
    assert ids(select_gates(gates_file, "e2e", None)) == ["build", "unit", "e2e"]
    assert ids(select_gates(gates_file, "lint", None)) == ["lint"]
    assert ids(select_gates(gates_file, None, "prototype")) == ["build", "unit"]
    assert ids(select_gates(gates_file, None, "pilot")) == ["lint"]
    assert ids(select_gates(gates_file, None, None)) == ["build", "unit", "lint", "e2e"]
    with pytest.raises(SelectionError, match="no gate 'nope'"):
        select_gates(gates_file, "nope", None)


def test_scope_of_a_git_checkout(tmp_path: Path) -> None:
    project = make_project(tmp_path / "repo", "version: 1\ngates: []\n")
    git("remote", "add", "origin", "https://user:s3cret@git.example.com/team/app.git", cwd=project)
    scope = detect_scope(project, env={"FORGEHALL_ISSUE_KEY": "ENG-7", "FORGEHALL_TASK_ID": "t1"})
    assert scope.repository == "https://git.example.com/team/app.git"
    assert scope.commit == git("rev-parse", "HEAD", cwd=project)
    assert scope.branch == "main"
    assert scope.dirty is False
    assert (scope.issue_key, scope.task_id) == ("ENG-7", "t1")
    # The ledger itself does not make the worktree dirty; any other change does.
    (project / ".forgehall" / "evidence").mkdir()
    (project / ".forgehall" / "evidence" / "ledger.jsonl").write_text("")
    assert detect_scope(project, env={}).dirty is False
    (project / "new.txt").write_text("x")
    assert detect_scope(project, env={}).dirty is True
    git("checkout", "--quiet", "--detach", cwd=project)
    assert detect_scope(project, env={}).branch is None


def test_scope_outside_git(tmp_path: Path) -> None:
    project = make_project(tmp_path / "plain", "version: 1\ngates: []\n", use_git=False)
    scope = detect_scope(project, env={})
    assert (scope.repository, scope.commit, scope.branch) == ("plain", None, None)
