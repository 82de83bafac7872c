"""Validation of the gates files: every error names the file, the line and the field,
exits 2, and records nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from forgehall.gates.config import ConfigError, load_gates, load_intent
from tests.gates.project import LEDGER, forgehall, make_project

GOOD = """\
version: 1
gates:
  - id: lint
    command: "true"
  - id: test
    command: "true"
    depends_on: [lint]
"""

CASES = {
    "invalid-yaml": (
        "version: 1\ngates:\n  - id: lint\n    command: [true\n",
        5,
        None,
        "invalid YAML",
    ),
    "unknown-key": (
        "version: 1\ngates:\n  - id: lint\n    command: ls\n    timout: 5\n",
        5,
        "gates[0].timout (gate 'lint')",
        "unknown key 'timout'; did you mean 'timeout'?",
    ),
    "unknown-top-level-key": (
        "version: 1\ngate: []\n",
        2,
        "gate",
        "unknown key 'gate'; did you mean 'gates'?",
    ),
    "duplicate-id": (
        "version: 1\ngates:\n  - id: lint\n    command: ls\n  - id: lint\n    command: ls\n",
        5,
        "gates[1].id (gate 'lint')",
        "duplicate gate id 'lint' (first on line 3)",
    ),
    "duplicate-key": (
        "version: 1\ngates:\n  - id: lint\n    command: ls\n    command: pwd\n",
        5,
        "gates[0].command",
        "duplicate key (first on line 4)",
    ),
    "unknown-dependency": (
        "version: 1\ngates:\n  - id: lint\n    command: ls\n"
        "  - id: test\n    command: ls\n    depends_on:\n      - lint\n      - lnt\n",
        9,
        "gates[1].depends_on[1] (gate 'test')",
        "unknown gate 'lnt'; did you mean 'lint'?",
    ),
    "cycle": (
        "version: 1\ngates:\n  - id: lint\n    command: ls\n    depends_on: [test]\n"
        "  - id: test\n    command: ls\n    depends_on: [lint]\n",
        5,
        "gates[0].depends_on[0] (gate 'lint')",
        "dependency cycle: lint -> test -> lint",
    ),
    "self-dependency": (
        "version: 1\ngates:\n  - id: lint\n    command: ls\n    depends_on: [lint]\n",
        5,
        "gates[0].depends_on[0] (gate 'lint')",
        "dependency cycle: lint -> lint",
    ),
    "neither-command-nor-script": (
        "version: 1\ngates:\n  - id: lint\n    name: Lint\n",
        3,
        "gates[0] (gate 'lint')",
        "a gate has exactly one of command or script, not neither",
    ),
    "both-command-and-script": (
        "version: 1\ngates:\n  - id: lint\n    command: ls\n    script: check.sh\n",
        3,
        "gates[0] (gate 'lint')",
        "a gate has exactly one of command or script, not both",
    ),
    "missing-script": (
        "version: 1\ngates:\n  - id: lint\n    script: scripts/nope.sh\n",
        4,
        "gates[0].script (gate 'lint')",
        "no such file 'scripts/nope.sh'",
    ),
    "script-not-executable": (
        "version: 1\ngates:\n  - id: lint\n    script: plain.sh\n",
        4,
        "gates[0].script (gate 'lint')",
        "'plain.sh' is not executable",
    ),
    "workdir-outside": (
        "version: 1\ngates:\n  - id: lint\n    command: ls\n    workdir: sub/../../x\n",
        5,
        "gates[0].workdir (gate 'lint')",
        "leaves the repository",
    ),
    "absolute-script": (
        "version: 1\ngates:\n  - id: lint\n    script: /bin/true\n",
        4,
        "gates[0].script (gate 'lint')",
        "must be relative to the repository root",
    ),
    "timeout-too-long": (
        "version: 1\ngates:\n  - id: lint\n    command: ls\n    timeout: 86401\n",
        5,
        "gates[0].timeout (gate 'lint')",
        "less than or equal to 86400",
    ),
    "timeout-as-text": (
        "version: 1\ngates:\n  - id: lint\n    command: ls\n    timeout: '60'\n",
        5,
        "gates[0].timeout (gate 'lint')",
        "valid number",
    ),
    "bad-category": (
        "version: 1\ngates:\n  - id: lint\n    command: ls\n    category: style\n",
        5,
        "gates[0].category (gate 'lint')",
        "'lint', 'test', 'contract'",
    ),
    "bad-tier": (
        "version: 1\ngates:\n  - id: lint\n    command: ls\n    required_in: [pilot, prod]\n",
        5,
        "gates[0].required_in[1] (gate 'lint')",
        "'prototype', 'pilot' or 'production'",
    ),
    "bad-id": (
        "version: 1\ngates:\n  - id: Lint Check\n    command: ls\n",
        3,
        "gates[0].id (gate 'Lint Check')",
        "should match pattern",
    ),
    "missing-id": (
        "version: 1\ngates:\n  - command: ls\n",
        3,
        "gates[0].id",
        "required, but missing",
    ),
    "env-not-text": (
        "version: 1\ngates:\n  - id: lint\n    command: ls\n    env:\n      DEBUG: 1\n",
        6,
        "gates[0].env.DEBUG (gate 'lint')",
        "valid string",
    ),
    "wrong-version": ("version: 2\ngates: []\n", 1, "version", "input should be 1"),
    "empty-file": ("", 1, None, "the file is empty"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_error_names_file_line_and_field_exits_2_and_records_nothing(
    tmp_path: Path, case: str
) -> None:
    text, line, field, message = CASES[case]
    project = make_project(tmp_path / "repo", text, use_git=False, files={"plain.sh": "ls\n"})
    os.chmod(project / "plain.sh", 0o644)
    done = forgehall(project, "gates", "run")
    assert done.returncode == 2, done.stdout + done.stderr
    prefix = f"forgehall: error: .forgehall/gates.yaml:{line}: "
    assert prefix + (f"{field}: " if field else "") in done.stderr, done.stderr
    assert message in done.stderr.split(prefix, 1)[1], done.stderr
    assert not (project / LEDGER).exists()
    assert not (project / ".forgehall" / "evidence").exists()


def test_validate_reports_every_problem_at_once(tmp_path: Path) -> None:
    text = (
        "version: 1\ngates:\n  - id: a\n    command: ls\n    depends_on: [b, zz]\n"
        "  - id: b\n    command: ls\n    depends_on: [a]\n  - id: c\n    script: gone.sh\n"
    )
    project = make_project(tmp_path / "repo", text, use_git=False)
    done = forgehall(project, "gates", "validate")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 3
    assert "gates.yaml:5: gates[0].depends_on[1] (gate 'a'): unknown gate 'zz'" in lines[0]
    assert "dependency cycle: a -> b -> a" in lines[1]
    assert "gates.yaml:10: gates[2].script (gate 'c'): no such file 'gone.sh'" in lines[2]


def test_intent_errors_name_the_intent_file(tmp_path: Path) -> None:
    project = make_project(tmp_path / "repo", GOOD, use_git=False, tier=None)
    (project / ".forgehall" / "intent.yaml").write_text("# intent\ntier: staging\n")
    done = forgehall(project, "gates", "validate")
    assert done.returncode == 2
    assert ".forgehall/intent.yaml:2: tier: input should be 'prototype'" in done.stderr


def test_a_valid_file_validates_and_missing_files_are_explained(tmp_path: Path) -> None:
    project = make_project(tmp_path / "repo", GOOD, use_git=False)
    done = forgehall(project, "gates", "validate")
    assert done.returncode == 0, done.stderr
    assert "OK: .forgehall/gates.yaml: 2 gates (lint, test)" in done.stdout
    assert "tier prototype" in done.stdout
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    done = forgehall(nowhere, "gates", "validate")
    assert done.returncode == 2
    assert "run `forgehall gates init`" in done.stderr


def test_the_project_is_found_from_a_subdirectory(tmp_path: Path) -> None:
    project = make_project(tmp_path / "repo", GOOD, use_git=False, files={"src/x.py": ""})
    done = forgehall(project / "src", "gates", "validate")
    assert done.returncode == 0, done.stderr


def test_defaults_and_yaml_merge_keys(tmp_path: Path) -> None:
    text = (
        "version: 1\ngates:\n"
        "  - &common\n    id: one\n    command: ls\n    category: test\n"
        "  - <<: *common\n    id: two\n    depends_on: [one]\n"
    )
    project = make_project(tmp_path / "repo", text, use_git=False)
    one, two = load_gates(project).gates
    assert (one.id, one.timeout, one.required_in) == (
        "one",
        600,
        ["prototype", "pilot", "production"],
    )
    assert one.display_name == "one"
    assert one.allow_failure is False
    assert (two.id, two.command, two.category, two.depends_on) == ("two", "ls", "test", ["one"])
    intent = load_intent(project)
    assert intent is not None
    assert intent.tier == "prototype"


def test_unknown_keys_are_refused_even_when_close_to_nothing(tmp_path: Path) -> None:
    project = make_project(
        tmp_path / "repo",
        "version: 1\ngates:\n  - id: a\n    command: ls\n    zzz: 1\n",
        use_git=False,
    )
    with pytest.raises(ConfigError) as caught:
        load_gates(project)
    (problem,) = caught.value.problems
    assert problem.line == 5
    assert "unknown key 'zzz' (known keys: id, name, command, script" in problem.message
