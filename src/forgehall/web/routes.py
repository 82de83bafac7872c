"""Server-rendered pages: sign-in by email code and the CLI authorization prompt.

Forms post back to the server (no JavaScript needed); errors are shown next to the
field with what the user typed kept. ``next`` is only ever a relative path.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.core.deps import SessionDep, SettingsDep
from forgehall.core.errors import ProblemError
from forgehall.identity import service
from forgehall.identity.auth import (
    CurrentUser,
    MailerDep,
    OptionalPrincipal,
    client_ip,
    end_session,
    start_session,
)
from forgehall.identity.models import User
from forgehall.web.pages import discard, render, user_shell

router = APIRouter(include_in_schema=False)


def safe_next(value: str | None) -> str:
    """A relative path to go to after sign-in; anything else becomes ``/``."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


@router.get("/login", response_class=HTMLResponse)
async def login_page(
    request: Request, session: SessionDep, settings: SettingsDep, next: str | None = None
) -> HTMLResponse:
    from forgehall.identity.routes import login_buttons

    target = safe_next(next)
    buttons = [
        (b.display_name, f"/auth/oauth/{quote(b.slug)}/start?{urlencode({'redirect_to': target})}")
        for b in await login_buttons(session, settings)
    ]
    return render(request, "login.html", step="email", next=target, email="", buttons=buttons)


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
    return await _home(request, session, principal.user)


async def _home(
    request: Request,
    session: AsyncSession,
    user: User,
    status: int = 200,
    error: str | None = None,
    typed: dict[str, str] | None = None,
) -> HTMLResponse:
    from forgehall.workspaces.service import list_workspaces

    return render(
        request,
        "home.html",
        status=status,
        **user_shell(user, "home"),
        workspaces=await list_workspaces(session, user),
        error=error,
        typed=typed or {},
    )


@router.post("/workspaces", response_model=None)
async def create_workspace_page(
    request: Request,
    principal: OptionalPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    name: Annotated[str, Form()] = "",
    slug: Annotated[str, Form()] = "",
    key_prefix: Annotated[str, Form()] = "",
) -> Response:
    from forgehall.workspaces.service import create_workspace

    if principal is None or principal.kind != "session":
        return RedirectResponse("/login", status_code=303)
    typed = {"name": name, "slug": slug, "key_prefix": key_prefix}
    try:
        for field, value, most in (
            ("name", name, 200),
            ("slug", slug, 60),
            ("key_prefix", key_prefix, 10),
        ):
            if not value.strip() or len(value.strip()) > most:
                raise ProblemError(
                    422, f"{field.replace('_', ' ')} needs 1 to {most} characters", field=field
                )
        workspace = await create_workspace(
            session,
            settings,
            principal.user,
            slug=slug.strip(),
            name=name.strip(),
            key_prefix=key_prefix.strip(),
        )
    except ProblemError as exc:
        await discard(session, principal.user)
        return await _home(request, session, principal.user, exc.status, exc.detail, typed)
    return RedirectResponse(f"/w/{workspace.slug}/board", status_code=303)


@router.get("/switch", response_model=None)
async def switch_workspace(to: str = "") -> Response:
    """The workspace menu without JavaScript: go to the chosen workspace's board."""
    if not to or "/" in to or "?" in to or "\\" in to:
        return RedirectResponse("/", status_code=303)
    return RedirectResponse(f"/w/{quote(to)}/board", status_code=303)


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


#: The largest text the live preview renders (the same cut as the pages' own rendering).
PREVIEW_LIMIT = 100_000


@router.post("/preview", response_class=HTMLResponse)
async def markdown_preview(request: Request, user: CurrentUser) -> HTMLResponse:
    """Markdown rendered as a page would show it, for the live preview beside a textarea
    (``field`` in the query names which form field to render)."""
    form = await request.form()
    field = request.query_params.get("field", "text")
    value = form.get(field, "")
    text = value[:PREVIEW_LIMIT] if isinstance(value, str) else ""
    return render(request, "_preview.html", text=text)
