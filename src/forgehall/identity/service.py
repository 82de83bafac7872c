"""Identity rules: email-code login, signup controls, sessions, tokens, instance admins.

Invariants:
- A login code is six random digits, stored as an HMAC, valid 10 minutes, good for one
  successful use and at most 5 attempts; a new code replaces the previous one.
- ``send_login_code`` answers the same way whether or not the account exists, and
  whether or not signup would admit the address (nothing is sent when it would not).
- Sessions are rows; a JWT names its row, so revocation takes effect at once.
- Bearer tokens are found by the SHA-256 of the presented value; a token of the wrong
  kind for the route is refused, an expired or revoked one is refused.
- Instance-admin promotion from ``FORGEHALL_BOOTSTRAP_ADMINS`` happens on login, is
  idempotent and never demotes; the break-glass token promotes only while no admin
  exists, atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

import structlog
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.core.errors import ProblemError
from forgehall.core.security import (
    InvalidSessionToken,
    decode_session_jwt,
    encode_session_jwt,
    equal,
    generate_login_code,
    generate_token,
    hash_login_code,
    hash_token,
    token_display_prefix,
    token_kind,
)
from forgehall.db.dialect import transaction_lock
from forgehall.db.ratelimit import hit
from forgehall.identity.mail import Mailer, OutgoingMail
from forgehall.identity.models import (
    ApiToken,
    ExternalIdentity,
    InstanceSetting,
    LoginCode,
    OneTimeLink,
    User,
    UserSession,
)
from forgehall.settings import Settings

log = structlog.get_logger("forgehall.identity")

CODE_TTL = timedelta(minutes=10)
CODE_MAX_ATTEMPTS = 5
CODE_RESEND_INTERVAL = timedelta(seconds=60)
SEND_CODE_PER_IP_PER_HOUR = 30
VERIFY_PER_IP_PER_HOUR = 60
VERIFY_PER_ACCOUNT_PER_HOUR = 20
TOKEN_KINDS = {"pat": "personal", "dmn": "daemon", "tsk": "task"}
TokenKindName = Literal["pat", "dmn", "tsk"]


def now() -> datetime:
    return datetime.now(UTC)


def normalize_email(raw: str) -> str:
    """Lower-case and validate an address; 422 with a clear reason when invalid."""
    try:
        result = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ProblemError(
            422, f"{raw!r} is not a valid email address: {exc}", type_="invalid-email"
        ) from None
    return result.normalized.lower()


@dataclass(frozen=True)
class SignupPolicy:
    """Who may create accounts and workspaces: the environment, overridden at runtime by
    an instance admin (``instance_settings`` rows)."""

    allow_signup: bool
    allowed_email_domains: tuple[str, ...]
    allowed_emails: tuple[str, ...]
    disable_workspace_creation: bool

    def admits(self, email: str) -> bool:
        if email in self.allowed_emails:
            return True
        if not self.allow_signup:
            return False
        return (
            not self.allowed_email_domains or email.rsplit("@", 1)[1] in self.allowed_email_domains
        )


SIGNUP_KEYS = (
    "allow_signup",
    "allowed_email_domains",
    "allowed_emails",
    "disable_workspace_creation",
)


async def read_signup_policy(session: AsyncSession, settings: Settings) -> SignupPolicy:
    values: dict[str, Any] = {key: getattr(settings, key) for key in SIGNUP_KEYS}
    rows = await session.execute(
        select(InstanceSetting).where(InstanceSetting.key.in_([f"signup.{k}" for k in SIGNUP_KEYS]))
    )
    for row in rows.scalars():
        values[row.key.removeprefix("signup.")] = json.loads(row.value)
    return SignupPolicy(
        allow_signup=bool(values["allow_signup"]),
        allowed_email_domains=tuple(d.lower().lstrip("@") for d in values["allowed_email_domains"]),
        allowed_emails=tuple(e.lower() for e in values["allowed_emails"]),
        disable_workspace_creation=bool(values["disable_workspace_creation"]),
    )


async def update_signup_policy(session: AsyncSession, admin: User, changes: dict[str, Any]) -> None:
    """Store runtime overrides; a value of None removes the override (back to the env).

    Domains must look like domain names (422 ``invalid-domain``) and addresses are
    normalised (422 ``invalid-email``); nothing is stored when one is refused.
    """
    for domain in changes.get("allowed_email_domains") or []:
        if "@" in domain.strip("@") or "." not in domain:
            raise ProblemError(422, f"{domain!r} is not a domain name", type_="invalid-domain")
    if changes.get("allowed_emails"):
        changes = {
            **changes,
            "allowed_emails": [normalize_email(e) for e in changes["allowed_emails"]],
        }
    for key, value in changes.items():
        assert key in SIGNUP_KEYS
        row = await session.get(InstanceSetting, f"signup.{key}")
        if value is None:
            if row is not None:
                await session.delete(row)
            continue
        if row is None:
            session.add(
                InstanceSetting(key=f"signup.{key}", value=json.dumps(value), updated_by=admin.id)
            )
        else:
            row.value, row.updated_by, row.updated_at = json.dumps(value), admin.id, now()
    await session.commit()
    log.info("admin.signup_policy_changed", user_id=admin.id, keys=sorted(changes))


async def signup_allowed(session: AsyncSession, settings: Settings, email: str) -> bool:
    """Whether a new account may be created for ``email`` (existing ones always log in)."""
    return (await read_signup_policy(session, settings)).admits(email)


async def read_user_by_email(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(select(User).where(User.email == email))


async def read_user(session: AsyncSession, user_id: str) -> User | None:
    return await session.get(User, user_id)


async def list_users(session: AsyncSession) -> list[User]:
    """Every account, by email (for instance admins)."""
    return list((await session.execute(select(User).order_by(User.email))).scalars())


NAME_MAX = 200


async def rename_user(session: AsyncSession, user: User, name: str) -> User:
    """Change the display name (1 to 200 characters; 422 ``invalid-name`` otherwise)."""
    name = name.strip()
    if not name or len(name) > NAME_MAX:
        raise ProblemError(
            422, f"a name needs 1 to {NAME_MAX} characters", type_="invalid-name", field="name"
        )
    user.name = name
    await session.commit()
    log.info("user.renamed", user_id=user.id)
    return user


async def enforce_rate_limit(
    session: AsyncSession, key: str, limit: int, window: timedelta, what: str
) -> None:
    """Count an event; 429 with Retry-After once ``limit`` is exceeded in the window."""
    count, resets = await hit(session, key, window)
    if count > limit:
        retry = max(int((resets - now()).total_seconds()), 1)
        raise ProblemError(
            429,
            f"too many {what}; try again in {retry} seconds",
            headers={"Retry-After": str(retry)},
        )


# --- email codes ------------------------------------------------------------------------


async def send_login_code(
    session: AsyncSession, settings: Settings, mailer: Mailer, raw_email: str, ip: str
) -> None:
    email = normalize_email(raw_email)
    await enforce_rate_limit(
        session,
        f"send-code:ip:{ip}",
        SEND_CODE_PER_IP_PER_HOUR,
        timedelta(hours=1),
        "login code requests from this address",
    )
    latest = await session.scalar(
        select(LoginCode)
        .where(LoginCode.email == email)
        .order_by(LoginCode.created_at.desc())
        .limit(1)
    )
    if latest is not None and now() - latest.created_at < CODE_RESEND_INTERVAL:
        wait = int((CODE_RESEND_INTERVAL - (now() - latest.created_at)).total_seconds()) + 1
        raise ProblemError(
            429,
            f"a code was sent to this address moments ago; ask again in {wait} seconds",
            headers={"Retry-After": str(wait)},
        )
    user = await read_user_by_email(session, email)
    withheld = None
    if user is None and not await signup_allowed(session, settings, email):
        withheld = "signup_not_allowed"
    elif user is not None and user.is_disabled:
        withheld = "account_disabled"
    if withheld is not None:
        # Same answer and the same trace as a real send (so the next request within a
        # minute gets the same 429): do not reveal which addresses may sign in.
        session.add(
            LoginCode(email=email, code_hash="withheld", expires_at=now(), consumed_at=now())
        )
        await session.commit()
        log.info("login.code_withheld", reason=withheld)
        return
    code = generate_login_code()
    secret = _code_key(settings)
    await session.execute(
        update(LoginCode)
        .where(LoginCode.email == email, LoginCode.consumed_at.is_(None))
        .values(consumed_at=now())
    )
    session.add(
        LoginCode(
            email=email, code_hash=hash_login_code(code, email, secret), expires_at=now() + CODE_TTL
        )
    )
    await session.commit()
    await mailer.send(
        OutgoingMail(
            to=email,
            subject="Your Forgehall login code",
            text=(
                f"Your Forgehall login code is {code}\n\nIt is valid for 10 minutes. If you did "
                "not ask for it, ignore this message.\n"
            ),
        )
    )
    log.info("login.code_sent")


def _code_key(settings: Settings) -> str:
    assert settings.jwt_secret is not None, "the server resolves a JWT secret at start-up"
    return settings.jwt_secret.get_secret_value()


_INVALID_CODE = "the code is wrong or has expired; request a new one"


async def verify_login_code(
    session: AsyncSession, settings: Settings, raw_email: str, code: str, ip: str
) -> User:
    """Check a code and return the (possibly new) user; 400 on any mismatch."""
    email = normalize_email(raw_email)
    await enforce_rate_limit(
        session,
        f"verify-code:ip:{ip}",
        VERIFY_PER_IP_PER_HOUR,
        timedelta(hours=1),
        "code attempts from this address",
    )
    # Per account too, so rotating IPs cannot guess one person's codes faster.
    await enforce_rate_limit(
        session,
        f"verify-code:email:{email}",
        VERIFY_PER_ACCOUNT_PER_HOUR,
        timedelta(hours=1),
        "code attempts for this account; request a new code later",
    )
    code = code.strip()
    dev = settings.dev_login_code
    if dev and not settings.is_production and equal(code, dev):
        return await _login_user(session, settings, email, method="dev-code")
    row = await session.scalar(
        select(LoginCode)
        .where(LoginCode.email == email, LoginCode.consumed_at.is_(None))
        .order_by(LoginCode.created_at.desc())
        .limit(1)
    )
    if row is None or row.expires_at <= now() or row.attempts >= CODE_MAX_ATTEMPTS:
        raise ProblemError(400, _INVALID_CODE, type_="invalid-code")
    expected = hash_login_code(code, email, _code_key(settings))
    if not equal(expected, row.code_hash):
        row.attempts += 1
        if row.attempts >= CODE_MAX_ATTEMPTS:
            row.consumed_at = now()
        await session.commit()
        raise ProblemError(400, _INVALID_CODE, type_="invalid-code")
    # Consume with a guarded update so two concurrent verifications cannot both succeed.
    consumed = await session.execute(
        update(LoginCode)
        .where(LoginCode.id == row.id, LoginCode.consumed_at.is_(None))
        .values(consumed_at=now())
    )
    if consumed.rowcount != 1:  # type: ignore[attr-defined]
        await session.rollback()
        raise ProblemError(400, _INVALID_CODE, type_="invalid-code")
    return await _login_user(session, settings, email, method="email")


async def _login_user(session: AsyncSession, settings: Settings, email: str, method: str) -> User:
    user = await read_user_by_email(session, email)
    if user is None:
        if not await signup_allowed(session, settings, email):
            await session.commit()
            raise ProblemError(
                403,
                "signup is closed on this instance; ask an instance administrator to allow your "
                "address",
                type_="signup-closed",
            )
        user = User(email=email, name=email.split("@", 1)[0])
        session.add(user)
        try:
            await session.flush()
        except IntegrityError:
            await session.rollback()
            user = await read_user_by_email(session, email)
            assert user is not None
    if user.is_disabled:
        await session.commit()
        raise ProblemError(
            403, "this account is disabled; ask an administrator", type_="account-disabled"
        )
    await promote_bootstrap_admin(session, settings, user, [f"email:{email}"])
    user.last_login_at = now()
    await session.commit()
    log.info("login.succeeded", user_id=user.id, method=method)
    return user


async def promote_bootstrap_admin(
    session: AsyncSession, settings: Settings, user: User, identities: list[str]
) -> None:
    """Promote ``user`` when one of its identities is listed in FORGEHALL_BOOTSTRAP_ADMINS."""
    wanted = {entry.strip().lower() for entry in settings.bootstrap_admins}
    if not user.is_instance_admin and wanted & {i.lower() for i in identities}:
        user.is_instance_admin = True
        log.info("admin.bootstrapped", user_id=user.id, via="allowlist")


async def bootstrap_with_token(
    session: AsyncSession, settings: Settings, user: User, token: str
) -> None:
    """Break-glass: promote the caller while no instance admin exists (atomic)."""
    configured = settings.bootstrap_token
    if configured is None:
        raise ProblemError(404, "no route matches POST /api/v1/admin/bootstrap")
    if not equal(token, configured.get_secret_value()):
        raise ProblemError(403, "the bootstrap token is wrong", type_="bad-bootstrap-token")
    await transaction_lock(session, "bootstrap-admin")
    result = await session.execute(
        update(User)
        .where(
            User.id == user.id,
            ~select(User.id).where(User.is_instance_admin.is_(True)).exists(),
        )
        .values(is_instance_admin=True)
    )
    await session.commit()
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise ProblemError(
            409,
            "an instance admin already exists; the bootstrap token only "
            "works on an instance without one",
            type_="admin-exists",
        )
    log.info("admin.bootstrapped", user_id=user.id, via="token")


async def count_instance_admins(session: AsyncSession) -> int:
    return int(
        await session.scalar(
            select(func.count()).select_from(User).where(User.is_instance_admin.is_(True))
        )
        or 0
    )


# --- sessions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedSession:
    row: UserSession
    jwt: str


async def create_session(
    session: AsyncSession,
    settings: Settings,
    user: User,
    *,
    user_agent: str,
    ip: str,
    method: str,
) -> IssuedSession:
    ttl = timedelta(hours=settings.session_ttl_hours)
    row = UserSession(
        user_id=user.id,
        expires_at=now() + ttl,
        user_agent=user_agent[:300],
        ip=ip[:64],
        method=method,
    )
    session.add(row)
    await session.commit()
    token = encode_session_jwt(_code_key(settings), user_id=user.id, session_id=row.id, ttl=ttl)
    return IssuedSession(row=row, jwt=token)


async def authenticate_session(
    session: AsyncSession, settings: Settings, token: str
) -> tuple[User, UserSession] | None:
    """The user and session a cookie JWT names, or None when it is not valid now."""
    try:
        claims = decode_session_jwt(_code_key(settings), token)
    except InvalidSessionToken:
        return None
    row = await session.get(UserSession, claims.session_id)
    if (
        row is None
        or row.user_id != claims.user_id
        or row.revoked_at is not None
        or row.expires_at <= now()
    ):
        return None
    user = await session.get(User, row.user_id)
    if user is None or user.is_disabled:
        return None
    if now() - row.last_seen_at > timedelta(minutes=5):
        row.last_seen_at = now()
        await session.commit()
    return user, row


async def list_sessions(session: AsyncSession, user: User) -> list[UserSession]:
    result = await session.execute(
        select(UserSession)
        .where(
            UserSession.user_id == user.id,
            UserSession.revoked_at.is_(None),
            UserSession.expires_at > now(),
        )
        .order_by(UserSession.created_at.desc())
    )
    return list(result.scalars())


async def revoke_session(session: AsyncSession, user: User, session_id: str) -> None:
    result = await session.execute(
        update(UserSession)
        .where(
            UserSession.id == session_id,
            UserSession.user_id == user.id,
            UserSession.revoked_at.is_(None),
        )
        .values(revoked_at=now())
    )
    await session.commit()
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise ProblemError(404, "session was not found")


async def revoke_all_sessions(session: AsyncSession, user: User) -> int:
    result = await session.execute(
        update(UserSession)
        .where(UserSession.user_id == user.id, UserSession.revoked_at.is_(None))
        .values(revoked_at=now())
    )
    await session.commit()
    log.info("sessions.revoked_all", user_id=user.id)
    return int(result.rowcount)  # type: ignore[attr-defined]


# --- tokens -----------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedToken:
    row: ApiToken
    plaintext: str


async def create_token(
    session: AsyncSession,
    user: User,
    *,
    kind: TokenKindName,
    name: str,
    expires_in: timedelta | None = None,
    workspace_id: str | None = None,
    task_id: str | None = None,
) -> IssuedToken:
    issued = _add_token(
        session,
        user,
        kind=kind,
        name=name,
        expires_in=expires_in,
        workspace_id=workspace_id,
        task_id=task_id,
    )
    await session.commit()
    log.info("token.created", token_id=issued.row.id, kind=kind, user_id=user.id)
    return issued


def _add_token(
    session: AsyncSession,
    user: User,
    *,
    kind: TokenKindName,
    name: str,
    expires_in: timedelta | None,
    workspace_id: str | None = None,
    task_id: str | None = None,
    agent_id: str | None = None,
) -> IssuedToken:
    plaintext = generate_token(kind)
    row = ApiToken(
        kind=kind,
        name=name,
        token_hash=hash_token(plaintext),
        prefix=token_display_prefix(plaintext),
        user_id=user.id,
        workspace_id=workspace_id,
        task_id=task_id,
        agent_id=agent_id,
        expires_at=now() + expires_in if expires_in else None,
    )
    session.add(row)
    return IssuedToken(row=row, plaintext=plaintext)


#: A backstop: task tokens are revoked when their task stops running; this bounds the
#: life of one whose revocation was somehow missed.
TASK_TOKEN_TTL = timedelta(hours=24)


def mint_task_token(
    session: AsyncSession, user: User, *, workspace_id: str, task_id: str, agent_id: str
) -> str:
    """A token the agent process of a claimed task acts with (in the caller's
    transaction): bound to the workspace, acting as the agent, revoked when the task
    stops running (:func:`revoke_task_tokens`)."""
    issued = _add_token(
        session,
        user,
        kind="tsk",
        name=f"task {task_id}",
        expires_in=TASK_TOKEN_TTL,
        workspace_id=workspace_id,
        task_id=task_id,
        agent_id=agent_id,
    )
    return issued.plaintext


async def revoke_task_tokens(session: AsyncSession, task_ids: list[str]) -> None:
    """End the task tokens of tasks that stopped running (in the caller's transaction)."""
    if task_ids:
        await session.execute(
            update(ApiToken)
            .where(
                ApiToken.kind == "tsk",
                ApiToken.task_id.in_(task_ids),
                ApiToken.revoked_at.is_(None),
            )
            .values(revoked_at=now())
        )


async def list_tokens(session: AsyncSession, user: User, kind: TokenKindName) -> list[ApiToken]:
    result = await session.execute(
        select(ApiToken)
        .where(ApiToken.user_id == user.id, ApiToken.kind == kind)
        .order_by(ApiToken.created_at.desc())
    )
    return list(result.scalars())


async def list_workspace_tokens(
    session: AsyncSession, workspace_id: str, kind: TokenKindName
) -> list[ApiToken]:
    """A workspace's tokens of one kind (daemon tokens), whoever minted them."""
    result = await session.execute(
        select(ApiToken)
        .where(ApiToken.workspace_id == workspace_id, ApiToken.kind == kind)
        .order_by(ApiToken.created_at.desc())
    )
    return list(result.scalars())


async def revoke_workspace_token(
    session: AsyncSession, workspace_id: str, kind: TokenKindName, token_id: str
) -> None:
    result = await session.execute(
        update(ApiToken)
        .where(
            ApiToken.id == token_id,
            ApiToken.workspace_id == workspace_id,
            ApiToken.kind == kind,
            ApiToken.revoked_at.is_(None),
        )
        .values(revoked_at=now())
    )
    await session.commit()
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise ProblemError(404, "token was not found (or is already revoked)")
    log.info("token.revoked", token_id=token_id)


async def revoke_token(session: AsyncSession, user: User, token_id: str) -> None:
    result = await session.execute(
        update(ApiToken)
        .where(ApiToken.id == token_id, ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=now())
    )
    await session.commit()
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise ProblemError(404, "token was not found (or is already revoked)")
    log.info("token.revoked", token_id=token_id)


async def authenticate_token(session: AsyncSession, plaintext: str) -> tuple[User, ApiToken]:
    """The user and token a bearer value names; 401 with the reason otherwise."""
    kind = token_kind(plaintext)
    if kind not in TOKEN_KINDS:
        raise ProblemError(
            401, "the bearer token is not a Forgehall access token", type_="invalid-token"
        )
    digest = hash_token(plaintext)
    found = (
        await session.execute(
            select(ApiToken, User)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_hash == digest)
        )
    ).first()
    if found is None or not equal(found[0].token_hash, digest) or found[0].kind != kind:
        raise ProblemError(401, "the bearer token is not valid", type_="invalid-token")
    row, user = found
    if row.revoked_at is not None:
        raise ProblemError(401, "the bearer token was revoked", type_="invalid-token")
    if row.expires_at is not None and row.expires_at <= now():
        raise ProblemError(401, "the bearer token has expired", type_="invalid-token")
    if user.is_disabled:
        raise ProblemError(401, "the account of this token is disabled", type_="invalid-token")
    if row.last_used_at is None or now() - row.last_used_at > timedelta(minutes=1):
        row.last_used_at = now()
        await session.commit()
    return user, row


async def link_identity(
    session: AsyncSession, user: User, provider: str, subject: str, email: str
) -> None:
    session.add(ExternalIdentity(user_id=user.id, provider=provider, subject=subject, email=email))
    await session.flush()


# --- first-run setup link -------------------------------------------------------------

SETUP_LINK_TTL = timedelta(hours=24)


async def create_setup_link(session: AsyncSession, settings: Settings) -> str | None:
    """A one-time link that makes its user the first instance admin.

    Only while no instance admin exists; returns None otherwise. The link is printed on
    the server's console, so holding it proves access to the machine.
    """
    if await count_instance_admins(session) > 0:
        return None
    token = generate_token("boot")
    session.add(
        OneTimeLink(
            token_hash=hash_token(token), purpose="first-admin", expires_at=now() + SETUP_LINK_TTL
        )
    )
    await session.commit()
    return f"{settings.origin}/setup/{token}"


async def complete_setup(
    session: AsyncSession, settings: Settings, token: str, raw_email: str
) -> User:
    """Consume a setup link: the account for ``raw_email`` becomes the first admin."""
    email = normalize_email(raw_email)
    await transaction_lock(session, "bootstrap-admin")
    link = await session.get(OneTimeLink, hash_token(token))
    if (
        link is None
        or link.purpose != "first-admin"
        or link.used_at is not None
        or link.expires_at <= now()
    ):
        raise ProblemError(
            404,
            "this setup link is unknown, used or expired; run `forgehall "
            "admin bootstrap` on the server for a new one",
            type_="setup-link",
        )
    if await count_instance_admins(session) > 0:
        raise ProblemError(
            409, "an instance admin already exists; sign in instead", type_="admin-exists"
        )
    link.used_at = now()
    user = await read_user_by_email(session, email)
    if user is None:
        user = User(email=email, name=email.split("@", 1)[0])
        session.add(user)
    user.is_instance_admin = True
    user.is_disabled = False
    user.last_login_at = now()
    await session.commit()
    log.info("admin.bootstrapped", user_id=user.id, via="setup-link")
    return user


# --- CLI browser login --------------------------------------------------------------------

CLI_CODE_TTL = timedelta(minutes=2)


def is_loopback_callback(url: str) -> bool:
    """Only the CLI's own listener on this machine may receive a login code."""
    parts = urlsplit(url)
    return (
        parts.scheme == "http"
        and parts.hostname in ("127.0.0.1", "localhost", "::1")
        and parts.port is not None
        and not parts.username
        and not parts.password
    )


async def create_cli_login_code(session: AsyncSession, user: User) -> str:
    code = generate_token("cli")
    session.add(
        OneTimeLink(
            token_hash=hash_token(code),
            purpose="cli-login",
            user_id=user.id,
            expires_at=now() + CLI_CODE_TTL,
        )
    )
    await session.commit()
    return code


async def exchange_cli_login_code(
    session: AsyncSession, code: str, name: str
) -> tuple[User, IssuedToken]:
    """Trade a one-time code from the browser for a personal access token (once)."""
    link = await session.get(OneTimeLink, hash_token(code))
    if (
        link is None
        or link.purpose != "cli-login"
        or link.used_at is not None
        or link.expires_at <= now()
        or link.user_id is None
    ):
        raise ProblemError(
            400,
            "the login code is unknown, used or expired; run `forgehall login` again",
            type_="invalid-code",
        )
    consumed = await session.execute(
        update(OneTimeLink)
        .where(OneTimeLink.token_hash == link.token_hash, OneTimeLink.used_at.is_(None))
        .values(used_at=now())
    )
    if consumed.rowcount != 1:  # type: ignore[attr-defined]
        raise ProblemError(400, "the login code was already used", type_="invalid-code")
    user = await session.get(User, link.user_id)
    if user is None or user.is_disabled:
        raise ProblemError(403, "this account is disabled", type_="account-disabled")
    return user, await create_token(session, user, kind="pat", name=name)


async def update_user_flags(
    session: AsyncSession,
    admin: User,
    user_id: str,
    *,
    is_instance_admin: bool | None,
    is_disabled: bool | None,
) -> User:
    """Promote, demote, disable or enable an account (instance admins only; audited)."""
    target = await session.get(User, user_id)
    if target is None:
        raise ProblemError(404, f"user {user_id} was not found")
    if target.id == admin.id and (is_instance_admin is False or is_disabled):
        raise ProblemError(
            409, "you cannot demote or disable yourself; ask another admin", type_="self-demotion"
        )
    if is_instance_admin is not None and is_instance_admin != target.is_instance_admin:
        target.is_instance_admin = is_instance_admin
        log.info(
            "admin.user_promoted" if is_instance_admin else "admin.user_demoted",
            user_id=target.id,
            by=admin.id,
        )
    if is_disabled is not None and is_disabled != target.is_disabled:
        target.is_disabled = is_disabled
        log.info(
            "admin.user_disabled" if is_disabled else "admin.user_enabled",
            user_id=target.id,
            by=admin.id,
        )
        if is_disabled:
            await session.execute(
                update(UserSession)
                .where(UserSession.user_id == target.id, UserSession.revoked_at.is_(None))
                .values(revoked_at=now())
            )
    await session.commit()
    return target
