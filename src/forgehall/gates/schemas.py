"""The shapes of the gates files and of a gate's ledger entry.

``.forgehall/gates.yaml`` (:class:`GatesFile`) lists the gates; ``.forgehall/intent.yaml``
(:class:`IntentFile`) says which tier the project aims at. Both refuse unknown keys and
coerce nothing (``strict``): ``timeout: "10"`` is an error, not ten seconds. The checks
that need the whole file or the disk (duplicate ids, unknown dependencies, cycles,
missing scripts) are in :mod:`forgehall.gates.config`, which can name their lines.

:class:`GateEntry` is the evidence one gate run leaves: the same dict the local ledger
stores and the server's ledger will store.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Tier = Literal["prototype", "pilot", "production"]
TIERS: tuple[Tier, ...] = get_args(Tier)
Category = Literal["lint", "test", "contract", "security", "tenancy", "build", "other"]
CATEGORIES: tuple[Category, ...] = get_args(Category)
Result = Literal["PASS", "FAIL", "WARN", "SKIP"]

GATE_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$"
MAX_TIMEOUT = 86400.0
DEFAULT_TIMEOUT = 600.0
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def relative_inside(value: str, what: str) -> str:
    """A relative POSIX path that cannot climb out of the repository (``..``)."""
    if not value or "\x00" in value:
        raise ValueError(f"{what} is an empty path")
    path = PurePosixPath(value)
    if path.is_absolute():
        raise ValueError(f"{what} must be relative to the repository root, not {value!r}")
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            raise ValueError(f"{what} {value!r} leaves the repository")
    return value


class Gate(BaseModel):
    """One gate: a command (or script) and when it counts."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(pattern=GATE_ID_PATTERN, description="slug: a-z, 0-9, '-', '_'")
    name: str | None = Field(None, min_length=1)
    command: str | None = Field(None, min_length=1, description="run with /bin/sh -c")
    script: str | None = Field(None, description="an executable, relative to the repo")
    depends_on: list[str] = Field(default_factory=list)
    category: Category = "other"
    required_in: list[Tier] = Field(default_factory=lambda: list(TIERS))
    timeout: float = Field(DEFAULT_TIMEOUT, gt=0, le=MAX_TIMEOUT, description="seconds")
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    allow_failure: bool = False

    @field_validator("script")
    @classmethod
    def _script_inside(cls, value: str | None) -> str | None:
        return None if value is None else relative_inside(value, "script")

    @field_validator("workdir")
    @classmethod
    def _workdir_inside(cls, value: str | None) -> str | None:
        return None if value is None else relative_inside(value, "workdir")

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not _ENV_NAME.fullmatch(key):
                raise ValueError(f"{key!r} is not an environment variable name")
            if "\x00" in item:
                raise ValueError(f"the value of {key} contains a NUL byte")
        return value

    @field_validator("required_in", "depends_on")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        repeated = sorted({item for item in value if value.count(item) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} listed twice")
        return value

    @model_validator(mode="after")
    def _one_action(self) -> Gate:
        if (self.command is None) == (self.script is None):
            which = "both" if self.command is not None else "neither"
            raise ValueError(f"a gate has exactly one of command or script, not {which}")
        return self

    @property
    def display_name(self) -> str:
        return self.name or self.id


class GatesFile(BaseModel):
    """``.forgehall/gates.yaml``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: Literal[1]
    gates: list[Gate] = Field(default_factory=list)

    def by_id(self) -> dict[str, Gate]:
        return {gate.id: gate for gate in self.gates}


class IntentFile(BaseModel):
    """``.forgehall/intent.yaml``: the tier the project is held to."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tier: Tier
    target: str | None = None


class EntryScope(BaseModel):
    """What a result is about: a repository at a commit, and the work it was for."""

    model_config = ConfigDict(extra="forbid")

    repository: str
    commit: str | None
    branch: str | None
    dirty: bool
    issue_key: str | None = None
    task_id: str | None = None


class RunnerInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str
    runtime_id: str | None = None


class GateEntry(BaseModel):
    """The evidence of one gate run (one ledger entry)."""

    model_config = ConfigDict(extra="forbid")

    gate_id: str
    gate_name: str
    result: Result
    reason: str | None  # "exit 1", "timeout", "dependency lint failed"; None on PASS
    scope: EntryScope
    command: str  # the command, or the script's path
    command_sha256: str  # of the command text, or of the script's bytes
    exit_code: int | None  # None: skipped, killed by a signal, or never started
    started_at: str | None  # ISO 8601 UTC, e.g. 2025-05-01T12:00:00.123Z
    finished_at: str | None
    duration_ms: int | None
    stdout_sha256: str | None  # of the whole output, however long
    stderr_sha256: str | None
    stdout_excerpt: str  # its last few KiB
    stderr_excerpt: str
    runner: RunnerInfo
    tier: Tier | None
