"""tasks: index the tasks in flight per agent and per runtime

Every claim counts the tasks its runtime holds and, per agent it may serve, the tasks
that agent has in flight (dispatched or running). Through the plain ``agent_id`` and
``runtime_id`` indexes those counts visit every task the agent or runtime ever had, so a
claim slowed down as history grew; these partial indexes hold only the tasks in flight.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 10:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IN_FLIGHT = "status IN ('dispatched', 'running')"
INDEXES = {"ix_tasks_busy_by_agent": "agent_id", "ix_tasks_busy_by_runtime": "runtime_id"}


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        for name, column in INDEXES.items():
            batch_op.create_index(
                name,
                [column],
                unique=False,
                sqlite_where=sa.text(IN_FLIGHT),
                postgresql_where=sa.text(IN_FLIGHT),
            )


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        for name in INDEXES:
            batch_op.drop_index(
                name, sqlite_where=sa.text(IN_FLIGHT), postgresql_where=sa.text(IN_FLIGHT)
            )
