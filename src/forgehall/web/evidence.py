"""The evidence pages: the workspace's gate ledger, one entry with its verified
inclusion proof, the signed checkpoints, the instance key and the export bundle; and
the gates panel of an issue page (:func:`issue_evidence`, ``evidence/_issue_gates.html``).

Every page reads through the ledger service the API routes use (``ledger.service``), so
what a page shows is what ``/api/v1/workspaces/{ws}/ledger/…`` answers. Checking an
entry is done here, on the server, with the pure core the CLI's ``ledger verify`` uses
(``ledger.checkpoint`` opens the signed note, ``ledger.merkle`` hashes the leaf and
checks the audit path): the page says verified, or not verified and why.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.core.deps import DatabaseDep, ReadSessionDep, SessionDep, SettingsDep
from forgehall.core.errors import ProblemError
from forgehall.issues.models import Issue
from forgehall.issues.service import issue_key
from forgehall.ledger import service
from forgehall.ledger.checkpoint import (
    Checkpoint,
    CheckpointError,
    VerifierKey,
    open_checkpoint,
)
from forgehall.ledger.merkle import leaf_hash, verify_inclusion
from forgehall.ledger.models import LedgerCheckpoint, LedgerEntry
from forgehall.settings import Settings
from forgehall.web.pages import discard, page, workspace_url
from forgehall.workspaces.access import Access, MemberAccess
from forgehall.workspaces.service import list_members

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
#: Gate results shown on an issue page; the link to the evidence list shows the rest.
ISSUE_ENTRIES = 20
#: The outcome of a gate as a badge class of the stylesheet.
OUTCOME_BADGE = {"PASS": "ok", "FAIL": "failed", "WARN": "queued", "SKIP": ""}

FilterText = Annotated[str | None, Query(max_length=200)]


# --- entries as the pages show them -------------------------------------------------------


@dataclass(frozen=True)
class EntryRow:
    """One ledger entry in a list (the columns copied out of the leaf for filtering)."""

    position: int
    sequenced_at: datetime
    issue_key: str | None
    commit: str | None
    repository: str
    gate_id: str
    result: str
    badge: str
    url: str


def entry_row(access: Access, row: LedgerEntry) -> EntryRow:
    return EntryRow(
        position=row.position,
        sequenced_at=row.sequenced_at,
        issue_key=row.issue_key,
        commit=row.commit_sha,
        repository=row.repository,
        gate_id=row.gate_id,
        result=row.result,
        badge=OUTCOME_BADGE.get(row.result, ""),
        url=f"{workspace_url(access)}/evidence/entries/{row.position}",
    )


@dataclass(frozen=True)
class EntryFilters:
    issue_key: str | None
    commit: str | None
    gate_id: str | None

    @classmethod
    def of(cls, issue_key: str | None, commit: str | None, gate_id: str | None) -> EntryFilters:
        def clean(value: str | None) -> str | None:
            return (value or "").strip() or None

        return cls(clean(issue_key), clean(commit), clean(gate_id))

    def query(self, **extra: str) -> str:
        pairs = {k: v for k, v in vars(self).items() if v}
        return urlencode({**pairs, **extra})


# --- the instance key -----------------------------------------------------------------------


@dataclass(frozen=True)
class KeyView:
    """The instance's checkpoint key in the forms a reader may want to compare."""

    name: str
    key_id: str  # hex, as in the signature lines of checkpoints
    public_key: str  # base64 of the raw 32-byte key (the API's ``public_key``)
    verifier_key: str  # the API's ``verifier_key`` (what ``--public-key`` reads)
    pem: str  # SubjectPublicKeyInfo, for openssl and friends
    fingerprint: str  # SHA-256 of the DER SubjectPublicKeyInfo, hex in pairs


def key_view(key: VerifierKey) -> KeyView:
    public = Ed25519PublicKey.from_public_bytes(key.public_key)
    der = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.sha256(der).hexdigest()
    return KeyView(
        name=key.name,
        key_id=key.key_id.hex(),
        public_key=base64.b64encode(key.public_key).decode(),
        verifier_key=key.encode(),
        pem=public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode(),
        fingerprint=":".join(digest[i : i + 2] for i in range(0, len(digest), 2)),
    )


@dataclass(frozen=True)
class InstanceKey:
    key: VerifierKey | None
    view: KeyView | None
    error: str | None  # why there is no key (no encryption key to create one)


async def instance_key(session: AsyncSession, access: Access, settings: Settings) -> InstanceKey:
    """The key ``GET /api/v1/ledger/public-key`` answers, or why there is none.

    ``session`` is the request's writing session (the one the access check holds): the
    key is created the first time, as the API does, without waiting for a second writer.
    """
    try:
        row = await service.ensure_signing_key(session, settings)
        await session.commit()
    except ProblemError as exc:  # no FORGEHALL_ENCRYPTION_KEY to store a new key with
        await discard(session, access.workspace, access.principal.user)
        return InstanceKey(None, None, exc.detail)
    key = service.verifier_of(row)
    return InstanceKey(key, key_view(key), None)


# --- checking an entry ----------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    label: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Verification:
    """What the server found checking one entry (or one checkpoint's signature)."""

    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(step.ok for step in self.steps)

    @property
    def reason(self) -> str:
        failed = next((step for step in self.steps if not step.ok), None)
        return failed.detail if failed else ""


def _open_checkpoint(
    row: LedgerCheckpoint, key: VerifierKey | None, origin: str | None
) -> tuple[list[Step], Checkpoint | None]:
    if key is None:
        return [Step("signature", False, "the instance key is not available")], None
    try:
        signed = open_checkpoint(row.note, key)
    except CheckpointError as exc:
        return [Step("signature", False, f"checkpoint of size {row.size}: {exc}")], None
    steps = [Step("signature", True, f"signed by {key.name} (key id {key.key_id.hex()})")]
    if origin is not None and signed.origin != origin:
        steps.append(
            Step(
                "origin",
                False,
                f"the checkpoint names the log {signed.origin}, not this ledger's {origin}",
            )
        )
    if signed.size != row.size or signed.root_hash.hex() != row.root_hash:
        steps.append(
            Step(
                "contents",
                False,
                f"the signed note says size {signed.size} and root {signed.root_hash.hex()}, "
                f"but the stored checkpoint says size {row.size} and root {row.root_hash}",
            )
        )
    return steps, signed


def check_checkpoint(
    row: LedgerCheckpoint, key: VerifierKey | None, origin: str | None
) -> Verification:
    """The checkpoint's note carries a valid signature by the instance key, names this
    ledger, and says what its row says (size and root)."""
    return Verification(_open_checkpoint(row, key, origin)[0])


def _hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        return b""


def check_entry(
    entry: LedgerEntry,
    checkpoint: LedgerCheckpoint,
    path: list[bytes],
    key: VerifierKey | None,
    origin: str | None,
) -> Verification:
    """The checks of ``forgehall ledger verify`` for one entry: the checkpoint is signed
    by the instance key; the entry's bytes hash to the leaf hash recorded with it; the
    recorded leaf hash with its audit path gives the root the checkpoint signs."""
    steps, signed = _open_checkpoint(checkpoint, key, origin)
    leaf = leaf_hash(entry.entry.encode())
    if leaf.hex() == entry.leaf_hash:
        steps.append(Step("leaf", True, "the entry's bytes hash to its recorded leaf hash"))
    else:
        steps.append(
            Step(
                "leaf",
                False,
                "the entry was changed: its bytes do not hash to the leaf hash recorded with "
                f"it (they hash to {leaf.hex()})",
            )
        )
    # The root the signature covers; without a valid signature, the stored one (the
    # verdict is "not verified" either way, but the proof's own check still informs).
    root = signed.root_hash if signed is not None else _hex(checkpoint.root_hash)
    if verify_inclusion(entry.position, checkpoint.size, _hex(entry.leaf_hash), path, root):
        steps.append(
            Step(
                "inclusion",
                True,
                f"the recorded leaf hash and its audit path of {len(path)} hashes give the "
                f"root of the checkpoint of size {checkpoint.size}",
            )
        )
    else:
        steps.append(
            Step(
                "inclusion",
                False,
                "the inclusion proof does not lead to the root of the checkpoint of size "
                f"{checkpoint.size}: the entry's leaf hash or a node of the tree was changed",
            )
        )
    return Verification(steps)


# --- pages ----------------------------------------------------------------------------------


@router.get("/w/{workspace}/evidence", response_class=HTMLResponse)
async def evidence_page(
    request: Request,
    access: MemberAccess,
    session: ReadSessionDep,
    writer: SessionDep,
    settings: SettingsDep,
    issue_key: FilterText = None,
    commit: FilterText = None,
    gate_id: FilterText = None,
    cursor: Annotated[str | None, Query(max_length=40)] = None,
) -> HTMLResponse:
    """The ledger's entries, newest first, filtered like ``GET …/ledger/entries``."""
    filters = EntryFilters.of(issue_key, commit, gate_id)
    error = None
    try:
        rows, next_cursor = await service.list_entries(
            session,
            access,
            service.EntryFilter(
                issue_key=filters.issue_key,
                commit=filters.commit,
                gate_id=filters.gate_id,
                limit=PAGE_SIZE,
                cursor=cursor or None,
            ),
        )
    except ProblemError as exc:
        rows, next_cursor, error = [], None, exc.detail
    latest = await service.latest_checkpoint(session, access.workspace.id)
    return await page(
        request,
        session,
        access,
        "evidence/entries.html",
        "evidence",
        status=422 if error else 200,
        entries=[entry_row(access, row) for row in rows],
        filters=filters,
        next_cursor=next_cursor,
        paged=cursor is not None,
        latest=latest,
        instance=await instance_key(writer, access, settings),
        base=workspace_url(access),
        error=error,
    )


@router.get("/w/{workspace}/evidence/entries/{position}", response_class=HTMLResponse)
async def entry_page(
    request: Request,
    position: Annotated[int, Path(ge=0)],
    access: MemberAccess,
    session: ReadSessionDep,
    writer: SessionDep,
    settings: SettingsDep,
) -> HTMLResponse:
    """One entry, everything recorded with it, and the server's check of its proof."""
    instance = await instance_key(writer, access, settings)
    head = await service.read_head(session, access)
    origin = head.origin if head is not None else None
    try:
        proof = await service.prove_entry(session, access, position)
    except RuntimeError as exc:  # a subtree of the proof is missing from the database
        entry = await service.get_entry_or_404(session, access, position)
        checkpoint = await service.latest_checkpoint_or_404(session, access)
        path: list[bytes] = []
        verification = Verification([Step("proof", False, f"no proof can be built: {exc}")])
    else:
        entry, checkpoint, path = proof.entry, proof.checkpoint, proof.path
        verification = check_entry(entry, checkpoint, path, instance.key, origin)
    try:
        parsed = json.loads(entry.entry)
    except ValueError:  # a row rewritten into something else: shown raw below
        parsed = None
    fields: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
    names = {user.id: user.name or user.email for _, user in await list_members(session, access)}
    return await page(
        request,
        session,
        access,
        "evidence/entry.html",
        "evidence",
        row=entry,
        fields=fields,
        scope=fields.get("scope") if isinstance(fields.get("scope"), dict) else {},
        runner=fields.get("runner") if isinstance(fields.get("runner"), dict) else {},
        badge=OUTCOME_BADGE.get(entry.result, ""),
        submitter=names.get(entry.submitted_by or "", entry.submitted_by),
        checkpoint=checkpoint,
        path=[node.hex() for node in path],
        verification=verification,
        instance=instance,
        base=workspace_url(access),
    )


@router.get("/w/{workspace}/evidence/checkpoints", response_class=HTMLResponse)
async def checkpoints_page(
    request: Request,
    access: MemberAccess,
    session: ReadSessionDep,
    writer: SessionDep,
    settings: SettingsDep,
    cursor: Annotated[str | None, Query(max_length=40)] = None,
) -> HTMLResponse:
    """The signed checkpoints, largest first, each with its signature checked."""
    instance = await instance_key(writer, access, settings)
    head = await service.read_head(session, access)
    origin = head.origin if head is not None else None
    error = None
    try:
        rows, next_cursor = await service.list_checkpoints(
            session, access, limit=PAGE_SIZE, cursor=cursor or None
        )
    except ProblemError as exc:
        rows, next_cursor, error = [], None, exc.detail
    return await page(
        request,
        session,
        access,
        "evidence/checkpoints.html",
        "evidence",
        status=422 if error else 200,
        checkpoints=[(row, check_checkpoint(row, instance.key, origin)) for row in rows],
        next_cursor=next_cursor,
        instance=instance,
        base=workspace_url(access),
        error=error,
    )


@router.get("/w/{workspace}/evidence/export", response_class=StreamingResponse)
async def export_bundle(
    access: MemberAccess, session: SessionDep, settings: SettingsDep, db: DatabaseDep
) -> StreamingResponse:
    """The bundle ``GET …/ledger/export`` and ``forgehall ledger export`` give, as a
    download (a session cookie is enough: this is a page route)."""
    plan = await service.plan_export(session, access, settings)
    name = f"{access.workspace.slug}-ledger-{plan.size}.json"
    return StreamingResponse(
        service.stream_export(db, plan),
        media_type="application/json",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )


# --- the issue page's gates panel -----------------------------------------------------------


@dataclass(frozen=True)
class IssueEvidence:
    """What ``evidence/_issue_gates.html`` shows: the issue's readiness (as
    ``GET …/ledger/readiness?issue_key=`` answers it) and its latest gate results."""

    key: str
    readiness: service.ReadinessReport
    entries: list[EntryRow]
    more: bool  # there are older results than those shown
    list_url: str  # the evidence list filtered to this issue
    base: str  # the workspace's pages: /w/{slug}


async def issue_evidence(session: AsyncSession, access: Access, issue: Issue) -> dict[str, Any]:
    """The context of ``evidence/_issue_gates.html`` for an issue: ``{"evidence": …}``."""
    key = issue_key(access, issue)
    rows, next_cursor = await service.list_entries(
        session, access, service.EntryFilter(issue_key=key, limit=ISSUE_ENTRIES)
    )
    report = await service.readiness(
        session, access, repository=None, commit=None, issue_key=key, tier=None
    )
    return {
        "evidence": IssueEvidence(
            key=key,
            readiness=report,
            entries=[entry_row(access, row) for row in rows],
            more=next_cursor is not None,
            list_url=f"{workspace_url(access)}/evidence?{urlencode({'issue_key': key})}",
            base=workspace_url(access),
        )
    }
