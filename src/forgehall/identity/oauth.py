"""Login with OAuth 2 / OpenID Connect providers: GitHub, GitLab, Google, any OIDC issuer.

Providers are built in (configured by ``FORGEHALL_GITHUB_*``, ``_GITLAB_*``, ``_GOOGLE_*``,
``_OIDC_*``) or added at runtime by an instance admin (``LoginProvider`` rows of kind
``gitlab`` or ``oidc``), which take effect on the next request.

Invariants:
- Every flow uses the authorization-code grant with PKCE (S256), always, and for OIDC
  a ``nonce``. The ``state`` value is stored only as its SHA-256, lives 10 minutes and
  is consumed exactly once: the row is deleted (and the deletion committed) before the
  code is exchanged, so a replayed, expired, unknown or other-provider state is refused
  with 400 ``oauth-state`` and changes nothing else.
- An ID token is accepted only when its signature verifies against the provider's JWKS
  with an asymmetric algorithm, ``iss`` is the configured issuer (400 ``oauth-issuer``
  otherwise), ``aud`` contains our client id, it has not expired and its ``nonce`` is
  the one stored with the state. The discovery document must name the configured
  issuer too.
- Identities are keyed by (provider, subject) — ``github``, ``google``,
  ``gitlab:<issuer>``, ``oidc:<issuer>`` — never by email. A new account is created only
  for a provider-verified email that signup admits; an existing account with that email
  is NEVER taken over: the answer is 409 ``identity-not-linked``.
- Tokens, codes, verifiers and client secrets are never logged.

Issuers are compared without a trailing slash (some providers publish one), and stored
without it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import ip_address
from typing import Any, Literal
from urllib.parse import quote, urlencode, urlsplit

import httpx
import structlog
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.core.errors import ProblemError
from forgehall.core.security import equal, hash_token
from forgehall.db.types import CredentialKeyError
from forgehall.identity.models import ExternalIdentity, LoginProvider, OAuthState, User
from forgehall.identity.service import (
    enforce_rate_limit,
    link_identity,
    normalize_email,
    now,
    promote_bootstrap_admin,
    read_user_by_email,
    signup_allowed,
)
from forgehall.settings import Settings

log = structlog.get_logger("forgehall.oauth")

ProviderKind = Literal["github", "gitlab", "google", "oidc"]
RuntimeKind = Literal["gitlab", "oidc"]

BUILTIN_SLUGS: tuple[ProviderKind, ...] = ("github", "gitlab", "google", "oidc")
GOOGLE_ISSUER = "https://accounts.google.com"
OIDC_SCOPES = "openid email profile"
GITHUB_SCOPES = "read:user user:email"
SLUG_PATTERN = re.compile(r"^[a-z0-9-]{1,60}$")
STATE_TTL = timedelta(minutes=10)
DISCOVERY_TTL_SECONDS = 300.0
JWKS_TTL_SECONDS = 600.0
HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
START_PER_IP_PER_HOUR = 120
CLOCK_LEEWAY_SECONDS = 60
#: Only asymmetric signatures: a symmetric (HS*) ID token would be "signed" with our own
#: client secret, and ``none`` is not a signature at all.
ID_TOKEN_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


def normalize_issuer(issuer: str) -> str:
    return issuer.strip().rstrip("/")


# --- providers ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderConfig:
    """A login provider resolved from settings or a ``LoginProvider`` row."""

    slug: str
    kind: ProviderKind
    display_name: str
    client_id: str
    client_secret: str = field(repr=False)
    scopes: str
    issuer: str | None = None
    #: True for the GitLab of ``FORGEHALL_GITLAB_URL``, whose users bootstrap as
    #: ``gitlab:<sub>``; other GitLab instances need ``gitlab:<issuer>:<sub>``.
    default_gitlab: bool = False

    @property
    def identity_provider(self) -> str:
        """The ``ExternalIdentity.provider`` key: one namespace of subjects."""
        if self.kind in ("github", "google"):
            return self.kind
        return f"{self.kind}:{self.issuer}"

    def bootstrap_identity(self, subject: str) -> str:
        """How ``FORGEHALL_BOOTSTRAP_ADMINS`` names this provider's ``subject``."""
        if self.kind in ("github", "google") or (self.kind == "gitlab" and self.default_gitlab):
            return f"{self.kind}:{subject}"
        return f"{self.kind}:{self.issuer}:{subject}"


def _secret(value: Any) -> str:
    return str(value.get_secret_value()) if value is not None else ""


BUILTIN_SLUGS = ("github", "gitlab", "google", "oidc")
_BUILTIN_NAMES = {"github": "GitHub", "gitlab": "GitLab", "google": "Google"}


def builtin_provider(settings: Settings, slug: str) -> ProviderConfig | None:
    """The provider configured by environment for ``slug``, or None unless its
    configuration is complete (client id and secret; an issuer for generic OIDC)."""
    if slug not in BUILTIN_SLUGS:
        return None
    client_id = getattr(settings, f"{slug}_client_id")
    client_secret = getattr(settings, f"{slug}_client_secret")
    issuer = {
        "gitlab": settings.gitlab_url,
        "google": GOOGLE_ISSUER,
        "oidc": settings.oidc_issuer,
    }.get(slug)
    if not client_id or client_secret is None or (slug == "oidc" and not issuer):
        return None
    return ProviderConfig(
        slug=slug,
        kind=slug,
        display_name=_BUILTIN_NAMES.get(slug, settings.oidc_display_name),
        client_id=client_id,
        client_secret=_secret(client_secret),
        scopes=GITHUB_SCOPES if slug == "github" else OIDC_SCOPES,
        issuer=normalize_issuer(issuer) if issuer else None,
        default_gitlab=slug == "gitlab",
    )


def _encryption_key_required(action: str) -> ProblemError:
    return ProblemError(
        409,
        f"cannot {action}: client secrets are stored encrypted and FORGEHALL_ENCRYPTION_KEY "
        "is not set (or no longer matches); generate one with `forgehall config new-key`, "
        "set it and restart",
        type_="encryption-key-required",
    )


async def resolve_provider(session: AsyncSession, settings: Settings, slug: str) -> ProviderConfig:
    """The enabled provider named ``slug``; 404 when it is unknown or not configured."""
    if slug in BUILTIN_SLUGS:
        provider = builtin_provider(settings, slug)
    else:
        try:
            row = await session.scalar(
                select(LoginProvider).where(
                    LoginProvider.slug == slug, LoginProvider.enabled.is_(True)
                )
            )
        except CredentialKeyError as exc:
            # EncryptedText refuses to read without a key, or with the wrong one.
            log.warning("oauth.provider_unreadable", provider=slug, error=type(exc).__name__)
            raise _encryption_key_required(f"use login provider {slug!r}") from None
        provider = _runtime_provider(row) if row is not None else None
    if provider is None:
        raise ProblemError(404, f"login provider {slug!r} is not configured on this instance")
    return provider


def _runtime_provider(row: LoginProvider) -> ProviderConfig:
    kind: RuntimeKind = "gitlab" if row.kind == "gitlab" else "oidc"
    return ProviderConfig(
        slug=row.slug,
        kind=kind,
        display_name=row.display_name,
        client_id=row.client_id,
        client_secret=row.client_secret,
        scopes=row.scopes,
        issuer=normalize_issuer(row.issuer),
    )


def redirect_uri(settings: Settings, provider: ProviderConfig) -> str:
    return f"{settings.origin}/auth/oauth/{provider.slug}/callback"


def check_redirect_target(target: str) -> str:
    """Accept only a path on this site (no scheme, no host): open-redirect protection.

    Raises:
        ProblemError: 422 ``invalid-redirect`` for anything else.
    """
    parts = urlsplit(target)
    if (
        not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or parts.scheme
        or parts.netloc
        or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in target)
    ):
        raise ProblemError(
            422,
            "redirect_to must be a path on this site starting with a single `/`, "
            "such as /workspaces",
            type_="invalid-redirect",
        )
    return target


# --- talking to providers -------------------------------------------------------------


class DiscoveryDocument(BaseModel):
    """The parts of ``/.well-known/openid-configuration`` this module uses."""

    model_config = ConfigDict(extra="ignore")
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None = None
    token_endpoint_auth_methods_supported: list[str] = Field(
        default_factory=lambda: ["client_secret_basic"]
    )
    id_token_signing_alg_values_supported: list[str] = Field(default_factory=lambda: ["RS256"])


class ProviderClient:
    """HTTP to providers, with per-issuer discovery and per-URI JWKS caches.

    One instance per app. ``transport`` is injectable (a proxy, a test transport); the
    default is a normal network transport.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.transport = transport
        self._discovery: dict[str, tuple[float, DiscoveryDocument]] = {}
        self._jwks: dict[str, tuple[float, KeySet]] = {}

    def http(self, auth: httpx.Auth | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=self.transport,
            auth=auth,
            timeout=HTTP_TIMEOUT,
            follow_redirects=False,
            headers={"user-agent": "Forgehall", "accept": "application/json"},
        )

    async def get_json(self, url: str, *, headers: dict[str, str] | None = None) -> Any:
        """GET a JSON document; 502 ``oauth-provider-error`` when that fails."""
        try:
            async with self.http() as client:
                response = await client.get(url, headers=headers)
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("oauth.provider_failed", url=_without_query(url), error=str(exc)[:200])
            raise _provider_error(f"could not read {_without_query(url)}") from None

    async def discover(self, issuer: str) -> DiscoveryDocument:
        """The issuer's discovery document (cached a few minutes).

        Raises:
            ProblemError: 400 ``oauth-issuer`` when the document names another issuer,
                502 when it cannot be fetched or is malformed.
        """
        cached = self._discovery.get(issuer)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        raw = await self.get_json(f"{issuer}/.well-known/openid-configuration")
        try:
            document = DiscoveryDocument.model_validate(raw)
        except ValidationError:
            raise _provider_error(f"the discovery document of {issuer} is malformed") from None
        if normalize_issuer(document.issuer) != issuer:
            log.warning("oauth.rejected", reason="discovery_issuer_mismatch", issuer=issuer)
            raise ProblemError(
                400,
                f"the discovery document of {issuer} names another issuer "
                f"({document.issuer}); check the configured issuer URL",
                type_="oauth-issuer",
            )
        self._discovery[issuer] = (time.monotonic() + DISCOVERY_TTL_SECONDS, document)
        return document

    async def jwks(self, uri: str, *, refresh: bool = False) -> KeySet:
        """The provider's signing keys (cached; ``refresh`` after a key rotation)."""
        cached = self._jwks.get(uri)
        if not refresh and cached is not None and cached[0] > time.monotonic():
            return cached[1]
        raw = await self.get_json(uri)
        try:
            keys = KeySet.import_key_set(raw)
        except (JoseError, ValueError, TypeError, KeyError):
            raise _provider_error(f"the key set at {uri} is malformed") from None
        self._jwks[uri] = (time.monotonic() + JWKS_TTL_SECONDS, keys)
        return keys

    async def exchange_code(
        self,
        url: str,
        provider: ProviderConfig,
        data: dict[str, str],
        *,
        basic_auth: bool,
    ) -> dict[str, Any]:
        """POST to a token endpoint; 400 ``oauth-token`` when the provider refuses."""
        form = dict(data)
        auth: httpx.BasicAuth | None = None
        if basic_auth:
            # RFC 6749 §2.3.1: id and secret are form-encoded before Basic encoding.
            auth = httpx.BasicAuth(
                quote(provider.client_id, safe=""), quote(provider.client_secret, safe="")
            )
        else:
            form["client_id"] = provider.client_id
            form["client_secret"] = provider.client_secret
        try:
            async with self.http(auth) as client:
                response = await client.post(url, data=form)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("oauth.provider_failed", url=url, error=str(exc)[:200])
            raise _provider_error("the token endpoint did not answer with JSON") from None
        if not isinstance(body, dict):
            raise _provider_error("the token endpoint answered with something other than JSON")
        if "error" in body or response.status_code != 200:
            error = _printable(str(body.get("error", response.status_code)))
            log.info("oauth.rejected", provider=provider.slug, reason="token_refused", error=error)
            raise ProblemError(
                400,
                f"{provider.display_name} refused the authorization code ({error}); "
                "start the sign-in again",
                type_="oauth-token",
            )
        return body


def _provider_error(detail: str) -> ProblemError:
    return ProblemError(
        502,
        f"{detail}; the login provider may be down or misconfigured, try again later",
        type_="oauth-provider-error",
        title="Bad gateway",
    )


def _without_query(url: str) -> str:
    return url.split("?", 1)[0]


def _printable(text: str, limit: int = 300) -> str:
    return "".join(ch for ch in text if ch.isprintable())[:limit]


# --- the flow -------------------------------------------------------------------------


def _pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: BASE64URL(SHA256(ASCII(verifier))) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


async def begin_login(
    session: AsyncSession,
    settings: Settings,
    client: ProviderClient,
    provider: ProviderConfig,
    *,
    redirect_to: str,
    ip: str,
) -> str:
    """Record a pending flow and return the provider URL to send the browser to."""
    check_redirect_target(redirect_to)
    await enforce_rate_limit(
        session,
        f"oauth-start:ip:{ip}",
        START_PER_IP_PER_HOUR,
        timedelta(hours=1),
        "sign-in attempts from this address",
    )
    # Housekeeping, and release the SQLite writer before calling the provider.
    await session.execute(delete(OAuthState).where(OAuthState.expires_at <= now()))
    await session.commit()
    if provider.kind == "github":
        endpoint = f"{settings.github_url.rstrip('/')}/login/oauth/authorize"
    else:
        assert provider.issuer is not None
        endpoint = (await client.discover(provider.issuer)).authorization_endpoint
    state = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)
    nonce = secrets.token_urlsafe(32)
    params = {
        "response_type": "code",
        "client_id": provider.client_id,
        "redirect_uri": redirect_uri(settings, provider),
        "scope": provider.scopes,
        "state": state,
        "code_challenge": _pkce_challenge(verifier),
        "code_challenge_method": "S256",
    }
    if provider.kind == "github":
        params["allow_signup"] = "false"
    else:
        params["nonce"] = nonce
    session.add(
        OAuthState(
            state_hash=hash_token(state),
            provider=provider.slug,
            code_verifier=verifier,
            nonce=nonce,
            redirect_to=redirect_to,
            expires_at=now() + STATE_TTL,
        )
    )
    await session.commit()
    log.info("oauth.login_started", provider=provider.slug)
    separator = "&" if "?" in endpoint else "?"
    return f"{endpoint}{separator}{urlencode(params)}"


@dataclass(frozen=True)
class PendingFlow:
    """What ``begin_login`` stored, recovered from a consumed state."""

    code_verifier: str
    nonce: str
    redirect_to: str


_BAD_STATE = "this sign-in link is unknown, expired or was already used; start the sign-in again"


async def consume_state(
    session: AsyncSession, provider: ProviderConfig, state: str | None
) -> PendingFlow:
    """Delete the state row and return it; 400 ``oauth-state`` unless it was valid.

    The deletion is committed whatever the outcome, so a state works at most once.
    """
    if not state:
        log.info("oauth.rejected", provider=provider.slug, reason="state_missing")
        raise ProblemError(400, _BAD_STATE, type_="oauth-state")
    key = hash_token(state)
    row = await session.scalar(select(OAuthState).where(OAuthState.state_hash == key))
    result = await session.execute(delete(OAuthState).where(OAuthState.state_hash == key))
    await session.commit()
    deleted = int(result.rowcount)  # type: ignore[attr-defined]
    if row is None or deleted != 1 or row.provider != provider.slug or row.expires_at <= now():
        reason = (
            "state_unknown"
            if row is None or deleted != 1
            else "state_wrong_provider"
            if row.provider != provider.slug
            else "state_expired"
        )
        log.info("oauth.rejected", provider=provider.slug, reason=reason)
        raise ProblemError(400, _BAD_STATE, type_="oauth-state")
    return PendingFlow(
        code_verifier=row.code_verifier, nonce=row.nonce, redirect_to=row.redirect_to
    )


@dataclass(frozen=True)
class ProviderIdentity:
    """Who the provider says signed in."""

    subject: str
    email: str | None  # only when the provider verified it
    name: str


async def complete_login(
    session: AsyncSession,
    settings: Settings,
    client: ProviderClient,
    provider: ProviderConfig,
    *,
    code: str | None,
    state: str | None,
    error: str | None = None,
    error_description: str | None = None,
) -> tuple[User, str]:
    """Finish a flow at the callback: the signed-in user and where to send them.

    Raises:
        ProblemError: 400 for a provider error, bad state, refused code or invalid ID
            token; 403 for unverified email, closed signup or a disabled account; 409
            ``identity-not-linked`` when the email belongs to an account not linked to
            this identity.
    """
    if error:
        if state:
            await _discard_state(session, state)
        reason = _printable(error_description or error)
        log.info("oauth.rejected", provider=provider.slug, reason="provider_error", error=error)
        raise ProblemError(
            400,
            f"{provider.display_name} did not sign you in: {reason}",
            type_="oauth-denied",
        )
    flow = await consume_state(session, provider, state)
    if not code:
        log.info("oauth.rejected", provider=provider.slug, reason="code_missing")
        raise ProblemError(400, "the provider sent no authorization code", type_="oauth-code")
    if provider.kind == "github":
        identity = await _github_identity(settings, client, provider, code, flow)
    else:
        identity = await _oidc_identity(settings, client, provider, code, flow)
    user = await login_with_identity(session, settings, provider, identity)
    return user, flow.redirect_to


async def _discard_state(session: AsyncSession, state: str) -> None:
    await session.execute(delete(OAuthState).where(OAuthState.state_hash == hash_token(state)))
    await session.commit()


async def _oidc_identity(
    settings: Settings,
    client: ProviderClient,
    provider: ProviderConfig,
    code: str,
    flow: PendingFlow,
) -> ProviderIdentity:
    assert provider.issuer is not None
    document = await client.discover(provider.issuer)
    methods = document.token_endpoint_auth_methods_supported
    basic = "client_secret_basic" in methods or "client_secret_post" not in methods
    tokens = await client.exchange_code(
        document.token_endpoint,
        provider,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri(settings, provider),
            "code_verifier": flow.code_verifier,
        },
        basic_auth=basic,
    )
    raw = tokens.get("id_token")
    if not isinstance(raw, str):
        raise _provider_error("the token endpoint returned no ID token (is `openid` a scope?)")
    algorithms = ID_TOKEN_ALGORITHMS & set(document.id_token_signing_alg_values_supported)
    checks: dict[str, Any] = {
        "issuer": provider.issuer,
        "client_id": provider.client_id,
        "nonce": flow.nonce,
        "algorithms": algorithms or {"RS256"},
    }
    try:
        claims = validate_id_token(raw, await client.jwks(document.jwks_uri), **checks)
    except InvalidKeyIdError:
        # The provider may have rotated its keys since we cached them: read them again.
        keys = await client.jwks(document.jwks_uri, refresh=True)
        try:
            claims = validate_id_token(raw, keys, **checks)
        except InvalidKeyIdError:
            log.info("oauth.rejected", provider=provider.slug, reason="id_token_unknown_key")
            raise _bad_id_token("it is signed with a key the provider does not publish") from None
    if "email" not in claims and document.userinfo_endpoint:
        access_token = tokens.get("access_token")
        if isinstance(access_token, str):
            info = await client.get_json(
                document.userinfo_endpoint, headers={"authorization": f"Bearer {access_token}"}
            )
            # OIDC Core §5.3.2: userinfo must be about the ID token's subject.
            if isinstance(info, dict) and info.get("sub") == claims["sub"]:
                claims = {**info, **claims}
    verified = claims.get("email_verified") in (True, "true")
    email = claims.get("email")
    name = claims.get("name") or claims.get("preferred_username") or ""
    return ProviderIdentity(
        subject=claims["sub"],
        email=email if verified and isinstance(email, str) and email else None,
        name=str(name),
    )


def validate_id_token(
    raw: str,
    keys: KeySet,
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    algorithms: set[str] | frozenset[str],
) -> dict[str, Any]:
    """Verify an ID token's signature and claims; return its claims.

    Raises:
        InvalidKeyIdError: the token names a key the set does not hold (refresh, retry).
        ProblemError: 400 ``oauth-issuer`` for a foreign issuer, 400 ``oauth-id-token``
            for any other failure (signature, audience, expiry, nonce, subject).
    """
    try:
        token = jwt.decode(raw, keys, algorithms=sorted(algorithms))
    except InvalidKeyIdError:
        raise
    except (JoseError, ValueError) as exc:
        log.info("oauth.rejected", reason="id_token_signature", error=type(exc).__name__)
        raise _bad_id_token("its signature does not verify") from None
    claims = token.claims
    if not isinstance(claims.get("iss"), str) or normalize_issuer(claims["iss"]) != issuer:
        log.info("oauth.rejected", reason="id_token_issuer", issuer=issuer)
        raise ProblemError(
            400,
            f"the ID token was not issued by {issuer}; start the sign-in again",
            type_="oauth-issuer",
        )
    registry = jwt.JWTClaimsRegistry(
        leeway=CLOCK_LEEWAY_SECONDS,
        sub={"essential": True},
        aud={"essential": True, "value": client_id},
        exp={"essential": True},
        nonce={"essential": True},
    )
    try:
        registry.validate(claims)
    except JoseError as exc:
        log.info("oauth.rejected", reason="id_token_claims", error=str(exc)[:200])
        raise _bad_id_token(f"its claims are not acceptable ({exc})") from None
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if len(audiences) > 1 and claims.get("azp") != client_id:
        log.info("oauth.rejected", reason="id_token_azp")
        raise _bad_id_token("it was issued to another party (azp)")
    if not isinstance(claims["nonce"], str) or not equal(claims["nonce"], nonce):
        log.info("oauth.rejected", reason="id_token_nonce")
        raise _bad_id_token("its nonce does not match this sign-in")
    return claims


def _bad_id_token(why: str) -> ProblemError:
    return ProblemError(400, f"the provider's ID token was refused: {why}", type_="oauth-id-token")


# --- GitHub (OAuth 2, not OIDC) ---------------------------------------------------------


class GitHubUser(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: int
    login: str
    name: str | None = None


class GitHubEmail(BaseModel):
    model_config = ConfigDict(extra="ignore")
    email: str
    primary: bool = False
    verified: bool = False


async def _github_identity(
    settings: Settings,
    client: ProviderClient,
    provider: ProviderConfig,
    code: str,
    flow: PendingFlow,
) -> ProviderIdentity:
    tokens = await client.exchange_code(
        f"{settings.github_url.rstrip('/')}/login/oauth/access_token",
        provider,
        {
            "code": code,
            "redirect_uri": redirect_uri(settings, provider),
            "code_verifier": flow.code_verifier,
        },
        basic_auth=False,
    )
    access_token = tokens.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise _provider_error("GitHub returned no access token")
    api = settings.github_api_url.rstrip("/")
    headers = {
        "authorization": f"Bearer {access_token}",
        "accept": "application/vnd.github+json",
        "x-github-api-version": "2022-11-28",
    }
    try:
        user = GitHubUser.model_validate(await client.get_json(f"{api}/user", headers=headers))
        emails = [
            GitHubEmail.model_validate(item)
            for item in await client.get_json(f"{api}/user/emails", headers=headers)
        ]
    except (ValidationError, TypeError):
        raise _provider_error("GitHub answered /user or /user/emails unexpectedly") from None
    primary = next((e.email for e in emails if e.primary and e.verified), None)
    return ProviderIdentity(subject=str(user.id), email=primary, name=user.name or user.login)


# --- accounts ---------------------------------------------------------------------------


async def login_with_identity(
    session: AsyncSession, settings: Settings, provider: ProviderConfig, identity: ProviderIdentity
) -> User:
    """The account of a provider identity, creating it when signup allows.

    Never attaches an identity to an existing account found by email.
    """
    key = provider.identity_provider
    email = normalize_email(identity.email) if identity.email else None
    linked = await session.scalar(
        select(ExternalIdentity).where(
            ExternalIdentity.provider == key, ExternalIdentity.subject == identity.subject
        )
    )
    user: User | None = None
    if linked is not None:
        user = await session.get(User, linked.user_id)
        if email and linked.email != email:
            linked.email = email
    if user is None:
        user = await _create_user(session, settings, provider, identity, email)
    if user.is_disabled:
        await session.commit()
        log.info("oauth.rejected", provider=provider.slug, reason="account_disabled")
        raise ProblemError(
            403, "this account is disabled; ask an administrator", type_="account-disabled"
        )
    # The account's own address, not the provider's current claim: a provider that later
    # reports a listed address must not promote an unrelated account.
    identities = [provider.bootstrap_identity(identity.subject), f"email:{user.email}"]
    await promote_bootstrap_admin(session, settings, user, identities)
    user.last_login_at = now()
    await session.commit()
    log.info("oauth.login_succeeded", provider=provider.slug, user_id=user.id)
    return user


async def _create_user(
    session: AsyncSession,
    settings: Settings,
    provider: ProviderConfig,
    identity: ProviderIdentity,
    email: str | None,
) -> User:
    name = provider.display_name
    if email is None:
        await session.commit()
        log.info("oauth.rejected", provider=provider.slug, reason="email_not_verified")
        raise ProblemError(
            403,
            f"{name} did not confirm an email address for this account; verify your "
            f"email at {name} (and make it primary), or sign in with an email code",
            type_="email-not-verified",
        )
    if await read_user_by_email(session, email) is not None:
        await session.commit()
        log.info("oauth.rejected", provider=provider.slug, reason="identity_not_linked")
        raise ProblemError(
            409,
            f"an account with {email} already exists but is not linked to this {name} "
            "login; sign in with a one-time email code first, then link it",
            type_="identity-not-linked",
        )
    if not await signup_allowed(session, settings, email):
        await session.commit()
        log.info("oauth.rejected", provider=provider.slug, reason="signup_closed")
        raise ProblemError(
            403,
            "signup is closed on this instance; ask an administrator for an invitation",
            type_="signup-closed",
        )
    user = User(email=email, name=(identity.name or email.split("@", 1)[0])[:200])
    session.add(user)
    try:
        await session.flush()
        await link_identity(session, user, provider.identity_provider, identity.subject, email)
    except IntegrityError:
        # A concurrent callback created the same account or identity: refuse rather
        # than guess; signing in again finds the identity if it was ours.
        await session.rollback()
        log.info("oauth.rejected", provider=provider.slug, reason="concurrent_signup")
        raise ProblemError(
            409,
            "this account was created by another sign-in at the same moment; sign in again",
            type_="identity-not-linked",
        ) from None
    log.info("oauth.user_created", provider=provider.slug, user_id=user.id)
    return user


# --- runtime providers (admin) ------------------------------------------------------------


def check_issuer_url(issuer: str) -> str:
    """An issuer must be https (http only on localhost); returned without trailing slash."""
    parts = urlsplit(issuer.strip())
    host = (parts.hostname or "").lower()
    local = host == "localhost" or _is_loopback(host)
    if (
        parts.scheme not in ("https", "http")
        or (parts.scheme == "http" and not local)
        or not host
        or parts.query
        or parts.fragment
        or parts.username
        or parts.password
    ):
        raise ProblemError(
            422,
            f"issuer {issuer!r} must be an https URL without query or fragment "
            "(plain http is accepted only for localhost)",
            type_="invalid-issuer",
        )
    return normalize_issuer(issuer)


def _is_loopback(host: str) -> bool:
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


async def list_login_providers(session: AsyncSession) -> list[dict[str, Any]]:
    """Runtime providers without their secrets (the secret column is never read)."""
    columns = (
        LoginProvider.slug,
        LoginProvider.kind,
        LoginProvider.display_name,
        LoginProvider.issuer,
        LoginProvider.client_id,
        LoginProvider.scopes,
        LoginProvider.enabled,
        LoginProvider.created_at,
    )
    result = await session.execute(select(*columns).order_by(LoginProvider.slug))
    return [dict(row._mapping) for row in result]


async def create_login_provider(
    session: AsyncSession,
    *,
    slug: str,
    kind: RuntimeKind,
    display_name: str,
    issuer: str,
    client_id: str,
    client_secret: str,
    scopes: str,
) -> LoginProvider:
    """Add a provider that works from the next request on.

    Raises:
        ProblemError: 422 for a bad slug, issuer or scopes; 409 ``slug-taken`` or
            ``encryption-key-required``.
    """
    if not SLUG_PATTERN.match(slug):
        raise ProblemError(
            422, "slug must be 1-60 characters of a-z, 0-9 and -", type_="invalid-slug"
        )
    if slug in BUILTIN_SLUGS:
        raise ProblemError(
            409,
            f"{slug!r} is the name of a built-in provider; choose another slug",
            type_="slug-taken",
        )
    issuer = check_issuer_url(issuer)
    if "openid" not in scopes.split():
        raise ProblemError(422, "scopes must include `openid`", type_="invalid-scopes")
    taken = await session.scalar(select(LoginProvider.id).where(LoginProvider.slug == slug))
    if taken is not None:
        raise ProblemError(409, f"a login provider {slug!r} already exists", type_="slug-taken")
    row = LoginProvider(
        slug=slug,
        kind=kind,
        display_name=display_name,
        issuer=issuer,
        client_id=client_id,
        client_secret=client_secret,
        scopes=scopes,
        enabled=True,
    )
    session.add(row)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise ProblemError(
            409, f"a login provider {slug!r} already exists", type_="slug-taken"
        ) from None
    except StatementError as exc:
        await session.rollback()
        if isinstance(exc.orig, CredentialKeyError):
            log.warning("oauth.provider_rejected", provider=slug, reason="no_encryption_key")
            raise _encryption_key_required("store the client secret") from None
        raise
    log.info("oauth.provider_created", provider=slug, kind=kind, issuer=issuer)
    return row


async def delete_login_provider(session: AsyncSession, slug: str) -> None:
    """Remove a runtime provider and its pending flows (identities stay, keyed by issuer)."""
    result = await session.execute(delete(LoginProvider).where(LoginProvider.slug == slug))
    if int(result.rowcount) != 1:  # type: ignore[attr-defined]
        await session.rollback()
        raise ProblemError(404, f"login provider {slug!r} was not found")
    await session.execute(delete(OAuthState).where(OAuthState.provider == slug))
    await session.commit()
    log.info("oauth.provider_deleted", provider=slug)
