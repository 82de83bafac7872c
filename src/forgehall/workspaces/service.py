"""Workspace rules: creation, members and roles, invitations.

Invariants:
- Only an OWNER grants or revokes OWNER, or deletes the workspace.
- A workspace always keeps at least one OWNER: the last one can neither leave, be
  removed nor be demoted.
- An invitation is for one address and one role (ADMIN or MEMBER), lasts 7 days, and is
  accepted only by a signed-in user with exactly that address; signup rules still apply
  to the account, which exists by then.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.core.errors import ProblemError
from forgehall.core.security import generate_token, hash_token
from forgehall.gates.schemas import TIERS
from forgehall.identity.mail import Mailer, OutgoingMail
from forgehall.identity.models import User
from forgehall.identity.service import enforce_rate_limit, normalize_email, read_signup_policy
from forgehall.issues.service import create_default_statuses
from forgehall.settings import Settings
from forgehall.workspaces.access import Access, Role
from forgehall.workspaces.models import Invitation, Member, Repository, Workspace

log = structlog.get_logger("forgehall.workspaces")

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,58}[a-z0-9])?$")
KEY_PREFIX = re.compile(r"^[A-Z][A-Z0-9]{0,9}$")
RESERVED_SLUGS = frozenset({"api", "auth", "admin", "new", "settings", "ws", "static", "me"})
INVITATION_TTL = timedelta(days=7)
INVITATIONS_PER_WORKSPACE_PER_HOUR = 50
INVITATIONS_PER_USER_PER_HOUR = 100


def now() -> datetime:
    return datetime.now(UTC)


def validate_slug(slug: str) -> str:
    slug = slug.strip().lower()
    if not SLUG.match(slug) or slug in RESERVED_SLUGS:
        raise ProblemError(
            422,
            f"slug {slug!r} must be 1-60 lower-case letters, digits or "
            "dashes (not starting or ending with a dash) and not a reserved word",
            type_="invalid-slug",
        )
    return slug


def validate_key_prefix(prefix: str) -> str:
    prefix = prefix.strip().upper()
    if not KEY_PREFIX.match(prefix):
        raise ProblemError(
            422,
            f"key prefix {prefix!r} must be 1-10 letters or digits, "
            "starting with a letter (issue keys look like ENG-42)",
            type_="invalid-key-prefix",
        )
    return prefix


async def create_workspace(
    session: AsyncSession,
    settings: Settings,
    user: User,
    *,
    slug: str,
    name: str,
    key_prefix: str,
) -> Workspace:
    policy = await read_signup_policy(session, settings)
    if policy.disable_workspace_creation and not user.is_instance_admin:
        raise ProblemError(
            403,
            "workspace creation is disabled on this instance; ask an "
            "administrator for an invitation",
            type_="workspace-creation-disabled",
        )
    workspace = Workspace(
        slug=validate_slug(slug),
        name=name.strip() or slug,
        key_prefix=validate_key_prefix(key_prefix),
        created_by=user.id,
    )
    session.add(workspace)
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        raise ProblemError(
            409, f"a workspace with slug {workspace.slug!r} already exists", type_="slug-taken"
        ) from None
    session.add(Member(workspace_id=workspace.id, user_id=user.id, role=Role.OWNER.name))
    await create_default_statuses(session, workspace.id)
    await session.commit()
    log.info("workspace.created", workspace_id=workspace.id, user_id=user.id)
    return workspace


async def list_workspaces(session: AsyncSession, user: User) -> list[tuple[Workspace, str]]:
    result = await session.execute(
        select(Workspace, Member.role)
        .join(Member, Member.workspace_id == Workspace.id)
        .where(Member.user_id == user.id)
        .order_by(Workspace.name)
    )
    return [(w, role) for w, role in result.all()]


async def update_workspace(
    session: AsyncSession,
    access: Access,
    *,
    name: str | None,
    key_prefix: str | None,
    tier: str | None = None,
) -> Workspace:
    access.require(Role.ADMIN)
    workspace = access.workspace
    if name is not None:
        workspace.name = name.strip() or workspace.name
    if key_prefix is not None:
        workspace.key_prefix = validate_key_prefix(key_prefix)
    if tier is not None:
        if tier not in TIERS:
            raise ProblemError(
                422, f"unknown tier {tier!r}; use {', '.join(TIERS)}", type_="invalid-tier"
            )
        if tier != workspace.tier:
            log.info("workspace.tier_changed", workspace_id=workspace.id, tier=tier)
        workspace.tier = tier
    await session.commit()
    return workspace


async def delete_workspace(session: AsyncSession, access: Access) -> None:
    _require_stored_owner(access, "delete the workspace")
    await session.delete(access.workspace)
    await session.commit()
    log.info("workspace.deleted", workspace_id=access.workspace.id)


def _require_stored_owner(access: Access, what: str) -> None:
    # Instance-admin elevation never reaches OWNER; check the stored role.
    if access.member_role is not Role.OWNER:
        raise ProblemError(403, f"only an OWNER may {what}", type_="forbidden")


async def list_members(session: AsyncSession, access: Access) -> list[tuple[Member, User]]:
    result = await session.execute(
        select(Member, User)
        .join(User, User.id == Member.user_id)
        .where(Member.workspace_id == access.workspace.id)
        .order_by(User.email)
    )
    return [(m, u) for m, u in result.all()]


async def _member_or_404(session: AsyncSession, access: Access, user_id: str) -> Member:
    member = await session.get(Member, (access.workspace.id, user_id))
    if member is None:
        raise ProblemError(404, f"member {user_id} was not found in this workspace")
    return member


async def _owner_count(session: AsyncSession, workspace_id: str) -> int:
    return int(
        await session.scalar(
            select(func.count())
            .select_from(Member)
            .where(Member.workspace_id == workspace_id, Member.role == Role.OWNER.name)
        )
        or 0
    )


async def change_role(session: AsyncSession, access: Access, user_id: str, role: str) -> Member:
    access.require(Role.ADMIN)
    new_role = Role.parse(role)
    member = await _member_or_404(session, access, user_id)
    old_role = Role[member.role]
    if Role.OWNER in (new_role, old_role):
        _require_stored_owner(access, "grant or revoke the OWNER role")
    if (
        old_role is Role.OWNER
        and new_role is not Role.OWNER
        and await _owner_count(session, access.workspace.id) <= 1
    ):
        raise ProblemError(
            409,
            "the last OWNER cannot be demoted; make someone else OWNER first",
            type_="last-owner",
        )
    member.role = new_role.name
    await session.commit()
    log.info(
        "member.role_changed", workspace_id=access.workspace.id, user_id=user_id, role=new_role.name
    )
    return member


async def remove_member(session: AsyncSession, access: Access, user_id: str) -> None:
    """Remove a member; members may remove themselves (leave)."""
    leaving = user_id == access.principal.user.id
    if not leaving:
        access.require(Role.ADMIN)
    member = await _member_or_404(session, access, user_id)
    if member.role == Role.OWNER.name:
        if not leaving:
            _require_stored_owner(access, "remove an OWNER")
        if await _owner_count(session, access.workspace.id) <= 1:
            raise ProblemError(
                409,
                "the last OWNER cannot leave or be removed; make someone else OWNER first",
                type_="last-owner",
            )
    await session.delete(member)
    await session.commit()
    log.info("member.removed", workspace_id=access.workspace.id, user_id=user_id)


# --- invitations ------------------------------------------------------------------------


async def create_invitation(
    session: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    access: Access,
    *,
    email: str,
    role: str,
) -> Invitation:
    access.require(Role.ADMIN)
    address = normalize_email(email)
    invited_role = Role.parse(role)
    if invited_role is Role.OWNER:
        raise ProblemError(
            422,
            "invitations grant ADMIN or MEMBER; promote to OWNER after they join",
            type_="invalid-role",
        )
    await _limit_invitations(session, access)
    existing_user = await session.scalar(select(User).where(User.email == address))
    if (
        existing_user is not None
        and await session.get(Member, (access.workspace.id, existing_user.id)) is not None
    ):
        raise ProblemError(
            409, f"{address} is already a member of this workspace", type_="already-member"
        )
    pending = await session.scalar(
        select(Invitation).where(
            Invitation.workspace_id == access.workspace.id,
            Invitation.email == address,
            Invitation.accepted_at.is_(None),
            Invitation.declined_at.is_(None),
            Invitation.revoked_at.is_(None),
            Invitation.expires_at > now(),
        )
    )
    if pending is not None:
        raise ProblemError(
            409,
            f"{address} already has a pending invitation; resend it instead",
            type_="invitation-pending",
        )
    token = generate_token("inv")
    invitation = Invitation(
        workspace_id=access.workspace.id,
        email=address,
        role=invited_role.name,
        token_hash=hash_token(token),
        invited_by=access.principal.user.id,
        expires_at=now() + INVITATION_TTL,
    )
    session.add(invitation)
    await session.commit()
    await _send_invitation(settings, mailer, access, invitation, token)
    log.info("invitation.created", workspace_id=access.workspace.id, invitation_id=invitation.id)
    return invitation


async def _limit_invitations(session: AsyncSession, access: Access) -> None:
    await enforce_rate_limit(
        session,
        f"invite:ws:{access.workspace.id}",
        INVITATIONS_PER_WORKSPACE_PER_HOUR,
        timedelta(hours=1),
        "invitations for this workspace",
    )
    await enforce_rate_limit(
        session,
        f"invite:user:{access.principal.user.id}",
        INVITATIONS_PER_USER_PER_HOUR,
        timedelta(hours=1),
        "invitations from this account",
    )


async def _send_invitation(
    settings: Settings, mailer: Mailer, access: Access, invitation: Invitation, token: str
) -> None:
    link = f"{settings.origin}/invitations/{token}"
    await mailer.send(
        OutgoingMail(
            to=invitation.email,
            subject=f"You are invited to {access.workspace.name} on Forgehall",
            text=(
                f"{access.principal.user.email} invited you to the workspace "
                f"{access.workspace.name} as {invitation.role}.\n\nAccept within 7 days: "
                f"{link}\n\nSign in with this address ({invitation.email}) to accept.\n"
            ),
        )
    )


async def list_invitations(session: AsyncSession, access: Access) -> list[Invitation]:
    access.require(Role.ADMIN)
    result = await session.execute(
        select(Invitation)
        .where(Invitation.workspace_id == access.workspace.id)
        .order_by(Invitation.created_at.desc())
    )
    return list(result.scalars())


async def _invitation_in(session: AsyncSession, access: Access, invitation_id: str) -> Invitation:
    invitation = await session.get(Invitation, invitation_id)
    if invitation is None or invitation.workspace_id != access.workspace.id:
        raise ProblemError(404, f"invitation {invitation_id} was not found")
    return invitation


def invitation_state(invitation: Invitation) -> str:
    if invitation.accepted_at:
        return "accepted"
    if invitation.declined_at:
        return "declined"
    if invitation.revoked_at:
        return "revoked"
    if invitation.expires_at <= now():
        return "expired"
    return "pending"


async def resend_invitation(
    session: AsyncSession, settings: Settings, mailer: Mailer, access: Access, invitation_id: str
) -> Invitation:
    access.require(Role.ADMIN)
    invitation = await _invitation_in(session, access, invitation_id)
    if invitation_state(invitation) not in ("pending", "expired"):
        raise ProblemError(
            409,
            f"the invitation is {invitation_state(invitation)}",
            type_="invitation-closed",
            state=invitation_state(invitation),
        )
    await _limit_invitations(session, access)
    token = generate_token("inv")
    invitation.token_hash = hash_token(token)  # the old link stops working
    invitation.expires_at = now() + INVITATION_TTL
    invitation.sends += 1
    await session.commit()
    await _send_invitation(settings, mailer, access, invitation, token)
    return invitation


async def revoke_invitation(session: AsyncSession, access: Access, invitation_id: str) -> None:
    access.require(Role.ADMIN)
    invitation = await _invitation_in(session, access, invitation_id)
    if invitation_state(invitation) != "pending":
        raise ProblemError(
            409,
            f"the invitation is {invitation_state(invitation)}",
            type_="invitation-closed",
            state=invitation_state(invitation),
        )
    invitation.revoked_at = now()
    await session.commit()


async def read_invitation_for(
    session: AsyncSession, user: User, token: str
) -> tuple[Invitation, Workspace]:
    """The invitation a link names, if it is addressed to ``user``; 404 otherwise."""
    invitation = await session.scalar(
        select(Invitation).where(Invitation.token_hash == hash_token(token))
    )
    if invitation is None:
        raise ProblemError(404, "invitation was not found")
    if invitation.email != user.email:
        raise ProblemError(
            403,
            "this invitation is for another address; sign in as the invited address to accept it",
            type_="invitation-other-address",
        )
    workspace = await session.get(Workspace, invitation.workspace_id)
    assert workspace is not None
    return invitation, workspace


async def accept_invitation(session: AsyncSession, user: User, token: str) -> Workspace:
    invitation, workspace = await read_invitation_for(session, user, token)
    state = invitation_state(invitation)
    if state != "pending":
        raise ProblemError(
            409, f"the invitation is {state}", type_="invitation-closed", state=state
        )
    invitation.accepted_at = now()
    if await session.get(Member, (workspace.id, user.id)) is None:
        session.add(Member(workspace_id=workspace.id, user_id=user.id, role=invitation.role))
    await session.commit()
    log.info("invitation.accepted", workspace_id=workspace.id, user_id=user.id)
    return workspace


async def decline_invitation(session: AsyncSession, user: User, token: str) -> None:
    invitation, _ = await read_invitation_for(session, user, token)
    state = invitation_state(invitation)
    if state != "pending":
        raise ProblemError(
            409, f"the invitation is {state}", type_="invitation-closed", state=state
        )
    invitation.declined_at = now()
    await session.commit()


# --- repositories ---------------------------------------------------------------------------

_REPO_URL = re.compile(r"^(https?://|ssh://|git://|file://|/|[\w.-]+@[\w.-]+:)\S+$")


async def list_repositories(session: AsyncSession, access: Access) -> list[Repository]:
    result = await session.execute(
        select(Repository)
        .where(Repository.workspace_id == access.workspace.id)
        .order_by(Repository.name)
    )
    return list(result.scalars())


async def add_repository(
    session: AsyncSession, access: Access, *, name: str, url: str, default_branch: str
) -> Repository:
    access.require(Role.ADMIN)
    if not _REPO_URL.match(url.strip()):
        raise ProblemError(
            422,
            f"{url!r} is not a git URL: use https://…, ssh://…, git@host:path or an absolute path",
            type_="invalid-repository",
            field="url",
        )
    repository = Repository(
        workspace_id=access.workspace.id,
        name=name,
        url=url.strip(),
        default_branch=default_branch.strip(),
    )
    session.add(repository)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise ProblemError(
            409, f"a repository named {name!r} already exists", type_="repository-name-taken"
        ) from None
    return repository


async def remove_repository(session: AsyncSession, access: Access, repository_id: str) -> None:
    access.require(Role.ADMIN)
    repository = await session.get(Repository, repository_id)
    if repository is None or repository.workspace_id != access.workspace.id:
        raise ProblemError(404, f"repository {repository_id} was not found")
    await session.delete(repository)
    await session.commit()
