"""Real project directories for gates tests: a git repository (or not) with a gates
file, and ``forgehall`` run as a subprocess inside it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.process import base_env, run_cli

LEDGER = Path(".forgehall/evidence/ledger.jsonl")


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def make_project(
    path: Path,
    gates_yaml: str,
    *,
    tier: str | None = "prototype",
    use_git: bool = True,
    files: dict[str, str] | None = None,
) -> Path:
    """A project at ``path``; with git, everything is committed (a clean worktree)."""
    (path / ".forgehall").mkdir(parents=True)
    (path / ".forgehall" / "gates.yaml").write_text(gates_yaml)
    if tier is not None:
        (path / ".forgehall" / "intent.yaml").write_text(f"tier: {tier}\n")
    for name, text in (files or {}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    if use_git:
        git("init", "--quiet", "-b", "main", cwd=path)
        git("add", "-A", cwd=path)
        git("commit", "--quiet", "-m", "first", cwd=path)
    return path


def commit_all(path: Path, message: str = "change") -> str:
    git("add", "-A", cwd=path)
    git("commit", "--quiet", "--allow-empty", "-m", message, cwd=path)
    return git("rev-parse", "HEAD", cwd=path)


def forgehall(project: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=base_env(project.parent), cwd=project, timeout=timeout)


def ledger_entries(project: Path) -> list[dict[str, Any]]:
    path = project / LEDGER
    if not path.exists():
        return []
    return [json.loads(line)["entry"] for line in path.read_text().splitlines()]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
