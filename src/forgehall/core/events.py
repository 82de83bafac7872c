"""Domain events: stored, relayed between replicas, streamed to subscribers.

Services collect events in an outbox while they work and publish them once their
transaction has committed, so nobody sees a change that was rolled back. Publishing
writes the events to ``domain_events`` (a global, ordered id per event) and wakes every
replica: on PostgreSQL with ``NOTIFY`` (payload: the newest id, never a document), on
SQLite the single process wakes itself. Each replica's pump reads rows newer than the
last it saw and hands them to the local subscribers of their workspace — so a client on
replica A sees a change made through replica B, a missed notification is caught by the
poll fallback, and a reconnecting client can resume from its last id on any replica.

Ids are handed out at insert but become visible at commit, so on PostgreSQL two
publishers can commit out of id order: a pump that saw 11 before 10 committed must not
skip 10. It keeps ``_last_id`` as the point below which every id was handled, delivers
what it finds above it (remembering what it delivered), and treats an id still missing
after ``GAP_SECONDS`` as a rolled-back insert (sequences have holes).

Subscribers get a bounded queue each; one that falls behind is dropped (marked
``overflowed``), never allowed to slow the publisher. Rows older than the retention are
pruned by the ``event-retention`` background service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import BigInteger, Integer, String, Text, delete, func, insert, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from forgehall.db.base import Base
from forgehall.db.dialect import listen, notify
from forgehall.db.engine import Database
from forgehall.db.types import utcnow

log = structlog.get_logger("forgehall.events")

CHANNEL = "forgehall_events"
SUBSCRIBER_QUEUE = 1000
POLL_SECONDS = 1.0
BATCH = 500
GAP_SECONDS = 10.0
LOCAL_DELIVERY_MAX = 100  # events of one commit handed to local subscribers directly
RETENTION = timedelta(hours=1)


class StoredEvent(Base):
    __tablename__ = "domain_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    workspace_id: Mapped[str] = mapped_column(String(32), index=True)
    kind: Mapped[str] = mapped_column(String(60))
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


@dataclass(frozen=True)
class DomainEvent:
    kind: str
    workspace_id: str
    data: dict[str, Any] = field(default_factory=dict)
    id: int = 0
    at: str = ""

    def as_message(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.kind,
            "workspace_id": self.workspace_id,
            "data": self.data,
            "at": self.at,
        }


def _from_row(row: StoredEvent) -> DomainEvent:
    return DomainEvent(
        kind=row.kind,
        workspace_id=row.workspace_id,
        data=json.loads(row.data),
        id=row.id,
        at=row.created_at.isoformat(),
    )


def stage(session: Session, events: Sequence[DomainEvent]) -> list[DomainEvent]:
    """Write ``events`` in ``session``'s open transaction, so they commit (or roll back)
    with the change that caused them; with PostgreSQL, NOTIFY goes out at that commit.
    Synchronous: called from the session's ``before_commit`` hook. Returns the events as
    stored (ids included): once the commit is done, the publisher hands them to this
    process's subscribers (:meth:`EventBus.deliver_committed`)."""
    if not events:
        return []
    rows = _rows(events)
    result = session.execute(
        insert(StoredEvent).returning(StoredEvent.id, sort_by_parameter_order=True), rows
    )
    ids = list(result.scalars())
    if session.get_bind().dialect.name != "sqlite":
        session.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": CHANNEL, "payload": str(max(ids))},
        )
    return _as_stored(rows, ids)


def _rows(events: Sequence[DomainEvent]) -> list[dict[str, Any]]:
    moment = utcnow()
    return [
        {
            "workspace_id": e.workspace_id,
            "kind": e.kind,
            "data": json.dumps(e.data, default=str),
            "created_at": moment,
        }
        for e in events
    ]


def _as_stored(rows: Sequence[dict[str, Any]], ids: Sequence[int]) -> list[DomainEvent]:
    """The events of ``rows`` exactly as a pump reading them back would deliver them."""
    return [
        DomainEvent(
            kind=row["kind"],
            workspace_id=row["workspace_id"],
            data=json.loads(row["data"]),
            id=event_id,
            at=row["created_at"].isoformat(),
        )
        for row, event_id in zip(rows, ids, strict=True)
    ]


class Subscription:
    def __init__(self, bus: EventBus, workspace_id: str) -> None:
        self.bus = bus
        self.workspace_id = workspace_id
        self.queue: asyncio.Queue[DomainEvent] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self.overflowed = asyncio.Event()

    def close(self) -> None:
        self.bus._subscribers.get(self.workspace_id, set()).discard(self)


class EventBus:
    """One per process; ``start`` it in the app's lifespan."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._subscribers: dict[str, set[Subscription]] = {}
        self._wake = asyncio.Event()
        self._last_id = 0  # every id up to this one was delivered or given up
        self._delivered: set[int] = set()  # ids above _last_id already delivered
        self._gaps: dict[int, float] = {}  # missing ids above _last_id: first noticed at
        self._tasks: list[asyncio.Task[None]] = []
        self._stop_listening: Callable[[], Awaitable[None]] | None = None
        self._stopping = False

    # --- publishing -----------------------------------------------------------------
    async def publish(self, events: list[DomainEvent]) -> None:
        if not events:
            return
        rows = _rows(events)
        async with self.db.session() as session:
            result = await session.execute(
                insert(StoredEvent).returning(StoredEvent.id, sort_by_parameter_order=True),
                rows,
            )
            ids = list(result.scalars())
            await notify(session, CHANNEL, str(max(ids)))
            await session.commit()
        self.deliver_committed(_as_stored(rows, ids))

    def deliver_committed(self, events: Sequence[DomainEvent]) -> None:
        """``events`` were just committed by this process (as :func:`stage` or
        :meth:`publish` returned them): hand them to the local subscribers now instead of
        after the pump has read them back — a long-poll claim woken by a task queued here
        starts a database round trip sooner. The pump skips them (they are marked
        delivered), still delivers everything else, and is woken to do so. A large batch
        is left to the pump, which hands it over in slices a reader can keep up with."""
        if len(events) > LOCAL_DELIVERY_MAX:
            events = ()
        for event in events:
            if event.id > self._last_id and event.id not in self._delivered:
                self._delivered.add(event.id)
                self._dispatch(event)
        self._wake.set()

    # --- consuming ------------------------------------------------------------------
    @property
    def position(self) -> int:
        """Every event up to this id has been delivered here: a page rendered now can
        resume its live connection from it (``last_event_id``) and miss nothing."""
        return self._last_id

    def subscribe(self, workspace_id: str) -> Subscription:
        subscription = Subscription(self, workspace_id)
        self._subscribers.setdefault(workspace_id, set()).add(subscription)
        return subscription

    async def since(self, workspace_id: str, last_id: int) -> list[DomainEvent] | None:
        """A workspace's events after ``last_id``; None when that id is older than what is
        retained (the client must reload its state)."""
        async with self.db.read_session() as session:
            oldest = await session.scalar(select(func.min(StoredEvent.id)))
            if oldest is not None and last_id < oldest - 1:
                return None
            rows = await session.execute(
                select(StoredEvent)
                .where(StoredEvent.workspace_id == workspace_id, StoredEvent.id > last_id)
                .order_by(StoredEvent.id)
                .limit(BATCH)
            )
            return [_from_row(r) for r in rows.scalars()]

    async def start(self) -> None:
        async with self.db.read_session() as session:
            self._last_id = int(await session.scalar(select(func.max(StoredEvent.id))) or 0)
        if not self.db.is_sqlite:
            try:
                self._stop_listening = await listen(self.db, CHANNEL, self._wake.set)
            except Exception as exc:  # polling still delivers, only later
                log.warning("events.listen_failed", error=f"{type(exc).__name__}: {exc}")
        self._tasks.append(asyncio.create_task(self._pump(), name="event-pump"))

    async def stop(self) -> None:
        # Let the pump finish the query it is in (cancelling mid-query can leave a
        # pooled connection busy), then cancel what is left.
        self._stopping = True
        self._wake.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=5)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._tasks.clear()
        if self._stop_listening is not None:
            await self._stop_listening()
            self._stop_listening = None

    async def _pump(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self._deliver_new()
            except Exception as exc:
                log.warning("events.pump_failed", error=f"{type(exc).__name__}: {exc}")

    async def _deliver_new(self) -> None:
        cursor = self._last_id
        while True:
            async with self.db.read_session() as session:
                rows = list(
                    (
                        await session.execute(
                            select(StoredEvent)
                            .where(StoredEvent.id > cursor)
                            .order_by(StoredEvent.id)
                            .limit(BATCH)
                        )
                    ).scalars()
                )
            for row in rows:
                if row.id not in self._delivered:
                    self._delivered.add(row.id)
                    self._dispatch(_from_row(row))
            if rows:
                cursor = rows[-1].id
            if len(rows) < BATCH:
                break
        self._advance()

    def _advance(self) -> None:
        """Move ``_last_id`` over what was delivered; wait ``GAP_SECONDS`` for a hole."""
        moment = asyncio.get_running_loop().time()
        if self._delivered:
            for missing in range(self._last_id + 1, max(self._delivered)):
                if missing not in self._delivered:
                    self._gaps.setdefault(missing, moment)
        while True:
            following = self._last_id + 1
            if following in self._delivered:
                self._delivered.discard(following)
            elif moment - self._gaps.get(following, moment) >= GAP_SECONDS:
                log.info("events.gap_given_up", id=following)
            else:
                break
            self._gaps.pop(following, None)
            self._last_id = following

    def _dispatch(self, event: DomainEvent) -> None:
        for subscription in list(self._subscribers.get(event.workspace_id, ())):
            try:
                subscription.queue.put_nowait(event)
            except asyncio.QueueFull:
                subscription.overflowed.set()
                subscription.close()
                log.warning("events.subscriber_dropped", workspace_id=event.workspace_id)


async def prune_events(db: Database, older_than: timedelta = RETENTION) -> int:
    async with db.session() as session:
        result = await session.execute(
            delete(StoredEvent).where(StoredEvent.created_at < datetime.now(UTC) - older_than)
        )
        await session.commit()
        return int(result.rowcount)  # type: ignore[attr-defined]
