"""HTTP routes of the workspaces domain. Every ``{workspace}`` route depends on the one
access check (``workspaces.access``)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Response

from forgehall.core.deps import SessionDep, SettingsDep
from forgehall.identity import service as identity
from forgehall.identity.auth import CurrentUser, MailerDep
from forgehall.identity.schemas import IssuedTokenOut, TokenOut
from forgehall.workspaces import service
from forgehall.workspaces.access import (
    AdminAccess,
    MemberAccess,
    OwnerAccess,
    Role,
    UserMemberAccess,
)
from forgehall.workspaces.models import Invitation, Workspace
from forgehall.workspaces.schemas import (
    DaemonTokenIn,
    InvitationIn,
    InvitationOut,
    InvitationPreview,
    MemberOut,
    RepositoryIn,
    RepositoryOut,
    RoleIn,
    WorkspaceIn,
    WorkspaceOut,
    WorkspacePatch,
)

router = APIRouter(prefix="/api/v1", tags=["workspaces"])
WS = "/workspaces/{workspace}"


def workspace_out(workspace: Workspace, role: str | None) -> WorkspaceOut:
    return WorkspaceOut.model_validate(workspace).model_copy(update={"role": role})


def invitation_out(invitation: Invitation) -> InvitationOut:
    return InvitationOut(
        id=invitation.id,
        workspace_id=invitation.workspace_id,
        email=invitation.email,
        role=invitation.role,
        state=service.invitation_state(invitation),
        sends=invitation.sends,
        created_at=invitation.created_at,
        expires_at=invitation.expires_at,
    )


@router.post(
    "/workspaces",
    response_model=WorkspaceOut,
    status_code=201,
    summary="Create a workspace (you become its OWNER)",
    responses={
        403: {"description": "Workspace creation is disabled"},
        409: {"description": "Slug taken"},
    },
)
async def create_workspace(
    body: WorkspaceIn, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> WorkspaceOut:
    workspace = await service.create_workspace(
        session, settings, user, slug=body.slug, name=body.name, key_prefix=body.key_prefix
    )
    return workspace_out(workspace, Role.OWNER.name)


@router.get("/workspaces", response_model=list[WorkspaceOut], summary="Your workspaces")
async def read_workspaces(user: CurrentUser, session: SessionDep) -> list[WorkspaceOut]:
    return [workspace_out(w, role) for w, role in await service.list_workspaces(session, user)]


@router.get(WS, response_model=WorkspaceOut, summary="One workspace")
async def read_workspace(access: MemberAccess) -> WorkspaceOut:
    return workspace_out(access.workspace, access.role.name)


@router.patch(
    WS, response_model=WorkspaceOut, summary="Rename, change the key prefix or the tier (admin)"
)
async def update_workspace(
    body: WorkspacePatch, access: AdminAccess, session: SessionDep
) -> WorkspaceOut:
    workspace = await service.update_workspace(
        session, access, name=body.name, key_prefix=body.key_prefix, tier=body.tier
    )
    return workspace_out(workspace, access.role.name)


@router.delete(WS, status_code=204, summary="Delete the workspace (OWNER)")
async def delete_workspace(access: OwnerAccess, session: SessionDep) -> Response:
    await service.delete_workspace(session, access)
    return Response(status_code=204)


@router.get(WS + "/members", response_model=list[MemberOut], summary="Members and roles")
async def read_members(access: MemberAccess, session: SessionDep) -> list[MemberOut]:
    return [
        MemberOut(user_id=u.id, email=u.email, name=u.name, role=m.role, joined_at=m.created_at)
        for m, u in await service.list_members(session, access)
    ]


@router.patch(
    WS + "/members/{user_id}",
    response_model=MemberOut,
    summary="Change a role",
    responses={409: {"description": "The last OWNER cannot be demoted"}},
)
async def change_role(
    user_id: str, body: RoleIn, access: AdminAccess, session: SessionDep
) -> MemberOut:
    member = await service.change_role(session, access, user_id, body.role)
    user = await identity.read_user(session, member.user_id)
    assert user is not None
    return MemberOut(
        user_id=user.id,
        email=user.email,
        name=user.name,
        role=member.role,
        joined_at=member.created_at,
    )


@router.delete(
    WS + "/members/{user_id}",
    status_code=204,
    summary="Remove a member, or leave (your own id)",
    responses={409: {"description": "The last OWNER cannot leave"}},
)
async def remove_member(user_id: str, access: UserMemberAccess, session: SessionDep) -> Response:
    await service.remove_member(session, access, user_id)
    return Response(status_code=204)


@router.get(WS + "/invitations", response_model=list[InvitationOut], summary="Invitations")
async def read_invitations(access: AdminAccess, session: SessionDep) -> list[InvitationOut]:
    return [invitation_out(i) for i in await service.list_invitations(session, access)]


@router.post(
    WS + "/invitations",
    response_model=InvitationOut,
    status_code=201,
    summary="Invite someone by email",
    responses={
        409: {"description": "Already a member or already invited"},
        429: {"description": "Too many invitations"},
    },
)
async def create_invitation(
    body: InvitationIn,
    access: AdminAccess,
    session: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
) -> InvitationOut:
    invitation = await service.create_invitation(
        session, settings, mailer, access, email=body.email, role=body.role
    )
    return invitation_out(invitation)


@router.post(
    WS + "/invitations/{invitation_id}/resend",
    response_model=InvitationOut,
    summary="Send the invitation again (the previous link stops working)",
)
async def resend_invitation(
    invitation_id: str,
    access: AdminAccess,
    session: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
) -> InvitationOut:
    return invitation_out(
        await service.resend_invitation(session, settings, mailer, access, invitation_id)
    )


@router.delete(WS + "/invitations/{invitation_id}", status_code=204, summary="Revoke an invitation")
async def revoke_invitation(
    invitation_id: str, access: AdminAccess, session: SessionDep
) -> Response:
    await service.revoke_invitation(session, access, invitation_id)
    return Response(status_code=204)


@router.post(
    WS + "/daemon-tokens",
    response_model=IssuedTokenOut,
    status_code=201,
    summary="Mint a daemon token for this workspace (shown once)",
)
async def create_daemon_token(
    body: DaemonTokenIn, access: AdminAccess, session: SessionDep
) -> IssuedTokenOut:
    issued = await identity.create_token(
        session,
        access.principal.user,
        kind="dmn",
        name=body.name,
        workspace_id=access.workspace.id,
        expires_in=timedelta(days=body.expires_in_days) if body.expires_in_days else None,
    )
    return IssuedTokenOut.model_validate(
        {**TokenOut.model_validate(issued.row).model_dump(), "token": issued.plaintext}
    )


@router.get(
    WS + "/daemon-tokens",
    response_model=list[TokenOut],
    summary="The workspace's daemon tokens, whoever minted them (admin)",
)
async def read_daemon_tokens(access: AdminAccess, session: SessionDep) -> list[TokenOut]:
    return [
        TokenOut.model_validate(t)
        for t in await identity.list_workspace_tokens(session, access.workspace.id, "dmn")
    ]


@router.delete(
    WS + "/daemon-tokens/{token_id}",
    status_code=204,
    summary="Revoke a daemon token (admin): its daemon is refused from now on",
    responses={404: {"description": "Unknown or already revoked token"}},
)
async def revoke_daemon_token(token_id: str, access: AdminAccess, session: SessionDep) -> Response:
    await identity.revoke_workspace_token(session, access.workspace.id, "dmn", token_id)
    return Response(status_code=204)


@router.get(
    "/invitations/{token}",
    response_model=InvitationPreview,
    summary="What an invitation link offers (invited address only)",
)
async def read_invitation(token: str, user: CurrentUser, session: SessionDep) -> InvitationPreview:
    invitation, workspace = await service.read_invitation_for(session, user, token)
    return InvitationPreview(
        workspace=workspace_out(workspace, None),
        role=invitation.role,
        state=service.invitation_state(invitation),
        expires_at=invitation.expires_at,
    )


@router.post(
    "/invitations/{token}/accept",
    response_model=WorkspaceOut,
    summary="Accept an invitation (signed in as the invited address)",
)
async def accept_invitation(token: str, user: CurrentUser, session: SessionDep) -> WorkspaceOut:
    workspace = await service.accept_invitation(session, user, token)
    return workspace_out(workspace, None)


@router.post("/invitations/{token}/decline", status_code=204, summary="Decline an invitation")
async def decline_invitation(token: str, user: CurrentUser, session: SessionDep) -> Response:
    await service.decline_invitation(session, user, token)
    return Response(status_code=204)


@router.get(
    WS + "/repositories",
    response_model=list[RepositoryOut],
    summary="Git repositories agent tasks check out",
)
async def read_repositories(access: MemberAccess, session: SessionDep) -> list[RepositoryOut]:
    return [
        RepositoryOut.model_validate(r) for r in await service.list_repositories(session, access)
    ]


@router.post(
    WS + "/repositories",
    response_model=RepositoryOut,
    status_code=201,
    summary="Add a repository (admin)",
    responses={409: {"description": "The name is taken"}, 422: {"description": "Not a git URL"}},
)
async def add_repository(
    body: RepositoryIn, access: AdminAccess, session: SessionDep
) -> RepositoryOut:
    repository = await service.add_repository(
        session, access, name=body.name, url=body.url, default_branch=body.default_branch
    )
    return RepositoryOut.model_validate(repository)


@router.delete(
    WS + "/repositories/{repository_id}",
    status_code=204,
    summary="Remove a repository (admin)",
    responses={404: {"description": "Unknown repository"}},
)
async def remove_repository(
    repository_id: str, access: AdminAccess, session: SessionDep
) -> Response:
    await service.remove_repository(session, access, repository_id)
    return Response(status_code=204)
