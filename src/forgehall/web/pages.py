"""What every page shares: the template environment, the application shell (navigation,
workspaces, unread count), security headers and friendly error pages.

Pages call the same services as the API, through the same access check
(``workspaces.access``): a page under ``/w/{workspace}/…`` declares ``MemberAccess`` like
an API route, so the route-table walk covers pages too.

Errors: a browser (``Accept: text/html``) asking for a page gets an HTML page — a 401
becomes a redirect to the sign-in page that comes back afterwards, and a 404 never says
whether another workspace's object exists. API paths keep their problem documents.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException as StarletteHTTPException

from forgehall.core.errors import ProblemError
from forgehall.identity.mail import MailDeliveryError
from forgehall.identity.models import User
from forgehall.issues.service import unread_count
from forgehall.web.markdown import render_markdown
from forgehall.workspaces.access import Access, Role
from forgehall.workspaces.service import list_workspaces

STATIC = Path(__file__).parent / "static"
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

#: Pages may load only their own scripts, styles and the live connection: an injected
#: ``<script>`` or event handler would not run even if it got past the sanitiser.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' https: data:; "
    "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


@lru_cache(maxsize=64)
def _fingerprint(path: str, mtime: float) -> str:
    return hashlib.sha256((STATIC / path).read_bytes()).hexdigest()[:10]


def asset(path: str) -> str:
    """The URL of a static file with a content fingerprint (cache-busting)."""
    file = STATIC / path
    if not file.is_file():
        return f"/static/{path}"
    return f"/static/{path}?v={_fingerprint(path, file.stat().st_mtime)}"


def ago(value: datetime | None) -> str:
    """ "3 min ago" for a timestamp (naive timestamps are UTC)."""
    if value is None:
        return ""
    when = value if value.tzinfo else value.replace(tzinfo=UTC)
    seconds = int((datetime.now(UTC) - when).total_seconds())
    if seconds < 45:
        return "just now"
    for size, unit in ((86_400 * 30, "mo"), (86_400, "d"), (3_600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return "just now"


def when(value: datetime | date | None) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M} UTC"
    return f"{value:%Y-%m-%d}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"


def initials(name: str) -> str:
    parts = [p for p in name.replace("@", " ").replace(".", " ").split() if p]
    return "".join(p[0] for p in parts[:2]).upper() or "?"


def avatar_hue(value: str) -> int:
    """A stable colour (one of twelve ``hue-N`` classes) per person or agent."""
    return int(hashlib.sha256(value.encode()).hexdigest()[:4], 16) % 12


templates.env.filters.update(markdown=render_markdown, ago=ago, when=when, duration=duration)
templates.env.globals.update(asset=asset, initials=initials, avatar_hue=avatar_hue)


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    response = templates.TemplateResponse(request, template, context, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def is_fragment(request: Request) -> bool:
    """A live refresh (or htmx) request that wants only a part of the page; a boosted
    link or form (``HX-Boosted``) gets the whole page, of which htmx keeps <main>."""
    headers = request.headers
    return headers.get("hx-request") == "true" and headers.get("hx-boosted") != "true"


def fragment(request: Request, access: Access, template: str, **context: Any) -> HTMLResponse:
    """A part of a workspace page (live refresh, htmx), with what the shell would give it."""
    return render(request, template, workspace=access.workspace, access=access, **context)


async def shell(session: AsyncSession, access: Access, section: str) -> dict[str, Any]:
    """The navigation's context: who, which workspace, the others, unread count."""
    user = access.principal.user
    return {
        "user": user,
        "access": access,
        "workspace": access.workspace,
        "is_admin": access.role >= Role.ADMIN,
        "workspaces": await list_workspaces(session, user),
        "unread": await unread_count(session, access),
        "section": section,
    }


def note_live_position(request: Request) -> None:
    """Where this page's live connection will resume (``data-last-event``), noted before
    the page reads anything: every event up to it was committed before those reads, so
    the page shows it, and every later event is replayed to the page when it connects.
    Noted at the end instead, an event committed while the page was being read (a card
    moved between the column counts and the cards) could be neither shown nor replayed.
    A dependency of every page route (``web.site``)."""
    bus = getattr(request.app.state, "events", None)
    request.state.live_position = bus.position if bus is not None else None


async def page(
    request: Request,
    session: AsyncSession,
    access: Access,
    template: str,
    section: str,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """A page of a workspace, inside the application shell."""
    return render(
        request,
        template,
        status,
        **(await shell(session, access, section)),
        last_event_id=getattr(request.state, "live_position", None),
        **context,
    )


async def discard(session: AsyncSession, *keep: object) -> None:
    """Undo what a failed form changed, then reload the objects the page still shows
    (a rollback expires them, and an expired attribute cannot load lazily here)."""
    await session.rollback()
    for obj in keep:
        await session.refresh(obj)


def user_shell(user: User, section: str) -> dict[str, Any]:
    """The navigation's context outside a workspace (home, personal settings, admin)."""
    return {"user": user, "workspace": None, "section": section, "unread": 0}


def workspace_url(access: Access) -> str:
    """Where a workspace's pages live: ``/w/<slug>``."""
    return f"/w/{access.workspace.slug}"


# --- errors as pages ------------------------------------------------------------------------

_HEADINGS = {
    400: "That did not work",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed",
    409: "Changed meanwhile",
    413: "Too large",
    422: "That did not work",
    429: "Slow down",
    500: "Something went wrong",
    503: "Unavailable",
}
NOT_FOUND_TEXT = "There is nothing here, or you do not have access to it."


def wants_page(request: Request) -> bool:
    path = request.url.path
    if path.startswith(("/api/", "/static/", "/health", "/readyz", "/healthz", "/metrics")):
        return False
    return "text/html" in request.headers.get("accept", "")


def error_page(request: Request, status: int, detail: str) -> Response:
    if status == 401:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?{urlencode({'next': here})}", status_code=303)
    message = NOT_FOUND_TEXT if status == 404 else detail
    return render(
        request,
        "message.html",
        status=status,
        heading=_HEADINGS.get(status, "Error"),
        message=message,
    )


Handler = Callable[[Request, Exception], Awaitable[Response]]


def _as_page(original: Handler) -> Handler:
    async def handler(request: Request, exc: Exception) -> Response:
        if not wants_page(request):
            return await original(request, exc)
        if isinstance(exc, ProblemError):
            return error_page(request, exc.status, exc.detail)
        if isinstance(exc, StarletteHTTPException):
            return error_page(request, exc.status_code, str(exc.detail))
        if isinstance(exc, RequestValidationError):
            return error_page(request, 422, "The form or address is not valid.")
        if isinstance(exc, MailDeliveryError):
            return error_page(
                request, 503, f"Could not send the email ({exc}). Try again in a minute."
            )
        return await original(request, exc)

    return handler


def install_page_errors(app: FastAPI) -> None:
    """Wrap the API's error handlers so browsers get pages (call after installing them)."""
    for kind in (ProblemError, StarletteHTTPException, RequestValidationError, MailDeliveryError):
        original = app.exception_handlers[kind]
        app.exception_handlers[kind] = _as_page(original)  # type: ignore[arg-type]
