"""The server ledger: appends, the sequencer, checkpoints, proofs, export and readiness.

One log per workspace, built with the pure core (``canonical``, ``merkle``,
``checkpoint``, ``bundle``); tables in :mod:`forgehall.ledger.models`.

**Appending.** An append validates the entries, stores their canonical JSON in
``ledger_pending`` and commits: the 201 is sent only once the entries are durable. It
takes no lock and touches no shared row (beyond creating the workspace's head the first
time), so appends from many runners run side by side. Positions are not assigned here.
Appends arriving together share one INSERT and one commit (group commit,
:mod:`forgehall.ledger.grouping`); those carrying a gate set commit alone, with it.

**Sequencing.** The leader-only ``ledger-sequencer`` service (:class:`LedgerSequencer`,
every 0.5 s) drains ``ledger_pending`` in insertion order, in batches of up to 5,000,
each batch in one transaction: it takes the ``ledger-sequencer`` transaction lock (so a
second sequencer during a leadership hand-over waits instead of interleaving), locks the
heads concerned, gives each entry the next position of its workspace, extends the tree
from the stored frontier, stores the leaves, the perfect subtrees they complete and one
signed checkpoint per workspace, rewrites the head, and deletes the pending rows it
took. Either all of that commits or none of it: a crash (or a lost leadership) in the
middle leaves the entries pending for the next run, and the log as it was at its last
checkpoint. Positions are gap-free and unique by construction (the next position is
the head's size, under the head's lock) and by the primary key (workspace, position).

Why not assign positions at insert under a per-workspace lock: every append would then
serialise on one row (lock, read the frontier, hash, write it back) for the length of
its transaction, capping a workspace at one append per commit latency; batching also
signs one checkpoint per batch rather than one per append. The price is that an entry
has a position (and appears in listings, proofs and readiness) only once sequenced —
within about a second.

**Proofs** come from the stored perfect subtrees: O(log² n) rows per proof, whatever
the size of the log. **Readiness** reads sequenced entries only.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from sqlalchemy import and_, delete, func, insert, or_, select
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import undefer

from forgehall.agents.models import Task
from forgehall.core.errors import ProblemError
from forgehall.core.services import BackgroundService
from forgehall.db.dialect import transaction_lock, upsert_insert
from forgehall.db.engine import Database
from forgehall.db.types import CredentialKeyError, utcnow
from forgehall.gates.readiness import Blocker, Readiness, compute_readiness
from forgehall.gates.schemas import TIERS, Tier
from forgehall.ledger import bundle, grouping
from forgehall.ledger.canonical import canonical_json
from forgehall.ledger.checkpoint import Checkpoint, SigningKey, VerifierKey, sign_checkpoint
from forgehall.ledger.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MerkleFrontier,
    consistency_ranges,
    fold_pieces,
    inclusion_ranges,
    leaf_hash,
    perfect_pieces,
)
from forgehall.ledger.models import (
    CHECKPOINTS,
    ENTRIES,
    HEADS,
    KEYS,
    NODES,
    PENDING,
    LedgerCheckpoint,
    LedgerEntry,
    LedgerGateSet,
    LedgerHead,
    LedgerKey,
    LedgerNode,
)
from forgehall.ledger.schemas import EntriesIn, GateRequirement, SubmittedEntry
from forgehall.settings import Settings
from forgehall.workspaces.access import Access

log = structlog.get_logger("forgehall.ledger")

KEY_ROW = "instance"
SEQUENCER_LOCK = "ledger-sequencer"
SEQUENCE_BATCH = 5000
EXPORT_PAGE = 2000
_IN_CHUNK = 1000  # ids per IN (...) list, far below both databases' parameter limits
_LEASED = ("dispatched", "running")

_pending = PENDING


# --- the instance key -----------------------------------------------------------------------


def key_name(settings: Settings) -> str:
    """The signed-note key name: the public origin's host (and port)."""
    return urlsplit(settings.origin).netloc or "forgehall"


def _encryption_key_required() -> ProblemError:
    return ProblemError(
        503,
        "the ledger's signing key is stored encrypted, and this server has no "
        "FORGEHALL_ENCRYPTION_KEY; an operator must set one (docs/configuration.md)",
        type_="encryption-key-required",
    )


async def ensure_signing_key(session: AsyncSession, settings: Settings) -> LedgerKey:
    """The instance's signing key, generated the first time (in the caller's
    transaction; the caller commits). Concurrent first calls keep one key."""
    row = await session.get(LedgerKey, KEY_ROW)
    if row is not None:
        return row
    private = Ed25519PrivateKey.generate()
    raw_private = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    raw_public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    statement = (
        upsert_insert(session, KEYS)
        .values(
            id=KEY_ROW,
            name=key_name(settings),
            public_key=base64.b64encode(raw_public).decode(),
            private_key=base64.b64encode(raw_private).decode(),
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )
    try:
        result = await session.execute(statement)
    except (CredentialKeyError, StatementError) as exc:
        # SQLAlchemy wraps what the column type raises while binding the value.
        cause = exc.orig if isinstance(exc, StatementError) else exc
        if not isinstance(cause, CredentialKeyError):
            raise
        raise _encryption_key_required() from None
    row = await session.get(LedgerKey, KEY_ROW)
    assert row is not None
    if result.rowcount:  # type: ignore[attr-defined]
        log.info("ledger.key_created", key_name=row.name, key_id=verifier_of(row).key_id.hex())
    return row


async def create_signing_key_at_start(db: Database, settings: Settings) -> None:
    """Server start-up: make sure the instance has its key (no-op once it does)."""
    async with db.session() as session:
        await ensure_signing_key(session, settings)
        await session.commit()


def verifier_of(row: LedgerKey) -> VerifierKey:
    return VerifierKey(row.name, base64.b64decode(row.public_key))


async def read_public_key(db: Database, settings: Settings) -> VerifierKey:
    """The instance's verifier key (read without the writer; created if missing)."""
    async with db.read_session() as session:
        row = await session.get(LedgerKey, KEY_ROW)
    if row is None:
        async with db.session() as session:
            row = await ensure_signing_key(session, settings)
            await session.commit()
    return verifier_of(row)


async def _signing_key(
    session: AsyncSession, key_id: str, cache: dict[str, SigningKey]
) -> SigningKey:
    if key_id not in cache:
        row = await session.get(LedgerKey, key_id, options=[undefer(LedgerKey.private_key)])
        if row is None:
            raise RuntimeError(f"ledger signing key {key_id!r} is missing")
        raw = base64.b64decode(row.private_key)
        cache[key_id] = SigningKey(row.name, Ed25519PrivateKey.from_private_bytes(raw))
    return cache[key_id]


# --- appending ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppendResult:
    submissions: list[int]
    leaf_hashes: list[str]
    gate_sets: int
    origin: str


async def _check_submitter(
    session: AsyncSession, access: Access, entries: Sequence[SubmittedEntry]
) -> None:
    """Members append; so does an agent through its task token, while its task holds a
    current lease, and only for that task. Daemon tokens do not."""
    principal = access.principal
    if principal.kind == "dmn":
        raise ProblemError(
            403,
            "a daemon token cannot append to the ledger; use the task's token (fh_tsk_…) "
            "or a member's token",
            type_="wrong-token-kind",
        )
    if principal.kind != "tsk":
        return
    token = principal.token
    task_id = token.task_id if token is not None else None
    task = await session.get(Task, task_id) if task_id else None
    if task is not None and task.workspace_id != access.workspace.id:
        task = None
    if (
        task is None
        or task.status not in _LEASED
        or task.lease_expires_at is None
        or task.lease_expires_at <= utcnow()
    ):
        raise ProblemError(
            403,
            f"task {task_id}'s lease is not current: a task token appends only while its task runs",
            type_="task-lease-ended",
        )
    for index, entry in enumerate(entries):
        if entry.scope.task_id != task_id:
            raise ProblemError(
                403,
                f"entries[{index}].scope.task_id is {entry.scope.task_id!r}: a task token "
                f"appends only entries of its own task ({task_id})",
                type_="task-scope-mismatch",
            )


#: Workspace id -> origin of the logs known to exist. Heads are never deleted and an
#: origin never changes, so once seen it stays true; the cache saves the hot append path
#: a query.
_ORIGINS: dict[str, str] = {}


async def _ensure_head(session: AsyncSession, access: Access, settings: Settings) -> str:
    """The workspace's log origin, creating its head the first time."""
    workspace = access.workspace
    cached = _ORIGINS.get(workspace.id)
    if cached is not None:
        return cached
    head = await session.get(LedgerHead, workspace.id)
    if head is not None:
        _ORIGINS[workspace.id] = head.origin
        return head.origin
    key = await ensure_signing_key(session, settings)
    now = utcnow()
    await session.execute(
        upsert_insert(session, HEADS)
        .values(
            workspace_id=workspace.id,
            origin=f"{key.name}/ledger/{workspace.slug}",
            key_id=key.id,
            size=0,
            frontier="",
            root_hash=EMPTY_ROOT.hex(),
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["workspace_id"])
    )
    head = await session.get(LedgerHead, workspace.id)
    assert head is not None
    log.info("ledger.created", workspace_id=workspace.id, origin=head.origin)
    return head.origin  # cached once the transaction has committed


def gates_text(gates: Sequence[GateRequirement]) -> str:
    """The canonical JSON of a gate set (sorted by gate id)."""
    items = sorted((g.model_dump(mode="json") for g in gates), key=lambda g: str(g["id"]))
    return canonical_json(items).decode()


async def _record_gate_sets(
    session: AsyncSession,
    access: Access,
    entries: Sequence[SubmittedEntry],
    gates: Sequence[GateRequirement],
) -> int:
    text = gates_text(gates)
    digest = hashlib.sha256(text.encode()).hexdigest()
    targets = sorted(
        {(e.scope.repository, e.scope.commit) for e in entries if e.scope.commit is not None}
    )
    added = 0
    for repository, commit in targets:
        known = await session.scalar(
            select(func.count())
            .select_from(LedgerGateSet)
            .where(
                LedgerGateSet.workspace_id == access.workspace.id,
                LedgerGateSet.commit_sha == commit,
                LedgerGateSet.repository == repository,
                LedgerGateSet.gates_sha256 == digest,
            )
        )
        if known:
            continue
        session.add(
            LedgerGateSet(
                workspace_id=access.workspace.id,
                repository=repository,
                commit_sha=commit,
                gates=text,
                gates_sha256=digest,
                submitted_by=access.principal.user.id,
            )
        )
        added += 1
    return added


async def _insert_pending(session: AsyncSession, rows: list[dict[str, Any]]) -> list[int]:
    """One INSERT of ``rows`` into ``ledger_pending`` (Core on the session's connection);
    their ids, in order."""
    connection = await session.connection()
    statement = insert(_pending).returning(_pending.c.id, sort_by_parameter_order=True)
    result = await connection.execute(statement, rows)
    return [int(i) for i in result.scalars()]


async def append_entries(
    session: AsyncSession, access: Access, settings: Settings, data: EntriesIn
) -> AppendResult:
    """Store entries durably for the sequencer; returns their submission ids and leaf
    hashes. Nothing is stored when any entry or the caller is refused."""
    await _check_submitter(session, access, data.entries)
    head_known = access.workspace.id in _ORIGINS
    origin = await _ensure_head(session, access, settings)
    now = utcnow()
    rows: list[dict[str, Any]] = []
    leaves: list[str] = []
    for entry in data.entries:
        text = canonical_json(entry.model_dump(mode="json"))
        leaves.append(leaf_hash(text).hex())
        rows.append(
            {
                "workspace_id": access.workspace.id,
                "entry": text.decode(),
                "gate_id": entry.gate_id,
                "result": entry.result,
                "repository": entry.scope.repository,
                "commit_sha": entry.scope.commit,
                "issue_key": entry.scope.issue_key,
                "task_id": entry.scope.task_id,
                "tier": entry.tier,
                "submitted_by": access.principal.user.id,
                "received_at": now,
            }
        )
    gate_sets = 0
    if data.gates is None and head_known:
        # The hot path of every runner: shared with the appends arriving meanwhile.
        ids = await grouping.write_grouped(session, rows, _insert_pending)
    else:  # gate sets (and a head created just now) commit with the entries
        ids = await _insert_pending(session, rows)
        if data.gates is not None:
            gate_sets = await _record_gate_sets(session, access, data.entries, data.gates)
        await session.commit()
    _ORIGINS.setdefault(access.workspace.id, origin)
    log.debug("ledger.appended", workspace_id=access.workspace.id, entries=len(ids))
    return AppendResult(ids, leaves, gate_sets, origin)


# --- sequencing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceResult:
    entries: int
    checkpoints: int
    oldest: datetime | None  # when the oldest entry sequenced was received


def _frontier_nodes(text: str) -> list[bytes]:
    step = HASH_SIZE * 2
    return [bytes.fromhex(text[i : i + step]) for i in range(0, len(text), step)]


async def sequence_pending(
    db: Database, keys: dict[str, SigningKey] | None = None, *, batch: int = SEQUENCE_BATCH
) -> SequenceResult:
    """Give up to ``batch`` pending entries their positions, in one transaction (see the
    module docstring); returns what was done. ``keys`` caches decrypted signing keys."""
    cache = keys if keys is not None else {}
    async with db.read_session() as session:  # idle: no write lock taken (SQLite)
        if await session.scalar(select(_pending.c.id).limit(1)) is None:
            return SequenceResult(0, 0, None)
    async with db.session() as session:
        await transaction_lock(session, SEQUENCER_LOCK)
        pending = list(
            (await session.execute(select(_pending).order_by(_pending.c.id).limit(batch))).all()
        )
        if not pending:
            await session.rollback()
            return SequenceResult(0, 0, None)
        groups: dict[str, list[Any]] = {}
        for row in pending:
            groups.setdefault(row.workspace_id, []).append(row)
        heads = {
            head.workspace_id: head
            for head in (
                await session.scalars(
                    select(LedgerHead)
                    .where(LedgerHead.workspace_id.in_(list(groups)))
                    .with_for_update()
                )
            )
        }
        now = utcnow()
        entry_rows: list[dict[str, Any]] = []
        node_rows: list[dict[str, Any]] = []
        checkpoint_rows: list[dict[str, Any]] = []
        for workspace_id, rows in groups.items():
            head = heads.get(workspace_id)
            if head is None:  # appends create the head in their own transaction
                raise RuntimeError(f"pending ledger entries of {workspace_id} have no head")
            frontier = MerkleFrontier(head.size, _frontier_nodes(head.frontier))
            leaves = [leaf_hash(row.entry.encode()) for row in rows]
            for level, index, node in frontier.extend_with_nodes(leaves):
                node_rows.append(
                    {"workspace_id": workspace_id, "level": level, "idx": index, "hash": node.hex()}
                )
            for offset, (row, leaf) in enumerate(zip(rows, leaves, strict=True)):
                entry_rows.append(
                    {
                        "workspace_id": workspace_id,
                        "position": head.size + offset,
                        "entry": row.entry,
                        "leaf_hash": leaf.hex(),
                        "gate_id": row.gate_id,
                        "result": row.result,
                        "repository": row.repository,
                        "commit_sha": row.commit_sha,
                        "issue_key": row.issue_key,
                        "task_id": row.task_id,
                        "tier": row.tier,
                        "submitted_by": row.submitted_by,
                        "received_at": row.received_at,
                        "sequenced_at": now,
                    }
                )
            root = frontier.root()
            signer = await _signing_key(session, head.key_id, cache)
            note = sign_checkpoint(Checkpoint(head.origin, frontier.size, root), signer)
            checkpoint_rows.append(
                {
                    "workspace_id": workspace_id,
                    "size": frontier.size,
                    "root_hash": root.hex(),
                    "note": note,
                    "key_id": head.key_id,
                    "created_at": now,
                }
            )
            head.size = frontier.size
            head.frontier = "".join(node.hex() for node in frontier.nodes)
            head.root_hash = root.hex()
            head.updated_at = now
        await session.execute(insert(ENTRIES), entry_rows)
        if node_rows:
            await session.execute(insert(NODES), node_rows)
        await session.execute(insert(CHECKPOINTS), checkpoint_rows)
        ids = [row.id for row in pending]
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            await session.execute(delete(_pending).where(_pending.c.id.in_(chunk)))
        await session.commit()
    oldest = min(row.received_at for row in pending)
    log.debug(
        "ledger.sequenced",
        entries=len(pending),
        checkpoints=len(checkpoint_rows),
        lag_ms=round((now - oldest).total_seconds() * 1000),
    )
    return SequenceResult(len(pending), len(checkpoint_rows), oldest)


class LedgerSequencer(BackgroundService):
    """Gives pending ledger entries their positions and signs a checkpoint per workspace
    and batch (see the module docstring): while appends arrive, a checkpoint follows
    within one interval plus the batch's own time."""

    name: ClassVar[str] = "ledger-sequencer"
    default_interval: ClassVar[float] = 0.5
    leader_only: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._keys: dict[str, SigningKey] = {}

    async def run_once(self) -> None:
        while (await sequence_pending(self.db, self._keys)).entries == SEQUENCE_BATCH:
            pass  # a backlog: keep going, one transaction per batch


# --- reading --------------------------------------------------------------------------------


async def read_head(session: AsyncSession, access: Access) -> LedgerHead | None:
    return await session.get(LedgerHead, access.workspace.id)


async def latest_checkpoint(session: AsyncSession, workspace_id: str) -> LedgerCheckpoint | None:
    result: LedgerCheckpoint | None = await session.scalar(
        select(LedgerCheckpoint)
        .where(LedgerCheckpoint.workspace_id == workspace_id)
        .order_by(LedgerCheckpoint.size.desc())
        .limit(1)
    )
    return result


async def latest_checkpoint_or_404(session: AsyncSession, access: Access) -> LedgerCheckpoint:
    checkpoint = await latest_checkpoint(session, access.workspace.id)
    if checkpoint is None:
        raise ProblemError(
            404,
            f"the ledger of {access.workspace.slug} has no checkpoint yet (nothing was "
            "appended, or the first entries are still being sequenced)",
            type_="no-checkpoint",
        )
    return checkpoint


def _position_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isdigit():
        raise ProblemError(
            422, "the cursor is malformed; start again without it", type_="invalid-cursor"
        )
    return int(cursor)


@dataclass(frozen=True)
class EntryFilter:
    issue_key: str | None = None
    commit: str | None = None
    gate_id: str | None = None
    repository: str | None = None
    limit: int = 50
    cursor: str | None = None
    oldest_first: bool = False


async def list_entries(
    session: AsyncSession, access: Access, f: EntryFilter
) -> tuple[list[LedgerEntry], str | None]:
    """A page of sequenced entries, newest first unless ``oldest_first``."""
    query = select(LedgerEntry).where(LedgerEntry.workspace_id == access.workspace.id)
    if f.issue_key is not None:
        query = query.where(LedgerEntry.issue_key == f.issue_key)
    if f.commit is not None:
        query = query.where(LedgerEntry.commit_sha == f.commit)
    if f.gate_id is not None:
        query = query.where(LedgerEntry.gate_id == f.gate_id)
    if f.repository is not None:
        query = query.where(LedgerEntry.repository == f.repository)
    after = _position_cursor(f.cursor)
    column = LedgerEntry.position
    if after is not None:
        query = query.where(column > after if f.oldest_first else column < after)
    query = query.order_by(column.asc() if f.oldest_first else column.desc()).limit(f.limit + 1)
    rows = list((await session.scalars(query)).all())
    next_cursor = None
    if len(rows) > f.limit:
        rows = rows[: f.limit]
        next_cursor = str(rows[-1].position)
    return rows, next_cursor


async def get_entry_or_404(session: AsyncSession, access: Access, position: int) -> LedgerEntry:
    entry = await session.get(LedgerEntry, (access.workspace.id, position))
    if entry is None:
        raise ProblemError(
            404,
            f"there is no entry at position {position} in the ledger of "
            f"{access.workspace.slug} (positions count from 0; recent appends get theirs "
            "within about a second)",
        )
    return entry


async def _subtree_roots(
    session: AsyncSession, workspace_id: str, ranges: Iterable[tuple[int, int]]
) -> list[bytes]:
    """The roots of subtrees ``[start, end)`` from stored leaves and perfect subtrees."""
    wanted = [perfect_pieces(start, end) for start, end in ranges]
    by_level: dict[int, set[int]] = {}
    for pieces in wanted:
        for level, index in pieces:
            by_level.setdefault(level, set()).add(index)
    known: dict[tuple[int, int], bytes] = {}
    leaves = sorted(by_level.pop(0, set()))
    for start in range(0, len(leaves), _IN_CHUNK):
        rows = await session.execute(
            select(LedgerEntry.position, LedgerEntry.leaf_hash).where(
                LedgerEntry.workspace_id == workspace_id,
                LedgerEntry.position.in_(leaves[start : start + _IN_CHUNK]),
            )
        )
        known.update({(0, int(p)): bytes.fromhex(h) for p, h in rows.all()})
    if by_level:
        conditions = [
            and_(LedgerNode.level == level, LedgerNode.idx.in_(sorted(indexes)))
            for level, indexes in by_level.items()
        ]
        stored = await session.execute(
            select(LedgerNode.level, LedgerNode.idx, LedgerNode.hash).where(
                LedgerNode.workspace_id == workspace_id, or_(*conditions)
            )
        )
        known.update({(int(lv), int(ix)): bytes.fromhex(h) for lv, ix, h in stored.all()})
    roots = []
    for pieces in wanted:
        missing = [piece for piece in pieces if piece not in known]
        if missing:
            raise RuntimeError(f"ledger of {workspace_id}: subtrees {missing} are not stored")
        roots.append(fold_pieces([known[piece] for piece in pieces]))
    return roots


async def root_at(session: AsyncSession, workspace_id: str, size: int) -> bytes:
    if size == 0:
        return EMPTY_ROOT
    return (await _subtree_roots(session, workspace_id, [(0, size)]))[0]


@dataclass(frozen=True)
class EntryProof:
    entry: LedgerEntry
    checkpoint: LedgerCheckpoint
    path: list[bytes]


async def prove_entry(session: AsyncSession, access: Access, position: int) -> EntryProof:
    """An entry with its inclusion proof against the latest checkpoint."""
    entry = await get_entry_or_404(session, access, position)
    checkpoint = await latest_checkpoint_or_404(session, access)
    ranges = inclusion_ranges(position, checkpoint.size)
    path = await _subtree_roots(session, access.workspace.id, ranges)
    return EntryProof(entry, checkpoint, path)


@dataclass(frozen=True)
class ConsistencyProof:
    from_size: int
    to_size: int
    from_root: bytes
    to_root: bytes
    proof: list[bytes]


async def prove_consistency(
    session: AsyncSession, access: Access, from_size: int, to_size: int | None
) -> ConsistencyProof:
    """PROOF(from, D[to]); ``to`` defaults to the latest checkpoint's size."""
    checkpoint = await latest_checkpoint(session, access.workspace.id)
    size = checkpoint.size if checkpoint is not None else 0
    target = size if to_size is None else to_size
    if not 0 <= from_size <= target <= size:
        raise ProblemError(
            422,
            f"need 0 <= from <= to <= {size} (the latest checkpoint's size); got from "
            f"{from_size}, to {target}",
            type_="invalid-range",
        )
    workspace_id = access.workspace.id
    proof = await _subtree_roots(session, workspace_id, consistency_ranges(from_size, target))
    return ConsistencyProof(
        from_size,
        target,
        await root_at(session, workspace_id, from_size),
        await root_at(session, workspace_id, target),
        proof,
    )


async def list_checkpoints(
    session: AsyncSession, access: Access, *, limit: int, cursor: str | None
) -> tuple[list[LedgerCheckpoint], str | None]:
    """Checkpoints, largest tree first."""
    query = select(LedgerCheckpoint).where(LedgerCheckpoint.workspace_id == access.workspace.id)
    before = _position_cursor(cursor)
    if before is not None:
        query = query.where(LedgerCheckpoint.size < before)
    rows = list(
        (await session.scalars(query.order_by(LedgerCheckpoint.size.desc()).limit(limit + 1))).all()
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = str(rows[-1].size)
    return rows, next_cursor


# --- export ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportPlan:
    workspace_id: str
    origin: str
    public_key: str
    size: int
    notes: list[str]


async def plan_export(session: AsyncSession, access: Access, settings: Settings) -> ExportPlan:
    """What a bundle exported now holds: every entry up to the latest checkpoint, and
    every checkpoint. Later appends do not change it (the tables are append-only)."""
    head = await read_head(session, access)
    if head is None:
        key = verifier_of(await ensure_signing_key(session, settings))
        await session.commit()
        origin = f"{key.name}/ledger/{access.workspace.slug}"
        return ExportPlan(access.workspace.id, origin, key.encode(), 0, [])
    key_row = await session.get(LedgerKey, head.key_id)
    assert key_row is not None
    notes = list(
        (
            await session.scalars(
                select(LedgerCheckpoint.note)
                .where(LedgerCheckpoint.workspace_id == access.workspace.id)
                .order_by(LedgerCheckpoint.size)
            )
        ).all()
    )
    latest = await latest_checkpoint(session, access.workspace.id)
    size = latest.size if latest is not None else 0
    return ExportPlan(access.workspace.id, head.origin, verifier_of(key_row).encode(), size, notes)


async def stream_export(db: Database, plan: ExportPlan) -> AsyncIterator[bytes]:
    """The bundle's bytes (``ledger.bundle`` layout), read page by page."""
    yield bundle.bundle_header(plan.origin, plan.public_key, plan.size)
    for number, note in enumerate(plan.notes, start=1):
        yield bundle.checkpoint_line(note, last=number == len(plan.notes))
    yield bundle.ENTRIES_LINE
    last = plan.size - 1
    for start in range(0, plan.size, EXPORT_PAGE):
        async with db.read_session() as session:
            rows = (
                await session.execute(
                    select(LedgerEntry.position, LedgerEntry.leaf_hash, LedgerEntry.entry)
                    .where(
                        LedgerEntry.workspace_id == plan.workspace_id,
                        LedgerEntry.position >= start,
                        LedgerEntry.position < min(start + EXPORT_PAGE, plan.size),
                    )
                    .order_by(LedgerEntry.position)
                )
            ).all()
        yield b"".join(bundle.entry_line(int(p), h, e.encode(), last=p == last) for p, h, e in rows)
    yield bundle.END_LINE


# --- readiness ------------------------------------------------------------------------------


def _strictest(gate_sets: Iterable[str]) -> list[GateRequirement]:
    """Every gate named by any recorded gates file, required in every tier any of them
    requires it in, allowed to fail only if all of them allow it: a later, weaker gates
    file cannot make a commit ready."""
    merged: dict[str, GateRequirement] = {}
    for text in gate_sets:
        for item in json.loads(text):
            gate = GateRequirement.model_validate(item)
            seen = merged.get(gate.id)
            if seen is None:
                merged[gate.id] = gate
                continue
            tiers = [t for t in TIERS if t in seen.required_in or t in gate.required_in]
            merged[gate.id] = GateRequirement(
                id=gate.id,
                required_in=tiers,
                allow_failure=seen.allow_failure and gate.allow_failure,
            )
    return [merged[k] for k in sorted(merged)]


async def _readiness_of(
    session: AsyncSession,
    workspace_id: str,
    tier: Tier,
    repository: str,
    commit: str,
    *,
    pending: bool = False,
) -> Readiness:
    gate_texts = (
        await session.scalars(
            select(LedgerGateSet.gates).where(
                LedgerGateSet.workspace_id == workspace_id,
                LedgerGateSet.commit_sha == commit,
                LedgerGateSet.repository == repository,
            )
        )
    ).all()
    rules = _strictest(gate_texts)
    # Pending entries first: one the sequencer moves meanwhile is then seen twice (and
    # counted once), never missed.
    waiting = (
        (
            await session.scalars(
                select(_pending.c.entry)
                .where(
                    _pending.c.workspace_id == workspace_id,
                    _pending.c.commit_sha == commit,
                    _pending.c.repository == repository,
                )
                .order_by(_pending.c.id)
            )
        ).all()
        if pending
        else []
    )
    here = (
        await session.scalars(
            select(LedgerEntry.entry)
            .where(
                LedgerEntry.workspace_id == workspace_id,
                LedgerEntry.commit_sha == commit,
                LedgerEntry.repository == repository,
            )
            .order_by(LedgerEntry.position)
        )
    ).all()
    sequenced = set(here)
    entries = [json.loads(text) for text in [*here, *(t for t in waiting if t not in sequenced)]]
    ran_here = {e.get("gate_id") for e in entries}
    for rule in rules:
        if tier in rule.required_in and rule.id not in ran_here:
            # Only its latest run elsewhere matters (for the "stale commit" detail).
            elsewhere = await session.scalar(
                select(LedgerEntry.entry)
                .where(
                    LedgerEntry.workspace_id == workspace_id,
                    LedgerEntry.gate_id == rule.id,
                    LedgerEntry.repository == repository,
                )
                .order_by(LedgerEntry.position.desc())
                .limit(1)
            )
            if elsewhere is not None:
                entries.insert(0, json.loads(elsewhere))
    if not gate_texts:
        blocker = Blocker(
            "-",
            "no gates",
            "no gates file was submitted with the entries of this commit, so nothing says "
            "which gates are required (`forgehall gates run --submit` sends it)",
        )
        return Readiness(tier, repository, commit, False, [], [], [blocker])
    return compute_readiness(rules, tier, entries, repository=repository, commit=commit)


async def _targets(
    session: AsyncSession,
    workspace_id: str,
    *,
    repository: str | None,
    commit: str | None,
    issue_key: str | None,
) -> list[tuple[str, str]]:
    query = select(LedgerEntry.repository, LedgerEntry.commit_sha).where(
        LedgerEntry.workspace_id == workspace_id, LedgerEntry.commit_sha.is_not(None)
    )
    if issue_key is not None:
        query = query.where(LedgerEntry.issue_key == issue_key)
    if commit is not None:
        query = query.where(LedgerEntry.commit_sha == commit)
    if repository is not None:
        query = query.where(LedgerEntry.repository == repository)
    rows = (await session.execute(query.order_by(LedgerEntry.position.desc()).limit(10_000))).all()
    latest: dict[str, str] = {}
    for repo, sha in rows:
        if sha is not None:
            latest.setdefault(repo, sha)  # newest first: the first seen is the latest
    if not latest and repository is not None and commit is not None:
        return [(repository, commit)]  # nothing recorded: every required gate is missing
    return sorted(latest.items())


@dataclass(frozen=True)
class ReadinessReport:
    tier: Tier
    results: list[Readiness]

    @property
    def ready(self) -> bool:
        return bool(self.results) and all(r.ready for r in self.results)


async def readiness(
    session: AsyncSession,
    access: Access,
    *,
    repository: str | None,
    commit: str | None,
    issue_key: str | None,
    tier: Tier | None,
) -> ReadinessReport:
    """Readiness of a commit (in each repository that recorded it, or the one named) or
    of an issue (the latest commit of each repository its entries name), for ``tier``
    (default: the workspace's). The gates a tier requires come from the gates files
    submitted with the entries for that commit (the strictest of them)."""
    if commit is None and issue_key is None:
        raise ProblemError(
            422,
            "name a commit or an issue_key (a repository alone is not enough)",
            type_="invalid-query",
        )
    chosen: Tier = tier or access.workspace.tier  # type: ignore[assignment]
    targets = await _targets(
        session, access.workspace.id, repository=repository, commit=commit, issue_key=issue_key
    )
    results = [
        await _readiness_of(session, access.workspace.id, chosen, repo, sha)
        for repo, sha in targets
    ]
    return ReadinessReport(chosen, results)


# --- the gates of an agent's task --------------------------------------------------------------


@dataclass(frozen=True)
class TaskGates:
    """What the gates run after an agent's task say: the readiness of each (repository,
    commit) the task's entries name, and those entries (in ledger order)."""

    tier: Tier
    results: list[Readiness]
    entries: list[dict[str, Any]]

    @property
    def ready(self) -> bool:
        return bool(self.results) and all(r.ready for r in self.results)


async def task_gates(
    session: AsyncSession, workspace_id: str, tier: Tier, task_id: str, issue_key: str
) -> TaskGates | None:
    """Readiness for ``tier`` of what task ``task_id`` (on issue ``issue_key``) submitted,
    sequenced or still pending; None when it submitted nothing."""
    waiting = (
        await session.scalars(
            select(_pending.c.entry)
            .where(_pending.c.workspace_id == workspace_id, _pending.c.task_id == task_id)
            .order_by(_pending.c.id)
        )
    ).all()
    here = (
        await session.scalars(
            select(LedgerEntry.entry)
            .where(
                LedgerEntry.workspace_id == workspace_id,
                LedgerEntry.issue_key == issue_key,  # indexed; a task's entries name its issue
                LedgerEntry.task_id == task_id,
            )
            .order_by(LedgerEntry.position)
        )
    ).all()
    sequenced = set(here)
    entries = [json.loads(text) for text in [*here, *(t for t in waiting if t not in sequenced)]]
    if not entries:
        return None
    targets = sorted({(e["scope"]["repository"], e["scope"]["commit"]) for e in entries}, key=str)
    results = []
    for repository, commit in targets:
        if commit is None:
            blocker = Blocker("-", "no commit", "not in a git repository with a commit")
            results.append(Readiness(tier, repository, None, False, [], [], [blocker]))
        else:
            results.append(
                await _readiness_of(session, workspace_id, tier, repository, commit, pending=True)
            )
    return TaskGates(tier, results, entries)
