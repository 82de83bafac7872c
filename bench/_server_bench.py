"""What the benchmarks that start a real ``forgehall serve`` share: a free port, a clean
environment, the scratch data set (one owner, the workspace ``bench``, unassigned
issues), percentiles and response checks. Imported by ``dispatch_latency.py``,
``daemon_spawn.py`` and ``ui_pages.py`` (run from the repository root: ``bench/`` is on
``sys.path``)."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, select
from sqlalchemy.engine import make_url

from forgehall.db.engine import Database
from forgehall.db.migrate import upgrade_to_head
from forgehall.db.url import resolve_database
from forgehall.identity import service as identity_service
from forgehall.identity.models import User
from forgehall.issues.models import Issue, Status
from forgehall.issues.service import create_default_statuses
from forgehall.settings import Settings
from forgehall.workspaces.models import Member, Workspace

TABLES = Issue.metadata.tables


class BenchError(Exception):
    """Something the benchmark relies on failed (a server, a daemon, a hand-out)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env() -> dict[str, str]:
    """The caller's environment without anything that configures Forgehall."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("FORGEHALL_") and key not in ("DATABASE_URL", "PORT")
    }


def server_env(database_url: str, workdir: Path, port: int) -> dict[str, str]:
    """The environment of a ``forgehall serve`` under measurement: quiet, unbuffered."""
    env = clean_env()
    env.update(
        {
            "PORT": str(port),
            "DATABASE_URL": database_url,
            "FORGEHALL_DATA_DIR": str(workdir / "data"),
            "FORGEHALL_LOG_LEVEL": "warning",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def asyncpg_dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url)
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql", query={}).render_as_string(hide_password=False)


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


async def prepare(
    url: str,
    issues: int,
    description: str,
    *,
    title: Callable[[int], str] | None = None,
    categories: Sequence[str] = ("todo",),
) -> str:
    """Migrate the database at ``url`` and give it one owner, the workspace ``bench``
    (prefix ENG, default statuses) and ``issues`` unassigned issues described by
    ``description``; return the owner's personal access token. Issue ``n`` is titled
    ``title(n)`` (default ``Bench issue n``) and sits in the default status of
    ``categories[n % len(categories)]`` (default: all in todo)."""
    db = Database(resolve_database(Settings(database_url=url)))
    try:
        await upgrade_to_head(db)
        async with db.session() as session:
            owner = User(email="owner@bench.example", name="owner")
            session.add(owner)
            await session.flush()
            workspace = Workspace(slug="bench", name="Bench", key_prefix="ENG", created_by=owner.id)
            session.add(workspace)
            await session.flush()
            session.add(Member(workspace_id=workspace.id, user_id=owner.id, role="OWNER"))
            await create_default_statuses(session, workspace.id)
            await session.commit()
            status_of = {
                category: status_id
                for status_id, category in await session.execute(
                    select(Status.id, Status.category)
                    .where(Status.workspace_id == workspace.id)
                    .order_by(Status.position.desc())
                )
            }  # the first status of each category wins
            issued = await identity_service.create_token(session, owner, kind="pat", name="bench")
        rows = [
            {
                "id": f"{n:032x}",
                "workspace_id": workspace.id,
                "number": n,
                "title": title(n) if title else f"Bench issue {n}",
                "description": description,
                "status_id": status_of[categories[n % len(categories)]],
                "priority": "none",
                "creator_user_id": owner.id,
                "position": float(n),
            }
            for n in range(1, issues + 1)
        ]
        async with db.engine.begin() as conn:
            for start in range(0, len(rows), 2000):
                await conn.execute(insert(TABLES["issues"]), rows[start : start + 2000])
            await conn.execute(
                insert(TABLES["issue_counters"]).values(
                    workspace_id=workspace.id, last_number=issues
                )
            )
        return issued.plaintext
    finally:
        await db.dispose()


def expect(response: httpx.Response, code: int, what: str) -> dict[str, Any]:
    if response.status_code != code:
        raise BenchError(f"{what}: {response.status_code} {response.text[:500]}")
    body: dict[str, Any] = response.json()
    return body
