"""HTTP routes of the server ledger.

``GET /api/v1/ledger/public-key`` needs no sign-in: the key that signs checkpoints is
what anyone checking an exported bundle needs, and it is not a secret. Everything else
is under ``/workspaces/{workspace}/ledger`` for members: they read, and they (or an
agent's task token while its task runs) append.
"""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse

from forgehall.core.deps import DatabaseDep, ReadSessionDep, SessionDep, SettingsDep
from forgehall.gates.schemas import GateEntry, Tier
from forgehall.ledger import service
from forgehall.ledger.models import LedgerCheckpoint, LedgerEntry
from forgehall.ledger.schemas import (
    AcceptedEntry,
    AppendOut,
    BlockerOut,
    CheckpointOut,
    CheckpointPage,
    ConsistencyOut,
    EntriesIn,
    EntryOut,
    EntryPage,
    EntryProofOut,
    InclusionProof,
    PublicKeyOut,
    ReadinessOut,
    ReadinessResult,
)
from forgehall.workspaces.access import MemberAccess

router = APIRouter(prefix="/api/v1", tags=["ledger"])
LEDGER = "/workspaces/{workspace}/ledger"
NO_CHECKPOINT: dict[int | str, dict[str, Any]] = {
    404: {"description": "The ledger has no checkpoint yet (`no-checkpoint`)"}
}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "The signing key does not exist yet and the server has no "
        "FORGEHALL_ENCRYPTION_KEY to store it (`encryption-key-required`)"
    }
}
CursorQuery = Annotated[str | None, Query(description="`next_cursor` of the previous page")]


def entry_out(row: LedgerEntry) -> EntryOut:
    return EntryOut(
        position=row.position,
        leaf_hash=row.leaf_hash,
        entry=GateEntry.model_validate(json.loads(row.entry)),
        received_at=row.received_at,
        sequenced_at=row.sequenced_at,
        submitted_by=row.submitted_by,
    )


def checkpoint_out(row: LedgerCheckpoint) -> CheckpointOut:
    return CheckpointOut(
        size=row.size, root_hash=row.root_hash, note=row.note, created_at=row.created_at
    )


@router.get(
    "/ledger/public-key",
    response_model=PublicKeyOut,
    summary="The instance's checkpoint signing key (public; no sign-in needed)",
    responses=UNAVAILABLE,
)
async def read_public_key(db: DatabaseDep, settings: SettingsDep) -> PublicKeyOut:
    key = await service.read_public_key(db, settings)
    return PublicKeyOut(
        name=key.name,
        key_id=key.key_id.hex(),
        public_key=base64.b64encode(key.public_key).decode(),
        verifier_key=key.encode(),
    )


@router.post(
    LEDGER + "/entries",
    response_model=AppendOut,
    status_code=201,
    summary="Append gate results (members; task tokens while the task's lease is current)",
    description="The entries are stored durably before the answer; positions follow within "
    "about a second, when the sequencer gives them and signs a checkpoint. An entry that "
    "fails the schema is a 422 naming the field, and nothing of the request is stored.",
    responses={
        403: {
            "description": "A daemon token (`wrong-token-kind`); a task token whose task is "
            "not running (`task-lease-ended`) or an entry of another task "
            "(`task-scope-mismatch`)"
        },
        422: {"description": "An entry fails the GateEntry schema; `errors` names the field"},
        **UNAVAILABLE,
    },
)
async def append_entries(
    body: EntriesIn, access: MemberAccess, session: SessionDep, settings: SettingsDep
) -> AppendOut:
    result = await service.append_entries(session, access, settings, body)
    return AppendOut(
        accepted=len(result.submissions),
        entries=[
            AcceptedEntry(submission=s, leaf_hash=h)
            for s, h in zip(result.submissions, result.leaf_hashes, strict=True)
        ],
        gate_sets_recorded=result.gate_sets,
        origin=result.origin,
    )


@router.get(
    LEDGER + "/entries",
    response_model=EntryPage,
    summary="Sequenced entries, newest first, filtered by issue, commit, gate or repository",
    responses={422: {"description": "A malformed cursor (`invalid-cursor`)"}},
)
async def read_entries(
    access: MemberAccess,
    session: ReadSessionDep,
    issue_key: Annotated[
        str | None, Query(description="scope.issue_key", examples=["ENG-42"])
    ] = None,
    commit: Annotated[str | None, Query(description="scope.commit (the full hash)")] = None,
    gate_id: Annotated[str | None, Query(description="The gate's id", examples=["unit"])] = None,
    repository: Annotated[str | None, Query(description="scope.repository")] = None,
    order: Annotated[
        str, Query(pattern="^(newest|oldest)$", description="`newest` first or `oldest` first")
    ] = "newest",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: CursorQuery = None,
) -> EntryPage:
    rows, next_cursor = await service.list_entries(
        session,
        access,
        service.EntryFilter(
            issue_key=issue_key,
            commit=commit,
            gate_id=gate_id,
            repository=repository,
            limit=limit,
            cursor=cursor,
            oldest_first=order == "oldest",
        ),
    )
    return EntryPage(items=[entry_out(row) for row in rows], next_cursor=next_cursor)


@router.get(
    LEDGER + "/entries/{position}",
    response_model=EntryProofOut,
    summary="One entry with its inclusion proof against the latest checkpoint",
    responses={404: {"description": "No entry at that position (yet)"}},
)
async def read_entry(
    position: Annotated[int, Path(ge=0, description="The entry's position (from 0)")],
    access: MemberAccess,
    session: ReadSessionDep,
) -> EntryProofOut:
    proof = await service.prove_entry(session, access, position)
    return EntryProofOut(
        entry=entry_out(proof.entry),
        proof=InclusionProof(
            leaf_index=proof.entry.position,
            tree_size=proof.checkpoint.size,
            audit_path=[node.hex() for node in proof.path],
            checkpoint=checkpoint_out(proof.checkpoint),
        ),
    )


@router.get(
    LEDGER + "/checkpoints",
    response_model=CheckpointPage,
    summary="Signed checkpoints, largest tree first",
    responses={422: {"description": "A malformed cursor (`invalid-cursor`)"}},
)
async def read_checkpoints(
    access: MemberAccess,
    session: ReadSessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: CursorQuery = None,
) -> CheckpointPage:
    rows, next_cursor = await service.list_checkpoints(session, access, limit=limit, cursor=cursor)
    return CheckpointPage(items=[checkpoint_out(row) for row in rows], next_cursor=next_cursor)


@router.get(
    LEDGER + "/checkpoints/latest",
    response_model=CheckpointOut,
    summary="The latest signed checkpoint",
    responses=NO_CHECKPOINT,
)
async def read_latest_checkpoint(access: MemberAccess, session: ReadSessionDep) -> CheckpointOut:
    return checkpoint_out(await service.latest_checkpoint_or_404(session, access))


@router.get(
    LEDGER + "/consistency",
    response_model=ConsistencyOut,
    summary="A consistency proof: the tree of size `from` is a prefix of the tree of size `to`",
    responses={422: {"description": "Not 0 <= from <= to <= the latest size (`invalid-range`)"}},
)
async def read_consistency(
    access: MemberAccess,
    session: ReadSessionDep,
    from_size: Annotated[int, Query(alias="from", ge=0, description="The older tree size")],
    to_size: Annotated[
        int | None, Query(alias="to", ge=0, description="Default: the latest checkpoint's size")
    ] = None,
) -> ConsistencyOut:
    proof = await service.prove_consistency(session, access, from_size, to_size)
    return ConsistencyOut(
        from_size=proof.from_size,
        to_size=proof.to_size,
        from_root=proof.from_root.hex(),
        to_root=proof.to_root.hex(),
        proof=[node.hex() for node in proof.proof],
    )


@router.get(
    LEDGER + "/export",
    summary="The whole ledger as a self-contained bundle (entries, checkpoints, public key)",
    description="Streams every entry up to the latest checkpoint, every checkpoint and the "
    "verifier key, in the layout `forgehall ledger verify` streams (docs/ledger.md). Later "
    "appends do not change what an export holds.",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The bundle (JSON)",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        **UNAVAILABLE,
    },
)
async def export_ledger(
    access: MemberAccess, session: SessionDep, settings: SettingsDep, db: DatabaseDep
) -> StreamingResponse:
    plan = await service.plan_export(session, access, settings)
    name = f"{access.workspace.slug}-ledger-{plan.size}.json"
    return StreamingResponse(
        service.stream_export(db, plan),
        media_type="application/json",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    LEDGER + "/readiness",
    response_model=ReadinessOut,
    summary="Readiness of a commit or an issue for a tier (default: the workspace's)",
    description="Fail-closed, from sequenced entries and the gates files submitted with "
    "them: every gate the tier requires needs a latest clean result on the commit that "
    "is PASS (or WARN for a gate allowed to fail). See docs/gates.md for the reasons.",
    responses={422: {"description": "Neither commit nor issue_key given (`invalid-query`)"}},
)
async def read_readiness(
    access: MemberAccess,
    session: ReadSessionDep,
    commit: Annotated[str | None, Query(description="A commit (full hash)")] = None,
    repository: Annotated[str | None, Query(description="Only this repository")] = None,
    issue_key: Annotated[
        str | None, Query(description="An issue: the latest commit of each repository")
    ] = None,
    tier: Annotated[Tier | None, Query(description="Default: the workspace's tier")] = None,
) -> ReadinessOut:
    report = await service.readiness(
        session, access, repository=repository, commit=commit, issue_key=issue_key, tier=tier
    )
    return ReadinessOut(
        tier=report.tier,
        ready=report.ready,
        results=[
            ReadinessResult(
                repository=r.repository,
                commit=r.commit,
                ready=r.ready,
                required=r.required,
                passing=r.passing,
                blockers=[
                    BlockerOut(gate_id=b.gate_id, reason=b.reason, detail=b.detail)
                    for b in r.blockers
                ],
            )
            for r in report.results
        ],
    )
