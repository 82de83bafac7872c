"""The in-process event bus: domain events published after commit.

Services collect events in an outbox while they work and publish them once their
transaction has committed, so a subscriber never sees a change that was rolled back.
Subscribers get a bounded queue each; one that falls behind is dropped (its queue is
closed with an overflow marker) rather than slowing the publisher. A short history per
workspace lets a client resume from the last event id it saw.

Relaying between replicas (PostgreSQL LISTEN/NOTIFY) plugs in behind ``publish``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

HISTORY_PER_WORKSPACE = 500
SUBSCRIBER_QUEUE = 1000


@dataclass(frozen=True)
class DomainEvent:
    kind: str
    workspace_id: str
    data: dict[str, Any] = field(default_factory=dict)
    id: int = 0
    at: str = ""


class Subscription:
    def __init__(self, bus: EventBus, workspace_id: str) -> None:
        self.bus = bus
        self.workspace_id = workspace_id
        self.queue: asyncio.Queue[DomainEvent | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self.overflowed = False

    def close(self) -> None:
        self.bus._subscribers.get(self.workspace_id, set()).discard(self)


class EventBus:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._subscribers: dict[str, set[Subscription]] = {}
        self._history: dict[str, deque[DomainEvent]] = {}

    async def publish(self, event: DomainEvent) -> DomainEvent:
        stamped = DomainEvent(
            kind=event.kind,
            workspace_id=event.workspace_id,
            data=event.data,
            id=next(self._ids),
            at=datetime.now(UTC).isoformat(),
        )
        history = self._history.setdefault(event.workspace_id, deque(maxlen=HISTORY_PER_WORKSPACE))
        history.append(stamped)
        for subscription in list(self._subscribers.get(event.workspace_id, ())):
            try:
                subscription.queue.put_nowait(stamped)
            except asyncio.QueueFull:
                subscription.overflowed = True
                subscription.close()
        return stamped

    def subscribe(self, workspace_id: str) -> Subscription:
        subscription = Subscription(self, workspace_id)
        self._subscribers.setdefault(workspace_id, set()).add(subscription)
        return subscription

    def since(self, workspace_id: str, last_id: int) -> list[DomainEvent] | None:
        """Events after ``last_id``, or None when that id is older than the history."""
        history = self._history.get(workspace_id, deque())
        if history and last_id < history[0].id - 1:
            return None
        return [e for e in history if e.id > last_id]
