"""Workspace settings: general, board statuses and labels, repositories, members and
invitations — one page (``/w/{workspace}/settings``) with a section for each.

Every form posts to its own route, which checks what was typed with the API's request
schema, calls the same service as the JSON API under the same role (an ADMIN route here
is an ADMIN route there; adding a label is open to every member, as in the API), then
redirects back (303). A refused form answers the page again with the status, the
message next to that form and what was typed kept; 403 and 404 answer the error pages,
so a member posting an admin form sees "Not allowed" and another workspace stays
"Not found". Members see the settings read-only, except what the API lets them do
(add a label, leave the workspace).
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar, get_args

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.core.deps import SessionDep, SettingsDep
from forgehall.core.errors import ProblemError
from forgehall.gates.schemas import TIERS
from forgehall.identity.auth import MailerDep
from forgehall.identity.mail import MailDeliveryError
from forgehall.issues import service as issues
from forgehall.issues.schemas import Category, LabelIn, StatusIn
from forgehall.web.pages import discard, page, workspace_url
from forgehall.workspaces import service
from forgehall.workspaces.access import (
    Access,
    AdminAccess,
    MemberAccess,
    OwnerAccess,
    Role,
    UserMemberAccess,
)
from forgehall.workspaces.schemas import InvitationIn, RepositoryIn, RoleIn, WorkspacePatch

router = APIRouter(include_in_schema=False)

CATEGORIES: tuple[str, ...] = get_args(Category)
#: What a redirect's ``?done=`` may announce (fixed texts: nothing from the URL is shown).
DONE = {
    "general": "Workspace saved.",
    "status": "Status added.",
    "label": "Label added.",
    "repository": "Repository added.",
    "repository-removed": "Repository removed.",
    "role": "Role changed.",
    "member-removed": "Member removed.",
    "invited": "Invitation sent.",
    "resent": "Invitation sent again; the previous link no longer works.",
    "revoked": "Invitation revoked.",
}
_FIELD_NAMES = {
    "key_prefix": "Key prefix",
    "default_branch": "Default branch",
    "url": "URL",
    "color": "Colour",
}
_FRIENDLIER = {
    "string_pattern_mismatch": "use letters, digits, dots, dashes and underscores, "
    "starting with a letter or digit",
}

Schema = TypeVar("Schema", bound=BaseModel)
Text = Annotated[str, Form(max_length=2000)]


def checked(schema: type[Schema], **values: Any) -> Schema:
    """What a form sent, checked by the API's request schema; its first problem becomes a
    422 naming the field."""
    try:
        return schema.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "form"
        name = _FIELD_NAMES.get(field, field.replace("_", " ").capitalize())
        message = _FRIENDLIER.get(first["type"], first["msg"][:1].lower() + first["msg"][1:])
        raise ProblemError(422, f"{name}: {message}", field=field) from None


def _url(access: Access) -> str:
    return f"{workspace_url(access)}/settings"


def _done(access: Access, what: str, anchor: str) -> RedirectResponse:
    return RedirectResponse(f"{_url(access)}?done={what}#{anchor}", status_code=303)


async def settings_context(session: AsyncSession, access: Access) -> dict[str, Any]:
    can_admin = access.role >= Role.ADMIN
    is_owner = access.member_role is Role.OWNER  # elevation never reaches OWNER
    invitations = await service.list_invitations(session, access) if can_admin else []
    return {
        "url": _url(access),
        "base": workspace_url(access),
        "can_admin": can_admin,
        "is_owner": is_owner,
        "me": access.principal.user.id,
        "tiers": TIERS,
        "categories": CATEGORIES,
        # Only an OWNER grants or takes away OWNER; invitations never grant it.
        "roles": [r.name for r in sorted(Role) if r is not Role.OWNER or is_owner],
        "invite_roles": [Role.MEMBER.name, Role.ADMIN.name],
        "statuses": await issues.list_statuses(session, access),
        "labels": await issues.list_labels(session, access),
        "repositories": await service.list_repositories(session, access),
        "members": await service.list_members(session, access),
        "invitations": [(i, service.invitation_state(i)) for i in invitations],
    }


@router.get("/w/{workspace}/settings", response_class=HTMLResponse)
async def settings_page(
    request: Request,
    access: MemberAccess,
    session: SessionDep,
    done: Annotated[str | None, Query(max_length=40)] = None,
) -> HTMLResponse:
    return await page(
        request,
        session,
        access,
        "workspace/settings.html",
        "workspace-settings",
        notice=DONE.get(done or ""),
        form=None,
        typed={},
        **(await settings_context(session, access)),
    )


async def _refused(
    request: Request,
    session: AsyncSession,
    access: Access,
    exc: ProblemError,
    form: str,
    target: str | None = None,
    **typed: str,
) -> HTMLResponse:
    """The settings page again: the message next to ``form`` (on the row ``target``),
    what was typed kept. A refusal for the role (403) or of something not here (404)
    answers the error page instead, as the API would."""
    if exc.status in (403, 404):
        raise exc
    await discard(session, access.workspace, access.principal.user)
    return await page(
        request,
        session,
        access,
        "workspace/settings.html",
        "workspace-settings",
        status=exc.status,
        notice=None,
        error=exc.detail,
        field=exc.extensions.get("field"),
        form=form,
        target=target,
        typed=typed,
        **(await settings_context(session, access)),
    )


# --- general ---------------------------------------------------------------------------------


@router.post("/w/{workspace}/settings/general", response_model=None)
async def save_general(
    request: Request,
    access: AdminAccess,
    session: SessionDep,
    name: Text = "",
    key_prefix: Text = "",
    tier: Text = "",
) -> Response:
    typed = {"name": name, "key_prefix": key_prefix, "tier": tier}
    try:
        body = checked(WorkspacePatch, name=name.strip(), key_prefix=key_prefix.strip(), tier=tier)
        await service.update_workspace(
            session, access, name=body.name, key_prefix=body.key_prefix, tier=body.tier
        )
    except ProblemError as exc:
        return await _refused(request, session, access, exc, "general", **typed)
    return _done(access, "general", "general")


@router.post("/w/{workspace}/settings/delete", response_model=None)
async def delete_workspace(
    request: Request, access: OwnerAccess, session: SessionDep, confirm: Text = ""
) -> Response:
    try:
        if confirm.strip() != access.workspace.slug:
            raise ProblemError(
                422,
                f"type the workspace's address, {access.workspace.slug}, exactly to delete it",
                field="confirm",
            )
        await service.delete_workspace(session, access)
    except ProblemError as exc:
        return await _refused(request, session, access, exc, "delete", confirm=confirm)
    return RedirectResponse("/", status_code=303)


# --- board: statuses and labels --------------------------------------------------------------


@router.post("/w/{workspace}/settings/statuses", response_model=None)
async def add_status(
    request: Request,
    access: AdminAccess,
    session: SessionDep,
    name: Text = "",
    category: Text = "",
    color: Text = "",
) -> Response:
    typed = {"name": name, "category": category, "color": color}
    try:
        body = checked(StatusIn, name=name.strip(), category=category, color=color.strip())
        await issues.create_status(
            session, access, name=body.name, category=body.category, color=body.color
        )
    except ProblemError as exc:
        return await _refused(request, session, access, exc, "status", **typed)
    return _done(access, "status", "statuses")


@router.post("/w/{workspace}/settings/labels", response_model=None)
async def add_label(
    request: Request, access: MemberAccess, session: SessionDep, name: Text = "", color: Text = ""
) -> Response:
    try:
        body = checked(LabelIn, name=name.strip(), color=color.strip())
        await issues.create_label(session, access, name=body.name, color=body.color)
    except ProblemError as exc:
        return await _refused(request, session, access, exc, "label", name=name, color=color)
    return _done(access, "label", "labels")


# --- repositories ----------------------------------------------------------------------------


@router.post("/w/{workspace}/settings/repositories", response_model=None)
async def add_repository(
    request: Request,
    access: AdminAccess,
    session: SessionDep,
    name: Text = "",
    url: Text = "",
    default_branch: Text = "",
) -> Response:
    typed = {"name": name, "url": url, "default_branch": default_branch}
    try:
        body = checked(
            RepositoryIn,
            name=name.strip(),
            url=url.strip(),
            default_branch=default_branch.strip(),
        )
        await service.add_repository(
            session, access, name=body.name, url=body.url, default_branch=body.default_branch
        )
    except ProblemError as exc:
        return await _refused(request, session, access, exc, "repository", **typed)
    return _done(access, "repository", "repositories")


@router.post("/w/{workspace}/settings/repositories/{repository_id}/remove", response_model=None)
async def remove_repository(
    request: Request, repository_id: str, access: AdminAccess, session: SessionDep
) -> Response:
    try:
        await service.remove_repository(session, access, repository_id)
    except ProblemError as exc:
        return await _refused(request, session, access, exc, "repositories", repository_id)
    return _done(access, "repository-removed", "repositories")


# --- members ---------------------------------------------------------------------------------


@router.post("/w/{workspace}/settings/members/{user_id}/role", response_model=None)
async def change_role(
    request: Request, user_id: str, access: AdminAccess, session: SessionDep, role: Text = ""
) -> Response:
    try:
        body = checked(RoleIn, role=role)
        await service.change_role(session, access, user_id, body.role)
    except ProblemError as exc:
        return await _refused(request, session, access, exc, "member", user_id, role=role)
    return _done(access, "role", "members")


@router.post("/w/{workspace}/settings/members/{user_id}/remove", response_model=None)
async def remove_member(
    request: Request, user_id: str, access: UserMemberAccess, session: SessionDep
) -> Response:
    """Remove a member (ADMIN), or leave (anyone, their own row) — as the API's DELETE."""
    leaving = user_id == access.principal.user.id
    try:
        await service.remove_member(session, access, user_id)
    except ProblemError as exc:
        return await _refused(request, session, access, exc, "member", user_id)
    if leaving:
        return RedirectResponse("/", status_code=303)
    return _done(access, "member-removed", "members")


# --- invitations -----------------------------------------------------------------------------

_MAIL_FAILED = (
    "the invitation is saved but the email could not be sent ({error}); "
    "resend it once mail works, or ask an operator to check the SMTP settings"
)


@router.post("/w/{workspace}/settings/invitations", response_model=None)
async def invite(
    request: Request,
    access: AdminAccess,
    session: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    email: Text = "",
    role: Text = "MEMBER",
) -> Response:
    typed = {"email": email, "role": role}
    try:
        body = checked(InvitationIn, email=email.strip(), role=role)
        try:
            await service.create_invitation(
                session, settings, mailer, access, email=body.email, role=body.role
            )
        except MailDeliveryError as error:
            raise ProblemError(503, _MAIL_FAILED.format(error=error)) from None
    except ProblemError as exc:
        return await _refused(request, session, access, exc, "invite", **typed)
    return _done(access, "invited", "invitations")


@router.post("/w/{workspace}/settings/invitations/{invitation_id}/{action}", response_model=None)
async def invitation_action(
    request: Request,
    invitation_id: str,
    action: str,
    access: AdminAccess,
    session: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
) -> Response:
    """Resend (a new link; the old one stops working) or revoke a pending invitation."""
    try:
        if action == "resend":
            try:
                await service.resend_invitation(session, settings, mailer, access, invitation_id)
            except MailDeliveryError as error:
                raise ProblemError(503, _MAIL_FAILED.format(error=error)) from None
        elif action == "revoke":
            await service.revoke_invitation(session, access, invitation_id)
        else:
            raise ProblemError(404, "there is nothing here")
    except ProblemError as exc:
        return await _refused(request, session, access, exc, "invitation", invitation_id)
    return _done(access, "resent" if action == "resend" else "revoked", "invitations")
