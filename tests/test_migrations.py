"""Migrations: one head, idempotent, reversible, and equal to the declared schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text
from sqlalchemy.engine import Connection

from forgehall.db.engine import Database
from forgehall.db.metadata import target_metadata
from forgehall.db.migrate import (
    SchemaAheadError,
    alembic_config,
    downgrade,
    head_revision,
    migration_status,
    script_directory,
    upgrade_to_head,
)
from forgehall.db.search import include_in_schema_comparison, ranked_issue_ids
from forgehall.db.url import resolve_database
from forgehall.settings import Settings


def test_exactly_one_head() -> None:
    assert len(script_directory().get_heads()) == 1
    assert head_revision()


@pytest.fixture
async def empty_db(empty_database_url: str):  # type: ignore[no-untyped-def]
    database = Database(resolve_database(Settings(database_url=empty_database_url)))
    yield database
    await database.dispose()


def _diff(conn: Connection) -> list[object]:
    context = MigrationContext.configure(
        conn,
        opts={
            "compare_type": True,
            "include_name": lambda name, _type, _parent: include_in_schema_comparison(name),
        },
    )
    return list(compare_metadata(context, target_metadata()))


async def test_migrated_schema_equals_declared_metadata(empty_db: Database) -> None:
    assert await upgrade_to_head(empty_db)
    async with empty_db.engine.connect() as conn:
        diff = await conn.run_sync(_diff)
    assert diff == [], f"migrations and models disagree: {diff}"


async def test_upgrade_is_idempotent_and_status_reports(empty_db: Database) -> None:
    status = await migration_status(empty_db)
    assert status.current is None
    assert status.pending[-1] == head_revision()
    applied = await upgrade_to_head(empty_db)
    assert applied == status.pending
    assert await upgrade_to_head(empty_db) == []
    assert (await migration_status(empty_db)).is_current


async def test_downgrade_to_base_and_back(empty_db: Database) -> None:
    await upgrade_to_head(empty_db)
    assert await downgrade(empty_db, "base") is None
    async with empty_db.engine.connect() as conn:
        names = await conn.run_sync(lambda c: c.dialect.get_table_names(c))
    assert set(names) <= {"alembic_version"}
    assert await upgrade_to_head(empty_db)


async def test_schema_from_a_newer_release_is_refused(empty_db: Database) -> None:
    await upgrade_to_head(empty_db)
    async with empty_db.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_future'"))
    with pytest.raises(SchemaAheadError, match="newer release"):
        await upgrade_to_head(empty_db)
    with pytest.raises(SchemaAheadError):
        await migration_status(empty_db)


def test_revision_files_are_numbered_in_order() -> None:
    versions = Path(script_directory().dir) / "versions"
    names = sorted(p.name for p in versions.glob("[0-9]*.py"))
    revisions = [r.revision for r in reversed(list(script_directory().walk_revisions()))]
    assert [n.split("_", 1)[0] for n in names] == revisions


async def test_upgrading_a_database_with_data_keeps_it(empty_db: Database) -> None:
    """Each migration must work on a populated database, not only an empty one."""
    from alembic import command

    def upgrade_to(revision: str) -> Any:
        return lambda sync: command.upgrade(alembic_config(sync), revision)

    async with empty_db.engine.connect() as conn:
        await conn.run_sync(upgrade_to("0004"))
        await conn.commit()
        await conn.execute(
            text(
                "INSERT INTO users (id, email, name, is_instance_admin, is_disabled, created_at) "
                "VALUES ('u1', 'a@example.com', 'a', false, false, CURRENT_TIMESTAMP)"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO workspaces (id, slug, name, key_prefix, created_at) "
                "VALUES ('w1', 'team', 'Team', 'ENG', CURRENT_TIMESTAMP)"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO agents (id, workspace_id, name, avatar, created_at) "
                "VALUES ('a1', 'w1', 'claude', '', CURRENT_TIMESTAMP)"
            )
        )
        # Board rows: 0005 and 0010 index existing issues and comments for search.
        await conn.execute(
            text(
                "INSERT INTO statuses (id, workspace_id, name, category, position, color) "
                "VALUES ('s1', 'w1', 'Todo', 'todo', 0, '')"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO issues (id, workspace_id, number, title, description, status_id, "
                "priority, position, revision, created_at, updated_at) VALUES "
                "('i1', 'w1', 1, 'Login redirect', 'loops forever', 's1', 'high', 0, 1, "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP), "
                "('i2', 'w1', 2, 'Other', '', 's1', 'none', 1, 1, "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO comments (id, workspace_id, issue_id, body, created_at, "
                "updated_at, deleted_at) VALUES "
                "('c1', 'w1', 'i2', 'the spinner never stops', CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP, NULL), "
                "('c2', 'w1', 'i2', 'a deleted loophole', CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
        await conn.commit()
    assert await upgrade_to_head(empty_db)

    async def search(words: str) -> set[str]:
        ranked = ranked_issue_ids(empty_db.dialect, "w1", words)
        assert ranked is not None
        async with empty_db.engine.connect() as conn:
            return set((await conn.execute(select(ranked.c.issue_id))).scalars())

    assert await search("redir") == {"i1"}
    assert await search("spin nev") == {"i2"}, "comments written before the upgrade"
    assert await search("loop") == {"i1"}, "deleted comments stay out"
    async with empty_db.engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT provider, max_concurrent_tasks, runtime_pool FROM agents")
            )
        ).one()
    assert tuple(row) == ("claude", 6, "[]")
    async with empty_db.engine.connect() as conn:
        tier = (await conn.execute(text("SELECT tier FROM workspaces WHERE id = 'w1'"))).scalar()
    assert tier == "prototype", "0013 gives existing workspaces the default tier"
