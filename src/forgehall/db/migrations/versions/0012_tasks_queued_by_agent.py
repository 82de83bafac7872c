"""tasks: index the queue per agent (a claim reads each agent's oldest queued tasks)

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 23:15:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED = "status = 'queued'"


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index(
            "ix_tasks_queued_by_agent",
            ["agent_id", "available_at", "created_at"],
            unique=False,
            sqlite_where=sa.text(QUEUED),
            postgresql_where=sa.text(QUEUED),
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_tasks_queued_by_agent",
            sqlite_where=sa.text(QUEUED),
            postgresql_where=sa.text(QUEUED),
        )
