"""Tables of the server ledger: one RFC 9162 log per workspace.

Append-only (UPDATE, DELETE — and TRUNCATE on PostgreSQL — refused by triggers, created
by migration 0013 and, for tables made from this metadata, by :data:`APPEND_ONLY`'s
``after_create`` hooks):

- ``ledger_entries`` — the log: one row per position, with the entry's canonical JSON
  (the leaf) and its leaf hash, plus columns copied out of the entry for filtering;
- ``ledger_nodes`` — the roots of the tree's perfect subtrees of two or more leaves
  (``2**level`` leaves from ``idx * 2**level``), so proofs cost O(log² n) reads;
- ``ledger_checkpoints`` — every signed checkpoint, one per tree size;
- ``ledger_keys`` — the instance's Ed25519 signing key (private half encrypted);
- ``ledger_gate_sets`` — the gates file a submission ran with (what readiness requires).

Mutable, by design:

- ``ledger_pending`` — acknowledged appends waiting for a position: a queue the
  sequencer drains (it deletes what it sequenced, in the same transaction);
- ``ledger_heads`` — per workspace: origin, size and the frontier (the tree's right
  edge). It is derived state — recomputable from ``ledger_entries`` — that the sequencer
  rewrites with every batch, in the transaction that appends the entries.

No ledger table has a foreign key to ``workspaces``: deleting a workspace cascades, and
a cascade into an append-only table would be refused. The evidence outlives the
workspace; its log is simply no longer reachable through the API.

A future migration that rebuilds one of these tables on SQLite (batch mode copies the
table) drops its triggers with it and must create them again.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import (
    DDL,
    BigInteger,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.orm import Mapped, mapped_column

from forgehall.db.base import Base
from forgehall.db.types import EncryptedText, utcnow

HEX = 64  # a SHA-256 in hex
_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite's rowid alias autoincrements


class LedgerKey(Base):
    """The instance's checkpoint signing key. One row today (id ``instance``); a
    rotation would add rows, never change one."""

    __tablename__ = "ledger_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))  # the signed-note key name
    public_key: Mapped[str] = mapped_column(String(100))  # base64 of the raw 32 bytes
    # base64 of the raw 32 bytes, encrypted; deferred: reading the public half needs no key
    private_key: Mapped[str] = mapped_column(EncryptedText, deferred=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LedgerHead(Base):
    __tablename__ = "ledger_heads"

    workspace_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    origin: Mapped[str] = mapped_column(String(300))
    key_id: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    frontier: Mapped[str] = mapped_column(Text, default="")  # hex nodes, concatenated
    root_hash: Mapped[str] = mapped_column(String(HEX))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class LedgerPending(Base):
    """An acknowledged append that has no position yet (see ``ledger.service``)."""

    __tablename__ = "ledger_pending"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str] = mapped_column(String(32))
    entry: Mapped[str] = mapped_column(Text)  # canonical JSON
    gate_id: Mapped[str] = mapped_column(Text)
    result: Mapped[str] = mapped_column(String(4))
    repository: Mapped[str] = mapped_column(Text)
    commit_sha: Mapped[str | None] = mapped_column(Text, default=None)
    issue_key: Mapped[str | None] = mapped_column(Text, default=None)
    task_id: Mapped[str | None] = mapped_column(Text, default=None)
    tier: Mapped[str | None] = mapped_column(String(12), default=None)
    submitted_by: Mapped[str | None] = mapped_column(String(32), default=None)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (
        Index("ix_ledger_entries_gate", "workspace_id", "gate_id", "position"),
        Index("ix_ledger_entries_commit", "workspace_id", "commit_sha", "position"),
        Index("ix_ledger_entries_issue", "workspace_id", "issue_key", "position"),
    )

    workspace_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    entry: Mapped[str] = mapped_column(Text)  # canonical JSON: the leaf
    leaf_hash: Mapped[str] = mapped_column(String(HEX))
    gate_id: Mapped[str] = mapped_column(Text)
    result: Mapped[str] = mapped_column(String(4))
    repository: Mapped[str] = mapped_column(Text)
    commit_sha: Mapped[str | None] = mapped_column(Text, default=None)
    issue_key: Mapped[str | None] = mapped_column(Text, default=None)
    task_id: Mapped[str | None] = mapped_column(Text, default=None)
    tier: Mapped[str | None] = mapped_column(String(12), default=None)
    submitted_by: Mapped[str | None] = mapped_column(String(32), default=None)
    received_at: Mapped[datetime]
    sequenced_at: Mapped[datetime] = mapped_column(default=utcnow)


class LedgerNode(Base):
    __tablename__ = "ledger_nodes"

    workspace_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(HEX))


class LedgerCheckpoint(Base):
    __tablename__ = "ledger_checkpoints"
    __table_args__ = (UniqueConstraint("workspace_id", "size"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[str] = mapped_column(String(HEX))
    note: Mapped[str] = mapped_column(Text)  # the signed note, verbatim
    key_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LedgerGateSet(Base):
    """The gates a submission for (repository, commit) was run with: which gates each
    tier requires and which may fail. Readiness takes the strictest of those recorded."""

    __tablename__ = "ledger_gate_sets"
    __table_args__ = (Index("ix_ledger_gate_sets_commit", "workspace_id", "commit_sha"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str] = mapped_column(String(32))
    repository: Mapped[str] = mapped_column(Text)
    commit_sha: Mapped[str] = mapped_column(Text)
    gates: Mapped[str] = mapped_column(Text)  # canonical JSON list of requirements
    gates_sha256: Mapped[str] = mapped_column(String(HEX))
    submitted_by: Mapped[str | None] = mapped_column(String(32), default=None)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


# Core handles of the tables, for bulk statements.
KEYS = cast(Table, LedgerKey.__table__)
HEADS = cast(Table, LedgerHead.__table__)
PENDING = cast(Table, LedgerPending.__table__)
ENTRIES = cast(Table, LedgerEntry.__table__)
NODES = cast(Table, LedgerNode.__table__)
CHECKPOINTS = cast(Table, LedgerCheckpoint.__table__)
GATE_SETS = cast(Table, LedgerGateSet.__table__)

#: The tables whose rows are never changed or removed.
APPEND_ONLY: tuple[Table, ...] = (ENTRIES, NODES, CHECKPOINTS, KEYS, GATE_SETS)
REFUSE_FUNCTION = "ledger_refuse_change"


def postgresql_function() -> str:
    return f"""CREATE OR REPLACE FUNCTION {REFUSE_FUNCTION}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$"""


def postgresql_triggers(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {REFUSE_FUNCTION}()",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {REFUSE_FUNCTION}()",
    ]


def sqlite_triggers(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, 'ledger table {table} is append-only: {op} refused'); END"
        for op in ("UPDATE", "DELETE")
    ]


def _install_triggers(table: Table) -> None:
    # For databases made with metadata.create_all (migrations create them in 0013).
    # DDL formats its text with %(...)s, so a literal % is written %%.
    statements = [("postgresql", postgresql_function())]
    statements += [("postgresql", sql) for sql in postgresql_triggers(table.name)]
    statements += [("sqlite", sql) for sql in sqlite_triggers(table.name)]
    for dialect, sql in statements:
        ddl = DDL(sql.replace("%", "%%"))  # type: ignore[no-untyped-call]
        event.listen(table, "after_create", ddl.execute_if(dialect=dialect))


for _table in APPEND_ONLY:
    _install_triggers(_table)
