"""Alembic environment.

Forgehall runs migrations itself (``forgehall.db.migrate``) and hands Alembic an open
connection through ``config.attributes["connection"]``. Developers generating a revision
with the ``alembic`` command get a connection built from the usual settings instead.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from forgehall.db.metadata import target_metadata
from forgehall.db.search import include_in_schema_comparison


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata(),
        render_as_batch=connection.dialect.name == "sqlite",
        include_name=lambda name, _type, _parent: include_in_schema_comparison(name),
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_settings() -> None:
    from forgehall.db.engine import Database
    from forgehall.db.url import resolve_database
    from forgehall.settings import load_settings

    db = Database(resolve_database(load_settings().settings))
    try:
        async with db.engine.connect() as conn:
            await conn.run_sync(_configure_and_run)
            await conn.commit()
    finally:
        await db.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run `forgehall migrate up`")

connection = context.config.attributes.get("connection")
if connection is None:
    asyncio.run(_run_with_settings())
else:
    _configure_and_run(connection)
