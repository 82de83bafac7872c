"""How fast the board answers a filtered page and a full-text search on a big workspace.

What it builds: for each backend, a fresh database migrated to head, holding one
workspace with 10 members, the default statuses, 20 labels, 50,000 issues and 200,000
comments (``--issues`` / ``--comments``). Rows are bulk-inserted with SQLAlchemy core
``insert()`` executemany, a few thousand rows per transaction. Text comes from a fixed
word list drawn with a seeded ``random.Random`` (Zipf-like, so a few words are in most
documents), plus rare code names that appear in about 80 documents each, so searches
have both selective and broad hits. Issues are spread over statuses, priorities,
assignees, labels and parents; comments over issues (a few busy issues, a long tail).
On SQLite the FTS5 triggers fill the search index as rows go in; on PostgreSQL the GIN
indexes are updated on insert, and ``VACUUM ANALYZE`` runs after the load (the steady
state autovacuum would reach; it also keeps autovacuum from starting mid-measurement).
The generation time and rows/s of each table are printed.

What it measures, through the real service layer — ``list_issues(session, access,
IssueFilter)`` with a fresh ``AsyncSession`` from ``db.read_session()`` per query, as a
request would have — timing each call with ``time.perf_counter()`` (so the time includes
checking a connection out of the pool, BEGIN, running the SQL and building ORM objects):

- (a) a filtered page: status category in_progress + priority high + one label
  (rotated over the 20 labels), sort ``-updated``, limit 50;
- (b) the unfiltered first page, sorted by position, limit 50;
- (c) a deep page: each sample is one page fetched with the previous page's
  ``next_cursor``; walks restart from page 1 (untimed) after 20 follows, so the samples
  are pages 2-21 (rows 51-1,050) of the position-sorted board;
- (d) full-text search for a selective word (a rare code name, rotated), limit 50;
- (e) full-text search for a common word (one of the 16 most frequent words), limit 50;
- (f) a two-word prefix search (e.g. ``depl cach``, both prefixes required), limit 50;
- (g) a common word (as in (e)) with a filter: status category done (30 % of the
  issues), sort relevance, limit 50;
- (h) the same with a rare category: blocked (2 % of the issues), so the ranked window
  holds fewer than a page of them and the page goes on with matches outside the window.

The peer, on the same database in the same run: the equivalent hand-written SQL for (a)
and (d) — the same statement shape the service sends — run with the raw driver
(``sqlite3`` / ``asyncpg`` on one open connection, no SQLAlchemy, no service code). The
``ratio`` lines (service p50 / raw SQL p50) show what our layers cost on top of the SQL.
Before timing, the peer's issue ids and query plans are checked against the service's for
a few inputs (a plan that differs is printed: then the ratio measures more than layers).

All kinds run interleaved (one round = one query of each kind) after an untimed warm-up,
so drift in machine load hits them alike. Target (from the issue): p99 <= 50 ms for the
filtered page and the searches on both backends; every row says ``met`` or ``MISSED``.
This is a benchmark, not a test: it exits 0 whether or not targets are met, and non-zero
only when something crashed (or PostgreSQL, when asked for, is unreachable).

PostgreSQL: the admin URL comes from ``FORGEHALL_BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``); a scratch database
``fh_bench_<pid>`` is created and dropped at the end, failure included. SQLite: a file in
a temporary directory, removed at the end.

Run it from the repository root::

    uv run python bench/board_queries.py                      # both backends, defaults
    uv run python bench/board_queries.py --backend sqlite --issues 5000 --comments 20000
    uv run python bench/board_queries.py --explain            # also print query plans

Options: ``--issues N`` (50000), ``--comments N`` (200000), ``--queries N`` timed rounds
(300), ``--warmup N`` untimed rounds (20), ``--backend sqlite|postgresql|both`` (both),
``--seed N`` (1), ``--budget S`` (60: seconds of timed samples per kind; a kind that
has used its budget takes no more samples, so one very slow query cannot stretch the run
to hours — its row then shows the smaller n and says so), ``--explain`` (print the plan of
each service query after measuring: ``EXPLAIN (ANALYZE, BUFFERS)`` on PostgreSQL,
``EXPLAIN QUERY PLAN`` on SQLite).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy
import structlog
from sqlalchemy import event, insert, select
from sqlalchemy.engine import make_url

from forgehall.db.engine import Database
from forgehall.db.migrate import upgrade_to_head
from forgehall.db.search import RANKING_WINDOW
from forgehall.db.url import resolve_database
from forgehall.identity.auth import Principal
from forgehall.identity.models import User
from forgehall.issues.models import Issue, Label, Status
from forgehall.issues.service import IssueFilter, create_default_statuses, list_issues
from forgehall.ops.service import refresh_sqlite_statistics
from forgehall.settings import Settings
from forgehall.workspaces.access import Access, Role
from forgehall.workspaces.models import Member, Workspace

TARGET_MS = 50.0
PAGE = 50
DEEP_FOLLOWS = 20
ISSUE_BATCH = 2000
COMMENT_BATCH = 5000
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
MEMBERS = 10
_LABELS = (
    "bug feature regression performance security docs ui api backend frontend infra "
    "flaky-test tech-debt customer onboarding billing mobile accessibility design data"
)
LABEL_NAMES = _LABELS.split()

# The vocabulary, most frequent first: word i is drawn with weight 1 / (i + 1).
_VOCABULARY = """
the to and when in on of is not after with for a it from error page user login fails
api build test should server request timeout update deploy database cache issue crash
config token session migration dashboard search button form report sync queue worker
email notification settings profile password upload download export import file image
slow memory leak null pointer exception stack trace log retry connection socket proxy
header cookie redirect permission role admin team workspace project board column label
status priority assignee comment mention filter sort pagination cursor index query
schema table row column sqlite postgres transaction lock deadlock race condition thread
async await event webhook payload json parse invalid missing empty duplicate broken
wrong unexpected intermittent flaky mobile desktop browser safari firefox chrome
android ios layout style dark theme font icon modal dialog tooltip dropdown menu scroll
resize render blank spinner loading latency throughput metric alert monitor dashboard
container docker kubernetes helm chart pod node cluster region replica backup restore
snapshot encrypt decrypt certificate tls expired renew oauth oidc saml sso invite
member billing invoice payment plan trial quota limit rate throttle retry backoff
agent daemon task runner pipeline artifact release version changelog rollback hotfix
branch merge review approve reject draft archive delete restore undo history audit
"""
WORDS = list(dict.fromkeys(_VOCABULARY.split()))
# Rare code names: two syllables each; none is a prefix of another or of a word above.
RARE_HEADS = ("zor", "quil", "vexa", "marn", "thal", "brix", "odra", "kyr", "plon", "snev")
RARE_TAILS = ("ax", "ine", "oth", "ump", "eld", "ira")


def rare_words() -> list[str]:
    words = [head + tail for head in RARE_HEADS for tail in RARE_TAILS]
    for word in words:
        clash = [w for w in [*words, *WORDS] if w != word and w.startswith(word)]
        assert not clash, (word, clash)
    return words


RARE = rare_words()
RARE_PROBABILITY = 0.02  # share of documents that carry one rare code name
COMMON_QUERY_WORDS = [w for w in WORDS if len(w) >= 4][:16]

ISSUE_COLUMNS = (
    "issues.id, issues.workspace_id, issues.number, issues.title, issues.description, "
    "issues.status_id, issues.priority, issues.assignee_user_id, issues.assignee_agent_id, "
    "issues.creator_user_id, issues.creator_agent_id, issues.parent_id, issues.due_date, "
    "issues.position, issues.revision, issues.created_at, issues.updated_at"
)

STATUS_SHARE = {
    "backlog": 0.20,
    "todo": 0.20,
    "in_progress": 0.15,
    "in_review": 0.08,
    "done": 0.30,
    "blocked": 0.02,
    "cancelled": 0.05,
}
PRIORITY_SHARE = {"urgent": 0.05, "high": 0.15, "medium": 0.35, "low": 0.25, "none": 0.20}
LABEL_COUNT_SHARE = {0: 0.30, 1: 0.40, 2: 0.20, 3: 0.10}
TABLES = Issue.metadata.tables  # bulk loads use core insert() on the tables themselves


# --- text --------------------------------------------------------------------------------


class TextMaker:
    """Sentences drawn from :data:`WORDS` (Zipf weights) with occasional rare code names."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.cum = list(_cumulative([1.0 / (i + 1) for i in range(len(WORDS))]))

    def words(self, count: int) -> list[str]:
        return self.rng.choices(WORDS, cum_weights=self.cum, k=count)

    def title(self) -> str:
        words = self.words(self.rng.randint(4, 9))
        self._maybe_rare(words)
        return " ".join(words).capitalize()

    def prose(self, low: int, high: int) -> str:
        words = self.words(self.rng.randint(low, high))
        self._maybe_rare(words)
        sentences: list[str] = []
        start = 0
        while start < len(words):
            end = start + self.rng.randint(6, 14)
            sentences.append(" ".join(words[start:end]).capitalize() + ".")
            start = end
        return " ".join(sentences)

    def _maybe_rare(self, words: list[str]) -> None:
        if self.rng.random() < RARE_PROBABILITY:
            words.insert(self.rng.randrange(len(words) + 1), self.rng.choice(RARE))


def _cumulative(weights: Sequence[float]) -> Iterator[float]:
    total = 0.0
    for weight in weights:
        total += weight
        yield total


def _pick(rng: random.Random, shares: dict[Any, float]) -> Any:
    return rng.choices(list(shares), weights=list(shares.values()))[0]


def _hex_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


# --- the dataset -------------------------------------------------------------------------


@dataclass
class Dataset:
    access: Access
    workspace_id: str
    status_ids: dict[str, str]  # category -> id
    label_ids: list[str]
    table_stats: list[tuple[str, int, float]] = field(default_factory=list)
    text_seconds: float = 0.0
    vacuum_seconds: float | None = None
    total_seconds: float = 0.0


async def generate(db: Database, n_issues: int, n_comments: int, seed: int) -> Dataset:
    """Fill a migrated database; return what the measurements need."""
    started = time.perf_counter()
    rng = random.Random(seed)
    maker = TextMaker(rng)
    async with db.session() as session:
        users = [
            User(
                id=_hex_id(rng),
                email=f"member{i}@bench.example",
                name="owner" if i == 0 else f"member{i}",
            )
            for i in range(MEMBERS)
        ]
        session.add_all(users)
        await session.flush()
        workspace = Workspace(
            id=_hex_id(rng), slug="bench", name="Bench", key_prefix="ENG", created_by=users[0].id
        )
        session.add(workspace)
        await session.flush()
        for i, user in enumerate(users):
            role = "OWNER" if i == 0 else ("ADMIN" if i < 3 else "MEMBER")
            session.add(Member(workspace_id=workspace.id, user_id=user.id, role=role))
        await create_default_statuses(session, workspace.id)
        labels = [
            Label(id=_hex_id(rng), workspace_id=workspace.id, name=name, color="#888888")
            for name in LABEL_NAMES
        ]
        session.add_all(labels)
        await session.commit()
        statuses = (
            await session.scalars(select(Status).where(Status.workspace_id == workspace.id))
        ).all()
    status_ids = {s.category: s.id for s in statuses}
    label_ids = [label.id for label in labels]
    user_ids = [u.id for u in users]
    owner = users[0]
    access = Access(
        workspace=workspace,
        principal=Principal(user=owner, kind="pat"),
        role=Role.OWNER,
        member_role=Role.OWNER,
    )
    data = Dataset(
        access=access, workspace_id=workspace.id, status_ids=status_ids, label_ids=label_ids
    )
    # Members are not equally busy: the first ones get more issues and write more.
    member_cum = list(_cumulative([1.0 / (i + 1) for i in range(MEMBERS)]))
    label_cum = list(_cumulative([1.0 / (i + 1) ** 0.7 for i in range(len(label_ids))]))

    now = datetime.now(UTC).replace(microsecond=0)
    span = timedelta(days=730)
    first = now - span
    issue_ids: list[str] = []
    issue_created: list[datetime] = []
    positions = dict.fromkeys(status_ids.values(), 0.0)
    issue_seconds = label_seconds = 0.0
    n_labels = 0
    for start in range(0, n_issues, ISSUE_BATCH):
        t_text = time.perf_counter()
        issue_rows: list[dict[str, Any]] = []
        label_rows: list[dict[str, Any]] = []
        for number in range(start + 1, min(start + ISSUE_BATCH, n_issues) + 1):
            issue_id = _hex_id(rng)
            created = (
                first + span * (number / (n_issues + 1)) + timedelta(seconds=rng.randint(0, 3600))
            )
            age = (now - created).total_seconds()
            updated = created + timedelta(seconds=age * rng.random() ** 3)
            status_id = status_ids[_pick(rng, STATUS_SHARE)]
            positions[status_id] += 1024.0
            assignee = (
                rng.choices(user_ids, cum_weights=member_cum)[0] if rng.random() < 0.75 else None
            )
            parent = (
                issue_ids[rng.randrange(len(issue_ids))]
                if issue_ids and rng.random() < 0.10
                else None
            )
            due = (
                (created + timedelta(days=rng.randint(7, 90))).date()
                if rng.random() < 0.3
                else None
            )
            issue_rows.append(
                {
                    "id": issue_id,
                    "workspace_id": workspace.id,
                    "number": number,
                    "title": maker.title(),
                    "description": maker.prose(15, 60),
                    "status_id": status_id,
                    "priority": _pick(rng, PRIORITY_SHARE),
                    "assignee_user_id": assignee,
                    "assignee_agent_id": None,
                    "creator_user_id": rng.choices(user_ids, cum_weights=member_cum)[0],
                    "creator_agent_id": None,
                    "parent_id": parent,
                    "due_date": due,
                    "position": positions[status_id],
                    "revision": rng.randint(1, 6),
                    "created_at": created,
                    "updated_at": updated,
                }
            )
            chosen: set[str] = set()
            for _ in range(_pick(rng, LABEL_COUNT_SHARE)):
                chosen.add(rng.choices(label_ids, cum_weights=label_cum)[0])
            label_rows.extend({"issue_id": issue_id, "label_id": lid} for lid in chosen)
            issue_ids.append(issue_id)
            issue_created.append(created)
        data.text_seconds += time.perf_counter() - t_text
        t0 = time.perf_counter()
        async with db.engine.begin() as conn:
            await conn.execute(insert(TABLES["issues"]), issue_rows)
            t1 = time.perf_counter()
            if label_rows:
                await conn.execute(insert(TABLES["issue_labels"]), label_rows)
        t2 = time.perf_counter()
        issue_seconds += t1 - t0
        label_seconds += t2 - t1
        n_labels += len(label_rows)
    async with db.engine.begin() as conn:
        await conn.execute(
            insert(TABLES["issue_counters"]).values(workspace_id=workspace.id, last_number=n_issues)
        )
    data.table_stats.append(("issues", n_issues, issue_seconds))
    data.table_stats.append(("issue_labels", n_labels, label_seconds))

    # Comments: a few busy issues, a long tail; grouped by issue, in time order.
    activity = [rng.paretovariate(1.3) for _ in issue_ids]
    counts = [0] * len(issue_ids)
    if issue_ids:
        for index in rng.choices(
            range(len(issue_ids)), cum_weights=list(_cumulative(activity)), k=n_comments
        ):
            counts[index] += 1
    comment_seconds = 0.0
    rows: list[dict[str, Any]] = []

    async def flush(batch: list[dict[str, Any]]) -> float:
        t0 = time.perf_counter()
        async with db.engine.begin() as conn:
            await conn.execute(insert(TABLES["comments"]), batch)
        return time.perf_counter() - t0

    t_text = time.perf_counter()
    for issue_id, created, count in zip(issue_ids, issue_created, counts, strict=True):
        if not count:
            continue
        age = (now - created).total_seconds()
        times = sorted(created + timedelta(seconds=age * rng.random()) for _ in range(count))
        earlier: list[str] = []
        for when in times:
            comment_id = _hex_id(rng)
            rows.append(
                {
                    "id": comment_id,
                    "workspace_id": workspace.id,
                    "issue_id": issue_id,
                    "parent_id": rng.choice(earlier) if earlier and rng.random() < 0.15 else None,
                    "author_user_id": rng.choices(user_ids, cum_weights=member_cum)[0],
                    "author_agent_id": None,
                    "body": maker.prose(5, 40),
                    "created_at": when,
                    "updated_at": when,
                    "deleted_at": when + timedelta(hours=1) if rng.random() < 0.01 else None,
                }
            )
            earlier.append(comment_id)
        if len(rows) >= COMMENT_BATCH:
            data.text_seconds += time.perf_counter() - t_text
            comment_seconds += await flush(rows)
            rows = []
            t_text = time.perf_counter()
    data.text_seconds += time.perf_counter() - t_text
    if rows:
        comment_seconds += await flush(rows)
    data.table_stats.append(("comments", n_comments, comment_seconds))
    if db.dialect == "postgresql":
        t0 = time.perf_counter()
        raw = await asyncpg.connect(asyncpg_dsn(db.config.url.render_as_string(False)))
        try:
            await raw.execute("VACUUM ANALYZE")
        finally:
            await raw.close()
        data.vacuum_seconds = time.perf_counter() - t0
    else:
        # What the sqlite-statistics background service does at start-up and hourly.
        t0 = time.perf_counter()
        await refresh_sqlite_statistics(db)
        data.vacuum_seconds = time.perf_counter() - t0
    data.total_seconds = time.perf_counter() - started
    return data


# --- the peer: hand-written SQL on the raw driver -----------------------------------------

# The peer's statements have the shape the service sends (same tables, no aliases on the
# outer query, same ORDER BY), so both get the same plan and the ratio is the cost of our
# layers alone; ``check_peer`` compares the plans and says so when they differ. Like the
# service, (a) takes the status ids of the category as literals (the service resolves
# them in a query of its own first) and checks the label with EXISTS when a status filter
# is present; the search uses the ranking window of ``forgehall.db.search``, and on
# PostgreSQL its connection plans each statement for its parameters, as the service asks
# with ``SET LOCAL plan_cache_mode`` (a cached generic plan would be one shape for every
# word).
PG_FILTERED = f"""
SELECT {ISSUE_COLUMNS}, issues.updated_at AS sort_value
  FROM issues
 WHERE issues.workspace_id = $1
   AND issues.status_id IN ($2)
   AND (EXISTS (SELECT issue_labels.issue_id FROM issue_labels
                 WHERE issue_labels.issue_id = issues.id AND issue_labels.label_id = $3))
   AND issues.priority IN ($4)
 ORDER BY issues.updated_at DESC, issues.id
 LIMIT 51
"""

PG_RANKED = """
SELECT matched.issue_id AS issue_id, max(matched.rank) AS rank FROM (
    SELECT recent.id AS issue_id,
           ts_rank(recent.search_vector, to_tsquery('simple', $2)) AS rank
      FROM (SELECT i.id, i.search_vector FROM issues AS i
             WHERE i.workspace_id = $1 AND i.search_vector @@ to_tsquery('simple', $2)
             ORDER BY i.created_at DESC, i.id DESC
             LIMIT $3) AS recent
    UNION ALL
    SELECT recent.issue_id, ts_rank(recent.search_vector, to_tsquery('simple', $2)) * 0.5
      FROM (SELECT c.issue_id, c.search_vector FROM comments AS c
             WHERE c.workspace_id = $1 AND c.deleted_at IS NULL
               AND c.search_vector @@ to_tsquery('simple', $2)
             ORDER BY c.created_at DESC, c.id DESC
             LIMIT $3) AS recent
) AS matched GROUP BY matched.issue_id
"""

PG_SEARCH = f"""
SELECT {ISSUE_COLUMNS}, ranked.rank AS sort_value
  FROM issues JOIN ({PG_RANKED}) AS ranked ON ranked.issue_id = issues.id
 WHERE issues.workspace_id = $1
 ORDER BY ranked.rank DESC, issues.id
 LIMIT 51
"""

# Every issue a search matches, outside the ranking window (only for the context lines).
PG_MATCHES = """
SELECT count(DISTINCT m.issue_id) FROM (
    SELECT id AS issue_id FROM issues
     WHERE workspace_id = $1 AND search_vector @@ to_tsquery('simple', $2)
    UNION ALL
    SELECT issue_id FROM comments
     WHERE workspace_id = $1 AND deleted_at IS NULL
       AND search_vector @@ to_tsquery('simple', $2)
) AS m
"""

SQLITE_FILTERED = f"""
SELECT {ISSUE_COLUMNS}, issues.updated_at AS sort_value
  FROM issues
 WHERE issues.workspace_id = :ws
   AND issues.status_id IN (:status)
   AND (EXISTS (SELECT issue_labels.issue_id FROM issue_labels
                 WHERE issue_labels.issue_id = issues.id AND issue_labels.label_id = :label))
   AND issues.priority IN (:priority)
 ORDER BY issues.updated_at DESC, issues.id
 LIMIT 51
"""

SQLITE_RANKED = """
SELECT hits.issue_id AS issue_id, max(hits.rank) AS rank FROM (
    SELECT d.issue_id AS issue_id,
           CASE WHEN d.doc_id LIKE 'c:%' THEN -0.5 ELSE -1.0 END
             * bm25(search_fts, 2.0, 1.0) AS rank
      FROM search_fts CROSS JOIN search_docs AS d ON d.rowid = search_fts.rowid
     WHERE search_fts MATCH :match AND d.workspace_id = :ws
     ORDER BY search_fts.rowid DESC
     LIMIT :window) AS hits
 GROUP BY hits.issue_id
"""

SQLITE_SEARCH = f"""
SELECT {ISSUE_COLUMNS}, ranked.rank AS sort_value
  FROM issues JOIN ({SQLITE_RANKED}) AS ranked ON ranked.issue_id = issues.id
 WHERE issues.workspace_id = :ws
 ORDER BY ranked.rank DESC, issues.id
 LIMIT 51
"""

SQLITE_MATCHES = """
SELECT count(DISTINCT d.issue_id)
  FROM search_fts CROSS JOIN search_docs AS d ON d.rowid = search_fts.rowid
 WHERE search_fts MATCH :match AND d.workspace_id = :ws
"""


def pg_tsquery(words: str) -> str:
    return " & ".join(f"{w.lower()}:*" for w in words.split())


def fts_match(words: str) -> str:
    return " ".join(f'"{w.lower()}"*' for w in words.split())


class RawPeer:
    """(a) and (d) as hand-written SQL on one open raw-driver connection."""

    def filtered_sql(self, ws: str, status_id: str, label_id: str) -> tuple[str, Any]:
        raise NotImplementedError

    def search_sql(self, ws: str, words: str) -> tuple[str, Any]:
        raise NotImplementedError

    def matches_sql(self, ws: str, words: str) -> tuple[str, Any]:
        """Count every issue ``words`` match (no ranking window)."""
        raise NotImplementedError

    async def ids(self, statement: str, params: Any) -> list[str]:
        """Run a statement; the first column of at most one page of rows."""
        raise NotImplementedError

    async def plan(self, statement: str, params: Any) -> list[str]:
        """The plan's shape (nodes, indexes, tables), comparable across statements."""
        raise NotImplementedError

    async def count(self, statement: str, params: Any) -> int:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def filtered(self, ws: str, status_id: str, label_id: str) -> list[str]:
        return await self.ids(*self.filtered_sql(ws, status_id, label_id))

    async def search(self, ws: str, words: str) -> list[str]:
        return await self.ids(*self.search_sql(ws, words))


class PostgresPeer(RawPeer):
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    def filtered_sql(self, ws: str, status_id: str, label_id: str) -> tuple[str, Any]:
        return PG_FILTERED, (ws, status_id, label_id, "high")

    def search_sql(self, ws: str, words: str) -> tuple[str, Any]:
        return PG_SEARCH, (ws, pg_tsquery(words), RANKING_WINDOW // 2)

    def matches_sql(self, ws: str, words: str) -> tuple[str, Any]:
        return PG_MATCHES, (ws, pg_tsquery(words))

    async def search(self, ws: str, words: str) -> list[str]:
        # The service's transaction: BEGIN, SET LOCAL plan_cache_mode, the search, end.
        async with self.conn.transaction():
            await self.conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            return await self.ids(*self.search_sql(ws, words))

    async def ids(self, statement: str, params: Any) -> list[str]:
        rows = await self.conn.fetch(statement, *params)
        return [r[0] for r in rows[:PAGE]]

    async def plan(self, statement: str, params: Any) -> list[str]:
        raw = await self.conn.fetchval("EXPLAIN (FORMAT JSON) " + statement, *params)
        lines: list[str] = []

        def walk(node: dict[str, Any], depth: int) -> None:
            line = node["Node Type"]
            if "Index Name" in node:
                line += f" using {node['Index Name']}"
            if "Relation Name" in node:
                line += f" on {node['Relation Name']}"
            lines.append("  " * depth + line)
            for child in node.get("Plans", []):
                walk(child, depth + 1)

        walk(json.loads(raw)[0]["Plan"], 0)
        return lines

    async def count(self, statement: str, params: Any) -> int:
        return int(await self.conn.fetchval(statement, *params))

    async def close(self) -> None:
        await self.conn.close()


class SqlitePeer(RawPeer):
    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA query_only=ON")
        self.conn.execute("PRAGMA busy_timeout=30000")

    def filtered_sql(self, ws: str, status_id: str, label_id: str) -> tuple[str, Any]:
        params = {"ws": ws, "status": status_id, "label": label_id, "priority": "high"}
        return SQLITE_FILTERED, params

    def search_sql(self, ws: str, words: str) -> tuple[str, Any]:
        return SQLITE_SEARCH, {"ws": ws, "match": fts_match(words), "window": RANKING_WINDOW}

    def matches_sql(self, ws: str, words: str) -> tuple[str, Any]:
        return SQLITE_MATCHES, {"ws": ws, "match": fts_match(words)}

    async def ids(self, statement: str, params: Any) -> list[str]:
        rows = self.conn.execute(statement, params).fetchall()
        return [r[0] for r in rows[:PAGE]]

    async def plan(self, statement: str, params: Any) -> list[str]:
        rows = self.conn.execute("EXPLAIN QUERY PLAN " + statement, params).fetchall()
        depth: dict[int, int] = {0: -1}
        lines: list[str] = []
        for node, parent, _, detail in rows:
            depth[node] = depth.get(parent, -1) + 1
            lines.append("  " * depth[node] + detail)
        return lines

    async def count(self, statement: str, params: Any) -> int:
        return int(self.conn.execute(statement, params).fetchone()[0])

    async def close(self) -> None:
        self.conn.close()


# --- measuring ---------------------------------------------------------------------------

FILTERED = "(a) filtered page: in_progress+high+label, -updated"
FIRST = "(b) first page, sort position"
DEEP = f"(c) deep page: next_cursor x{DEEP_FOLLOWS}, sort position"
SELECTIVE = "(d) search, selective word"
COMMON = "(e) search, common word"
PREFIX = "(f) search, two-word prefix"
FILTERED_COMMON = "(g) search, common word + category done"
RARE_CATEGORY_COMMON = "(h) search, common word + category blocked"
PEER_FILTERED = "peer: raw SQL (a)"
PEER_SELECTIVE = "peer: raw SQL (d)"
ORDER = (
    FILTERED,
    FIRST,
    DEEP,
    SELECTIVE,
    COMMON,
    PREFIX,
    FILTERED_COMMON,
    RARE_CATEGORY_COMMON,
    PEER_FILTERED,
    PEER_SELECTIVE,
)


@dataclass
class Series:
    samples: list[float] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)


@dataclass
class Params:
    """Inputs rotated across rounds so no round repeats the previous one exactly."""

    rng: random.Random
    labels: list[str]
    prefixes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        mid = WORDS[8:80]
        pairs: list[str] = []
        while len(pairs) < 40:
            a, b = self.rng.sample(mid, 2)
            pairs.append(f"{a[: self.rng.randint(3, 5)]} {b[: self.rng.randint(3, 5)]}")
        self.prefixes = pairs

    def label(self) -> str:
        return self.rng.choice(self.labels)

    def rare(self) -> str:
        return self.rng.choice(RARE)

    def common(self) -> str:
        return self.rng.choice(COMMON_QUERY_WORDS)

    def prefix(self) -> str:
        return self.rng.choice(self.prefixes)


class Runner:
    def __init__(
        self, db: Database, data: Dataset, peer: RawPeer, seed: int, budget_s: float
    ) -> None:
        self.db = db
        self.budget_ms = budget_s * 1000
        self.data = data
        self.peer = peer
        self.params = Params(random.Random(seed + 1), data.label_ids)
        self.results = {name: Series() for name in ORDER}
        self.cursor: str | None = None
        self.follows = 0
        self.current = ""
        self.rounds = 0
        self.captured: dict[str, tuple[str, Any]] = {}
        self.in_progress = data.status_ids["in_progress"]

    def capture(self) -> None:
        """Remember the last SELECT each kind sent (for ``--explain``)."""

        def listener(
            conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
        ) -> None:
            if statement.lstrip().upper().startswith("SELECT") and self.current:
                self.captured[self.current] = (statement, parameters)

        event.listen(self.db.read_engine.sync_engine, "before_cursor_execute", listener)

    async def service(self, f: IssueFilter) -> tuple[float, list[Issue], str | None]:
        async with self.db.read_session() as session:
            t0 = time.perf_counter()
            issues, next_cursor = await list_issues(session, self.data.access, f)
            elapsed = (time.perf_counter() - t0) * 1000
        return elapsed, issues, next_cursor

    async def round(self, record: bool) -> None:
        steps: list[tuple[str, Callable[[], Awaitable[tuple[float, int]]]]] = [
            (FILTERED, self.filtered),
            (FIRST, self.first),
            (DEEP, self.deep),
            (SELECTIVE, lambda: self.search(self.params.rare())),
            (COMMON, lambda: self.search(self.params.common())),
            (PREFIX, lambda: self.search(self.params.prefix())),
            (FILTERED_COMMON, lambda: self.search(self.params.common(), "done")),
            (RARE_CATEGORY_COMMON, lambda: self.search(self.params.common(), "blocked")),
            (PEER_FILTERED, self.peer_filtered),
            (PEER_SELECTIVE, self.peer_selective),
        ]
        for name, step in steps:
            series = self.results[name]
            if record and sum(series.samples) > self.budget_ms:
                continue  # this kind has had its time budget
            self.current = name
            elapsed, count = await step()
            if record:
                self.results[name].samples.append(elapsed)
                self.results[name].rows.append(count)
        self.current = ""

    async def filtered(self) -> tuple[float, int]:
        f = IssueFilter(
            categories=["in_progress"],
            priorities=["high"],
            label_ids=[self.params.label()],
            sort="-updated",
            limit=PAGE,
        )
        elapsed, issues, _ = await self.service(f)
        return elapsed, len(issues)

    async def first(self) -> tuple[float, int]:
        elapsed, issues, _ = await self.service(IssueFilter(sort="position", limit=PAGE))
        return elapsed, len(issues)

    async def deep(self) -> tuple[float, int]:
        if self.cursor is None or self.follows >= DEEP_FOLLOWS:
            _, _, self.cursor = await self.service(IssueFilter(sort="position", limit=PAGE))
            self.follows = 0
        f = IssueFilter(sort="position", limit=PAGE, cursor=self.cursor)
        elapsed, issues, self.cursor = await self.service(f)
        self.follows += 1
        return elapsed, len(issues)

    async def search(self, words: str, category: str | None = None) -> tuple[float, int]:
        categories = [category] if category else []
        f = IssueFilter(text=words, categories=categories, limit=PAGE)
        elapsed, issues, _ = await self.service(f)
        return elapsed, len(issues)

    async def peer_filtered(self) -> tuple[float, int]:
        label = self.params.label()
        t0 = time.perf_counter()
        ids = await self.peer.filtered(self.data.workspace_id, self.in_progress, label)
        return (time.perf_counter() - t0) * 1000, len(ids)

    async def peer_selective(self) -> tuple[float, int]:
        word = self.params.rare()
        t0 = time.perf_counter()
        ids = await self.peer.search(self.data.workspace_id, word)
        return (time.perf_counter() - t0) * 1000, len(ids)

    async def check_peer(self) -> list[str]:
        """The peer must return what the service returns, with the same plan; list any
        mismatch."""
        problems: list[str] = []
        ws = self.data.workspace_id
        plans_checked = False
        for label in self.data.label_ids[:5]:
            f = IssueFilter(
                categories=["in_progress"], priorities=["high"], label_ids=[label], sort="-updated"
            )
            peer_sql = self.peer.filtered_sql(ws, self.in_progress, label)
            problems += await self._compare("(a)", f, peer_sql)
            plans_checked = True
        for word in [*RARE[:5], COMMON_QUERY_WORDS[-1]]:
            f = IssueFilter(text=word)
            problems += await self._compare("(d)", f, self.peer.search_sql(ws, word))
        assert plans_checked
        return problems

    async def _compare(self, kind: str, f: IssueFilter, peer_sql: tuple[str, Any]) -> list[str]:
        self.current = "check"
        try:
            _, issues, _ = await self.service(f)
        finally:
            self.current = ""
        problems: list[str] = []
        raw = await self.peer.ids(*peer_sql)
        if [i.id for i in issues] != raw:
            problems.append(f"{kind} {f}: service {len(issues)} ids, raw SQL {len(raw)}")
        statement, parameters = self.captured.pop("check")
        service_plan = await self.peer.plan(statement, parameters)
        peer_plan = await self.peer.plan(*peer_sql)
        if service_plan != peer_plan:
            problems.append(
                f"{kind} plans differ:\n  service:\n    "
                + "\n    ".join(service_plan)
                + "\n  raw SQL:\n    "
                + "\n    ".join(peer_plan)
            )
        return problems


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


# --- reporting ---------------------------------------------------------------------------


def print_generation(label: str, data: Dataset) -> None:
    print(f"\n[{label}] generated in {data.total_seconds:.1f} s", flush=True)
    print(f"  text generation (Python, not in the rates below): {data.text_seconds:.1f} s")
    for table, rows, seconds in data.table_stats:
        rate = rows / seconds if seconds else float("inf")
        print(f"  {table:<13} {rows:>9,} rows  {seconds:7.1f} s  {rate:>10,.0f} rows/s")
    if data.vacuum_seconds is not None:
        print(f"  statistics (VACUUM ANALYZE / sqlite-statistics) {data.vacuum_seconds:5.1f} s")


async def print_hits(peer: RawPeer, data: Dataset, params: Params) -> None:
    """How many issues each kind of input matches (min / median / max), for context."""
    ws = data.workspace_id

    async def filtered(label: str) -> int:
        statement, values = peer.filtered_sql(ws, data.status_ids["in_progress"], label)
        return await peer.count(
            f"SELECT count(*) FROM ({statement.replace('LIMIT 51', '')}) AS x", values
        )

    async def matches(words: str) -> int:
        return await peer.count(*peer.matches_sql(ws, words))

    async def spread(count: Callable[[str], Awaitable[int]], inputs: Sequence[str]) -> str:
        counts = [await count(value) for value in inputs]
        return (
            f"{min(counts):,} / {statistics.median(counts):,.0f} / {max(counts):,} issues "
            f"over {len(counts)} inputs"
        )

    print("  matches (min / median / max):")
    print(f"    (a) filter:         {await spread(filtered, data.label_ids)}")
    print(f"    (d) selective word: {await spread(matches, RARE)}")
    print(f"    (e) common word:    {await spread(matches, COMMON_QUERY_WORDS)}")
    print(f"    (f) prefix pair:    {await spread(matches, params.prefixes)}")
    print(f"    (searches rank at most the {RANKING_WINDOW:,} newest matching documents)")


def print_table(label: str, runner: Runner) -> None:
    print(f"\n[{label}] {'query':<52} {'n':>4} {'rows':>5} {'p50 ms':>8} {'p99 ms':>8}", end="")
    print(f" {'max ms':>8}  p99 <= {TARGET_MS:.0f} ms")
    for name in ORDER:
        series = runner.results[name]
        p50 = statistics.median(series.samples)
        p99 = percentile(series.samples, 99)
        verdict = "met" if p99 <= TARGET_MS else "MISSED"
        rows = statistics.mean(series.rows)
        if len(series.samples) < runner.rounds:
            verdict += f" (stopped after the {runner.budget_ms / 1000:g} s budget)"
        print(
            f"[{label}] {name:<52} {len(series.samples):>4} {rows:>5.1f} {p50:>8.2f} "
            f"{p99:>8.2f} {max(series.samples):>8.2f}  {verdict}"
        )
    for service, peer in ((FILTERED, PEER_FILTERED), (SELECTIVE, PEER_SELECTIVE)):
        s = statistics.median(runner.results[service].samples)
        p = statistics.median(runner.results[peer].samples)
        print(
            f"[{label}] ratio {service[:3]} service p50 / raw SQL p50 = "
            f"{s:.2f} / {p:.2f} ms = {s / p:.2f}x"
        )


async def print_explain(db: Database, runner: Runner, label: str) -> None:
    print(f"\n[{label}] query plans of the last service query of each kind:")
    for name in ORDER[:8]:
        if name not in runner.captured:
            continue
        statement, parameters = runner.captured[name]
        print(f"\n--- {name}\n{statement.strip()}\n  params: {parameters!r}")
        if db.dialect == "postgresql":
            conn = await asyncpg.connect(asyncpg_dsn(db.config.url.render_as_string(False)))
            try:
                rows = await conn.fetch(
                    "EXPLAIN (ANALYZE, BUFFERS) " + statement, *tuple(parameters)
                )
            finally:
                await conn.close()
            for row in rows:
                print("  " + row[0])
        else:
            assert db.config.sqlite_path is not None
            conn3 = sqlite3.connect(db.config.sqlite_path)
            try:
                plan = conn3.execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
            finally:
                conn3.close()
            depth: dict[int, int] = {0: 0}
            for node, parent, _, detail in plan:
                depth[node] = depth.get(parent, 0) + 1
                print("  " + "  " * depth[node] + detail)


# --- one backend -------------------------------------------------------------------------


def asyncpg_dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url)
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql", query={}).render_as_string(hide_password=False)


async def measure(
    label: str,
    db: Database,
    peer_factory: Callable[[], Awaitable[RawPeer]],
    args: argparse.Namespace,
) -> None:
    t0 = time.perf_counter()
    await upgrade_to_head(db)
    print(f"\n[{label}] migrated to head in {time.perf_counter() - t0:.1f} s", flush=True)
    data = await generate(db, args.issues, args.comments, args.seed)
    print_generation(label, data)
    peer = await peer_factory()
    try:
        runner = Runner(db, data, peer, args.seed, args.budget)
        await print_hits(peer, data, runner.params)
        runner.capture()
        problems = await runner.check_peer()
        print(
            "  peer check (same issue ids and query plan as the service for 5 filters, "
            "6 searches): " + ("yes" if not problems else "NO\n  " + "\n  ".join(problems)),
            flush=True,
        )
        for _ in range(args.warmup):
            await runner.round(record=False)
        t0 = time.perf_counter()
        for _ in range(args.queries):
            await runner.round(record=True)
            runner.rounds += 1
        print(f"  measured {args.queries} rounds in {time.perf_counter() - t0:.1f} s")
        print_table(label, runner)
        if args.explain:
            await print_explain(db, runner, label)
    finally:
        await peer.close()


async def run_sqlite(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="fh_bench_") as tmp:
        path = Path(tmp) / "bench.db"
        db = Database(resolve_database(Settings(database_url=f"sqlite:///{path}")))
        label = "sqlite"
        print(f"\n=== SQLite {sqlite3.sqlite_version}, database file {path}", flush=True)

        async def peer() -> RawPeer:
            return SqlitePeer(path)

        try:
            await measure(label, db, peer, args)
        finally:
            await db.dispose()
        size = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 1e6
        print(f"[{label}] database files: {size:,.0f} MB")


async def run_postgresql(args: argparse.Namespace) -> None:
    admin_url = os.environ.get("FORGEHALL_BENCH_DATABASE_URL", DEFAULT_ADMIN_URL)
    name = f"fh_bench_{os.getpid()}"
    admin = await asyncio.wait_for(asyncpg.connect(asyncpg_dsn(admin_url)), 10)
    try:
        version = await admin.fetchval("SHOW server_version")
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    label = "postgresql"
    print(f"\n=== PostgreSQL {version}, scratch database {name}", flush=True)
    db = Database(resolve_database(Settings(database_url=url)))

    async def peer() -> RawPeer:
        return PostgresPeer(await asyncpg.connect(asyncpg_dsn(url)))

    try:
        await measure(label, db, peer, args)
    finally:
        await db.dispose()
        admin = await asyncpg.connect(asyncpg_dsn(admin_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        print(f"[{label}] dropped scratch database {name}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--issues", type=int, default=50_000)
    parser.add_argument("--comments", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=300, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=20, help="untimed rounds first")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="seconds of timed samples per query kind; a slower kind stops early (default 60)",
    )
    parser.add_argument("--explain", action="store_true", help="print query plans")
    args = parser.parse_args(argv)
    if args.issues < 1 or args.comments < 0 or args.queries < 1 or args.warmup < 0:
        parser.error("--issues and --queries must be >= 1; --comments, --warmup >= 0")
    return args


async def main(args: argparse.Namespace) -> int:
    print(
        f"board_queries: {args.issues:,} issues, {args.comments:,} comments, "
        f"{args.queries} timed rounds after {args.warmup} warm-up rounds, seed {args.seed}"
    )
    print(
        f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
        f"asyncpg {asyncpg.__version__}, {os.cpu_count()} CPUs, {platform.platform()}"
    )
    if args.backend in ("sqlite", "both"):
        await run_sqlite(args)
    if args.backend in ("postgresql", "both"):
        await run_postgresql(args)
    return 0


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main(parse_args())))
    sys.exit(130)
