"""Dialect-specific SQL: advisory locks and the like.

Callers pass a connection and get the same behaviour on both databases: on SQLite there
is a single process writing, so a lock is always granted.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession


def advisory_lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock`` derived from a name."""
    digest = hashlib.sha256(f"forgehall:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def is_sqlite(conn: AsyncConnection) -> bool:
    return conn.dialect.name == "sqlite"


async def try_advisory_lock(conn: AsyncConnection, name: str) -> bool:
    """Take a session-level advisory lock without waiting; True when held.

    The lock lives as long as the connection (or until :func:`advisory_unlock`).
    """
    if is_sqlite(conn):
        return True
    result = await conn.execute(
        text("SELECT pg_try_advisory_lock(:key)"), {"key": advisory_lock_key(name)}
    )
    held = bool(result.scalar_one())
    await conn.commit()
    return held


async def advisory_lock(conn: AsyncConnection, name: str) -> None:
    """Wait for a session-level advisory lock."""
    if is_sqlite(conn):
        return
    await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": advisory_lock_key(name)})
    await conn.commit()


async def advisory_unlock(conn: AsyncConnection, name: str) -> None:
    if is_sqlite(conn):
        return
    await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": advisory_lock_key(name)})
    await conn.commit()


async def transaction_lock(session: AsyncSession, name: str) -> None:
    """Serialise a critical section with other replicas until the transaction ends.

    PostgreSQL: ``pg_advisory_xact_lock``. SQLite: the single writer already serialises
    write transactions (they begin IMMEDIATE), so nothing to do.
    """
    if session.get_bind().dialect.name == "sqlite":
        return
    await session.execute(
        text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_lock_key(name)}
    )
