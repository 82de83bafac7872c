"""Engines and sessions.

SQLite (embedded): WAL mode, and every write goes through one connection — the writer
engine has a pool of exactly one connection whose transactions start with
``BEGIN IMMEDIATE``, so concurrent requests queue in the pool instead of failing with
"database is locked". Reads that need no write use :meth:`Database.read_session`, served
by a small pool of read-only connections that run beside the writer (WAL allows it).

PostgreSQL: one pooled engine for both, sized by the resolved pool settings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, PoolResetState

from forgehall.db.url import DatabaseConfig

SQLITE_READERS = 4
SQLITE_MMAP_BYTES = 1 << 30
"""Read the database through a memory map of up to this size (the OS page cache, shared
by every connection) rather than each connection's small page cache."""
PING_TIMEOUT_SECONDS = 2.0
PING_AFTER_IDLE_SECONDS = 5.0
"""A pooled PostgreSQL connection idle for longer is pinged before use (see _ping_after_idle)."""
_IDLE_SINCE = "forgehall_idle_since"


class Database:
    """The process's database handle: engines, session factories, health."""

    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config
        if config.dialect == "sqlite":
            assert config.sqlite_path is not None
            config.sqlite_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.engine = _sqlite_engine(config, writer=True)
            self.read_engine = _sqlite_engine(config, writer=False)
        else:
            self.engine = create_async_engine(
                config.url,
                poolclass=AsyncAdaptedQueuePool,
                pool_size=max(config.min_conns, 1),
                max_overflow=max(config.max_conns - max(config.min_conns, 1), 0),
                pool_recycle=1800,
                pool_timeout=30,
                connect_args={
                    "timeout": 5,
                    "command_timeout": 60,
                    "server_settings": {"application_name": "forgehall"},
                },
            )
            self.read_engine = self.engine
            _ping_after_idle(self.engine)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(self.read_engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.config.dialect

    @property
    def is_sqlite(self) -> bool:
        return self.config.dialect == "sqlite"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session that may write; the caller commits. Rolled back on error."""
        async with self._sessions() as session:
            yield session

    @asynccontextmanager
    async def read_session(self) -> AsyncIterator[AsyncSession]:
        """A session for reads only (refused writes on SQLite)."""
        async with self._read_sessions() as session:
            yield session

    async def ping(self, timeout: float = PING_TIMEOUT_SECONDS) -> None:
        """Run ``SELECT 1``; raise on failure or when it takes longer than ``timeout``."""

        async def _ping() -> None:
            async with self.read_engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        await asyncio.wait_for(_ping(), timeout)

    async def warm(self) -> None:
        """Open the configured minimum of pooled connections (PostgreSQL only)."""
        if self.is_sqlite or self.config.min_conns <= 1:
            return
        conns = [await self.engine.connect() for _ in range(self.config.min_conns)]
        for conn in conns:
            await conn.close()

    def pool_status(self) -> dict[str, int]:
        """Checked-out and idle connections of the writer pool, for metrics."""
        pool: Any = self.engine.pool
        if isinstance(pool, AsyncAdaptedQueuePool):
            return {
                "in_use": pool.checkedout(),
                "idle": pool.checkedin(),
                "max": self.config.max_conns,
            }
        return {"in_use": 0, "idle": 0, "max": self.config.max_conns}

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()


def _ping_after_idle(engine: AsyncEngine) -> None:
    """Ping a pooled connection on checkout only when it sat idle for more than
    :data:`PING_AFTER_IDLE_SECONDS` (a dead one is replaced before the caller sees it).

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout: a round trip per transaction,
    a quarter of a one-statement write. A connection in steady use has just proved
    itself; one that sat idle is where a restarted or failed-over server, or a firewall
    that dropped the idle socket, shows. A server that goes away between two busy
    transactions fails the transaction that finds out, and SQLAlchemy then invalidates
    the pool's older connections (its disconnect handling), as with ``pool_pre_ping``
    for anything already in flight."""
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "checkin")
    def _idle_from(_dbapi_conn: DBAPIConnection | None, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(sync_engine, "checkout")
    def _ping_if_idle(
        dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry, _proxy: Any
    ) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since <= PING_AFTER_IDLE_SECONDS:
            return
        try:
            alive = sync_engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # any failure: the pool replaces the connection
            raise DisconnectionError(f"idle connection failed its ping: {exc!r}") from exc
        if not alive:
            raise DisconnectionError("idle connection failed its ping")


def _sqlite_engine(config: DatabaseConfig, *, writer: bool) -> AsyncEngine:
    engine = create_async_engine(
        config.url,
        poolclass=AsyncAdaptedQueuePool,
        pool_size=1 if writer else SQLITE_READERS,
        max_overflow=0,
        pool_timeout=60,
        connect_args={"check_same_thread": False, "timeout": 30},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the driver so BEGIN is ours to emit.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        if writer:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
        if not writer:
            cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    @event.listens_for(engine.sync_engine, "reset")
    def _on_reset(dbapi_conn: Any, _record: ConnectionPoolEntry, state: PoolResetState) -> None:
        # SQLAlchemy takes a failed COMMIT for the end of its transaction and skips the
        # rollback at check-in, but SQLite keeps that transaction open (a deferred foreign
        # key refused, SQLITE_BUSY): every later BEGIN on the writer would then fail with
        # "cannot start a transaction within a transaction". End it here.
        if state.transaction_was_reset and dbapi_conn.driver_connection.in_transaction:
            dbapi_conn.rollback()

    return engine
