"""Apply and inspect schema migrations (Alembic) from inside the process.

Invariants:
- On PostgreSQL every upgrade or downgrade runs under one advisory lock, so replicas
  starting together migrate the schema exactly once; the others wait, then find the
  schema current.
- A database whose revision this code does not know (migrated by a newer release) is
  refused with a clear error instead of being "upgraded" into an unknown state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from forgehall.db.dialect import advisory_lock, advisory_unlock
from forgehall.db.engine import Database

log = structlog.get_logger("forgehall.db.migrate")
MIGRATION_LOCK = "schema-migrations"
SCRIPT_LOCATION = Path(__file__).parent / "migrations"


class SchemaAheadError(RuntimeError):
    """The database was migrated by a newer Forgehall than this one."""


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    heads = script_directory().get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migrations have {len(heads)} heads; expected exactly one")
    return heads[0]


@dataclass(frozen=True)
class MigrationStatus:
    current: str | None
    head: str
    pending: list[str]

    @property
    def is_current(self) -> bool:
        return self.current == self.head


def _current_revision(conn: Connection) -> str | None:
    heads = MigrationContext.configure(conn).get_current_heads()
    return heads[0] if heads else None


async def current_revision(conn: AsyncConnection) -> str | None:
    return await conn.run_sync(_current_revision)


def _pending(current: str | None) -> list[str]:
    scripts = script_directory()
    if current is not None and scripts.get_revision(current) is None:
        raise SchemaAheadError(current)
    revisions = [rev.revision for rev in scripts.iterate_revisions("heads", current)]
    return list(reversed(revisions))


def _check_known(current: str | None) -> None:
    try:
        _pending(current)
    except Exception as exc:
        raise SchemaAheadError(
            f"the database schema is at revision {current}, which this version of Forgehall "
            "does not know: it was migrated by a newer release. Run that release (or newer), "
            "or restore a backup taken before the upgrade"
        ) from exc


async def migration_status(db: Database) -> MigrationStatus:
    async with db.read_engine.connect() as conn:
        current = await current_revision(conn)
    _check_known(current)
    return MigrationStatus(current=current, head=head_revision(), pending=_pending(current))


async def upgrade_to_head(db: Database) -> list[str]:
    """Apply pending migrations; return the revisions applied by this call."""
    async with db.engine.connect() as conn:
        await advisory_lock(conn, MIGRATION_LOCK)
        try:
            before = await current_revision(conn)
            await conn.commit()
            _check_known(before)
            pending = _pending(before)
            if not pending:
                log.info("migrate.up_to_date", revision=before)
                return []
            await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "head"))
            await conn.commit()
            log.info("migrate.applied", revisions=pending, head=pending[-1], dialect=db.dialect)
            return pending
        finally:
            await advisory_unlock(conn, MIGRATION_LOCK)


async def downgrade(db: Database, target: str) -> str | None:
    """Downgrade to ``target`` (a revision, ``-1`` or ``base``); return the new revision."""
    async with db.engine.connect() as conn:
        await advisory_lock(conn, MIGRATION_LOCK)
        try:
            await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), target))
            await conn.commit()
            after = await current_revision(conn)
            await conn.commit()
            log.info("migrate.downgraded", revision=after, target=target)
            return after
        finally:
            await advisory_unlock(conn, MIGRATION_LOCK)
