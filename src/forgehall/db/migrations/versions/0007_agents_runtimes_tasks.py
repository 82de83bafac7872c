"""agents runtimes tasks

Existing agent rows get the profile defaults through server defaults.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 16:01:43.667701
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import forgehall.db.types

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "runtimes",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("daemon_id", sa.String(length=64), nullable=False),
        sa.Column("machine", sa.String(length=200), nullable=False),
        sa.Column("providers", sa.Text(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("token_id", sa.String(length=32), nullable=True),
        sa.Column("registered_at", forgehall.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "last_heartbeat_at", forgehall.db.types.UTCDateTime(timezone=True), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["api_tokens.id"],
            name=op.f("fk_runtimes_token_id_api_tokens"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_runtimes_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runtimes")),
        sa.UniqueConstraint(
            "workspace_id", "daemon_id", name=op.f("uq_runtimes_workspace_id_daemon_id")
        ),
    )
    with op.batch_alter_table("runtimes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_runtimes_workspace_id"), ["workspace_id"], unique=False
        )

    op.create_table(
        "tasks",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("issue_id", sa.String(length=32), nullable=False),
        sa.Column("agent_id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("trigger", sa.String(length=30), nullable=False),
        sa.Column("follow_up", sa.Boolean(), nullable=False),
        sa.Column("runtime_id", sa.String(length=32), nullable=True),
        sa.Column("lease_token", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", forgehall.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("available_at", forgehall.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("failure_class", sa.String(length=30), nullable=True),
        sa.Column("failure_detail", sa.Text(), nullable=True),
        sa.Column(
            "cancel_requested_at", forgehall.db.types.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("session_id", sa.String(length=200), nullable=True),
        sa.Column("created_at", forgehall.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", forgehall.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", forgehall.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued','dispatched','running','completed','failed','cancelled')",
            name=op.f("ck_tasks_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_tasks_agent_id_agents"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["issue_id"], ["issues.id"], name=op.f("fk_tasks_issue_id_issues"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["runtime_id"],
            ["runtimes.id"],
            name=op.f("fk_tasks_runtime_id_runtimes"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_tasks_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tasks_agent_id"), ["agent_id"], unique=False)
        batch_op.create_index(
            "ix_tasks_claimable",
            ["workspace_id", "available_at"],
            unique=False,
            sqlite_where=sa.text("status = 'queued'"),
            postgresql_where=sa.text("status = 'queued'"),
        )
        batch_op.create_index(batch_op.f("ix_tasks_issue_id"), ["issue_id"], unique=False)
        batch_op.create_index(
            "ix_tasks_lease",
            ["lease_expires_at"],
            unique=False,
            sqlite_where=sa.text("status IN ('dispatched', 'running')"),
            postgresql_where=sa.text("status IN ('dispatched', 'running')"),
        )
        batch_op.create_index(batch_op.f("ix_tasks_runtime_id"), ["runtime_id"], unique=False)
        batch_op.create_index(
            "uq_tasks_one_active_per_issue_agent",
            ["issue_id", "agent_id"],
            unique=True,
            sqlite_where=sa.text("status IN ('queued', 'dispatched', 'running')"),
            postgresql_where=sa.text("status IN ('queued', 'dispatched', 'running')"),
        )

    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("instructions", sa.Text(), nullable=False, server_default=sa.text("''"))
        )
        batch_op.add_column(
            sa.Column(
                "provider", sa.String(length=20), nullable=False, server_default=sa.text("'claude'")
            )
        )
        batch_op.add_column(
            sa.Column("model", sa.String(length=200), nullable=False, server_default=sa.text("''"))
        )
        batch_op.add_column(
            sa.Column("custom_command", sa.Text(), nullable=False, server_default=sa.text("''"))
        )
        batch_op.add_column(
            sa.Column("extra_args", sa.Text(), nullable=False, server_default=sa.text("'[]'"))
        )
        batch_op.add_column(sa.Column("env", forgehall.db.types.EncryptedText(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "max_concurrent_tasks", sa.Integer(), nullable=False, server_default=sa.text("'6'")
            )
        )
        batch_op.add_column(
            sa.Column("runtime_pool", sa.Text(), nullable=False, server_default=sa.text("'[]'"))
        )


def downgrade() -> None:
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_column("runtime_pool")
        batch_op.drop_column("max_concurrent_tasks")
        batch_op.drop_column("env")
        batch_op.drop_column("extra_args")
        batch_op.drop_column("custom_command")
        batch_op.drop_column("model")
        batch_op.drop_column("provider")
        batch_op.drop_column("instructions")

    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_tasks_one_active_per_issue_agent",
            sqlite_where=sa.text("status IN ('queued', 'dispatched', 'running')"),
            postgresql_where=sa.text("status IN ('queued', 'dispatched', 'running')"),
        )
        batch_op.drop_index(batch_op.f("ix_tasks_runtime_id"))
        batch_op.drop_index(
            "ix_tasks_lease",
            sqlite_where=sa.text("status IN ('dispatched', 'running')"),
            postgresql_where=sa.text("status IN ('dispatched', 'running')"),
        )
        batch_op.drop_index(batch_op.f("ix_tasks_issue_id"))
        batch_op.drop_index(
            "ix_tasks_claimable",
            sqlite_where=sa.text("status = 'queued'"),
            postgresql_where=sa.text("status = 'queued'"),
        )
        batch_op.drop_index(batch_op.f("ix_tasks_agent_id"))

    op.drop_table("tasks")
    with op.batch_alter_table("runtimes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runtimes_workspace_id"))

    op.drop_table("runtimes")
