"""full-text search (PostgreSQL GIN expression indexes; SQLite FTS5 with triggers)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23

Written by hand: these objects are dialect-specific and not part of the ORM metadata
(see forgehall.db.search).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQLITE_UP = [
    """CREATE TABLE search_docs (
        rowid INTEGER PRIMARY KEY,
        doc_id TEXT NOT NULL UNIQUE,
        issue_id TEXT NOT NULL,
        workspace_id TEXT NOT NULL)""",
    "CREATE INDEX search_docs_workspace ON search_docs (workspace_id)",
    "CREATE VIRTUAL TABLE search_fts USING fts5(title, body, tokenize = 'unicode61')",
    """CREATE TRIGGER search_issue_insert AFTER INSERT ON issues BEGIN
        INSERT INTO search_docs (doc_id, issue_id, workspace_id)
            VALUES ('i:' || new.id, new.id, new.workspace_id);
        INSERT INTO search_fts (rowid, title, body)
            VALUES (last_insert_rowid(), new.title, new.description);
    END""",
    """CREATE TRIGGER search_issue_update AFTER UPDATE OF title, description ON issues BEGIN
        UPDATE search_fts SET title = new.title, body = new.description
         WHERE rowid = (SELECT rowid FROM search_docs WHERE doc_id = 'i:' || new.id);
    END""",
    """CREATE TRIGGER search_issue_delete AFTER DELETE ON issues BEGIN
        DELETE FROM search_fts
         WHERE rowid = (SELECT rowid FROM search_docs WHERE doc_id = 'i:' || old.id);
        DELETE FROM search_docs WHERE doc_id = 'i:' || old.id;
    END""",
    """CREATE TRIGGER search_comment_insert AFTER INSERT ON comments
       WHEN new.deleted_at IS NULL BEGIN
        INSERT INTO search_docs (doc_id, issue_id, workspace_id)
            VALUES ('c:' || new.id, new.issue_id, new.workspace_id);
        INSERT INTO search_fts (rowid, title, body) VALUES (last_insert_rowid(), '', new.body);
    END""",
    """CREATE TRIGGER search_comment_update AFTER UPDATE OF body ON comments BEGIN
        UPDATE search_fts SET body = new.body
         WHERE rowid = (SELECT rowid FROM search_docs WHERE doc_id = 'c:' || new.id);
    END""",
    """CREATE TRIGGER search_comment_hide AFTER UPDATE OF deleted_at ON comments
       WHEN new.deleted_at IS NOT NULL BEGIN
        DELETE FROM search_fts
         WHERE rowid = (SELECT rowid FROM search_docs WHERE doc_id = 'c:' || new.id);
        DELETE FROM search_docs WHERE doc_id = 'c:' || new.id;
    END""",
    """CREATE TRIGGER search_comment_delete AFTER DELETE ON comments BEGIN
        DELETE FROM search_fts
         WHERE rowid = (SELECT rowid FROM search_docs WHERE doc_id = 'c:' || old.id);
        DELETE FROM search_docs WHERE doc_id = 'c:' || old.id;
    END""",
    # Index what already exists.
    """INSERT INTO search_docs (doc_id, issue_id, workspace_id)
        SELECT 'i:' || id, id, workspace_id FROM issues""",
    """INSERT INTO search_docs (doc_id, issue_id, workspace_id)
        SELECT 'c:' || id, issue_id, workspace_id FROM comments WHERE deleted_at IS NULL""",
    """INSERT INTO search_fts (rowid, title, body)
        SELECT d.rowid, i.title, i.description FROM search_docs AS d
          JOIN issues AS i ON d.doc_id = 'i:' || i.id""",
    """INSERT INTO search_fts (rowid, title, body)
        SELECT d.rowid, '', c.body FROM search_docs AS d
          JOIN comments AS c ON d.doc_id = 'c:' || c.id""",
]
SQLITE_DOWN = [
    *(
        f"DROP TRIGGER IF EXISTS {name}"
        for name in (
            "search_issue_insert",
            "search_issue_update",
            "search_issue_delete",
            "search_comment_insert",
            "search_comment_update",
            "search_comment_hide",
            "search_comment_delete",
        )
    ),
    "DROP TABLE IF EXISTS search_fts",
    "DROP TABLE IF EXISTS search_docs",
]
POSTGRESQL_UP = [
    """CREATE INDEX search_issues_text ON issues
        USING gin (to_tsvector('simple', title || ' ' || description))""",
    """CREATE INDEX search_comments_body ON comments
        USING gin (to_tsvector('simple', body)) WHERE deleted_at IS NULL""",
]
POSTGRESQL_DOWN = [
    "DROP INDEX IF EXISTS search_comments_body",
    "DROP INDEX IF EXISTS search_issues_text",
]


def upgrade() -> None:
    statements = POSTGRESQL_UP if op.get_bind().dialect.name == "postgresql" else SQLITE_UP
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    statements = POSTGRESQL_DOWN if op.get_bind().dialect.name == "postgresql" else SQLITE_DOWN
    for statement in statements:
        op.execute(statement)
