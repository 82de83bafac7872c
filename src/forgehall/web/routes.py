"""Server-rendered pages: sign-in by email code and the CLI authorization prompt.

Forms post back to the server (no JavaScript needed); errors are shown next to the
field with what the user typed kept. ``next`` is only ever a relative path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from forgehall.core.deps import SessionDep, SettingsDep
from forgehall.core.errors import ProblemError
from forgehall.identity import service
from forgehall.identity.auth import MailerDep, OptionalPrincipal, client_ip
from forgehall.identity.routes import set_session_cookie

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(include_in_schema=False)


def safe_next(value: str | None) -> str:
    """A relative path to go to after sign-in; anything else becomes ``/``."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, template, context, status_code=status)


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    return render(request, "login.html", step="email", next=safe_next(next), email="")


@router.post("/login", response_class=HTMLResponse)
async def login_send(
    request: Request,
    email: Annotated[str, Form()],
    session: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    next: Annotated[str, Form()] = "/",
) -> HTMLResponse:
    try:
        await service.send_login_code(session, settings, mailer, email, client_ip(request))
    except ProblemError as exc:
        if exc.status != 429 or "moments ago" not in exc.detail:
            return render(
                request,
                "login.html",
                status=exc.status,
                step="email",
                next=safe_next(next),
                email=email,
                error=exc.detail,
            )
    return render(
        request,
        "login.html",
        step="code",
        next=safe_next(next),
        email=service.normalize_email(email),
    )


@router.post("/login/verify", response_model=None)
async def login_verify(
    request: Request,
    email: Annotated[str, Form()],
    code: Annotated[str, Form()],
    session: SessionDep,
    settings: SettingsDep,
    next: Annotated[str, Form()] = "/",
) -> Response:
    try:
        user = await service.verify_login_code(session, settings, email, code, client_ip(request))
    except ProblemError as exc:
        return render(
            request,
            "login.html",
            status=exc.status,
            step="code",
            next=safe_next(next),
            email=email,
            error=exc.detail,
        )
    issued = await service.create_session(
        session,
        settings,
        user,
        user_agent=request.headers.get("user-agent", ""),
        ip=client_ip(request),
        method="email",
    )
    response = RedirectResponse(safe_next(next), status_code=303)
    set_session_cookie(response, settings, issued.jwt)
    return response


@router.get("/auth/cli/authorize", response_model=None)
async def cli_authorize_page(
    request: Request,
    callback: str,
    state: str,
    principal: OptionalPrincipal,
    name: str = "this machine",
) -> Response:
    if not service.is_loopback_callback(callback):
        return render(
            request,
            "message.html",
            status=400,
            heading="Not a CLI login",
            message="The callback is not the Forgehall CLI on this machine.",
        )
    if principal is None or principal.kind != "session":
        here = (
            f"/auth/cli/authorize?{urlencode({'callback': callback, 'state': state, 'name': name})}"
        )
        return RedirectResponse(f"/login?{urlencode({'next': here})}", status_code=303)
    return render(
        request,
        "cli_authorize.html",
        callback=callback,
        state=state,
        name=name[:100],
        email=principal.user.email,
    )


@router.post("/auth/cli/authorize", response_model=None)
async def cli_authorize(
    request: Request,
    callback: Annotated[str, Form()],
    state: Annotated[str, Form()],
    principal: OptionalPrincipal,
    session: SessionDep,
) -> Response:
    if not service.is_loopback_callback(callback):
        return render(
            request,
            "message.html",
            status=400,
            heading="Not a CLI login",
            message="The callback is not the Forgehall CLI on this machine.",
        )
    if principal is None or principal.kind != "session":
        return RedirectResponse("/login", status_code=303)
    code = await service.create_cli_login_code(session, principal.user)
    separator = "&" if "?" in callback else "?"
    return RedirectResponse(
        f"{callback}{separator}{urlencode({'code': code, 'state': state})}", status_code=303
    )
