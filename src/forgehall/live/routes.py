"""``GET /api/v1/ws?workspace=<slug>[&last_event_id=N]`` — a workspace's events, live.

Before the upgrade is accepted:
- an ``Origin`` header (every browser sends one) must be one of the allowed origins
  (``FORGEHALL_CORS_ALLOWED_ORIGINS``); a cookie-authenticated upgrade must carry one;
- the caller is authenticated by ``Authorization: Bearer`` or the session cookie;
- the workspace goes through the same access check as every HTTP route
  (``workspaces.access.resolve_access``), so a workspace you cannot see is refused.
Refusals happen before the upgrade, which the client sees as HTTP 403.

Frames are JSON: ``{"id", "type", "workspace_id", "data", "at"}``. With
``last_event_id`` the missed events are sent first; when they are older than what the
server keeps, a ``{"type": "resync"}`` frame tells the client to reload. A client too
slow to keep up is disconnected with close code 4008 and should reconnect and resync.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from forgehall.core.errors import ProblemError
from forgehall.core.events import EventBus, Subscription
from forgehall.db.engine import Database
from forgehall.identity.auth import SESSION_COOKIE, Principal, origin_of
from forgehall.identity.service import authenticate_session, authenticate_token
from forgehall.settings import Settings
from forgehall.workspaces.access import resolve_access

log = structlog.get_logger("forgehall.live")
router = APIRouter()
TOO_SLOW = 4008
POLICY = 1008


async def _principal(websocket: WebSocket, db: Database, settings: Settings) -> Principal | None:
    header = websocket.headers.get("authorization", "")
    async with db.session() as session:
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer":
                return None
            try:
                user, token = await authenticate_token(session, value.strip())
            except ProblemError:
                return None
            return Principal(user=user, kind=token.kind, token=token)  # type: ignore[arg-type]
        cookie = websocket.cookies.get(SESSION_COOKIE)
        if cookie:
            if not websocket.headers.get("origin"):
                return None  # a browser always sends Origin; its absence is suspicious
            found = await authenticate_session(session, settings, cookie)
            if found is not None:
                return Principal(user=found[0], kind="session", session_id=found[1].id)
    return None


@router.websocket("/api/v1/ws")
async def live_events(
    websocket: WebSocket, workspace: str, last_event_id: int | None = None
) -> None:
    settings: Settings = websocket.app.state.settings
    db: Database = websocket.app.state.db
    bus: EventBus = websocket.app.state.events
    origin = websocket.headers.get("origin")
    if origin is not None and origin_of(origin) not in settings.allowed_origins:
        log.info("ws.refused", reason="origin", origin=origin)
        await websocket.close(code=POLICY)
        return
    principal = await _principal(websocket, db, settings)
    if principal is None:
        log.info("ws.refused", reason="unauthenticated")
        await websocket.close(code=POLICY)
        return
    try:
        async with db.session() as session:
            access = await resolve_access(workspace, principal, session)
    except ProblemError:
        log.info("ws.refused", reason="workspace")
        await websocket.close(code=POLICY)
        return
    subscription = bus.subscribe(access.workspace.id)
    await websocket.accept()
    log.info("ws.connected", workspace_id=access.workspace.id, user_id=principal.user.id)
    sent = last_event_id or 0
    try:
        if last_event_id is not None:
            missed = await bus.since(access.workspace.id, last_event_id)
            if missed is None:
                await websocket.send_json({"type": "resync"})
            else:
                for event in missed:
                    await websocket.send_json(event.as_message())
                    sent = max(sent, event.id)
        await _stream(websocket, subscription, sent)
    except WebSocketDisconnect:
        pass
    finally:
        subscription.close()
        log.info("ws.disconnected", workspace_id=access.workspace.id)


async def _stream(websocket: WebSocket, subscription: Subscription, sent: int) -> None:
    closed = asyncio.ensure_future(_wait_for_close(websocket))
    overflow = asyncio.ensure_future(subscription.overflowed.wait())
    try:
        while True:
            getter = asyncio.ensure_future(subscription.queue.get())
            done, _ = await asyncio.wait(
                {getter, closed, overflow}, return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
            if closed in done:
                return
            if overflow in done:
                await websocket.close(code=TOO_SLOW, reason="too slow; reconnect and resync")
                return
            event = getter.result()
            if event.id > sent:  # already sent while catching up
                await websocket.send_json(event.as_message())
                sent = event.id
    finally:
        for task in (closed, overflow):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
                await task


async def _wait_for_close(websocket: WebSocket) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
