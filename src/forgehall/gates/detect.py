"""Starter gates for a project, from the files that say what kind of project it is.

``pyproject.toml`` → ruff and pytest (through ``uv run`` when there is a ``uv.lock``);
``package.json`` → ``npm test``, plus ``npm run lint`` when it has a lint script;
``go.mod`` → ``go vet`` and ``go test``; ``Cargo.toml`` → clippy and ``cargo test``. A
project of several kinds gets the gates of each; an unknown one gets an empty list and
a commented example. The text written always passes :func:`~forgehall.gates.config.load_gates`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from forgehall.gates.schemas import Category, Tier

ALL_TIERS: tuple[Tier, ...] = ("prototype", "pilot", "production")
LINT_TIERS: tuple[Tier, ...] = ("pilot", "production")


@dataclass(frozen=True)
class StarterGate:
    id: str
    name: str
    command: str
    category: Category
    required_in: tuple[Tier, ...]
    timeout: int = 600


def _npm_has_lint(path: Path) -> bool:
    try:
        package = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    scripts = package.get("scripts") if isinstance(package, dict) else None
    return isinstance(scripts, dict) and "lint" in scripts


def detect_gates(root: Path) -> tuple[list[str], list[StarterGate]]:
    """The project kinds found at ``root`` and their starter gates."""
    kinds: list[str] = []
    gates: list[StarterGate] = []
    if (root / "pyproject.toml").is_file():
        kinds.append("python")
        run = "uv run " if (root / "uv.lock").is_file() else ""
        gates += [
            StarterGate("ruff", "Ruff lint", f"{run}ruff check .", "lint", LINT_TIERS),
            StarterGate("pytest", "Python tests", f"{run}pytest", "test", ALL_TIERS, 1800),
        ]
    if (root / "package.json").is_file():
        kinds.append("node")
        if _npm_has_lint(root / "package.json"):
            gates.append(StarterGate("npm-lint", "npm lint", "npm run lint", "lint", LINT_TIERS))
        gates.append(StarterGate("npm-test", "npm tests", "npm test", "test", ALL_TIERS, 1800))
    if (root / "go.mod").is_file():
        kinds.append("go")
        gates += [
            StarterGate("go-vet", "go vet", "go vet ./...", "lint", LINT_TIERS),
            StarterGate("go-test", "Go tests", "go test ./...", "test", ALL_TIERS, 1800),
        ]
    if (root / "Cargo.toml").is_file():
        kinds.append("rust")
        gates += [
            StarterGate(
                "cargo-clippy",
                "Clippy",
                "cargo clippy --all-targets -- -D warnings",
                "lint",
                LINT_TIERS,
                1800,
            ),
            StarterGate("cargo-test", "Rust tests", "cargo test", "test", ALL_TIERS, 1800),
        ]
    return kinds, gates


_EXAMPLE = """\
# No project kind was recognised (pyproject.toml, package.json, go.mod, Cargo.toml).
# Add gates like this one; see docs/gates.md for every key.
#
#   - id: test
#     name: Unit tests
#     command: make test          # run with /bin/sh -c in the repository root
#     category: test              # lint, test, contract, security, tenancy, build, other
#     required_in: [prototype, pilot, production]
#     timeout: 1200               # seconds (default 600, at most 86400)
#     depends_on: []              # ids of gates that must pass first
#     allow_failure: false        # true: a failure is a WARN, not a FAIL
"""


def _quote(text: str) -> str:
    # JSON strings are valid YAML scalars and need no thought about YAML's own rules.
    return json.dumps(text)


def render_gates_yaml(kinds: list[str], gates: list[StarterGate]) -> str:
    """The text of a starter ``.forgehall/gates.yaml``."""
    found = ", ".join(kinds) if kinds else "nothing recognised"
    lines = [
        "# Gates of this repository: checks whose results are recorded as evidence.",
        f"# Written by `forgehall gates init` (detected: {found}). See docs/gates.md.",
        "version: 1",
    ]
    if not gates:
        return "\n".join([*lines, "gates: []", _EXAMPLE])
    lines.append("gates:")
    for gate in gates:
        lines += [
            f"  - id: {gate.id}",
            f"    name: {_quote(gate.name)}",
            f"    command: {_quote(gate.command)}",
            f"    category: {gate.category}",
            f"    required_in: [{', '.join(gate.required_in)}]",
            f"    timeout: {gate.timeout}",
        ]
    return "\n".join(lines) + "\n"


def render_intent_yaml() -> str:
    """The text of a starter ``.forgehall/intent.yaml``."""
    return (
        "# The tier this project is held to: prototype, pilot or production.\n"
        "# `forgehall gates readiness` checks the gates required in it.\n"
        "tier: prototype\n"
        '# target: a short note on what "ready" is for, e.g. a release name\n'
    )
