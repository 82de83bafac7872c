"""``forgehall gates init``: starter gates from the kind of project, never overwriting
what is there unless asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgehall.gates.config import load_gates, load_intent
from forgehall.gates.detect import detect_gates, render_gates_yaml, render_intent_yaml
from tests.gates.project import forgehall

KINDS: dict[str, tuple[dict[str, str], list[tuple[str, str]]]] = {
    "python": ({"pyproject.toml": "[project]\n"}, [("ruff", "ruff check ."), ("pytest", "pytest")]),
    "python-uv": (
        {"pyproject.toml": "[project]\n", "uv.lock": ""},
        [("ruff", "uv run ruff check ."), ("pytest", "uv run pytest")],
    ),
    "node-with-lint": (
        {"package.json": json.dumps({"scripts": {"test": "jest", "lint": "eslint ."}})},
        [("npm-lint", "npm run lint"), ("npm-test", "npm test")],
    ),
    "node-without-lint": (
        {"package.json": json.dumps({"scripts": {"test": "jest"}})},
        [("npm-test", "npm test")],
    ),
    "node-broken-package-json": ({"package.json": "{"}, [("npm-test", "npm test")]),
    "go": ({"go.mod": "module x\n"}, [("go-vet", "go vet ./..."), ("go-test", "go test ./...")]),
    "rust": (
        {"Cargo.toml": "[package]\n"},
        [
            ("cargo-clippy", "cargo clippy --all-targets -- -D warnings"),
            ("cargo-test", "cargo test"),
        ],
    ),
    "python-and-node": (
        {"pyproject.toml": "", "package.json": "{}"},
        [("ruff", "ruff check ."), ("pytest", "pytest"), ("npm-test", "npm test")],
    ),
    "unknown": ({"README.md": "# hi\n"}, []),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_detection_writes_gates_that_validate(tmp_path: Path, kind: str) -> None:
    files, expected = KINDS[kind]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    kinds, starters = detect_gates(tmp_path)
    (tmp_path / ".forgehall").mkdir()
    (tmp_path / ".forgehall" / "gates.yaml").write_text(render_gates_yaml(kinds, starters))
    (tmp_path / ".forgehall" / "intent.yaml").write_text(render_intent_yaml())
    gates = load_gates(tmp_path).gates
    assert [(g.id, g.command) for g in gates] == expected
    for gate in gates:
        assert gate.category in ("lint", "test")
        if gate.category == "test":
            assert gate.required_in == ["prototype", "pilot", "production"]
        else:
            assert gate.required_in == ["pilot", "production"]
    intent = load_intent(tmp_path)
    assert intent is not None
    assert intent.tier == "prototype"
    if kind == "unknown":
        text = (tmp_path / ".forgehall" / "gates.yaml").read_text()
        assert "gates: []" in text
        assert "#   - id: test" in text


def test_init_writes_both_files_and_refuses_to_overwrite(tmp_path: Path) -> None:
    project = tmp_path / "repo"
    project.mkdir()
    (project / "go.mod").write_text("module example.com/x\n")
    done = forgehall(project, "gates", "init")
    assert done.returncode == 0, done.stderr
    assert "Wrote .forgehall/gates.yaml (go; 2 gates)" in done.stdout
    assert "Wrote .forgehall/intent.yaml (tier prototype)" in done.stdout
    assert forgehall(project, "gates", "validate").returncode == 0

    gates_file = project / ".forgehall" / "gates.yaml"
    gates_file.write_text("version: 1\ngates: []\n# mine\n")
    done = forgehall(project, "gates", "init")
    assert done.returncode == 2
    assert ".forgehall/gates.yaml and .forgehall/intent.yaml already exist(s)" in done.stderr
    assert "--force" in done.stderr
    assert gates_file.read_text().endswith("# mine\n")

    done = forgehall(project, "gates", "init", "--force")
    assert done.returncode == 0, done.stderr
    assert "go vet ./..." in gates_file.read_text()


def test_init_into_another_directory(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "Cargo.toml").write_text("[package]\n")
    done = forgehall(tmp_path, "gates", "init", "--dir", str(target))
    assert done.returncode == 0, done.stderr
    assert "cargo test" in (target / ".forgehall" / "gates.yaml").read_text()
    done = forgehall(tmp_path, "gates", "init", "--dir", str(tmp_path / "missing"))
    assert done.returncode == 2
    assert "is not a directory" in done.stderr
