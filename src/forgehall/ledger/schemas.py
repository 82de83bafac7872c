"""Request and response bodies of the ledger API (also read by the CLI).

A submitted entry is a :class:`~forgehall.gates.schemas.GateEntry` — the dict the
local ledger stores — with bounds on the fields the server indexes, and the requirement
that it has a canonical JSON form (text with a lone surrogate has none). Hashes in JSON
bodies are lower-case hex; checkpoint notes carry base64 roots, as the note format has.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from forgehall.gates.schemas import GATE_ID_PATTERN, EntryScope, GateEntry, Tier
from forgehall.ledger.canonical import CanonicalJSONError, canonical_json

MAX_ENTRIES_PER_REQUEST = 1000
MAX_GATES = 500
SHORT = 200  # gate ids, commits, issue keys, task ids: indexed columns
REPOSITORY_MAX = 2000

ENTRY_EXAMPLE: dict[str, Any] = {
    "gate_id": "unit",
    "gate_name": "Unit tests",
    "result": "PASS",
    "reason": None,
    "scope": {
        "repository": "https://git.example.com/team/app.git",
        "commit": "9f2c4e1d0b7a8c6e5f4d3c2b1a0f9e8d7c6b5a49",
        "branch": "main",
        "dirty": False,
        "issue_key": "ENG-42",
        "task_id": None,
    },
    "command": "uv run pytest -q",
    "command_sha256": "3b0c7f6d2a9e8b1c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4",
    "exit_code": 0,
    "started_at": "2031-05-01T12:00:00.123Z",
    "finished_at": "2031-05-01T12:01:10.456Z",
    "duration_ms": 70333,
    "stdout_sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "stderr_sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "stdout_excerpt": "412 passed in 70.1s\n",
    "stderr_excerpt": "",
    "runner": {"host": "build-1", "runtime_id": None},
    "tier": "pilot",
}
HASH_EXAMPLE = "32cdc09f47acedba28cc6c833c764095abaa091629547893f0d5343fb2e9756d"
NOTE_EXAMPLE = (
    "forgehall.example.com/ledger/team\n42\nMs3An0es7boozGyDPHZAlauqCRYpVHiT8NU0P7LpdW0=\n\n"
    "\u2014 forgehall.example.com 9oO9yug4i5MNleltFcHODUu0WcBBmwXN8Har7HYcdc+YUwq5eBD3z7lhV0qob"
    "sookA16ZamJZOneY5udO79aL+a4pws=\n"
)
VERIFIER_KEY_EXAMPLE = "forgehall.example.com+f683bdca+AYnd1od/fbnvaXeqfdRoyDqyiMaQcNfPdQTrfKQpcC2U"


class SubmittedScope(EntryScope):
    repository: str = Field(min_length=1, max_length=REPOSITORY_MAX)
    commit: str | None = Field(max_length=SHORT)
    issue_key: str | None = Field(None, max_length=SHORT)
    task_id: str | None = Field(None, max_length=SHORT)


class SubmittedEntry(GateEntry):
    """A gate's result as the runner recorded it (the local ledger's entry)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [ENTRY_EXAMPLE]})

    gate_id: str = Field(min_length=1, max_length=SHORT)
    scope: SubmittedScope

    @model_validator(mode="after")
    def _has_a_canonical_form(self) -> Self:
        try:
            canonical_json(self.model_dump(mode="json"))
        except CanonicalJSONError as exc:
            raise ValueError(f"no canonical JSON form: {exc}") from None
        return self


class GateRequirement(BaseModel):
    """What the gates file says about one gate: the tiers it counts in, and whether a
    failure is only a warning."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=GATE_ID_PATTERN, examples=["unit"])
    required_in: list[Tier] = Field(examples=[["prototype", "pilot", "production"]])
    allow_failure: bool = False


class EntriesIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "entries": [ENTRY_EXAMPLE],
                    "gates": [{"id": "unit", "required_in": ["prototype", "pilot", "production"]}],
                }
            ]
        },
    )

    entries: list[SubmittedEntry] = Field(
        min_length=1,
        max_length=MAX_ENTRIES_PER_REQUEST,
        description="Gate results, appended in this order (at most 1,000 per request).",
    )
    gates: list[GateRequirement] | None = Field(
        None,
        max_length=MAX_GATES,
        description="The gates file the results came from (every gate, not only those that "
        "ran): readiness needs it to know which gates a tier requires. Recorded for each "
        "(repository, commit) of the entries.",
    )


class AcceptedEntry(BaseModel):
    submission: int = Field(description="The append's id, until it has a position.")
    leaf_hash: str = Field(
        description="Hex SHA-256(0x00 || canonical JSON of the entry).", examples=[HASH_EXAMPLE]
    )


class AppendOut(BaseModel):
    accepted: int
    entries: list[AcceptedEntry]
    gate_sets_recorded: int = Field(description="New gate sets stored (0 when known already).")
    origin: str = Field(examples=["forgehall.example.com/ledger/team"])


class EntryOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "position": 41,
                    "leaf_hash": HASH_EXAMPLE,
                    "entry": ENTRY_EXAMPLE,
                    "received_at": "2031-05-01T12:01:11Z",
                    "sequenced_at": "2031-05-01T12:01:11.400Z",
                    "submitted_by": "0f3c9a8e5b7d4c2a9e1f6b8d7c5a3e91",
                }
            ]
        }
    )

    position: int
    leaf_hash: str
    entry: GateEntry
    received_at: datetime
    sequenced_at: datetime
    submitted_by: str | None = Field(
        description="The user whose token or session appended it (not part of the leaf)."
    )


class EntryPage(BaseModel):
    items: list[EntryOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class CheckpointOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "size": 42,
                    "root_hash": HASH_EXAMPLE,
                    "note": NOTE_EXAMPLE,
                    "created_at": "2031-05-01T12:01:11.400Z",
                }
            ]
        }
    )

    size: int = Field(description="Tree size: the entries at positions 0..size-1.")
    root_hash: str = Field(description="Hex root of that tree (base64 in the note).")
    note: str = Field(description="The signed note (C2SP tlog-checkpoint), verbatim.")
    created_at: datetime


class CheckpointPage(BaseModel):
    items: list[CheckpointOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class InclusionProof(BaseModel):
    leaf_index: int
    tree_size: int
    audit_path: list[str] = Field(description="Hex hashes, from the leaf upwards (RFC 9162).")
    checkpoint: CheckpointOut = Field(description="The latest checkpoint, proved against.")


class EntryProofOut(BaseModel):
    entry: EntryOut
    proof: InclusionProof


class ConsistencyOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "from_size": 10,
                    "to_size": 42,
                    "from_root": HASH_EXAMPLE,
                    "to_root": HASH_EXAMPLE,
                    "proof": [HASH_EXAMPLE],
                }
            ]
        }
    )

    from_size: int
    to_size: int
    from_root: str
    to_root: str
    proof: list[str] = Field(description="Hex hashes of PROOF(from, D[to]) (RFC 9162).")


class PublicKeyOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "algorithm": "Ed25519",
                    "name": "forgehall.example.com",
                    "key_id": "f683bdca",
                    "public_key": "id3Wh399ue9pd6p91GjIOrKIxpBw1891BOt8pClwLZQ=",
                    "verifier_key": VERIFIER_KEY_EXAMPLE,
                }
            ]
        }
    )

    algorithm: Literal["Ed25519"] = "Ed25519"
    name: str = Field(description="The key name on checkpoint signature lines.")
    key_id: str = Field(description="Hex: SHA-256(name || '\\n' || 0x01 || key)[:4].")
    public_key: str = Field(description="Base64 of the raw 32-byte Ed25519 public key.")
    verifier_key: str = Field(
        description="`<name>+<hex key id>+<base64(0x01 || key)>`: what `forgehall ledger "
        "verify --public-key FILE` reads."
    )


class BlockerOut(BaseModel):
    gate_id: str
    reason: str = Field(
        description="missing, stale commit, dirty, FAIL, SKIP, WARN, no commit, no gates"
    )
    detail: str


class ReadinessResult(BaseModel):
    repository: str
    commit: str | None
    ready: bool
    required: list[str] = Field(description="Gates the tier requires (strictest gates file).")
    passing: list[str]
    blockers: list[BlockerOut]


class ReadinessOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "tier": "pilot",
                    "ready": False,
                    "results": [
                        {
                            "repository": "https://git.example.com/team/app.git",
                            "commit": "9f2c4e1d0b7a8c6e5f4d3c2b1a0f9e8d7c6b5a49",
                            "ready": False,
                            "required": ["lint", "unit"],
                            "passing": ["unit"],
                            "blockers": [{"gate_id": "lint", "reason": "FAIL", "detail": "exit 1"}],
                        }
                    ],
                }
            ]
        }
    )

    tier: Tier
    ready: bool = Field(description="Every result is ready (and there is at least one).")
    results: list[ReadinessResult] = Field(
        description="One per (repository, commit) asked about: for an issue, the latest "
        "commit of each repository its entries name."
    )
