"""domain events

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 15:43:53.081927
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import forgehall.db.types

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "domain_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=60), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("created_at", forgehall.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_domain_events")),
    )
    with op.batch_alter_table("domain_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_domain_events_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_domain_events_workspace_id"), ["workspace_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("domain_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_domain_events_workspace_id"))
        batch_op.drop_index(batch_op.f("ix_domain_events_created_at"))

    op.drop_table("domain_events")
