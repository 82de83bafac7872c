"""The inbox of a workspace, personal settings and the instance admin pages.

They call the services behind the JSON API (``issues.service`` for notifications,
``identity.service`` and ``identity.oauth`` for the account, its tokens and sessions,
accounts, login providers and the signup policy) through the same checks: the inbox
depends on ``MemberAccess``, personal settings on a person (session or personal token),
the admin pages on ``InstanceAdmin``, so anyone else gets the 403 page, also on every
admin form.

Every form posts and redirects (303) without JavaScript; a refused form answers its page
again with the server's message next to the field and what was typed kept. Secrets are
write-only: a new access token is shown once, in the answer to the form that created it,
and a login provider's client secret is never put on a page (not even when the form is
refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.core.deps import SessionDep, SettingsDep
from forgehall.core.errors import ProblemError
from forgehall.identity import oauth
from forgehall.identity import service as identity
from forgehall.identity.auth import InstanceAdmin, Principal, UserPrincipal, end_session
from forgehall.identity.models import User
from forgehall.identity.routes import login_buttons
from forgehall.issues import service as issues
from forgehall.settings import Settings
from forgehall.web.board import Person, people
from forgehall.web.pages import discard, is_fragment, page, render, user_shell, workspace_url
from forgehall.workspaces.access import Access, MemberAccess

router = APIRouter(include_in_schema=False)

# --- the inbox --------------------------------------------------------------------------------

#: Notifications shown per view (newest first; the unread ones on top).
INBOX_LIMIT = 200
KIND_LABELS = {
    "assigned": "Assigned",
    "mentioned": "Mentioned",
    "commented": "Commented",
    "status_changed": "Status changed",
    "task_failed": "Task failed",
}
INBOX_ACTIONS: dict[str, dict[str, bool]] = {
    "read": {"read": True},
    "unread": {"read": False},
    "archive": {"archived": True},
    "restore": {"archived": False},
}


@dataclass(frozen=True)
class InboxItem:
    id: str
    kind: str
    label: str
    summary: str
    key: str
    actor: Person | None
    created_at: datetime
    read: bool
    archived: bool


def _inbox_url(access: Access, view: str) -> str:
    base = f"{workspace_url(access)}/inbox"
    return f"{base}?view=archived" if view == "archived" else base


async def _inbox_items(session: AsyncSession, access: Access, archived: bool) -> list[InboxItem]:
    rows = await issues.list_notifications(
        session, access, unread_only=False, archived=archived, limit=INBOX_LIMIT
    )
    numbers = await issues.issue_numbers(session, [n.issue_id for n in rows])
    who = await people(session, access)
    prefix = access.workspace.key_prefix
    items = [
        InboxItem(
            id=n.id,
            kind=n.kind,
            label=KIND_LABELS.get(n.kind, n.kind.replace("_", " ").capitalize()),
            summary=n.summary,
            key=f"{prefix}-{numbers[n.issue_id]}",
            actor=who.find(n.actor_user_id, n.actor_agent_id)
            if n.actor_user_id or n.actor_agent_id
            else None,
            created_at=n.created_at,
            read=n.read_at is not None,
            archived=n.archived_at is not None,
        )
        for n in rows
    ]
    # Unread first; each group newest first (the service's order, kept by a stable sort).
    return sorted(items, key=lambda item: item.read)


@router.get("/w/{workspace}/inbox", response_class=HTMLResponse)
async def inbox_page(
    request: Request,
    access: MemberAccess,
    session: SessionDep,
    view: Annotated[str, Query(max_length=20)] = "",
) -> HTMLResponse:
    archived = view == "archived"
    items = await _inbox_items(session, access, archived)
    return await page(
        request,
        session,
        access,
        "account/inbox.html",
        "inbox",
        items=items,
        view="archived" if archived else "inbox",
        any_unread=any(not item.read for item in items),
        limit=INBOX_LIMIT,
        base=workspace_url(access),
    )


@router.get("/w/{workspace}/inbox/count", response_class=HTMLResponse)
async def unread_badge(request: Request, access: MemberAccess, session: SessionDep) -> HTMLResponse:
    """The navigation's unread badge alone (the live refresh fetches it)."""
    return render(
        request,
        "account/_unread_count.html",
        workspace=access.workspace,
        unread=await issues.unread_count(session, access),
    )


@router.post("/w/{workspace}/inbox/read-all", response_model=None)
async def mark_all_read(
    request: Request,
    access: MemberAccess,
    session: SessionDep,
    view: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    await issues.mark_all_notifications_read(session, access)
    if is_fragment(request):
        return Response(status_code=204)
    return RedirectResponse(_inbox_url(access, view), status_code=303)


@router.post("/w/{workspace}/inbox/{notification_id}/{action}", response_model=None)
async def mark_one(
    request: Request,
    notification_id: str,
    action: str,
    access: MemberAccess,
    session: SessionDep,
    view: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    """Mark read or unread, archive or restore one notification; back to the inbox."""
    change = INBOX_ACTIONS.get(action)
    if change is None:
        raise ProblemError(404, "there is nothing here")
    await issues.mark_notification(
        session,
        access,
        notification_id,
        read=change.get("read"),
        archived=change.get("archived"),
    )
    if is_fragment(request):
        return Response(status_code=204)
    return RedirectResponse(_inbox_url(access, view), status_code=303)


# --- personal settings ------------------------------------------------------------------------

EXPIRY_MAX_DAYS = 3650
TOKEN_NAME_MAX = 200


@dataclass(frozen=True)
class Refusal:
    """A refused form: which form, which field, the server's message, what was typed."""

    form: str
    message: str
    field: str | None = None
    typed: dict[str, str] | None = None
    subject: str | None = None  # the row a row's form was about (e.g. a user id)


def _refusal(form: str, exc: ProblemError, typed: dict[str, str] | None = None) -> Refusal:
    field = exc.extensions.get("field")
    return Refusal(form, exc.detail, field if isinstance(field, str) else None, typed)


async def _settings_page(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    *,
    status: int = 200,
    refusal: Refusal | None = None,
    new_token: str | None = None,
) -> HTMLResponse:
    user = principal.user
    sessions = await identity.list_sessions(session, user)
    response = render(
        request,
        "account/settings.html",
        status=status,
        **user_shell(user, "settings"),
        tokens=await identity.list_tokens(session, user, "pat"),
        sessions=sessions,
        current_session=principal.session_id,
        login_buttons=await login_buttons(session, settings),
        now=identity.now(),
        refusal=refusal,
        typed=(refusal.typed if refusal and refusal.typed else {}),
        new_token=new_token,
    )
    if new_token is not None:
        response.headers["cache-control"] = "no-store"
    return response


@router.get("/settings", response_class=HTMLResponse)
async def settings_page(
    request: Request, principal: UserPrincipal, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    return await _settings_page(request, session, settings, principal)


@router.post("/settings/profile", response_model=None)
async def save_profile(
    request: Request,
    principal: UserPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    name: Annotated[str, Form()] = "",
) -> Response:
    try:
        await identity.rename_user(session, principal.user, name)
    except ProblemError as exc:
        await discard(session, principal.user)
        return await _settings_page(
            request,
            session,
            settings,
            principal,
            status=exc.status,
            refusal=_refusal("profile", exc, {"name": name}),
        )
    return RedirectResponse("/settings", status_code=303)


def _expiry(value: str) -> timedelta | None:
    """Days from the form: empty for never, else a whole number from 1 to 3650."""
    text = value.strip()
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= EXPIRY_MAX_DAYS:
        raise ProblemError(
            422,
            f"the expiry is a whole number of days from 1 to {EXPIRY_MAX_DAYS}, "
            "or empty for a token that does not expire",
            field="expires_in_days",
        )
    return timedelta(days=int(text))


@router.post("/settings/tokens", response_model=None)
async def create_token(
    request: Request,
    principal: UserPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    name: Annotated[str, Form()] = "",
    expires_in_days: Annotated[str, Form()] = "",
) -> Response:
    """Create a personal access token; the answer is the only page that shows it."""
    typed = {"token_name": name, "expires_in_days": expires_in_days}
    try:
        if not name.strip() or len(name.strip()) > TOKEN_NAME_MAX:
            raise ProblemError(
                422, f"a token needs a name of 1 to {TOKEN_NAME_MAX} characters", field="token_name"
            )
        issued = await identity.create_token(
            session,
            principal.user,
            kind="pat",
            name=name.strip(),
            expires_in=_expiry(expires_in_days),
        )
    except ProblemError as exc:
        await discard(session, principal.user)
        return await _settings_page(
            request,
            session,
            settings,
            principal,
            status=exc.status,
            refusal=_refusal("token", exc, typed),
        )
    return await _settings_page(
        request, session, settings, principal, status=201, new_token=issued.plaintext
    )


@router.post("/settings/tokens/{token_id}/revoke", response_model=None)
async def revoke_token(token_id: str, principal: UserPrincipal, session: SessionDep) -> Response:
    await identity.revoke_token(session, principal.user, token_id)
    return RedirectResponse("/settings#tokens", status_code=303)


@router.post("/settings/sessions/revoke-all", response_model=None)
async def sign_out_everywhere(
    principal: UserPrincipal, session: SessionDep, settings: SettingsDep
) -> Response:
    """Sign out everywhere, as the API does: every session ends, this one too."""
    await identity.revoke_all_sessions(session, principal.user)
    response = RedirectResponse("/login", status_code=303)
    await end_session(response, None, session, settings)  # clears this browser's cookie
    return response


@router.post("/settings/sessions/{session_id}/revoke", response_model=None)
async def end_one_session(
    session_id: str, principal: UserPrincipal, session: SessionDep, settings: SettingsDep
) -> Response:
    if session_id == principal.session_id:
        response = RedirectResponse("/login", status_code=303)
        await end_session(response, principal, session, settings)
        return response
    await identity.revoke_session(session, principal.user, session_id)
    return RedirectResponse("/settings#sessions", status_code=303)


# --- instance admin ---------------------------------------------------------------------------

USER_ACTIONS: dict[str, dict[str, bool]] = {
    "promote": {"is_instance_admin": True},
    "demote": {"is_instance_admin": False},
    "disable": {"is_disabled": True},
    "enable": {"is_disabled": False},
}
PROVIDER_KINDS: tuple[oauth.RuntimeKind, ...] = ("gitlab", "oidc")
#: The provider form's fields with their longest value (as the API's LoginProviderIn).
PROVIDER_FIELDS = {
    "slug": 60,
    "display_name": 200,
    "issuer": 2000,
    "client_id": 300,
    "client_secret": 2000,
    "scopes": 300,
}
PROVIDER_LABELS = {
    "slug": "Slug",
    "display_name": "Display name",
    "issuer": "Issuer URL",
    "client_id": "Client ID",
    "client_secret": "Client secret",
    "scopes": "Scopes",
}
#: Where a service refusal belongs on the provider form.
PROVIDER_ERROR_FIELDS = {
    "invalid-slug": "slug",
    "slug-taken": "slug",
    "invalid-issuer": "issuer",
    "invalid-scopes": "scopes",
}
SIGNUP_ERROR_FIELDS = {
    "invalid-domain": "allowed_email_domains",
    "invalid-email": "allowed_emails",
}


@dataclass(frozen=True)
class BuiltinProvider:
    """A provider configured by the environment, as the page shows it (no secret)."""

    slug: str
    display_name: str
    issuer: str | None


def _builtin_providers(settings: Settings) -> list[BuiltinProvider]:
    found = []
    for slug in oauth.BUILTIN_SLUGS:
        provider = oauth.builtin_provider(settings, slug)
        if provider is not None:
            found.append(BuiltinProvider(slug, provider.display_name, provider.issuer))
    return found


async def _admin_page(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    admin: User,
    *,
    status: int = 200,
    refusal: Refusal | None = None,
    notice: str | None = None,
) -> HTMLResponse:
    policy = await identity.read_signup_policy(session, settings)
    typed = refusal.typed if refusal and refusal.typed else {}
    return render(
        request,
        "admin/admin.html",
        status=status,
        **user_shell(admin, "admin"),
        users=await identity.list_users(session),
        admins=await identity.count_instance_admins(session),
        providers=await oauth.list_login_providers(session),
        builtin=_builtin_providers(settings),
        provider_kinds=PROVIDER_KINDS,
        provider_labels=PROVIDER_LABELS,
        default_scopes=oauth.OIDC_SCOPES,
        origin=settings.origin,
        policy=policy,
        refusal=refusal,
        typed=typed,
        notice=notice,
    )


@router.get("/admin", response_class=HTMLResponse)
async def admin_page(
    request: Request,
    admin: InstanceAdmin,
    session: SessionDep,
    settings: SettingsDep,
    done: Annotated[str, Query(max_length=40)] = "",
) -> HTMLResponse:
    notices = {
        "provider-added": "The login provider was added; it works from now on.",
        "provider-removed": "The login provider was removed.",
        "signup-saved": "The signup settings were saved.",
        "signup-reset": "The signup settings are the environment's again.",
    }
    return await _admin_page(request, session, settings, admin, notice=notices.get(done))


def _admin_done(what: str, anchor: str) -> RedirectResponse:
    return RedirectResponse(f"/admin?{urlencode({'done': what})}#{anchor}", status_code=303)


@router.post("/admin/users/{user_id}/{action}", response_model=None)
async def change_user(
    request: Request,
    user_id: str,
    action: str,
    admin: InstanceAdmin,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    """Promote, demote, disable or enable an account (the service's rules apply: nobody
    demotes or disables themselves, so the last admin always stays)."""
    change = USER_ACTIONS.get(action)
    if change is None:
        raise ProblemError(404, "there is nothing here")
    try:
        await identity.update_user_flags(
            session,
            admin,
            user_id,
            is_instance_admin=change.get("is_instance_admin"),
            is_disabled=change.get("is_disabled"),
        )
    except ProblemError as exc:
        if exc.status == 404:
            raise
        await discard(session, admin)
        refusal = Refusal("users", exc.detail, subject=user_id)
        return await _admin_page(
            request, session, settings, admin, status=exc.status, refusal=refusal
        )
    return RedirectResponse("/admin#users", status_code=303)


@router.post("/admin/login-providers", response_model=None)
async def add_login_provider(
    request: Request,
    admin: InstanceAdmin,
    session: SessionDep,
    settings: SettingsDep,
    kind: Annotated[str, Form()] = "",
    slug: Annotated[str, Form()] = "",
    display_name: Annotated[str, Form()] = "",
    issuer: Annotated[str, Form()] = "",
    client_id: Annotated[str, Form()] = "",
    client_secret: Annotated[str, Form()] = "",
    scopes: Annotated[str, Form()] = "",
) -> Response:
    values = {
        "slug": slug.strip(),
        "display_name": display_name.strip(),
        "issuer": issuer.strip(),
        "client_id": client_id.strip(),
        "client_secret": client_secret,
        "scopes": " ".join(scopes.split()) or oauth.OIDC_SCOPES,
    }
    # What was typed, except the secret: it is never sent back to the browser.
    typed = {k: v for k, v in values.items() if k != "client_secret"} | {"kind": kind}
    try:
        runtime_kind = _provider_kind(kind)
        for field, most in PROVIDER_FIELDS.items():
            if not values[field].strip() or len(values[field]) > most:
                raise ProblemError(
                    422, f"{PROVIDER_LABELS[field]} needs 1 to {most} characters", field=field
                )
        await oauth.create_login_provider(
            session,
            slug=values["slug"],
            kind=runtime_kind,
            display_name=values["display_name"],
            issuer=values["issuer"],
            client_id=values["client_id"],
            client_secret=values["client_secret"],
            scopes=values["scopes"],
        )
    except ProblemError as exc:
        await discard(session, admin)
        refusal = _refusal("provider", exc, typed)
        if refusal.field is None and exc.type in PROVIDER_ERROR_FIELDS:
            refusal = Refusal("provider", exc.detail, PROVIDER_ERROR_FIELDS[exc.type], typed)
        return await _admin_page(
            request, session, settings, admin, status=exc.status, refusal=refusal
        )
    return _admin_done("provider-added", "providers")


def _provider_kind(kind: str) -> oauth.RuntimeKind:
    for known in PROVIDER_KINDS:
        if kind == known:
            return known
    raise ProblemError(422, "choose GitLab or OpenID Connect", field="kind")


@router.post("/admin/login-providers/{slug}/delete", response_model=None)
async def remove_login_provider(slug: str, admin: InstanceAdmin, session: SessionDep) -> Response:
    await oauth.delete_login_provider(session, slug)
    return _admin_done("provider-removed", "providers")


def _lines(text: str) -> list[str]:
    """A textarea of values, one per line (commas and spaces separate too)."""
    return [part for part in text.replace(",", " ").split() if part]


@router.post("/admin/signup", response_model=None)
async def save_signup_policy(
    request: Request,
    admin: InstanceAdmin,
    session: SessionDep,
    settings: SettingsDep,
    allow_signup: Annotated[str | None, Form()] = None,
    allowed_email_domains: Annotated[str, Form()] = "",
    allowed_emails: Annotated[str, Form()] = "",
    disable_workspace_creation: Annotated[str | None, Form()] = None,
) -> Response:
    """Store the whole form as runtime overrides (a checkbox left unticked is off)."""
    changes: dict[str, Any] = {
        "allow_signup": allow_signup is not None,
        "allowed_email_domains": [d.lower().lstrip("@") for d in _lines(allowed_email_domains)],
        "allowed_emails": _lines(allowed_emails),
        "disable_workspace_creation": disable_workspace_creation is not None,
    }
    typed = {
        "allowed_email_domains": allowed_email_domains,
        "allowed_emails": allowed_emails,
        "allow_signup": "on" if allow_signup is not None else "",
        "disable_workspace_creation": "on" if disable_workspace_creation is not None else "",
    }
    try:
        await identity.update_signup_policy(session, admin, changes)
    except ProblemError as exc:
        await discard(session, admin)
        refusal = Refusal("signup", exc.detail, SIGNUP_ERROR_FIELDS.get(exc.type), typed)
        return await _admin_page(
            request, session, settings, admin, status=exc.status, refusal=refusal
        )
    return _admin_done("signup-saved", "signup")


@router.post("/admin/signup/reset", response_model=None)
async def reset_signup_policy(admin: InstanceAdmin, session: SessionDep) -> Response:
    """Drop every runtime override: the environment's settings apply again."""
    await identity.update_signup_policy(session, admin, dict.fromkeys(identity.SIGNUP_KEYS))
    return _admin_done("signup-reset", "signup")
