"""Who is calling: the principal behind a request, as FastAPI dependencies.

A request is authenticated by ``Authorization: Bearer <token>`` (personal, daemon or
task token) or by the session cookie (a JWT naming a session row).

CSRF: cookie-authenticated unsafe requests (POST, PUT, PATCH, DELETE) must carry an
``Origin`` header — or, failing that, a ``Referer`` — from the allowed origins
(``FORGEHALL_CORS_ALLOWED_ORIGINS``, default the public origin). Together with
``SameSite=Lax`` cookies this is the origin-check defence; bearer-token requests are not
subject to it because browsers never attach bearer tokens on their own.

Token kinds are not interchangeable: user routes refuse daemon and task tokens (403),
daemon routes refuse the rest. Instance admins are users with a flag; they get no
workspace powers from it (see ``workspaces.access``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import Depends, Request, Response
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.core.deps import SessionDep, SettingsDep
from forgehall.core.errors import ProblemError
from forgehall.identity.mail import Mailer
from forgehall.identity.models import ApiToken, User
from forgehall.identity.service import (
    IssuedSession,
    authenticate_session,
    authenticate_token,
    create_session,
    revoke_session,
)
from forgehall.settings import Settings

SESSION_COOKIE = "forgehall_session"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PrincipalKind = Literal["session", "pat", "dmn", "tsk"]

# Declared for the OpenAPI security schemes; parsing is done below.
_bearer = HTTPBearer(auto_error=False, description="A Forgehall token (fh_pat_…, fh_dmn_…)")
_cookie = APIKeyCookie(
    name=SESSION_COOKIE, auto_error=False, description="Browser session (set by /auth/verify-code)"
)


@dataclass(frozen=True)
class Principal:
    user: User
    kind: PrincipalKind
    session_id: str | None = None
    token: ApiToken | None = None

    @property
    def workspace_id(self) -> str | None:
        """The workspace a daemon or task token is bound to."""
        return self.token.workspace_id if self.token is not None else None


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def origin_of(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def check_csrf(request: Request, allowed: list[str]) -> None:
    if request.method not in UNSAFE_METHODS:
        return
    source = request.headers.get("origin") or request.headers.get("referer") or ""
    origin = origin_of(source)
    if origin is None:
        raise ProblemError(
            403,
            "cross-site request check failed: a cookie-authenticated "
            "request must send an Origin header",
            type_="csrf",
        )
    if origin not in allowed:
        raise ProblemError(
            403,
            f"cross-site request check failed: origin {origin} is not "
            "allowed (FORGEHALL_CORS_ALLOWED_ORIGINS)",
            type_="csrf",
        )


async def get_optional_principal(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    cookie: Annotated[str | None, Depends(_cookie)],
) -> Principal | None:
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ProblemError(
                401, "the Authorization header must be `Bearer <token>`", type_="invalid-token"
            )
        user, token = await authenticate_token(session, value.strip())
        principal = Principal(user=user, kind=token.kind, token=token)  # type: ignore[arg-type]
        request.state.principal = principal
        return principal
    if cookie:
        found = await authenticate_session(session, settings, cookie)
        if found is None:
            return None
        check_csrf(request, settings.allowed_origins)
        user, row = found
        principal = Principal(user=user, kind="session", session_id=row.id)
        request.state.principal = principal
        return principal
    return None


OptionalPrincipal = Annotated[Principal | None, Depends(get_optional_principal)]


async def get_principal(principal: OptionalPrincipal) -> Principal:
    if principal is None:
        raise ProblemError(
            401,
            "sign in (session cookie) or send `Authorization: Bearer <token>`",
            type_="unauthenticated",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


async def get_user_principal(principal: CurrentPrincipal) -> Principal:
    """A person: a browser session or a personal access token."""
    if principal.kind not in ("session", "pat"):
        raise ProblemError(
            403,
            f"a {'daemon' if principal.kind == 'dmn' else 'task'} token "
            "cannot be used here; use a personal access token",
            type_="wrong-token-kind",
        )
    return principal


UserPrincipal = Annotated[Principal, Depends(get_user_principal)]


async def get_current_user(principal: UserPrincipal) -> User:
    return principal.user


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_instance_admin(user: CurrentUser) -> User:
    if not user.is_instance_admin:
        raise ProblemError(403, "this needs an instance administrator", type_="forbidden")
    return user


InstanceAdmin = Annotated[User, Depends(get_instance_admin)]


def get_mailer(request: Request) -> Mailer:
    mailer: Mailer = request.app.state.mailer
    return mailer


MailerDep = Annotated[Mailer, Depends(get_mailer)]


def set_session_cookie(response: Response, settings: Settings, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.session_ttl_hours * 3600,
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
        domain=settings.cookie_domain,
        path="/",
    )


async def start_session(
    request: Request,
    response: Response,
    session: AsyncSession,
    settings: Settings,
    user: User,
    *,
    method: str,
) -> IssuedSession:
    """The one way a browser session begins: a session row, and its cookie on ``response``."""
    issued = await create_session(
        session,
        settings,
        user,
        user_agent=request.headers.get("user-agent", ""),
        ip=client_ip(request),
        method=method[:40],
    )
    set_session_cookie(response, settings, issued.jwt)
    return issued


async def end_session(
    response: Response, principal: Principal | None, session: AsyncSession, settings: Settings
) -> None:
    """Revoke the caller's browser session (if any) and clear its cookie on ``response``."""
    if principal is not None and principal.session_id is not None:
        await revoke_session(session, principal.user, principal.session_id)
    response.delete_cookie(SESSION_COOKIE, path="/", domain=settings.cookie_domain)
