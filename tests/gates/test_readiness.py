"""Readiness decided from entries, fail-closed, without a repository around it."""

from __future__ import annotations

from typing import Any

from forgehall.gates.readiness import compute_readiness
from forgehall.gates.schemas import GatesFile, Tier

GATES = GatesFile.model_validate(
    {
        "version": 1,
        "gates": [
            {"id": "unit", "command": "true", "required_in": ["prototype", "production"]},
            {
                "id": "audit",
                "command": "true",
                "allow_failure": True,
                "required_in": ["production"],
            },
            {"id": "lint", "command": "true", "required_in": ["production"]},
            {"id": "extra", "command": "true", "required_in": []},
        ],
    }
)


def entry(gate_id: str, result: str, commit: str | None = "c1", **scope: Any) -> dict[str, Any]:
    return {
        "gate_id": gate_id,
        "gate_name": gate_id,
        "result": result,
        "reason": None if result == "PASS" else "exit 1",
        "scope": {
            "repository": scope.get("repository", "repo"),
            "commit": commit,
            "branch": "main",
            "dirty": scope.get("dirty", False),
            "issue_key": None,
            "task_id": None,
        },
        "command": "true",
        "command_sha256": "0" * 64,
        "exit_code": 0,
        "started_at": None,
        "finished_at": None,
        "duration_ms": None,
        "stdout_sha256": None,
        "stderr_sha256": None,
        "stdout_excerpt": "",
        "stderr_excerpt": "",
        "runner": {"host": "h", "runtime_id": None},
        "tier": None,
    }


def blockers(entries: list[dict[str, Any]], tier: Tier = "production") -> dict[str, str]:
    result = compute_readiness(GATES, tier, entries, repository="repo", commit="c1")
    assert result.ready == (not result.blockers)
    return {b.gate_id: b.reason for b in result.blockers}


def test_ready_when_every_required_gate_passed_on_this_commit() -> None:
    assert blockers([entry("unit", "PASS"), entry("audit", "WARN"), entry("lint", "PASS")]) == {}
    assert blockers([entry("unit", "PASS")], tier="prototype") == {}


def test_the_latest_clean_result_on_this_commit_counts() -> None:
    assert blockers([entry("unit", "PASS"), entry("unit", "FAIL")], "prototype") == {"unit": "FAIL"}
    assert blockers([entry("unit", "FAIL"), entry("unit", "PASS")], "prototype") == {}
    # a later dirty run does not replace the clean result of the commit
    assert blockers([entry("unit", "PASS"), entry("unit", "FAIL", dirty=True)], "prototype") == {}
    assert blockers([entry("unit", "SKIP")], "prototype") == {"unit": "SKIP"}


def test_missing_stale_dirty_other_repositories_and_junk_all_block() -> None:
    entries = [
        entry("unit", "PASS", commit="c0"),
        entry("audit", "PASS", dirty=True),
        entry("lint", "PASS", repository="other"),
        {"gate_id": "lint", "result": "PASS"},  # not an entry: ignored
    ]
    assert blockers(entries) == {"unit": "stale commit", "audit": "dirty", "lint": "missing"}


def test_a_warn_blocks_once_the_gate_no_longer_allows_failure() -> None:
    assert blockers([entry("unit", "WARN")], "prototype") == {"unit": "WARN"}


def test_a_tier_that_requires_nothing_is_not_ready() -> None:
    result = compute_readiness(GATES, "pilot", [], repository="repo", commit="c1")
    assert result.ready is False
    assert result.blockers[0].reason == "no gates"


def test_no_commit_blocks_everything() -> None:
    result = compute_readiness(
        GATES, "prototype", [entry("unit", "PASS", commit=None)], repository="repo", commit=None
    )
    assert not result.ready
    assert [b.reason for b in result.blockers] == ["no commit"]
