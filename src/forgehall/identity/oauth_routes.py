"""HTTP routes of OAuth / OIDC login and of the runtime login-provider admin API.

``/auth/oauth/{provider}/start`` sends the browser to the provider; the provider sends
it back to ``/auth/oauth/{provider}/callback``, which sets the session cookie and
redirects (303) to the ``redirect_to`` path given at the start. Rules live in
:mod:`forgehall.identity.oauth`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from forgehall.core.deps import SessionDep, SettingsDep
from forgehall.identity import oauth
from forgehall.identity.auth import InstanceAdmin, client_ip, start_session

router = APIRouter(tags=["login"])


def get_provider_client(request: Request) -> oauth.ProviderClient:
    """The app's provider client (set ``app.state.oauth_client`` to inject a transport)."""
    client = getattr(request.app.state, "oauth_client", None)
    if not isinstance(client, oauth.ProviderClient):
        client = oauth.ProviderClient()
        request.app.state.oauth_client = client
    return client


ProviderClientDep = Annotated[oauth.ProviderClient, Depends(get_provider_client)]
NO_STORE = {"cache-control": "no-store"}


@router.get(
    "/auth/oauth/{provider}/start",
    status_code=302,
    response_class=RedirectResponse,
    summary="Start signing in with an OAuth / OIDC provider",
    responses={
        302: {"description": "Redirect to the provider's authorization page"},
        404: {"description": "No such provider is configured"},
        422: {"description": "redirect_to is not a path on this site"},
    },
)
async def start_login(
    provider: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    client: ProviderClientDep,
    redirect_to: Annotated[
        str, Query(max_length=500, description="Path to open after signing in")
    ] = "/",
) -> RedirectResponse:
    config = await oauth.resolve_provider(session, settings, provider)
    url = await oauth.begin_login(
        session, settings, client, config, redirect_to=redirect_to, ip=client_ip(request)
    )
    return RedirectResponse(url, status_code=302, headers=NO_STORE)


@router.get(
    "/auth/oauth/{provider}/callback",
    status_code=303,
    response_class=RedirectResponse,
    summary="Where the provider sends the browser back; sets the session cookie",
    responses={
        303: {"description": "Signed in; redirect to the path given at the start"},
        400: {"description": "Provider error, bad or reused state, refused code or ID token"},
        403: {"description": "Email not verified, signup closed or account disabled"},
        404: {"description": "No such provider is configured"},
        409: {"description": "The email belongs to an account not linked to this login"},
    },
)
async def finish_login(
    provider: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    client: ProviderClientDep,
    code: Annotated[str | None, Query(max_length=2000)] = None,
    state: Annotated[str | None, Query(max_length=200)] = None,
    error: Annotated[str | None, Query(max_length=200)] = None,
    error_description: Annotated[str | None, Query(max_length=1000)] = None,
) -> RedirectResponse:
    config = await oauth.resolve_provider(session, settings, provider)
    user, redirect_to = await oauth.complete_login(
        session,
        settings,
        client,
        config,
        code=code,
        state=state,
        error=error,
        error_description=error_description,
    )
    response = RedirectResponse(redirect_to, status_code=303, headers=NO_STORE)
    await start_session(request, response, session, settings, user, method=config.slug)
    return response


# --- admin: runtime login providers ---------------------------------------------------


class LoginProviderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slug: str = Field(min_length=1, max_length=60, examples=["corp-gitlab"])
    kind: Literal["gitlab", "oidc"]
    display_name: str = Field(min_length=1, max_length=200, examples=["Corp GitLab"])
    issuer: str = Field(min_length=1, max_length=2000, examples=["https://gitlab.example.com"])
    client_id: str = Field(min_length=1, max_length=300)
    client_secret: SecretStr = Field(min_length=1, max_length=2000)
    scopes: str = Field(oauth.OIDC_SCOPES, min_length=1, max_length=300)


class LoginProviderOut(BaseModel):
    """A runtime provider as shown to admins; the client secret is never returned."""

    model_config = ConfigDict(from_attributes=True)
    slug: str
    kind: str
    display_name: str
    issuer: str
    client_id: str
    scopes: str
    enabled: bool
    created_at: datetime


@router.get(
    "/api/v1/admin/login-providers",
    response_model=list[LoginProviderOut],
    tags=["admin"],
    summary="Login providers added at runtime (admin)",
)
async def read_login_providers(_: InstanceAdmin, session: SessionDep) -> list[LoginProviderOut]:
    rows = await oauth.list_login_providers(session)
    return [LoginProviderOut.model_validate(row) for row in rows]


@router.post(
    "/api/v1/admin/login-providers",
    response_model=LoginProviderOut,
    status_code=201,
    tags=["admin"],
    summary="Add a GitLab or OIDC login provider, effective at once (admin)",
    responses={
        409: {"description": "Slug taken, or FORGEHALL_ENCRYPTION_KEY is not set"},
        422: {"description": "Invalid slug, issuer or scopes"},
    },
)
async def create_login_provider(
    body: LoginProviderIn, _: InstanceAdmin, session: SessionDep
) -> LoginProviderOut:
    row = await oauth.create_login_provider(
        session,
        slug=body.slug,
        kind=body.kind,
        display_name=body.display_name,
        issuer=body.issuer,
        client_id=body.client_id,
        client_secret=body.client_secret.get_secret_value(),
        scopes=body.scopes,
    )
    return LoginProviderOut.model_validate(row)


@router.delete(
    "/api/v1/admin/login-providers/{slug}",
    status_code=204,
    tags=["admin"],
    summary="Remove a runtime login provider (admin)",
)
async def delete_login_provider(slug: str, _: InstanceAdmin, session: SessionDep) -> Response:
    await oauth.delete_login_provider(session, slug)
    return Response(status_code=204)
