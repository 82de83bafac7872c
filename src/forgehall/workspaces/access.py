"""The one workspace access check, used by every route that touches workspace data.

``{workspace}`` in a path (slug or id) is resolved only among the workspaces the caller
belongs to, so a workspace the caller cannot see answers 404 exactly like one that does
not exist: ids and slugs never leak. A daemon or task token reaches only the workspace it
is bound to. Being an instance admin grants nothing here: an instance admin who is a
member acts at least as ADMIN in that workspace, never as OWNER; one who is not a member
gets 404 like anyone else.

Routes declare the least role they need with one of ``MemberAccess``, ``AdminAccess``,
``OwnerAccess``; a member with a smaller role gets 403. The route-table test checks that
every route with ``{workspace}`` in its path depends on :func:`resolve_access`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated

from fastapi import Depends
from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.core.deps import SessionDep
from forgehall.core.errors import ProblemError
from forgehall.identity.auth import CurrentPrincipal, Principal
from forgehall.workspaces.models import Member, Workspace


class Role(IntEnum):
    MEMBER = 1
    ADMIN = 2
    OWNER = 3

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls[value.upper()]
        except KeyError:
            raise ProblemError(
                422, f"unknown role {value!r}; use OWNER, ADMIN or MEMBER", type_="invalid-role"
            ) from None


@dataclass(frozen=True)
class Access:
    workspace: Workspace
    principal: Principal
    role: Role  # the effective role (instance admins act at least as ADMIN)
    member_role: Role | None  # the stored membership role (None for daemon/task tokens)

    def require(self, role: Role) -> None:
        if self.role < role:
            raise ProblemError(
                403,
                f"this needs the {role.name} role in workspace "
                f"{self.workspace.slug}; you are {self.role.name}",
                type_="forbidden",
            )


async def _workspace_and_role(
    session: AsyncSession, user_id: str, which: ColumnElement[bool]
) -> tuple[Workspace, str | None] | None:
    """The workspace ``which`` selects and ``user_id``'s role in it (None: not a member),
    in one query — every request's access check runs it."""
    row = (
        await session.execute(
            select(Workspace, Member.role)
            .outerjoin(Member, and_(Member.workspace_id == Workspace.id, Member.user_id == user_id))
            .where(which)
        )
    ).first()
    return (row[0], row[1]) if row is not None else None


async def resolve_access(
    workspace: str, principal: CurrentPrincipal, session: SessionDep
) -> Access:
    """Find ``workspace`` among those the caller may see; 404 otherwise."""
    if principal.kind == "dmn":
        # A daemon token is for the daemon protocol only: a stolen one must not read or
        # change the board (the daemon acts on the board with each task's own token).
        raise ProblemError(
            403,
            "a daemon token works only on the daemon protocol (/api/v1/daemon/…); use a "
            "personal access token here",
            type_="wrong-token-kind",
        )
    row = await _workspace_and_role(
        session, principal.user.id, or_(Workspace.slug == workspace, Workspace.id == workspace)
    )
    if row is None:
        raise ProblemError(404, f"workspace {workspace} was not found")
    found, member_role = row
    if principal.kind == "tsk":
        # A task token acts for the workspace it is bound to, and only while the person
        # who minted it is still a member there.
        if principal.workspace_id != found.id or member_role is None:
            raise ProblemError(404, f"workspace {workspace} was not found")
        return Access(workspace=found, principal=principal, role=Role.MEMBER, member_role=None)
    if member_role is None:
        raise ProblemError(404, f"workspace {workspace} was not found")
    role = Role[member_role]
    effective = (
        max(role, Role.ADMIN) if principal.user.is_instance_admin and role < Role.OWNER else role
    )
    return Access(workspace=found, principal=principal, role=effective, member_role=role)


def _requiring(role: Role):  # type: ignore[no-untyped-def]
    async def dependency(access: Annotated[Access, Depends(resolve_access)]) -> Access:
        access.require(role)
        return access

    dependency.__name__ = f"require_{role.name.lower()}"
    dependency.minimum_role = role  # type: ignore[attr-defined]
    return dependency


require_member = _requiring(Role.MEMBER)
require_admin = _requiring(Role.ADMIN)
require_owner = _requiring(Role.OWNER)

MemberAccess = Annotated[Access, Depends(require_member)]
AdminAccess = Annotated[Access, Depends(require_admin)]
OwnerAccess = Annotated[Access, Depends(require_owner)]


async def require_user_member(access: MemberAccess) -> Access:
    """A person who is a member (not a daemon or task token)."""
    if access.principal.kind not in ("session", "pat"):
        raise ProblemError(
            403, "a daemon or task token cannot be used here", type_="wrong-token-kind"
        )
    return access


UserMemberAccess = Annotated[Access, Depends(require_user_member)]


async def resolve_daemon_access(principal: CurrentPrincipal, session: SessionDep) -> Access:
    """The access check of the daemon protocol: a daemon token, acting in the workspace
    it was minted for (while its minter is still a member there)."""
    if principal.kind != "dmn":
        raise ProblemError(
            403,
            "the daemon protocol needs a daemon token (fh_dmn_…); create one with "
            "`forgehall daemon token create`",
            type_="wrong-token-kind",
        )
    row = await _workspace_and_role(
        session, principal.user.id, Workspace.id == (principal.workspace_id or "")
    )
    workspace = row[0] if row is not None and row[1] is not None else None
    if workspace is None:
        raise ProblemError(
            403,
            "this daemon token's workspace is gone or its creator left it; mint a new token",
            type_="daemon-token-orphaned",
        )
    return Access(workspace=workspace, principal=principal, role=Role.MEMBER, member_role=None)


DaemonAccess = Annotated[Access, Depends(resolve_daemon_access)]
