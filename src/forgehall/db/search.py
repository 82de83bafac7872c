"""Full-text search over issue titles, descriptions and comments — both dialects.

User text never reaches the query language: it is split into word tokens, each matched
as a prefix, all required (``login redir`` finds "login redirect"). Comments count half
as much as the issue's own text. These objects are not in the ORM metadata; the schema
comparison ignores names starting with ``search_`` (tables, indexes and columns).

A search is also a filter, and as a filter it never misses: every issue matching the words
and the other filters of the request is on some page. What is bounded is the ranking.

The ranking window: relevance is computed only for the most recently created matching
documents (issues and comments; editing a document does not move it), at most
:data:`RANKING_WINDOW` of them (:func:`ranked_issue_ids`). Ranking every match of a
common word costs time in proportion to the matches (tens of thousands in a big
workspace: one to two seconds); the window bounds it, as large products bound theirs.
Sorted by relevance (the default with a search), a listing has two parts
(``issues.service._relevance_page``): first the issues of the window that pass the
filters, best rank first; then every other matching issue that passes them, most
recently updated first (``-relevance`` reverses both: the unranked part oldest first,
then the window worst first). The cursor says which part it is in (a rank, or ``u:`` and
an update time, each with the issue id), so pages follow each other deterministically
while nothing is written, and each match comes once. The second part is read only when a
page goes past the first — which the first page of a broad word seldom does, with no
filter or one that most issues pass, since the window holds hundreds of issues — and not
at all when :func:`reach` shows that
every match is inside the window. Any other sort (``created``, ``-updated``, …) does not
rank: the search is a plain filter over all matches.

Why not rank everything the other filters leave? A common filter (category done: a third
of the issues) leaves thousands of matches of a common word to rank, nearly as slow as
no window at all; the two parts keep the cost of the first page that of the window, and
later pages that of a filtered listing.

"Matches the words" over all documents (:meth:`Reach.matches`) takes one of two shapes,
chosen from a capped count of the matching documents (:func:`reach`, which stops
counting at :data:`COLLECT_LIMIT`): few matches are collected once
(``issues.id IN (…)``, from the GIN/FTS index); many are checked issue by issue while the
query walks the filtered issues in the sort order (the issue's own text, then its
comments), which stops as soon as the page is full. Collecting tens of thousands of
matches would cost what the window saves; checking each issue when matches are rare
would walk every filtered issue — unless the filters leave few issues
(:data:`CANDIDATE_LIMIT`, one indexed count): then each is checked and the matches are
not counted at all, since the walk is bounded by the filter.

PostgreSQL: stored ``search_vector`` columns (``tsvector GENERATED ALWAYS AS …
STORED``, migration 0010) with GIN indexes ``search_issues_vector`` and
``search_comments_vector``; ranked with ``ts_rank`` on the stored vector. The window is
the ``RANKING_WINDOW // 2`` newest matching issues and as many newest matching comments
(by ``created_at``, then id). The planner picks per search between walking the
``search_*_recent`` indexes newest first, checking each row (cheap for common words), and
the GIN index then a sort (cheap for rare ones); that choice depends on the words, so a
search runs with ``plan_cache_mode = force_custom_plan`` (:func:`plan_for_the_words`):
a generic plan of the cached prepared statement would pick one shape for all words.

SQLite: an FTS5 table ``search_fts`` kept current by triggers on ``issues`` and
``comments``, with prefix indexes for 1-4 characters (migration 0010); ``search_docs``
maps each document (``i:<issue id>``, ``c:<comment id>``) to a stable integer rowid, so
deleting or updating a document never scans the index and ``VACUUM`` cannot break the
mapping; it is indexed by issue (migration 0014) for the issue-by-issue check. Rowids
grow as documents are indexed, so the window is the ``RANKING_WINDOW`` matching
documents of the workspace with the highest rowids, read newest first from the index
(``ORDER BY rowid DESC`` with a limit stops early). The FTS table must be the
outer loop (``CROSS JOIN``): ``bm25`` works only on the cursor of the ``MATCH``, and it
is computed only for rows inside the window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, Select, String, column, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Subquery
from sqlalchemy.sql.elements import TextClause

_TOKEN = re.compile(r"\w+", re.UNICODE)
MAX_TOKENS = 12
RANKING_WINDOW = 500
"""How many of the most recent matching documents (issues and comments) a search ranks."""
COLLECT_LIMIT = 5000
"""Up to this many matching documents, "matches the words" collects the matching issues
once; beyond it, each candidate issue is checked on its own (see :meth:`Reach.matches`)."""
CANDIDATE_LIMIT = 2000
"""When the request's other filters leave at most this many issues, each of them is
checked on its own, without counting the matches first (see :func:`reach`)."""
FTS_PREFIX_INDEXES = 4
"""The longest prefix the SQLite FTS5 table indexes (``prefix='1 2 3 4'``, migration 0010)."""


def search_tokens(query: str) -> list[str]:
    return [t.lower() for t in _TOKEN.findall(query)][:MAX_TOKENS]


def ranked_issue_ids(dialect: str, workspace_id: str, query: str) -> Subquery | None:
    """A subquery of ``(issue_id, rank)`` for issues matching ``query`` within the ranking
    window; None when the query has no searchable word."""
    tokens = search_tokens(query)
    if not tokens:
        return None
    if dialect == "postgresql":
        return _postgresql(workspace_id, tokens)
    return _sqlite(workspace_id, tokens)


async def plan_for_the_words(session: AsyncSession) -> None:
    """Make the rest of this transaction plan each search for its own words (PostgreSQL;
    nothing to do on SQLite, which plans every statement anew)."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))


def _postgresql(workspace_id: str, tokens: list[str]) -> Subquery:
    tsquery = _tsquery(tokens)
    sql = text(
        """
        SELECT matched.issue_id AS issue_id, max(matched.rank) AS rank FROM (
            SELECT recent.id AS issue_id,
                   ts_rank(recent.search_vector, to_tsquery('simple', :tsquery)) AS rank
              FROM (SELECT i.id, i.search_vector FROM issues AS i
                     WHERE i.workspace_id = :workspace_id
                       AND i.search_vector @@ to_tsquery('simple', :tsquery)
                     ORDER BY i.created_at DESC, i.id DESC
                     LIMIT :window) AS recent
            UNION ALL
            SELECT recent.issue_id,
                   ts_rank(recent.search_vector, to_tsquery('simple', :tsquery)) * 0.5
              FROM (SELECT c.issue_id, c.search_vector FROM comments AS c
                     WHERE c.workspace_id = :workspace_id AND c.deleted_at IS NULL
                       AND c.search_vector @@ to_tsquery('simple', :tsquery)
                     ORDER BY c.created_at DESC, c.id DESC
                     LIMIT :window) AS recent
        ) AS matched GROUP BY matched.issue_id
        """
    ).bindparams(tsquery=tsquery, workspace_id=workspace_id, window=RANKING_WINDOW // 2)
    return sql.columns(column("issue_id", String), column("rank", Float)).subquery("ranked")


def _sqlite(workspace_id: str, tokens: list[str]) -> Subquery:
    match = _fts_match(tokens)
    sql = text(
        """
        SELECT hits.issue_id AS issue_id, max(hits.rank) AS rank FROM (
            SELECT d.issue_id AS issue_id,
                   CASE WHEN d.doc_id LIKE 'c:%' THEN -0.5 ELSE -1.0 END
                     * bm25(search_fts, 2.0, 1.0) AS rank
              FROM search_fts CROSS JOIN search_docs AS d ON d.rowid = search_fts.rowid
             WHERE search_fts MATCH :match AND d.workspace_id = :workspace_id
             ORDER BY search_fts.rowid DESC
             LIMIT :window) AS hits
         GROUP BY hits.issue_id
        """
    ).bindparams(match=match, workspace_id=workspace_id, window=RANKING_WINDOW)
    return sql.columns(column("issue_id", String), column("rank", Float)).subquery("ranked")


@dataclass(frozen=True)
class Reach:
    """How far the matches of some words reach, from a capped count (:func:`reach`)."""

    dialect: str
    workspace_id: str
    tokens: tuple[str, ...]
    in_window: bool
    """Every matching document is inside the ranking window: nothing matches beyond it."""
    many: bool
    """At least :data:`COLLECT_LIMIT` documents match (in any workspace on SQLite)."""

    def matches(self) -> TextClause:
        """A condition on ``issues.id`` (the outer query's table, not aliased): the issue
        or one of its comments matches the words — all matches, no window.

        Few matches: ``issues.id IN (every matching issue)``, collected once. Many: each
        candidate issue is checked on its own (its text, then its comments), so a walk
        along the sort order stops as soon as the page is full instead of first
        collecting tens of thousands of matches."""
        if self.dialect == "postgresql":
            tsquery = _tsquery(list(self.tokens))
            if self.many:
                return text(_PG_MATCHES_EACH).bindparams(match_query=tsquery)
            return text(_PG_MATCHES_SET).bindparams(
                match_query=tsquery, match_workspace=self.workspace_id
            )
        match = _fts_match(list(self.tokens))
        if self.many:
            if len(self.tokens) == 1 and len(self.tokens[0]) <= FTS_PREFIX_INDEXES:
                return text(_SQLITE_MATCHES_EACH_SEEK).bindparams(match_query=match)
            return text(_SQLITE_MATCHES_EACH).bindparams(match_query=match)
        return text(_SQLITE_MATCHES_SET).bindparams(
            match_query=match, match_workspace=self.workspace_id
        )


async def reach(
    session: AsyncSession,
    workspace_id: str,
    query: str,
    candidates: Select[Any] | None = None,
) -> Reach | None:
    """Count the matching documents, stopping at :data:`COLLECT_LIMIT` (no ranking, and
    the count stops early for common words); None without searchable words.

    PostgreSQL counts the workspace's issues and comments separately (its window takes
    ``RANKING_WINDOW // 2`` of each); SQLite counts the documents of every workspace
    (its index has no workspace column), which can only overstate: a search then looks
    beyond the window or checks issue by issue when it need not, never the reverse.

    ``candidates`` (a SELECT of the issues the request's other filters leave): counting
    the matches of a common word costs tens of milliseconds on PostgreSQL (each matching
    row's vector is tested) and several on SQLite (a long prefix is expanded), while
    checking the candidates one by one is cheap when they are few — a selective filter
    (a rare status) bounds that walk. So when at most :data:`CANDIDATE_LIMIT` issues pass
    the filters, the matches are not counted and each candidate is checked (one indexed
    count of at most ``CANDIDATE_LIMIT + 1`` rows decides)."""
    tokens = search_tokens(query)
    if not tokens:
        return None
    dialect = session.get_bind().dialect.name
    if candidates is not None:
        few = select(func.count()).select_from(
            candidates.limit(CANDIDATE_LIMIT + 1).subquery("candidates")
        )
        if int(await session.scalar(few) or 0) <= CANDIDATE_LIMIT:
            return Reach(dialect, workspace_id, tuple(tokens), in_window=False, many=True)
    cap = max(COLLECT_LIMIT, RANKING_WINDOW + 1)  # enough to tell both things apart
    if dialect == "postgresql":
        row = (
            await session.execute(
                text(_PG_REACH).bindparams(
                    tsquery=_tsquery(tokens), workspace_id=workspace_id, cap=cap
                )
            )
        ).one()
        issues, comments = int(row[0]), int(row[1])
        in_window = issues <= RANKING_WINDOW // 2 and comments <= RANKING_WINDOW // 2
        many = issues + comments >= COLLECT_LIMIT
    else:
        count = int(
            (
                await session.execute(
                    text(_SQLITE_REACH).bindparams(match=_fts_match(tokens), cap=cap)
                )
            ).scalar_one()
        )
        in_window = count <= RANKING_WINDOW
        many = count >= COLLECT_LIMIT
    return Reach(dialect, workspace_id, tuple(tokens), in_window, many)


def _tsquery(tokens: list[str]) -> str:
    return " & ".join(f"{t}:*" for t in tokens)


def _fts_match(tokens: list[str]) -> str:
    return " ".join('"' + t.replace('"', "") + '"*' for t in tokens)


_PG_REACH = """
SELECT (SELECT count(*) FROM (SELECT 1 FROM issues
                               WHERE workspace_id = :workspace_id
                                 AND search_vector @@ to_tsquery('simple', :tsquery)
                               LIMIT :cap) AS i),
       (SELECT count(*) FROM (SELECT 1 FROM comments
                               WHERE workspace_id = :workspace_id AND deleted_at IS NULL
                                 AND search_vector @@ to_tsquery('simple', :tsquery)
                               LIMIT :cap) AS c)
"""

_PG_MATCHES_SET = """issues.id IN (
    SELECT i.id FROM issues AS i
     WHERE i.workspace_id = :match_workspace
       AND i.search_vector @@ to_tsquery('simple', :match_query)
    UNION ALL
    SELECT c.issue_id FROM comments AS c
     WHERE c.workspace_id = :match_workspace AND c.deleted_at IS NULL
       AND c.search_vector @@ to_tsquery('simple', :match_query))"""

# OFFSET 0 keeps the EXISTS a per-row check: without it the planner may turn it into a
# hashed set of every matching comment, which is what this shape is meant to avoid.
_PG_MATCHES_EACH = """(issues.search_vector @@ to_tsquery('simple', :match_query)
    OR EXISTS (SELECT 1 FROM comments AS c
                WHERE c.issue_id = issues.id AND c.deleted_at IS NULL
                  AND c.search_vector @@ to_tsquery('simple', :match_query)
               OFFSET 0))"""

_SQLITE_REACH = """
SELECT count(*) FROM (SELECT 1 FROM search_fts WHERE search_fts MATCH :match LIMIT :cap)
"""

_SQLITE_MATCHES_SET = """issues.id IN (
    SELECT d.issue_id FROM search_fts CROSS JOIN search_docs AS d
        ON d.rowid = search_fts.rowid
     WHERE search_fts MATCH :match_query AND d.workspace_id = :match_workspace)"""

# Each issue's documents (its own row and its comments' rows in search_docs, found by
# issue id: migration 0014) are looked up in the rowids the MATCH yields, collected once
# by SQLite ("LIST SUBQUERY"). The unary + keeps SQLite from driving the lookup by that
# list (an index search per listed rowid for every issue: hundreds of milliseconds for a
# common word); it must stay a membership test. Not a MATCH per document: FTS5 expands a
# prefix longer than its prefix indexes into a merged doclist on every cursor it opens,
# milliseconds a document for a common word.
_SQLITE_MATCHES_EACH = """EXISTS (
        SELECT 1 FROM search_docs AS d
         WHERE d.issue_id = issues.id
           AND +d.rowid IN (SELECT rowid FROM search_fts WHERE search_fts MATCH :match_query))"""

# One word no longer than the prefix indexes: its doclist is in the index as it is, so a
# MATCH restricted to one rowid is a seek — cheaper per document than collecting the
# rowids of a word found in most documents. (With two or more words each seek opens
# several doclists and the collected list wins again.)
_SQLITE_MATCHES_EACH_SEEK = """EXISTS (
        SELECT 1 FROM search_docs AS d
         WHERE d.issue_id = issues.id
           AND EXISTS (SELECT 1 FROM search_fts
                        WHERE search_fts MATCH :match_query AND search_fts.rowid = d.rowid))"""


def include_in_schema_comparison(name: str | None) -> bool:
    """Search objects are managed by migrations, not by the ORM metadata."""
    return not (name or "").startswith("search_")
