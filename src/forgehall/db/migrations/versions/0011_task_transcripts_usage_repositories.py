"""task transcripts, usage, workspace repositories, task-token agent

Existing tasks get empty progress and result through server defaults.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-23 17:28:11.575115
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import forgehall.db.types

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workspace_repositories",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("url", sa.String(length=1000), nullable=False),
        sa.Column("default_branch", sa.String(length=200), nullable=False),
        sa.Column("created_at", forgehall.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_workspace_repositories_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workspace_repositories")),
        sa.UniqueConstraint(
            "workspace_id", "name", name=op.f("uq_workspace_repositories_workspace_id_name")
        ),
    )
    with op.batch_alter_table("workspace_repositories", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_workspace_repositories_workspace_id"), ["workspace_id"], unique=False
        )

    op.create_table(
        "task_messages",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("task_id", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("created_at", forgehall.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('text','thinking','tool_use','tool_result','error')",
            name=op.f("ck_task_messages_kind_known"),
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_task_messages_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_messages")),
        sa.UniqueConstraint(
            "task_id", "attempt", "seq", name=op.f("uq_task_messages_task_id_attempt_seq")
        ),
    )
    op.create_table(
        "task_usage",
        sa.Column("task_id", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("cost_source", sa.String(length=10), nullable=False),
        sa.Column("updated_at", forgehall.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_task_usage_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("task_id", "model", name=op.f("pk_task_usage")),
    )
    with op.batch_alter_table("task_usage", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_task_usage_workspace_id"), ["workspace_id"], unique=False
        )

    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("agent_id", sa.String(length=32), nullable=True))

    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "progress", sa.String(length=500), nullable=False, server_default=sa.text("''")
            )
        )
        batch_op.add_column(
            sa.Column("result", sa.Text(), nullable=False, server_default=sa.text("''"))
        )
        batch_op.add_column(sa.Column("created_by", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column(
                "cancel_delivered_at",
                forgehall.db.types.UTCDateTime(timezone=True),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("created_by")
        batch_op.drop_column("cancel_delivered_at")
        batch_op.drop_column("result")
        batch_op.drop_column("progress")

    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("agent_id")

    with op.batch_alter_table("task_usage", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_task_usage_workspace_id"))

    op.drop_table("task_usage")
    op.drop_table("task_messages")
    with op.batch_alter_table("workspace_repositories", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workspace_repositories_workspace_id"))

    op.drop_table("workspace_repositories")
