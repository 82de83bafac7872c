"""Dialect-specific SQL: advisory locks and the like.

Callers pass a connection and get the same behaviour on both databases: on SQLite there
is a single process writing, so a lock is always granted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog
from sqlalchemy import String, Table, Text, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

if TYPE_CHECKING:
    from forgehall.db.engine import Database

log = structlog.get_logger("forgehall.db")


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


async def notify(session: AsyncSession, channel: str, payload: str) -> None:
    """Send ``NOTIFY`` when the transaction commits (PostgreSQL); nothing on SQLite."""
    if session.get_bind().dialect.name == "sqlite":
        return
    await session.execute(
        text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload}
    )


async def listen(
    db: Database, channel: str, on_notify: Callable[[], None]
) -> Callable[[], Awaitable[None]]:
    """LISTEN on a dedicated connection (never through a transaction-pooling proxy's
    pooled session); returns a coroutine function that stops listening.

    A lost connection is replaced in the background: waking is only an accelerator, the
    caller also polls.
    """
    dsn = db.config.url.set(drivername="postgresql").render_as_string(hide_password=False)
    stopped = asyncio.Event()
    holder: dict[str, Any] = {}

    def _callback(*_args: Any) -> None:
        on_notify()

    async def _connect() -> None:
        connection = await asyncpg.connect(dsn, timeout=5)
        await connection.add_listener(channel, _callback)
        holder["connection"] = connection

    async def _watch() -> None:
        while not stopped.is_set():
            await asyncio.sleep(2)
            connection = holder.get("connection")
            if connection is None or connection.is_closed():
                try:
                    await _connect()
                    on_notify()  # catch up on anything sent while we were away
                except Exception as exc:
                    log.warning("db.listen_reconnect_failed", error=f"{type(exc).__name__}")

    await _connect()
    watcher = asyncio.create_task(_watch(), name=f"listen:{channel}")

    async def stop() -> None:
        stopped.set()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        connection = holder.get("connection")
        if connection is not None and not connection.is_closed():
            await connection.close()

    return stop


def upsert_insert(session: AsyncSession, table: Table | type[Any]) -> Any:
    """An ``INSERT`` that supports ``on_conflict_do_nothing`` / ``on_conflict_do_update``
    (same API on both dialects). ``table`` may be a mapped class: ``RETURNING`` it then
    gives ORM objects."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


class random_hex_token(FunctionElement[str]):
    """32 random hex digits from the database's strong random source, made
    in the statement itself — so an ``UPDATE … RETURNING`` over rows it has not seen
    yet can give each one its own token. PostgreSQL: ``gen_random_uuid()`` (122 random
    bits from ``pg_strong_random``) without its dashes; SQLite: ``randomblob(16)``."""

    type = String()
    inherit_cache = True


@compiles(random_hex_token, "postgresql")
def _random_hex_token_pg(element: random_hex_token, compiler: Any, **kw: Any) -> str:
    return "replace(gen_random_uuid()::text, '-', '')"


@compiles(random_hex_token, "sqlite")
def _random_hex_token_sqlite(element: random_hex_token, compiler: Any, **kw: Any) -> str:
    return "lower(hex(randomblob(16)))"


class json_array_agg(FunctionElement[str]):
    """An aggregate: the values of one column over the group as a JSON array (text), in no
    particular order; ``[]`` for no rows when used as a scalar subquery on SQLite, NULL on
    PostgreSQL (read both with :func:`json_list`). Lets one statement carry a short list
    (an issue's label names) beside its row instead of a second query."""

    type = Text()
    inherit_cache = True


@compiles(json_array_agg, "postgresql")
def _json_array_agg_pg(element: json_array_agg, compiler: Any, **kw: Any) -> str:
    return f"json_agg({compiler.process(element.clauses, **kw)})::text"


@compiles(json_array_agg, "sqlite")
def _json_array_agg_sqlite(element: json_array_agg, compiler: Any, **kw: Any) -> str:
    return f"json_group_array({compiler.process(element.clauses, **kw)})"


def json_list(value: str | None) -> list[Any]:
    """What :class:`json_array_agg` gave, as a list (empty for no rows)."""
    return list(json.loads(value)) if value else []
