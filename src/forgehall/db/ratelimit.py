"""Fixed-window rate limit counters kept in the database, so every replica shares them.

One row per (key, window start); the increment is a single upsert returning the new
count, atomic on both SQLite and PostgreSQL. Old windows are pruned opportunistically.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Integer, String, delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from forgehall.db.base import Base


class RateLimitWindow(Base):
    __tablename__ = "rate_limit_windows"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


async def hit(session: AsyncSession, key: str, window: timedelta) -> tuple[int, datetime]:
    """Count one event for ``key``; return (events in the current window, window end)."""
    now = datetime.now(UTC)
    seconds = int(window.total_seconds())
    start = datetime.fromtimestamp(int(now.timestamp()) // seconds * seconds, UTC)
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    upsert = (
        insert(RateLimitWindow)
        .values(key=key, window_start=start, count=1)
        .on_conflict_do_update(
            index_elements=[RateLimitWindow.key, RateLimitWindow.window_start],
            set_={"count": RateLimitWindow.count + 1},
        )
        .returning(RateLimitWindow.count)
    )
    count = (await session.execute(upsert)).scalar_one()
    if count == 1:
        await session.execute(
            delete(RateLimitWindow).where(RateLimitWindow.window_start < start - window)
        )
    await session.commit()
    return int(count), start + window
