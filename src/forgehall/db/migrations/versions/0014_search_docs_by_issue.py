"""search (SQLite): index the search documents by issue

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 05:20:00

A search filtered by a selective status checks each candidate issue's documents (its
own and its comments') against the matching rowids; ``search_docs (issue_id)`` finds
them in one index search per issue (see forgehall.db.search). PostgreSQL keeps its
search vectors on the rows themselves and has nothing to change.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.execute("CREATE INDEX search_docs_issue ON search_docs (issue_id)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.execute("DROP INDEX IF EXISTS search_docs_issue")
