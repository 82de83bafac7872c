"""Full-text search over issue titles, descriptions and comments — both dialects.

PostgreSQL: GIN indexes on ``to_tsvector('simple', …)`` expressions (``search_*``
indexes, created by migration 0005); queries use the same expressions so the indexes
apply, ranked with ``ts_rank``.

SQLite: an FTS5 table ``search_fts`` kept current by triggers on ``issues`` and
``comments``; ``search_docs`` maps each document (``i:<issue id>``, ``c:<comment id>``)
to a stable integer rowid, so deleting or updating a document never scans the index
and ``VACUUM`` cannot break the mapping. Ranked with ``bm25`` in an inner query that SQLite
must not flatten into the join (``LIMIT -1``), where ``bm25`` is not allowed.

User text never reaches the query language: it is split into word tokens, each matched
as a prefix, all required (``login redir`` finds "login redirect"). Comments count half
as much as the issue's own text. These objects are not in the ORM metadata; the schema
comparison ignores names starting with ``search_``.
"""

from __future__ import annotations

import re

from sqlalchemy import Float, String, column, text
from sqlalchemy.sql import Subquery

_TOKEN = re.compile(r"\w+", re.UNICODE)
MAX_TOKENS = 12


def search_tokens(query: str) -> list[str]:
    return [t.lower() for t in _TOKEN.findall(query)][:MAX_TOKENS]


def ranked_issue_ids(dialect: str, workspace_id: str, query: str) -> Subquery | None:
    """A subquery of ``(issue_id, rank)`` for issues matching ``query``; None when the
    query has no searchable word."""
    tokens = search_tokens(query)
    if not tokens:
        return None
    if dialect == "postgresql":
        return _postgresql(workspace_id, tokens)
    return _sqlite(workspace_id, tokens)


def _postgresql(workspace_id: str, tokens: list[str]) -> Subquery:
    tsquery = " & ".join(f"{t}:*" for t in tokens)
    sql = text(
        """
        SELECT matched.issue_id AS issue_id, max(matched.rank) AS rank FROM (
            SELECT i.id AS issue_id,
                   ts_rank(to_tsvector('simple', i.title || ' ' || i.description), q) AS rank
              FROM issues AS i, to_tsquery('simple', :tsquery) AS q
             WHERE i.workspace_id = :workspace_id
               AND to_tsvector('simple', i.title || ' ' || i.description) @@ q
            UNION ALL
            SELECT c.issue_id, ts_rank(to_tsvector('simple', c.body), q) * 0.5
              FROM comments AS c, to_tsquery('simple', :tsquery) AS q
             WHERE c.workspace_id = :workspace_id AND c.deleted_at IS NULL
               AND to_tsvector('simple', c.body) @@ q
        ) AS matched GROUP BY matched.issue_id
        """
    ).bindparams(tsquery=tsquery, workspace_id=workspace_id)
    return sql.columns(column("issue_id", String), column("rank", Float)).subquery("ranked")


def _sqlite(workspace_id: str, tokens: list[str]) -> Subquery:
    match = " ".join('"' + t.replace('"', "") + '"*' for t in tokens)
    sql = text(
        """
        SELECT d.issue_id AS issue_id,
               max(CASE WHEN d.doc_id LIKE 'c:%' THEN -hits.score * 0.5 ELSE -hits.score END)
                 AS rank
          FROM (SELECT rowid AS doc_rowid, bm25(search_fts, 2.0, 1.0) AS score
                  FROM search_fts WHERE search_fts MATCH :match
                 LIMIT -1) AS hits
          JOIN search_docs AS d ON d.rowid = hits.doc_rowid
         WHERE d.workspace_id = :workspace_id
         GROUP BY d.issue_id
        """
    ).bindparams(match=match, workspace_id=workspace_id)
    return sql.columns(column("issue_id", String), column("rank", Float)).subquery("ranked")


def include_in_schema_comparison(name: str | None) -> bool:
    """Search objects are managed by migrations, not by the ORM metadata."""
    return not (name or "").startswith("search_")
