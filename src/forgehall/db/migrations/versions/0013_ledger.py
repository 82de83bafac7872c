"""server ledger: entries, pending appends, heads, perfect subtrees, checkpoints, the
signing key, gate sets; append-only triggers; workspaces.tier

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 23:36:02

The tables come from autogenerate; the triggers are written by hand (Alembic cannot
express them). ``ledger_entries``, ``ledger_nodes``, ``ledger_checkpoints``,
``ledger_keys`` and ``ledger_gate_sets`` refuse UPDATE and DELETE (PostgreSQL: a
``BEFORE UPDATE OR DELETE`` row trigger raising, plus ``BEFORE TRUNCATE``; SQLite:
``BEFORE UPDATE`` / ``BEFORE DELETE`` triggers with ``RAISE(ABORT, …)``).
``ledger_pending`` (a queue the sequencer drains) and ``ledger_heads`` (the frontier it
rewrites) stay mutable. The SQL is copied here rather than imported from the models, so
this revision keeps doing what it did when the models change.

Existing workspaces get ``tier = 'prototype'`` from the server default.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import forgehall.db.types

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY = (
    "ledger_entries",
    "ledger_nodes",
    "ledger_checkpoints",
    "ledger_keys",
    "ledger_gate_sets",
)
POSTGRESQL_FUNCTION = """CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$"""


def _postgresql_triggers(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()",
    ]


def _sqlite_triggers(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_no_{op_name.lower()} BEFORE {op_name} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, 'ledger table {table} is append-only: {op_name} refused'); END"
        for op_name in ("UPDATE", "DELETE")
    ]


def _create_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRESQL_FUNCTION)
        for table in APPEND_ONLY:
            for statement in _postgresql_triggers(table):
                op.execute(statement)
    else:
        for table in APPEND_ONLY:
            for statement in _sqlite_triggers(table):
                op.execute(statement)


def upgrade() -> None:
    op.create_table(
        "ledger_checkpoints",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.String(length=64), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", forgehall.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_checkpoints")),
        sa.UniqueConstraint(
            "workspace_id", "size", name=op.f("uq_ledger_checkpoints_workspace_id_size")
        ),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("position", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("entry", sa.Text(), nullable=False),
        sa.Column("leaf_hash", sa.String(length=64), nullable=False),
        sa.Column("gate_id", sa.Text(), nullable=False),
        sa.Column("result", sa.String(length=4), nullable=False),
        sa.Column("repository", sa.Text(), nullable=False),
        sa.Column("commit_sha", sa.Text(), nullable=True),
        sa.Column("issue_key", sa.Text(), nullable=True),
        sa.Column("task_id", sa.Text(), nullable=True),
        sa.Column("tier", sa.String(length=12), nullable=True),
        sa.Column("submitted_by", sa.String(length=32), nullable=True),
        sa.Column("received_at", forgehall.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sequenced_at", forgehall.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "position", name=op.f("pk_ledger_entries")),
    )
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ledger_entries_commit", ["workspace_id", "commit_sha", "position"], unique=False
        )
        batch_op.create_index(
            "ix_ledger_entries_gate", ["workspace_id", "gate_id", "position"], unique=False
        )
        batch_op.create_index(
            "ix_ledger_entries_issue", ["workspace_id", "issue_key", "position"], unique=False
        )

    op.create_table(
        "ledger_gate_sets",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("repository", sa.Text(), nullable=False),
        sa.Column("commit_sha", sa.Text(), nullable=False),
        sa.Column("gates", sa.Text(), nullable=False),
        sa.Column("gates_sha256", sa.String(length=64), nullable=False),
        sa.Column("submitted_by", sa.String(length=32), nullable=True),
        sa.Column("received_at", forgehall.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_gate_sets")),
    )
    with op.batch_alter_table("ledger_gate_sets", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ledger_gate_sets_commit", ["workspace_id", "commit_sha"], unique=False
        )

    op.create_table(
        "ledger_heads",
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("origin", sa.String(length=300), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("frontier", sa.Text(), nullable=False),
        sa.Column("root_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", forgehall.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", forgehall.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", name=op.f("pk_ledger_heads")),
    )
    op.create_table(
        "ledger_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("public_key", sa.String(length=100), nullable=False),
        sa.Column("private_key", forgehall.db.types.EncryptedText(), nullable=False),
        sa.Column("created_at", forgehall.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_keys")),
    )
    op.create_table(
        "ledger_nodes",
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("level", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "level", "idx", name=op.f("pk_ledger_nodes")),
    )
    op.create_table(
        "ledger_pending",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("entry", sa.Text(), nullable=False),
        sa.Column("gate_id", sa.Text(), nullable=False),
        sa.Column("result", sa.String(length=4), nullable=False),
        sa.Column("repository", sa.Text(), nullable=False),
        sa.Column("commit_sha", sa.Text(), nullable=True),
        sa.Column("issue_key", sa.Text(), nullable=True),
        sa.Column("task_id", sa.Text(), nullable=True),
        sa.Column("tier", sa.String(length=12), nullable=True),
        sa.Column("submitted_by", sa.String(length=32), nullable=True),
        sa.Column("received_at", forgehall.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_pending")),
    )
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("tier", sa.String(length=12), server_default="prototype", nullable=False)
        )
    _create_triggers()


def downgrade() -> None:
    # Dropping a table drops its triggers; the function is PostgreSQL's own object.
    with op.batch_alter_table("workspaces", schema=None) as batch_op:
        batch_op.drop_column("tier")

    op.drop_table("ledger_pending")
    op.drop_table("ledger_nodes")
    op.drop_table("ledger_keys")
    op.drop_table("ledger_heads")
    with op.batch_alter_table("ledger_gate_sets", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_gate_sets_commit")

    op.drop_table("ledger_gate_sets")
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_entries_issue")
        batch_op.drop_index("ix_ledger_entries_gate")
        batch_op.drop_index("ix_ledger_entries_commit")

    op.drop_table("ledger_entries")
    op.drop_table("ledger_checkpoints")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS ledger_refuse_change()")
