"""Readiness of a commit for a tier, decided fail-closed from ledger entries.

A commit is ready for a tier only when every gate required in that tier has, among the
entries for the same repository and commit recorded from a clean worktree, a latest
entry that is PASS — or WARN for a gate that (still) allows failure. Anything else
blocks, with the reason: ``missing`` (never ran), ``stale commit`` (ran, but only on
other commits), ``dirty`` (ran on this commit only with uncommitted changes), ``FAIL``,
``SKIP``, ``WARN`` (the gate no longer allows failure), ``no commit`` (not a git commit:
there is nothing to attest). A tier that requires no gate is not ready either: there is
no evidence of anything. Entries that do not parse as :class:`GateEntry` are ignored —
they cannot make anything ready.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from forgehall.gates.schemas import GateEntry, GatesFile, Tier


class GateRule(Protocol):
    """What readiness needs of a gate: a :class:`~forgehall.gates.schemas.Gate`, or the
    requirements the server recorded from one."""

    @property
    def id(self) -> str: ...
    @property
    def required_in(self) -> Sequence[Tier]: ...
    @property
    def allow_failure(self) -> bool: ...


@dataclass(frozen=True)
class Blocker:
    gate_id: str
    reason: str  # missing, stale commit, dirty, FAIL, SKIP, WARN, no commit, no gates
    detail: str


@dataclass(frozen=True)
class Readiness:
    tier: Tier
    repository: str
    commit: str | None
    ready: bool
    required: list[str]
    passing: list[str] = field(default_factory=list)
    blockers: list[Blocker] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parse(entries: Iterable[Mapping[str, Any]]) -> list[GateEntry]:
    parsed: list[GateEntry] = []
    for entry in entries:
        try:
            parsed.append(GateEntry.model_validate(entry))
        except ValidationError:
            continue
    return parsed


def compute_readiness(
    gates: GatesFile | Sequence[GateRule],
    tier: Tier,
    entries: Iterable[Mapping[str, Any]],
    *,
    repository: str,
    commit: str | None,
) -> Readiness:
    """Whether ``commit`` of ``repository`` is ready for ``tier`` (see the module doc).

    ``entries`` are in ledger order: a later entry for a gate supersedes an earlier one.
    """
    rules: Sequence[GateRule] = gates.gates if isinstance(gates, GatesFile) else gates
    required = [gate for gate in rules if tier in gate.required_in]
    ids = [gate.id for gate in required]
    if not required:
        blocker = Blocker("-", "no gates", f"no gate is required in tier {tier}")
        return Readiness(tier, repository, commit, False, ids, [], [blocker])
    ours = [e for e in _parse(entries) if e.scope.repository == repository]
    passing: list[str] = []
    blockers: list[Blocker] = []
    for gate in required:
        runs = [e for e in ours if e.gate_id == gate.id]
        if commit is None:
            blockers.append(Blocker(gate.id, "no commit", "not in a git repository with a commit"))
            continue
        here = [e for e in runs if e.scope.commit == commit]
        clean = [e for e in here if not e.scope.dirty]
        if not clean:
            if here:
                detail = "ran on this commit only with uncommitted changes; commit and rerun"
                blockers.append(Blocker(gate.id, "dirty", detail))
            elif runs:
                other = runs[-1].scope.commit or "no commit"
                detail = f"last ran on {other[:12]}, not on {commit[:12]}"
                blockers.append(Blocker(gate.id, "stale commit", detail))
            else:
                blockers.append(Blocker(gate.id, "missing", "no result recorded"))
            continue
        latest = clean[-1]
        if latest.result == "PASS" or (latest.result == "WARN" and gate.allow_failure):
            passing.append(gate.id)
        elif latest.result == "WARN":
            detail = f"{latest.reason or 'failed'}; the gate no longer allows failure"
            blockers.append(Blocker(gate.id, "WARN", detail))
        else:
            blockers.append(Blocker(gate.id, latest.result, latest.reason or latest.result))
    return Readiness(tier, repository, commit, not blockers, ids, passing, blockers)
