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
from forgehall.identity.auth import (
    MailerDep,
    OptionalPrincipal,
    client_ip,
    end_session,
    start_session,
)

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
    response = RedirectResponse(safe_next(next), status_code=303)
    await start_session(request, response, session, settings, user, method="email")
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


@router.get("/", response_model=None)
async def home(request: Request, principal: OptionalPrincipal, session: SessionDep) -> Response:
    if principal is None or principal.kind != "session":
        return RedirectResponse("/login", status_code=303)
    from forgehall.workspaces.service import list_workspaces

    return render(
        request,
        "home.html",
        user=principal.user,
        workspaces=await list_workspaces(session, principal.user),
    )


@router.post("/logout", response_model=None)
async def logout_page(
    principal: OptionalPrincipal, session: SessionDep, settings: SettingsDep
) -> Response:
    response = RedirectResponse("/login", status_code=303)
    await end_session(response, principal, session, settings)
    return response


@router.get("/setup/{token}", response_class=HTMLResponse)
async def setup_page(request: Request, token: str) -> HTMLResponse:
    return render(request, "setup.html", token=token, email="")


@router.post("/setup/{token}", response_model=None)
async def setup_submit(
    request: Request,
    token: str,
    email: Annotated[str, Form()],
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    try:
        user = await service.complete_setup(session, settings, token, email)
    except ProblemError as exc:
        return render(
            request, "setup.html", status=exc.status, token=token, email=email, error=exc.detail
        )
    response = RedirectResponse("/", status_code=303)
    await start_session(request, response, session, settings, user, method="setup-link")
    return response


@router.get("/invitations/{token}", response_model=None)
async def invitation_page(
    request: Request, token: str, principal: OptionalPrincipal, session: SessionDep
) -> Response:
    from forgehall.workspaces import service as workspaces

    if principal is None or principal.kind != "session":
        return RedirectResponse(
            f"/login?{urlencode({'next': f'/invitations/{token}'})}", status_code=303
        )
    try:
        invitation, workspace = await workspaces.read_invitation_for(session, principal.user, token)
    except ProblemError as exc:
        return render(
            request, "message.html", status=exc.status, heading="Invitation", message=exc.detail
        )
    return render(
        request,
        "invitation.html",
        token=token,
        workspace=workspace.name,
        role=invitation.role,
        state=workspaces.invitation_state(invitation),
        expires=f"{invitation.expires_at:%Y-%m-%d}",
    )


@router.post("/invitations/{token}/{answer}", response_model=None)
async def invitation_answer(
    request: Request, token: str, answer: str, principal: OptionalPrincipal, session: SessionDep
) -> Response:
    from forgehall.workspaces import service as workspaces

    if principal is None or principal.kind != "session":
        return RedirectResponse("/login", status_code=303)
    try:
        if answer == "accept":
            await workspaces.accept_invitation(session, principal.user, token)
        elif answer == "decline":
            await workspaces.decline_invitation(session, principal.user, token)
        else:
            return render(
                request,
                "message.html",
                status=404,
                heading="Not found",
                message="There is nothing here.",
            )
    except ProblemError as exc:
        return render(
            request, "message.html", status=exc.status, heading="Invitation", message=exc.detail
        )
    return RedirectResponse("/", status_code=303)
