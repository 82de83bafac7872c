"""OAuth / OIDC login against real providers running locally.

The OIDC provider is ``oidc-provider-mock`` (authlib's authorization server in Flask)
served over real HTTP on 127.0.0.1; GitHub is the look-alike in ``oauth_servers``. The
app under test is driven through its ASGI interface like a browser: start, follow the
redirect to the provider, "authorize" there, and bring the provider's redirect back.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from sqlalchemy import func, select, text, update
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from forgehall.app import AppOptions, create_app
from forgehall.core.security import hash_token
from forgehall.db.engine import Database
from forgehall.identity.models import ExternalIdentity, OAuthState, User, UserSession
from forgehall.settings import Settings
from tests.conftest import ORIGIN, RecordingMailer, make_person, new_client
from tests.identity.oauth_servers import (
    FakeGitHub,
    GitHubAccount,
    KeysFrom,
    RewriteHost,
    Served,
    serve_wsgi,
)

# oidc-provider-mock imports authlib.jose and authlib's httpx integration, which warn at
# import time, and its token endpoint implements authlib's legacy ``get_jwt_config`` hook,
# which warns on every ID token it signs (in the provider's thread). Only those three
# warnings, matched by message, are ignored, and only in this module.
pytestmark = [
    pytest.mark.filterwarnings(
        r"ignore:get_jwt_config\(self, grant\) is deprecated:DeprecationWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:authlib.jose module is deprecated:authlib.deprecate.AuthlibDeprecationWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:The httpx module is deprecated:authlib.deprecate.AuthlibDeprecationWarning"
    ),
]

PROBLEM = "application/problem+json"
CLIENT_ID = "forgehall-test"
CLIENT_SECRET = "s3cret-never-shown-" + "z" * 12


# --- fixtures and helpers ------------------------------------------------------------------


def mock_oidc_app() -> Any:
    import oidc_provider_mock  # type: ignore[import-untyped]

    return oidc_provider_mock.app(require_nonce=True)


@dataclass
class Provider:
    """A running OIDC provider: its issuer URL and a way to set a user's claims."""

    served: Served

    @property
    def issuer(self) -> str:
        return self.served.url

    async def put_user(self, sub: str, **claims: Any) -> None:
        async with httpx.AsyncClient() as http:
            response = await http.put(f"{self.issuer}/users/{sub}", json=claims)
        assert response.status_code == 204, response.text


@pytest.fixture
def provider() -> Iterator[Provider]:
    with serve_wsgi(mock_oidc_app()) as served:
        yield Provider(served)


def build_app(
    settings: Settings, db: Database, mailer: RecordingMailer, **overrides: Any
) -> FastAPI:
    changed = Settings(**{**settings.model_dump(), **overrides})
    return create_app(changed, db=db, options=AppOptions(run_services=False), mailer=mailer)


def oidc_settings(issuer: str, **overrides: Any) -> dict[str, Any]:
    return {
        "oidc_issuer": issuer,
        "oidc_client_id": CLIENT_ID,
        "oidc_client_secret": CLIENT_SECRET,
        **overrides,
    }


@pytest.fixture
async def oidc_app(
    settings: Settings, db: Database, mailer: RecordingMailer, provider: Provider
) -> AsyncIterator[FastAPI]:
    app = build_app(settings, db, mailer, **oidc_settings(provider.issuer))
    async with app.router.lifespan_context(app):
        yield app


async def start(
    client: httpx.AsyncClient, slug: str = "oidc", redirect_to: str = "/"
) -> tuple[str, dict[str, str]]:
    """GET /start; return the provider URL and its query parameters."""
    response = await client.get(f"/auth/oauth/{slug}/start", params={"redirect_to": redirect_to})
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    return location, {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def authorize(location: str, sub: str | None) -> str:
    """Act on the mock's authorization page (``sub`` None denies); return our callback path."""
    form = {"sub": sub} if sub is not None else {"action": "deny"}
    async with httpx.AsyncClient() as browser:
        response = await browser.post(location, data=form)
    assert response.status_code == 302, response.text
    back = response.headers["location"]
    assert back.startswith(ORIGIN), back
    return back.removeprefix(ORIGIN)


async def sign_in(
    client: httpx.AsyncClient, sub: str, slug: str = "oidc", redirect_to: str = "/"
) -> httpx.Response:
    location, _ = await start(client, slug, redirect_to)
    return await client.get(await authorize(location, sub))


def assert_problem(response: httpx.Response, status: int, type_: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == f"/problems/{type_}", response.json()
    assert "set-cookie" not in response.headers


async def count(db: Database, model: Any) -> int:
    async with db.read_session() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def nothing_created(db: Database, *, users: int = 0) -> None:
    assert await count(db, User) == users
    assert await count(db, ExternalIdentity) == 0
    assert await count(db, UserSession) == 0


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# --- the generic OIDC path ------------------------------------------------------------------


async def test_oidc_login_creates_the_user_identity_and_session(
    oidc_app: FastAPI, provider: Provider, db: Database
) -> None:
    await provider.put_user("alice-sub", email="Alice@Example.com", email_verified=True, name="Al")
    async with new_client(oidc_app) as client:
        location, params = await start(client, redirect_to="/workspaces/eng?tab=tasks")
        assert location.startswith(f"{provider.issuer}/oauth2/authorize?")
        assert params["response_type"] == "code"
        assert params["client_id"] == CLIENT_ID
        assert params["redirect_uri"] == f"{ORIGIN}/auth/oauth/oidc/callback"
        assert params["scope"].split() == ["openid", "email", "profile"]
        assert params["code_challenge_method"] == "S256"
        assert params["nonce"]
        assert params["state"]
        async with db.read_session() as session:
            pending = await session.scalar(select(OAuthState))
        assert pending is not None
        assert pending.state_hash == hash_token(params["state"]), "only the hash is stored"
        assert s256(pending.code_verifier) == params["code_challenge"]
        assert pending.nonce == params["nonce"]
        assert (
            timedelta(minutes=9) < pending.expires_at - datetime.now(UTC) <= timedelta(minutes=10)
        )

        callback = await client.get(await authorize(location, "alice-sub"))
        assert callback.status_code == 303, callback.text
        assert callback.headers["location"] == "/workspaces/eng?tab=tasks"
        assert "forgehall_session=" in callback.headers["set-cookie"]
        me = await client.get("/api/v1/me")
    assert me.status_code == 200, me.text
    assert me.json()["email"] == "alice@example.com"
    assert me.json()["name"] == "Al"
    async with db.read_session() as session:
        identity = await session.scalar(select(ExternalIdentity))
        row = await session.scalar(select(UserSession))
    assert identity is not None
    assert row is not None
    assert (identity.provider, identity.subject) == (f"oidc:{provider.issuer}", "alice-sub")
    assert identity.user_id == me.json()["id"]
    assert row.method == "oidc"
    assert await count(db, OAuthState) == 0, "the state was consumed"


async def test_second_login_reuses_the_identity(
    oidc_app: FastAPI, provider: Provider, db: Database
) -> None:
    await provider.put_user("dora", email="dora@example.com", email_verified=True)
    ids = []
    for _ in range(2):
        async with new_client(oidc_app) as client:
            assert (await sign_in(client, "dora")).status_code == 303
            ids.append((await client.get("/api/v1/me")).json()["id"])
    assert ids[0] == ids[1]
    assert await count(db, User) == 1
    assert await count(db, ExternalIdentity) == 1
    assert await count(db, UserSession) == 2


async def test_a_state_works_once(oidc_app: FastAPI, provider: Provider, db: Database) -> None:
    await provider.put_user("erin", email="erin@example.com", email_verified=True)
    async with new_client(oidc_app) as client:
        location, _ = await start(client)
        callback = await authorize(location, "erin")
        assert (await client.get(callback)).status_code == 303
    async with new_client(oidc_app) as attacker:
        replay = await attacker.get(callback)
    assert_problem(replay, 400, "oauth-state")
    assert await count(db, UserSession) == 1


async def test_unknown_or_missing_state_changes_nothing(
    oidc_app: FastAPI, provider: Provider, db: Database
) -> None:
    await provider.put_user("finn", email="finn@example.com", email_verified=True)
    async with new_client(oidc_app) as client:
        location, params = await start(client)
        callback = await authorize(location, "finn")
        forged = callback.replace(params["state"], "forged-state-value")
        assert_problem(await client.get(forged), 400, "oauth-state")
        without = callback.replace(f"state={params['state']}", "")
        assert_problem(await client.get(without), 400, "oauth-state")
    await nothing_created(db)
    assert await count(db, OAuthState) == 1, "a forged state does not consume the real one"


async def test_an_expired_state_is_refused_and_removed(
    oidc_app: FastAPI, provider: Provider, db: Database
) -> None:
    await provider.put_user("gail", email="gail@example.com", email_verified=True)
    async with new_client(oidc_app) as client:
        location, _ = await start(client)
        async with db.session() as session:
            await session.execute(
                update(OAuthState).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
            await session.commit()
        assert_problem(await client.get(await authorize(location, "gail")), 400, "oauth-state")
    await nothing_created(db)
    assert await count(db, OAuthState) == 0


async def test_a_state_is_bound_to_its_provider(
    settings: Settings, db: Database, mailer: RecordingMailer, provider: Provider
) -> None:
    app = build_app(
        settings,
        db,
        mailer,
        gitlab_url=provider.issuer + "/",
        gitlab_client_id=CLIENT_ID,
        gitlab_client_secret=CLIENT_SECRET,
        **oidc_settings(provider.issuer),
    )
    await provider.put_user("hal", email="hal@example.com", email_verified=True)
    async with new_client(app) as client:
        location, _ = await start(client, "gitlab")
        callback = await authorize(location, "hal")
        assert callback.startswith("/auth/oauth/gitlab/callback?")
        swapped = callback.replace("/gitlab/", "/oidc/")
        assert_problem(await client.get(swapped), 400, "oauth-state")
        await nothing_created(db)
        # The same provider through the GitLab slug: identities keyed gitlab:<issuer>.
        assert (await sign_in(client, "hal", "gitlab")).status_code == 303
    async with db.read_session() as session:
        identity = await session.scalar(select(ExternalIdentity))
    assert identity is not None
    assert identity.provider == f"gitlab:{provider.issuer}", "issuer stored without slash"


async def test_provider_error_is_reported_with_its_description(
    oidc_app: FastAPI, db: Database
) -> None:
    async with new_client(oidc_app) as client:
        location, _ = await start(client)
        denied = await client.get(await authorize(location, None))
    assert_problem(denied, 400, "oauth-denied")
    assert "denied the request" in denied.json()["detail"]
    await nothing_created(db)


async def test_discovery_naming_another_issuer_is_refused(
    settings: Settings, db: Database, mailer: RecordingMailer
) -> None:
    # The provider mounted under /tenant still calls itself http://127.0.0.1:<port>.
    mounted = DispatcherMiddleware(NotFound(), {"/tenant": mock_oidc_app()})
    with serve_wsgi(mounted) as served:
        app = build_app(settings, db, mailer, **oidc_settings(f"{served.url}/tenant"))
        async with new_client(app) as client:
            response = await client.get("/auth/oauth/oidc/start")
    assert_problem(response, 400, "oauth-issuer")
    assert served.url in response.json()["detail"]
    assert await count(db, OAuthState) == 0


async def test_an_id_token_from_another_issuer_is_refused(
    settings: Settings, db: Database, mailer: RecordingMailer
) -> None:
    wrapped: RewriteHost | None = None

    def app_with_host(port: int) -> Any:
        return RewriteHost(mock_oidc_app(), paths={"/oauth2/token"}, host=f"localhost:{port}")

    # The port is known only once the server runs, so install the wrapper lazily.
    class Late:
        def __call__(self, environ: Any, start_response: Any) -> Any:
            assert wrapped is not None
            return wrapped(environ, start_response)

    with serve_wsgi(Late()) as served:
        wrapped = app_with_host(served.port)
        await Provider(served).put_user("ivy", email="ivy@example.com", email_verified=True)
        app = build_app(settings, db, mailer, **oidc_settings(served.url))
        async with new_client(app) as client:
            response = await sign_in(client, "ivy")
    assert_problem(response, 400, "oauth-issuer")
    await nothing_created(db)


async def test_an_id_token_signed_by_another_key_is_refused(
    settings: Settings, db: Database, mailer: RecordingMailer
) -> None:
    with serve_wsgi(KeysFrom(mock_oidc_app(), mock_oidc_app())) as served:
        await Provider(served).put_user("jo", email="jo@example.com", email_verified=True)
        app = build_app(settings, db, mailer, **oidc_settings(served.url))
        async with new_client(app) as client:
            response = await sign_in(client, "jo")
    assert_problem(response, 400, "oauth-id-token")
    assert "signature" in response.json()["detail"]
    await nothing_created(db)


async def test_a_nonce_mismatch_is_refused(
    oidc_app: FastAPI, provider: Provider, db: Database
) -> None:
    await provider.put_user("kim", email="kim@example.com", email_verified=True)
    async with new_client(oidc_app) as client:
        location, _ = await start(client)
        async with db.session() as session:
            await session.execute(update(OAuthState).values(nonce="not-the-nonce-sent"))
            await session.commit()
        response = await client.get(await authorize(location, "kim"))
    assert_problem(response, 400, "oauth-id-token")
    assert "nonce" in response.json()["detail"]
    await nothing_created(db)


async def test_an_existing_account_is_never_taken_over_by_email(
    oidc_app: FastAPI, provider: Provider, db: Database
) -> None:
    owner = await make_person(db, "lee@example.com")
    await provider.put_user("someone-else", email="lee@example.com", email_verified=True)
    async with new_client(oidc_app) as client:
        response = await sign_in(client, "someone-else")
        assert (await client.get("/api/v1/me")).status_code == 401
    assert_problem(response, 409, "identity-not-linked")
    assert "email code" in response.json()["detail"]
    assert await count(db, ExternalIdentity) == 0
    assert await count(db, UserSession) == 0
    assert await count(db, User) == 1
    async with db.read_session() as session:
        assert (await session.get(User, owner.user.id)) is not None


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"email": "max@example.com", "email_verified": False}, id="unverified"),
        pytest.param({"email": "max@example.com"}, id="no-email_verified"),
        pytest.param({"email_verified": True}, id="no-email"),
    ],
)
async def test_an_unverified_email_is_refused(
    oidc_app: FastAPI, provider: Provider, db: Database, claims: dict[str, Any]
) -> None:
    await provider.put_user("max", **claims)
    async with new_client(oidc_app) as client:
        response = await sign_in(client, "max")
    assert_problem(response, 403, "email-not-verified")
    await nothing_created(db)


async def test_closed_signup_is_refused(
    settings: Settings, db: Database, mailer: RecordingMailer, provider: Provider
) -> None:
    app = build_app(settings, db, mailer, **oidc_settings(provider.issuer, allow_signup=False))
    await provider.put_user("ned", email="ned@example.com", email_verified=True)
    async with new_client(app) as client:
        response = await sign_in(client, "ned")
    assert_problem(response, 403, "signup-closed")
    await nothing_created(db)


async def test_a_disabled_account_cannot_sign_in(
    oidc_app: FastAPI, provider: Provider, db: Database
) -> None:
    await provider.put_user("ola", email="ola@example.com", email_verified=True)
    async with new_client(oidc_app) as client:
        assert (await sign_in(client, "ola")).status_code == 303
    async with db.session() as session:
        await session.execute(update(User).values(is_disabled=True))
        await session.commit()
    async with new_client(oidc_app) as client:
        response = await sign_in(client, "ola")
    assert_problem(response, 403, "account-disabled")


async def test_bootstrap_admin_by_issuer_and_subject(
    settings: Settings, db: Database, mailer: RecordingMailer, provider: Provider
) -> None:
    app = build_app(
        settings,
        db,
        mailer,
        **oidc_settings(provider.issuer, bootstrap_admins=[f"oidc:{provider.issuer}:pat"]),
    )
    await provider.put_user("pat", email="pat@example.com", email_verified=True)
    await provider.put_user("quinn", email="quinn@example.com", email_verified=True)
    async with new_client(app) as client:
        assert (await sign_in(client, "pat")).status_code == 303
        assert (await client.get("/api/v1/me")).json()["is_instance_admin"] is True
    async with new_client(app) as client:
        assert (await sign_in(client, "quinn")).status_code == 303
        assert (await client.get("/api/v1/me")).json()["is_instance_admin"] is False


async def test_bootstrap_admin_by_verified_email(
    settings: Settings, db: Database, mailer: RecordingMailer, provider: Provider
) -> None:
    app = build_app(
        settings,
        db,
        mailer,
        **oidc_settings(provider.issuer, bootstrap_admins=["email:rae@example.com"]),
    )
    await provider.put_user("rae", email="rae@example.com", email_verified=True)
    async with new_client(app) as client:
        assert (await sign_in(client, "rae")).status_code == 303
        assert (await client.get("/api/v1/me")).json()["is_instance_admin"] is True


async def test_a_provider_changing_its_email_claim_does_not_promote_the_account(
    settings: Settings, db: Database, mailer: RecordingMailer, provider: Provider
) -> None:
    app = build_app(
        settings,
        db,
        mailer,
        **oidc_settings(provider.issuer, bootstrap_admins=["email:boss@example.com"]),
    )
    await provider.put_user("sam", email="sam@example.com", email_verified=True)
    async with new_client(app) as client:
        assert (await sign_in(client, "sam")).status_code == 303
    # Later the provider claims a listed address for the same subject.
    await provider.put_user("sam", email="boss@example.com", email_verified=True)
    async with new_client(app) as client:
        assert (await sign_in(client, "sam")).status_code == 303
        me = (await client.get("/api/v1/me")).json()
    assert me["email"] == "sam@example.com"
    assert me["is_instance_admin"] is False


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/path",
        "/\\evil.example",
        "evil.example",
        "javascript:alert(1)",
        "/ok\r\nSet-Cookie: x=1",
    ],
)
async def test_open_redirects_are_refused(oidc_app: FastAPI, db: Database, target: str) -> None:
    async with new_client(oidc_app) as client:
        response = await client.get("/auth/oauth/oidc/start", params={"redirect_to": target})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert await count(db, OAuthState) == 0


async def test_unknown_or_unconfigured_providers_are_404(oidc_app: FastAPI) -> None:
    async with new_client(oidc_app) as client:
        for slug in ("nope", "github", "google", "gitlab"):
            response = await client.get(f"/auth/oauth/{slug}/start")
            assert response.status_code == 404, (slug, response.text)
            assert response.headers["content-type"] == PROBLEM
        callback = await client.get("/auth/oauth/nope/callback?code=x&state=y")
        assert callback.status_code == 404


# --- runtime providers (admin API) ------------------------------------------------------------


def provider_body(issuer: str, slug: str = "corp", **changes: Any) -> dict[str, Any]:
    return {
        "slug": slug,
        "kind": "oidc",
        "display_name": "Corp SSO",
        "issuer": issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        **changes,
    }


@pytest.fixture
async def keyed_app(
    settings: Settings, db: Database, mailer: RecordingMailer
) -> AsyncIterator[FastAPI]:
    app = build_app(settings, db, mailer, encryption_key=Fernet.generate_key().decode())
    async with app.router.lifespan_context(app):
        yield app


async def test_admin_api_needs_an_instance_admin(keyed_app: FastAPI, db: Database) -> None:
    member = await make_person(db, "member@example.com")
    async with new_client(keyed_app) as client:
        anonymous = await client.get("/api/v1/admin/login-providers")
        listing = await client.get("/api/v1/admin/login-providers", headers=member.headers)
        created = await client.post(
            "/api/v1/admin/login-providers",
            json=provider_body("https://sso.example.com"),
            headers=member.headers,
        )
        deleted = await client.delete("/api/v1/admin/login-providers/x", headers=member.headers)
    assert anonymous.status_code == 401
    assert listing.status_code == created.status_code == deleted.status_code == 403


async def test_runtime_provider_works_at_once_and_never_shows_its_secret(
    keyed_app: FastAPI, provider: Provider, db: Database
) -> None:
    admin = await make_person(db, "root@example.com", admin=True)
    await provider.put_user("sam", email="sam@example.com", email_verified=True)
    async with new_client(keyed_app) as client:
        assert (await client.get("/auth/oauth/corp/start")).status_code == 404
        created = await client.post(
            "/api/v1/admin/login-providers",
            json=provider_body(provider.issuer + "/"),
            headers=admin.headers,
        )
        assert created.status_code == 201, created.text
        listing = await client.get("/api/v1/admin/login-providers", headers=admin.headers)
        response = await sign_in(client, "sam", "corp", redirect_to="/after")
        assert response.status_code == 303, response.text
        assert response.headers["location"] == "/after"
        me = await client.get("/api/v1/me")
    for body in (created.text, listing.text):
        assert CLIENT_SECRET not in body
    assert created.json()["issuer"] == provider.issuer
    assert [p["slug"] for p in listing.json()] == ["corp"]
    assert "client_secret" not in listing.json()[0]
    assert me.json()["email"] == "sam@example.com"
    async with db.read_session() as session:
        stored = await session.scalar(text("SELECT client_secret FROM login_providers"))
        identity = await session.scalar(select(ExternalIdentity))
        row = await session.scalar(select(UserSession))
    assert CLIENT_SECRET not in str(stored), "encrypted at rest"
    assert identity is not None
    assert identity.provider == f"oidc:{provider.issuer}"
    assert row is not None
    assert row.method == "corp"


async def test_deleting_a_runtime_provider_stops_its_logins(
    keyed_app: FastAPI, provider: Provider, db: Database
) -> None:
    admin = await make_person(db, "root@example.com", admin=True)
    async with new_client(keyed_app) as client:
        created = await client.post(
            "/api/v1/admin/login-providers",
            json=provider_body(provider.issuer),
            headers=admin.headers,
        )
        assert created.status_code == 201
        location, _ = await start(client, "corp")
        deleted = await client.delete("/api/v1/admin/login-providers/corp", headers=admin.headers)
        assert deleted.status_code == 204
        again = await client.delete("/api/v1/admin/login-providers/corp", headers=admin.headers)
        assert again.status_code == 404
        assert (await client.get("/auth/oauth/corp/start")).status_code == 404
        await provider.put_user("tia", email="tia@example.com", email_verified=True)
        callback = await client.get(await authorize(location, "tia"))
        assert callback.status_code == 404
    await nothing_created(db, users=1)
    assert await count(db, OAuthState) == 0, "pending flows of the provider are dropped"


@pytest.mark.parametrize(
    ("changes", "status", "type_"),
    [
        ({"slug": "Bad Slug"}, 422, "invalid-slug"),
        ({"slug": "x" * 61}, 422, "validation-error"),
        ({"slug": "github"}, 409, "slug-taken"),
        ({"slug": "oidc"}, 409, "slug-taken"),
        ({"issuer": "http://sso.example.com"}, 422, "invalid-issuer"),
        ({"issuer": "ftp://sso.example.com"}, 422, "invalid-issuer"),
        ({"issuer": "https://sso.example.com?x=1"}, 422, "invalid-issuer"),
        ({"scopes": "email profile"}, 422, "invalid-scopes"),
        ({"kind": "github"}, 422, "validation-error"),
    ],
)
async def test_invalid_runtime_providers_are_refused(
    keyed_app: FastAPI, db: Database, changes: dict[str, Any], status: int, type_: str
) -> None:
    admin = await make_person(db, "root@example.com", admin=True)
    async with new_client(keyed_app) as client:
        response = await client.post(
            "/api/v1/admin/login-providers",
            json={**provider_body("https://sso.example.com"), **changes},
            headers=admin.headers,
        )
    assert response.status_code == status, response.text
    assert response.json()["type"] == f"/problems/{type_}"
    assert CLIENT_SECRET not in response.text


async def test_duplicate_slug_is_a_conflict(keyed_app: FastAPI, db: Database) -> None:
    admin = await make_person(db, "root@example.com", admin=True)
    async with new_client(keyed_app) as client:
        for local in ("http://localhost:9/x", "http://127.0.0.1:9"):
            body = provider_body(local, slug="local-" + str(len(local)), kind="gitlab")
            ok = await client.post(
                "/api/v1/admin/login-providers", json=body, headers=admin.headers
            )
            assert ok.status_code == 201, ok.text
        body = provider_body("https://sso.example.com", slug="local-20")
        dup = await client.post("/api/v1/admin/login-providers", json=body, headers=admin.headers)
    assert_problem(dup, 409, "slug-taken")


async def test_storing_a_secret_without_an_encryption_key_is_a_clear_conflict(
    settings: Settings, db: Database, mailer: RecordingMailer
) -> None:
    app = build_app(settings, db, mailer, encryption_key=None)
    admin = await make_person(db, "root@example.com", admin=True)
    async with new_client(app) as client:
        response = await client.post(
            "/api/v1/admin/login-providers",
            json=provider_body("https://sso.example.com"),
            headers=admin.headers,
        )
        listing = await client.get("/api/v1/admin/login-providers", headers=admin.headers)
    assert_problem(response, 409, "encryption-key-required")
    assert "FORGEHALL_ENCRYPTION_KEY" in response.json()["detail"]
    assert CLIENT_SECRET not in response.text
    assert listing.json() == []


# --- GitHub (OAuth 2) -------------------------------------------------------------------------


@pytest.fixture
def github() -> Iterator[tuple[FakeGitHub, Served]]:
    fake = FakeGitHub(client_id="Iv1.forgehall", client_secret=CLIENT_SECRET)
    with serve_wsgi(fake) as served:
        yield fake, served


def github_app(
    settings: Settings, db: Database, mailer: RecordingMailer, served: Served, **overrides: Any
) -> FastAPI:
    github: dict[str, Any] = {
        "github_client_id": "Iv1.forgehall",
        "github_client_secret": CLIENT_SECRET,
        "github_url": served.url,
        "github_api_url": f"{served.url}/api/v3",
    }
    return build_app(settings, db, mailer, **{**github, **overrides})


async def github_sign_in(client: httpx.AsyncClient, redirect_to: str = "/") -> httpx.Response:
    location, params = await start(client, "github", redirect_to)
    assert params["scope"] == "read:user user:email"
    assert params["code_challenge_method"] == "S256"
    async with httpx.AsyncClient() as browser:
        back = await browser.get(location)
    assert back.status_code == 302, back.text
    return await client.get(back.headers["location"].removeprefix(ORIGIN))


OCTO = GitHubAccount(
    id=583231,
    login="octocat",
    name="The Octocat",
    emails=[
        {"email": "octo@old.example", "primary": False, "verified": True, "visibility": None},
        {"email": "octocat@example.com", "primary": True, "verified": True, "visibility": "public"},
    ],
)


async def test_github_login_uses_the_numeric_id_and_verified_primary_email(
    settings: Settings,
    db: Database,
    mailer: RecordingMailer,
    github: tuple[FakeGitHub, Served],
) -> None:
    fake, served = github
    fake.next_account = OCTO
    app = github_app(settings, db, mailer, served, bootstrap_admins=["github:583231"])
    async with new_client(app) as client:
        response = await github_sign_in(client, "/home")
        assert response.status_code == 303, response.text
        assert response.headers["location"] == "/home"
        me = (await client.get("/api/v1/me")).json()
    async with new_client(app) as client:
        assert (await github_sign_in(client)).status_code == 303
    assert me["email"] == "octocat@example.com"
    assert me["name"] == "The Octocat"
    assert me["is_instance_admin"] is True
    async with db.read_session() as session:
        identities = list((await session.execute(select(ExternalIdentity))).scalars())
    assert [(i.provider, i.subject) for i in identities] == [("github", "583231")]
    assert fake.token_requests[0]["code_verifier"], "PKCE verifier sent to GitHub"
    assert fake.token_requests[0]["redirect_uri"] == f"{ORIGIN}/auth/oauth/github/callback"


async def test_github_without_a_verified_primary_email_is_refused(
    settings: Settings,
    db: Database,
    mailer: RecordingMailer,
    github: tuple[FakeGitHub, Served],
) -> None:
    fake, served = github
    fake.next_account = GitHubAccount(
        id=7,
        login="unverified",
        name=None,
        emails=[
            {"email": "u@example.com", "primary": True, "verified": False, "visibility": None},
            {"email": "v@example.com", "primary": False, "verified": True, "visibility": None},
        ],
    )
    async with new_client(github_app(settings, db, mailer, served)) as client:
        response = await github_sign_in(client)
    assert_problem(response, 403, "email-not-verified")
    await nothing_created(db)


async def test_github_denial_and_a_wrong_secret_are_reported(
    settings: Settings,
    db: Database,
    mailer: RecordingMailer,
    github: tuple[FakeGitHub, Served],
) -> None:
    fake, served = github
    fake.next_account = None
    async with new_client(github_app(settings, db, mailer, served)) as client:
        denied = await github_sign_in(client)
    assert_problem(denied, 400, "oauth-denied")
    assert "denied your application" in denied.json()["detail"]
    assert await count(db, OAuthState) == 0, "the state of a denied flow is dropped"
    fake.next_account = OCTO
    wrong = github_app(settings, db, mailer, served, github_client_secret="wrong-secret")
    async with new_client(wrong) as client:
        refused = await github_sign_in(client)
    assert_problem(refused, 400, "oauth-token")
    assert "incorrect_client_credentials" in refused.json()["detail"]
    await nothing_created(db)


async def test_github_login_never_takes_over_an_account_by_email(
    settings: Settings,
    db: Database,
    mailer: RecordingMailer,
    github: tuple[FakeGitHub, Served],
) -> None:
    await make_person(db, "octocat@example.com")
    fake, served = github
    fake.next_account = OCTO
    async with new_client(github_app(settings, db, mailer, served)) as client:
        response = await github_sign_in(client)
    assert_problem(response, 409, "identity-not-linked")
    assert await count(db, ExternalIdentity) == 0
