"""HTTP routes of the identity domain: login, sessions, tokens, instance admin."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.core.deps import SessionDep, SettingsDep
from forgehall.identity import oauth, service
from forgehall.identity.auth import (
    CurrentUser,
    InstanceAdmin,
    MailerDep,
    OptionalPrincipal,
    UserPrincipal,
    client_ip,
    end_session,
    start_session,
)
from forgehall.identity.models import User
from forgehall.identity.schemas import (
    Accepted,
    AdminUserPatch,
    BootstrapIn,
    CliExchangeIn,
    IssuedTokenOut,
    LoginButton,
    LoginOut,
    PublicConfig,
    RevokedCount,
    SendCodeIn,
    SessionOut,
    SetupIn,
    SignupPolicyOut,
    SignupPolicyPatch,
    TokenIn,
    TokenOut,
    UserOut,
    VerifyCodeIn,
)
from forgehall.settings import Settings

auth_router = APIRouter(prefix="/auth", tags=["login"])
router = APIRouter(prefix="/api/v1", tags=["account"])
config_router = APIRouter(tags=["login"])


def login_methods(settings: Settings) -> list[str]:
    """Email, plus every built-in provider whose configuration is complete."""
    return ["email", *(s for s in oauth.BUILTIN_SLUGS if oauth.builtin_provider(settings, s))]


async def login_buttons(session: AsyncSession, settings: Settings) -> list[LoginButton]:
    buttons = []
    for slug in oauth.BUILTIN_SLUGS:
        provider = oauth.builtin_provider(settings, slug)
        if provider is not None:
            buttons.append(LoginButton(slug=slug, display_name=provider.display_name))
    for row in await oauth.list_login_providers(session):
        if row["enabled"]:
            buttons.append(LoginButton(slug=row["slug"], display_name=row["display_name"]))
    return buttons


@config_router.get(
    "/api/config", response_model=PublicConfig, summary="Login methods and signup rules, for the UI"
)
async def read_public_config(settings: SettingsDep, session: SessionDep) -> PublicConfig:
    policy = await service.read_signup_policy(session, settings)
    return PublicConfig(
        login_methods=login_methods(settings),
        login_buttons=await login_buttons(session, settings),
        oidc_display_name=settings.oidc_display_name if settings.oidc_client_id else None,
        allow_signup=policy.allow_signup,
        disable_workspace_creation=policy.disable_workspace_creation,
        first_run=await service.count_instance_admins(session) == 0,
    )


@auth_router.post(
    "/send-code",
    response_model=Accepted,
    status_code=202,
    summary="Email a one-time login code",
    responses={
        422: {"description": "Not an email address"},
        429: {"description": "Asked again too soon"},
    },
)
async def send_code(
    body: SendCodeIn,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
) -> Accepted:
    await service.send_login_code(session, settings, mailer, body.email, client_ip(request))
    return Accepted()


@auth_router.post(
    "/verify-code",
    response_model=LoginOut,
    summary="Exchange a login code for a session cookie",
    responses={
        400: {"description": "Wrong, reused or expired code"},
        403: {"description": "Signup closed or account disabled"},
        429: {"description": "Too many attempts"},
    },
)
async def verify_code(
    body: VerifyCodeIn,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
) -> LoginOut:
    user = await service.verify_login_code(
        session, settings, body.email, body.code, client_ip(request)
    )
    if body.token_name is not None:
        token = await service.create_token(session, user, kind="pat", name=body.token_name)
        return LoginOut(
            user=UserOut.model_validate(user),
            token=token.plaintext,
            expires_at=token.row.expires_at,
        )
    issued = await start_session(request, response, session, settings, user, method="email")
    return LoginOut(
        user=UserOut.model_validate(user),
        session_id=issued.row.id,
        expires_at=issued.row.expires_at,
    )


@auth_router.post(
    "/setup",
    response_model=LoginOut,
    summary="First run: become the first instance admin with the console link",
    responses={
        404: {"description": "Unknown, used or expired link"},
        409: {"description": "An admin already exists"},
    },
)
async def complete_setup(
    body: SetupIn, request: Request, response: Response, session: SessionDep, settings: SettingsDep
) -> LoginOut:
    user = await service.complete_setup(session, settings, body.token, body.email)
    issued = await start_session(request, response, session, settings, user, method="setup-link")
    return LoginOut(
        user=UserOut.model_validate(user),
        session_id=issued.row.id,
        expires_at=issued.row.expires_at,
    )


@auth_router.post(
    "/cli/exchange",
    response_model=LoginOut,
    summary="CLI: trade the one-time code from the browser for a token",
    responses={400: {"description": "Unknown, used or expired code"}},
)
async def exchange_cli_code(body: CliExchangeIn, session: SessionDep) -> LoginOut:
    user, issued = await service.exchange_cli_login_code(session, body.code, body.name)
    return LoginOut(user=UserOut.model_validate(user), token=issued.plaintext)


@auth_router.post("/logout", status_code=204, summary="End this browser session")
async def logout(
    principal: OptionalPrincipal, response: Response, session: SessionDep, settings: SettingsDep
) -> Response:
    response = Response(status_code=204)
    await end_session(response, principal, session, settings)
    return response


@router.get("/me", response_model=UserOut, summary="The signed-in account")
async def read_me(user: CurrentUser) -> User:
    return user


@router.get("/me/sessions", response_model=list[SessionOut], summary="Active sessions")
async def read_sessions(principal: UserPrincipal, session: SessionDep) -> list[SessionOut]:
    rows = await service.list_sessions(session, principal.user)
    return [
        SessionOut.model_validate(r).model_copy(update={"current": r.id == principal.session_id})
        for r in rows
    ]


@router.delete("/me/sessions", response_model=RevokedCount, summary="Sign out everywhere")
async def revoke_sessions(user: CurrentUser, session: SessionDep) -> RevokedCount:
    return RevokedCount(revoked=await service.revoke_all_sessions(session, user))


@router.delete("/me/sessions/{session_id}", status_code=204, summary="End one session")
async def revoke_one_session(session_id: str, user: CurrentUser, session: SessionDep) -> Response:
    await service.revoke_session(session, user, session_id)
    return Response(status_code=204)


@router.get("/me/tokens", response_model=list[TokenOut], summary="Personal access tokens")
async def read_tokens(user: CurrentUser, session: SessionDep) -> list[TokenOut]:
    return [TokenOut.model_validate(t) for t in await service.list_tokens(session, user, "pat")]


@router.post(
    "/me/tokens",
    response_model=IssuedTokenOut,
    status_code=201,
    summary="Create a personal access token (shown once)",
)
async def create_token(body: TokenIn, user: CurrentUser, session: SessionDep) -> IssuedTokenOut:
    issued = await service.create_token(
        session,
        user,
        kind="pat",
        name=body.name,
        expires_in=timedelta(days=body.expires_in_days) if body.expires_in_days else None,
    )
    return IssuedTokenOut.model_validate(
        {**TokenOut.model_validate(issued.row).model_dump(), "token": issued.plaintext}
    )


@router.delete("/me/tokens/{token_id}", status_code=204, summary="Revoke a token")
async def revoke_token(token_id: str, user: CurrentUser, session: SessionDep) -> Response:
    await service.revoke_token(session, user, token_id)
    return Response(status_code=204)


@router.post(
    "/admin/bootstrap",
    response_model=UserOut,
    summary="Break-glass: become instance admin while none exists",
    responses={
        404: {"description": "FORGEHALL_BOOTSTRAP_TOKEN is not set"},
        409: {"description": "An instance admin already exists"},
    },
)
async def bootstrap_admin(
    body: BootstrapIn, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> User:
    await service.bootstrap_with_token(session, settings, user, body.token)
    return user


@router.get("/admin/users", response_model=list[UserOut], summary="All accounts (admin)")
async def read_users(_: InstanceAdmin, session: SessionDep) -> list[User]:
    return await service.list_users(session)


@router.patch(
    "/admin/users/{user_id}",
    response_model=UserOut,
    summary="Promote, demote, disable or enable an account (admin)",
)
async def update_user(
    user_id: str, body: AdminUserPatch, admin: InstanceAdmin, session: SessionDep
) -> User:
    return await service.update_user_flags(
        session,
        admin,
        user_id,
        is_instance_admin=body.is_instance_admin,
        is_disabled=body.is_disabled,
    )


def _policy_out(policy: service.SignupPolicy) -> SignupPolicyOut:
    return SignupPolicyOut(
        allow_signup=policy.allow_signup,
        allowed_email_domains=list(policy.allowed_email_domains),
        allowed_emails=list(policy.allowed_emails),
        disable_workspace_creation=policy.disable_workspace_creation,
    )


@router.get(
    "/admin/signup",
    response_model=SignupPolicyOut,
    summary="Effective signup policy (environment plus runtime overrides)",
)
async def read_signup_policy(
    _: InstanceAdmin, session: SessionDep, settings: SettingsDep
) -> SignupPolicyOut:
    return _policy_out(await service.read_signup_policy(session, settings))


@router.patch(
    "/admin/signup",
    response_model=SignupPolicyOut,
    summary="Change the signup policy at runtime (null: back to the environment)",
)
async def update_signup_policy(
    body: SignupPolicyPatch, admin: InstanceAdmin, session: SessionDep, settings: SettingsDep
) -> SignupPolicyOut:
    await service.update_signup_policy(session, admin, body.model_dump(exclude_unset=True))
    return _policy_out(await service.read_signup_policy(session, settings))
