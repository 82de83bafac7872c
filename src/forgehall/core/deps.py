"""FastAPI dependency aliases shared by every domain's routes.

``SessionDep`` may write (on SQLite it waits for the single writer); ``ReadSessionDep``
is for handlers that only read and so never queue behind writes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.core.events import EventBus
from forgehall.db.engine import Database
from forgehall.settings import Settings


def get_database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


DatabaseDep = Annotated[Database, Depends(get_database)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(db: DatabaseDep) -> AsyncIterator[AsyncSession]:
    async with db.session() as session:
        yield session


async def get_read_session(db: DatabaseDep) -> AsyncIterator[AsyncSession]:
    async with db.read_session() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session)]


def get_event_bus(request: Request) -> EventBus:
    bus: EventBus = request.app.state.events
    return bus


EventBusDep = Annotated[EventBus, Depends(get_event_bus)]
