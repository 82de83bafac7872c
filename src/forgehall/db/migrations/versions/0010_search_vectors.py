"""search vectors and recency indexes (PostgreSQL); FTS5 prefix index (SQLite);
status + priority index for filtered pages

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23

Written by hand, like 0005: the search objects are dialect-specific and not part of the
ORM metadata (see forgehall.db.search). Only ``ix_issues_workspace_status_priority_updated``
is declared on the model.

PostgreSQL: ``search_vector`` columns (``tsvector GENERATED ALWAYS AS … STORED``) replace
the expression indexes of 0005, so ranking reads the stored vector instead of running
``to_tsvector`` again for every matching row; ``search_*_recent`` indexes let a search walk
the newest documents first (its ranking window). Adding a stored generated column rewrites
the table (about 15 s for 50,000 issues and 200,000 comments, under an exclusive lock).

SQLite: ``search_fts`` is rebuilt with FTS5 prefix indexes for 1- to 4-character
prefixes, so a short prefix reads one stored doclist instead of merging the doclists of
every word it starts. The rowids stay those of ``search_docs``; the triggers of 0005 keep
working unchanged (they name the table, which is recreated in place).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILTER_INDEX = "ix_issues_workspace_status_priority_updated"
FILTER_COLUMNS = ["workspace_id", "status_id", "priority", "updated_at"]


def _sqlite_fts(options: str) -> list[str]:
    """Recreate ``search_fts`` with ``options`` and fill it from ``search_docs``."""
    return [
        "DROP TABLE search_fts",
        f"CREATE VIRTUAL TABLE search_fts USING fts5(title, body, {options})",
        """INSERT INTO search_fts (rowid, title, body)
            SELECT d.rowid, i.title, i.description FROM search_docs AS d
              JOIN issues AS i ON d.doc_id = 'i:' || i.id""",
        """INSERT INTO search_fts (rowid, title, body)
            SELECT d.rowid, '', c.body FROM search_docs AS d
              JOIN comments AS c ON d.doc_id = 'c:' || c.id""",
    ]


SQLITE_UP = _sqlite_fts("tokenize = 'unicode61', prefix = '1 2 3 4'")
SQLITE_DOWN = _sqlite_fts("tokenize = 'unicode61'")

POSTGRESQL_UP = [
    """ALTER TABLE issues ADD COLUMN search_vector tsvector
        GENERATED ALWAYS AS (to_tsvector('simple', title || ' ' || description)) STORED""",
    """ALTER TABLE comments ADD COLUMN search_vector tsvector
        GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED""",
    "CREATE INDEX search_issues_vector ON issues USING gin (search_vector)",
    """CREATE INDEX search_comments_vector ON comments USING gin (search_vector)
        WHERE deleted_at IS NULL""",
    # Without workspace_id in front: the planner then sees how the rows are laid out on
    # disk (created_at's correlation) and prices walking the newest rows correctly.
    "CREATE INDEX search_issues_recent ON issues (created_at, id)",
    "CREATE INDEX search_comments_recent ON comments (created_at, id) WHERE deleted_at IS NULL",
    "DROP INDEX search_issues_text",
    "DROP INDEX search_comments_body",
]
POSTGRESQL_DOWN = [
    """CREATE INDEX search_issues_text ON issues
        USING gin (to_tsvector('simple', title || ' ' || description))""",
    """CREATE INDEX search_comments_body ON comments
        USING gin (to_tsvector('simple', body)) WHERE deleted_at IS NULL""",
    "DROP INDEX IF EXISTS search_comments_recent",
    "DROP INDEX IF EXISTS search_issues_recent",
    "DROP INDEX IF EXISTS search_comments_vector",
    "DROP INDEX IF EXISTS search_issues_vector",
    "ALTER TABLE comments DROP COLUMN search_vector",
    "ALTER TABLE issues DROP COLUMN search_vector",
]


def upgrade() -> None:
    # Filtered pages (status + priority, newest first) walk this index.
    op.create_index(FILTER_INDEX, "issues", FILTER_COLUMNS, unique=False)
    statements = POSTGRESQL_UP if op.get_bind().dialect.name == "postgresql" else SQLITE_UP
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    statements = POSTGRESQL_DOWN if op.get_bind().dialect.name == "postgresql" else SQLITE_DOWN
    for statement in statements:
        op.execute(statement)
    op.drop_index(FILTER_INDEX, table_name="issues")
