"""Email-code login, sessions, CSRF, signup controls and bootstrap admins over HTTP."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update

from forgehall.app import AppOptions, create_app
from forgehall.db.engine import Database
from forgehall.identity.models import LoginCode, User, UserSession
from forgehall.settings import Settings
from tests.conftest import ORIGIN, TEST_JWT_SECRET, RecordingMailer, make_settings, new_client

PROBLEM = "application/problem+json"


async def login(client: httpx.AsyncClient, mailer: RecordingMailer, email: str) -> httpx.Response:
    sent = await client.post("/auth/send-code", json={"email": email})
    assert sent.status_code == 202, sent.text
    return await client.post(
        "/auth/verify-code", json={"email": email, "code": mailer.last_code(email.lower())}
    )


def app_with(
    settings: Settings, db: Database, mailer: RecordingMailer, **overrides: object
) -> FastAPI:
    changed = Settings(**{**settings.model_dump(), **overrides})
    return create_app(changed, db=db, options=AppOptions(run_services=False), mailer=mailer)


async def test_code_login_sets_a_session_cookie(
    client: httpx.AsyncClient, mailer: RecordingMailer, db: Database
) -> None:
    response = await login(client, mailer, "Alice@Example.com")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user"]["email"] == "alice@example.com"
    cookie = response.headers["set-cookie"]
    assert "forgehall_session=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Secure" not in cookie, "the default origin is plain http"
    me = await client.get("/api/v1/me")
    assert me.status_code == 200
    assert me.json()["email"] == "alice@example.com"
    async with db.read_session() as session:
        row = await session.scalar(select(LoginCode))
    assert row is not None
    assert mailer.last_code("alice@example.com") not in row.code_hash


async def test_the_response_does_not_reveal_whether_an_account_exists(
    client: httpx.AsyncClient, mailer: RecordingMailer
) -> None:
    await login(client, mailer, "known@example.com")
    known = await client.post("/auth/send-code", json={"email": "other-known@example.com"})
    unknown = await client.post("/auth/send-code", json={"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()


async def test_secure_cookie_follows_an_https_origin(
    settings: Settings, db: Database, mailer: RecordingMailer
) -> None:
    app = app_with(settings, db, mailer, public_origin="https://forge.example.com")
    async with new_client(app, origin="https://forge.example.com") as client:
        response = await login(client, mailer, "sec@example.com")
    assert "Secure" in response.headers["set-cookie"]


async def test_wrong_code_then_lockout_after_five_attempts(
    client: httpx.AsyncClient, mailer: RecordingMailer
) -> None:
    await client.post("/auth/send-code", json={"email": "bob@example.com"})
    code = mailer.last_code("bob@example.com")
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(5):
        response = await client.post(
            "/auth/verify-code", json={"email": "bob@example.com", "code": wrong}
        )
        assert response.status_code == 400
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["type"] == "/problems/invalid-code"
    locked = await client.post("/auth/verify-code", json={"email": "bob@example.com", "code": code})
    assert locked.status_code == 400, "the right code after 5 failures must not work"
    assert (await client.get("/api/v1/me")).status_code == 401


async def test_codes_are_single_use_and_expire(
    client: httpx.AsyncClient, mailer: RecordingMailer, db: Database
) -> None:
    first = await login(client, mailer, "carol@example.com")
    assert first.status_code == 200
    code = mailer.last_code("carol@example.com")
    reused = await client.post(
        "/auth/verify-code", json={"email": "carol@example.com", "code": code}
    )
    assert reused.status_code == 400
    async with db.session() as session:
        await session.execute(
            update(LoginCode).values(created_at=datetime.now(UTC) - timedelta(minutes=11))
        )
        await session.commit()
    await client.post("/auth/send-code", json={"email": "carol@example.com"})
    async with db.session() as session:
        await session.execute(
            update(LoginCode)
            .where(LoginCode.consumed_at.is_(None))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()
    expired = await client.post(
        "/auth/verify-code",
        json={"email": "carol@example.com", "code": mailer.last_code("carol@example.com")},
    )
    assert expired.status_code == 400


async def test_one_send_per_address_per_minute_and_a_new_code_replaces_the_old(
    client: httpx.AsyncClient, mailer: RecordingMailer, db: Database
) -> None:
    assert (
        await client.post("/auth/send-code", json={"email": "dan@example.com"})
    ).status_code == 202
    again = await client.post("/auth/send-code", json={"email": "dan@example.com"})
    assert again.status_code == 429
    assert int(again.headers["retry-after"]) > 0
    old = mailer.last_code("dan@example.com")
    async with db.session() as session:
        await session.execute(
            update(LoginCode).values(created_at=datetime.now(UTC) - timedelta(seconds=61))
        )
        await session.commit()
    assert (
        await client.post("/auth/send-code", json={"email": "dan@example.com"})
    ).status_code == 202
    new = mailer.last_code("dan@example.com")
    if new != old:
        stale = await client.post(
            "/auth/verify-code", json={"email": "dan@example.com", "code": old}
        )
        assert stale.status_code == 400
    fresh = await client.post("/auth/verify-code", json={"email": "dan@example.com", "code": new})
    assert fresh.status_code == 200


async def test_send_code_is_rate_limited_per_ip(client: httpx.AsyncClient) -> None:
    statuses = [
        (await client.post("/auth/send-code", json={"email": f"u{i}@example.com"})).status_code
        for i in range(31)
    ]
    assert statuses[:30] == [202] * 30
    assert statuses[30] == 429


@pytest.mark.parametrize(
    "payload", [{"email": "not-an-email"}, {"email": ""}, {}, {"email": "a@b.example", "extra": 1}]
)
async def test_bad_send_code_input_is_422(
    client: httpx.AsyncClient, payload: dict[str, object], mailer: RecordingMailer
) -> None:
    response = await client.post("/auth/send-code", json=payload)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert mailer.sent == []


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/auth/verify-code", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


async def test_signup_controls(settings: Settings, db: Database, mailer: RecordingMailer) -> None:
    app = app_with(
        settings,
        db,
        mailer,
        allow_signup=False,
        allowed_emails=["vip@example.com"],
        dev_login_code="888888",
    )
    async with new_client(app) as client:
        closed = await client.post("/auth/send-code", json={"email": "new@example.com"})
        assert closed.status_code == 202
        assert mailer.sent == [], "no code for an address that may not sign up"
        refused = await client.post(
            "/auth/verify-code", json={"email": "new@example.com", "code": "888888"}
        )
        assert refused.status_code == 403
        assert refused.json()["type"] == "/problems/signup-closed"
        vip = await login(client, mailer, "vip@example.com")
        assert vip.status_code == 200
    domains = app_with(settings, db, mailer, allowed_email_domains=["corp.example"])
    async with new_client(domains) as client:
        await client.post("/auth/send-code", json={"email": "x@elsewhere.example"})
        assert all(m.to != "x@elsewhere.example" for m in mailer.sent)
        assert (await login(client, mailer, "y@corp.example")).status_code == 200
    async with db.read_session() as session:
        emails = set((await session.execute(select(User.email))).scalars())
    assert emails == {"vip@example.com", "y@corp.example"}


async def test_existing_accounts_log_in_when_signup_is_closed(
    settings: Settings, db: Database, mailer: RecordingMailer
) -> None:
    async with new_client(app_with(settings, db, mailer)) as client:
        assert (await login(client, mailer, "old@example.com")).status_code == 200
    async with db.session() as session:
        await session.execute(
            update(LoginCode).values(created_at=datetime.now(UTC) - timedelta(minutes=2))
        )
        await session.commit()
    async with new_client(app_with(settings, db, mailer, allow_signup=False)) as client:
        assert (await login(client, mailer, "old@example.com")).status_code == 200


async def test_dev_code_only_outside_production(
    settings: Settings, db: Database, mailer: RecordingMailer
) -> None:
    dev = app_with(settings, db, mailer, dev_login_code="888888")
    async with new_client(dev) as client:
        ok = await client.post(
            "/auth/verify-code", json={"email": "dev@example.com", "code": "888888"}
        )
        assert ok.status_code == 200
    prod = app_with(
        settings,
        db,
        mailer,
        dev_login_code="888888",
        env="production",
        public_origin="https://f.example",
    )
    async with new_client(prod, origin="https://f.example") as client:
        refused = await client.post(
            "/auth/verify-code", json={"email": "dev@example.com", "code": "888888"}
        )
        assert refused.status_code == 400


async def test_logout_revokes_the_session_at_once(
    client: httpx.AsyncClient, mailer: RecordingMailer
) -> None:
    await login(client, mailer, "eve@example.com")
    cookie = client.cookies["forgehall_session"]
    assert (await client.post("/auth/logout")).status_code == 204
    client.cookies.set("forgehall_session", cookie)  # replaying the old cookie
    assert (await client.get("/api/v1/me")).status_code == 401


async def test_sign_out_everywhere(app: FastAPI, mailer: RecordingMailer, db: Database) -> None:
    async with new_client(app) as laptop, new_client(app) as phone:
        await login(laptop, mailer, "fay@example.com")
        async with db.session() as session:
            await session.execute(
                update(LoginCode).values(created_at=datetime.now(UTC) - timedelta(minutes=2))
            )
            await session.commit()
        await login(phone, mailer, "fay@example.com")
        sessions = (await phone.get("/api/v1/me/sessions")).json()
        assert len(sessions) == 2
        assert sum(s["current"] for s in sessions) == 1
        revoked = await phone.delete("/api/v1/me/sessions")
        assert revoked.json() == {"revoked": 2}
        assert (await laptop.get("/api/v1/me")).status_code == 401
        assert (await phone.get("/api/v1/me")).status_code == 401


async def test_forged_expired_and_foreign_jwts_are_refused(
    client: httpx.AsyncClient, mailer: RecordingMailer, db: Database
) -> None:
    await login(client, mailer, "gus@example.com")
    claims = jwt.decode(
        client.cookies["forgehall_session"],
        TEST_JWT_SECRET,
        algorithms=["HS256"],
        issuer="forgehall",
    )
    variants = {
        "forged": jwt.encode(claims, "another-secret-" * 4, algorithm="HS256"),
        "expired": jwt.encode({**claims, "exp": 1}, TEST_JWT_SECRET, algorithm="HS256"),
        "foreign issuer": jwt.encode({**claims, "iss": "evil"}, TEST_JWT_SECRET, algorithm="HS256"),
        "no sid": jwt.encode(
            {k: v for k, v in claims.items() if k != "sid"}, TEST_JWT_SECRET, algorithm="HS256"
        ),
        "alg none": jwt.encode(claims, None, algorithm="none"),  # type: ignore[arg-type]
        "garbage": "not.a.jwt",
    }
    for name, token in variants.items():
        client.cookies.set("forgehall_session", token)
        response = await client.get("/api/v1/me")
        assert response.status_code == 401, name
    async with db.read_session() as session:
        assert await session.scalar(select(func.count()).select_from(UserSession)) == 1


async def test_csrf_origin_check_on_cookie_requests(app: FastAPI, mailer: RecordingMailer) -> None:
    async with new_client(app) as client:
        await login(client, mailer, "hal@example.com")
        cookie = client.cookies["forgehall_session"]
    cases = {None: 403, "https://evil.example": 403, ORIGIN: 201}
    for origin, expected in cases.items():
        async with new_client(app, origin=origin) as client:
            client.cookies.set("forgehall_session", cookie)
            response = await client.post("/api/v1/me/tokens", json={"name": f"t-{origin}"})
            assert response.status_code == expected, (origin, response.text)
            if expected == 403:
                assert response.json()["type"] == "/problems/csrf"
    async with new_client(app, origin=None) as client:
        client.cookies.set("forgehall_session", cookie)
        assert (await client.get("/api/v1/me")).status_code == 200, "safe methods need no Origin"
        with_referer = await client.post(
            "/api/v1/me/tokens", json={"name": "r"}, headers={"referer": ORIGIN + "/settings"}
        )
        assert with_referer.status_code == 201


async def test_cors_preflight(client: httpx.AsyncClient) -> None:
    ok = await client.options(
        "/api/v1/me", headers={"origin": ORIGIN, "access-control-request-method": "POST"}
    )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    bad = await client.options(
        "/api/v1/me",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    assert bad.status_code == 403


async def test_bootstrap_admins_are_promoted_on_login_and_never_demoted(
    settings: Settings, db: Database, mailer: RecordingMailer
) -> None:
    app = app_with(settings, db, mailer, bootstrap_admins=["email:root@example.com"])
    async with new_client(app) as client:
        assert (await login(client, mailer, "root@example.com")).json()["user"][
            "is_instance_admin"
        ] is True
        assert (await login(client, mailer, "plain@example.com")).json()["user"][
            "is_instance_admin"
        ] is False
    async with db.session() as session:
        await session.execute(
            update(LoginCode).values(created_at=datetime.now(UTC) - timedelta(minutes=2))
        )
        await session.commit()
    later = app_with(settings, db, mailer)  # removed from the list: stays admin
    async with new_client(later) as client:
        assert (await login(client, mailer, "root@example.com")).json()["user"][
            "is_instance_admin"
        ] is True


async def test_break_glass_token(settings: Settings, db: Database, mailer: RecordingMailer) -> None:
    unset = app_with(settings, db, mailer)
    async with new_client(unset) as client:
        await login(client, mailer, "a1@example.com")
        assert (
            await client.post("/api/v1/admin/bootstrap", json={"token": "x"})
        ).status_code == 404
    app = app_with(settings, db, mailer, bootstrap_token="break-glass-" + "k" * 30)
    async with new_client(app) as first, new_client(app) as second:
        first.cookies.update(client.cookies)
        wrong = await first.post("/api/v1/admin/bootstrap", json={"token": "nope"})
        assert wrong.status_code == 403
        await login(second, mailer, "a2@example.com")
        token = {"token": "break-glass-" + "k" * 30}
        results = await asyncio.gather(
            first.post("/api/v1/admin/bootstrap", json=token),
            second.post("/api/v1/admin/bootstrap", json=token),
        )
        assert sorted(r.status_code for r in results) == [200, 409]
    async with db.read_session() as session:
        admins = await session.scalar(
            select(func.count()).select_from(User).where(User.is_instance_admin.is_(True))
        )
    assert admins == 1


async def test_public_config(settings: Settings, db: Database, mailer: RecordingMailer) -> None:
    app = app_with(
        settings, db, mailer, github_client_id="gh", github_client_secret="s", allow_signup=False
    )
    async with new_client(app) as client:
        body = (await client.get("/api/config")).json()
    assert body == {
        "login_methods": ["email", "github"],
        "login_buttons": [{"slug": "github", "display_name": "GitHub"}],
        "oidc_display_name": None,
        "allow_signup": False,
        "disable_workspace_creation": False,
        "first_run": True,
    }


def test_settings_fixture_is_development(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert not make_settings(tmp_path).is_production


async def test_first_run_setup_link(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    from forgehall.identity.service import create_setup_link

    async with db.session() as session:
        link = await create_setup_link(session, settings)
    assert link is not None
    token = link.rsplit("/", 1)[1]
    bad = await client.post(
        "/auth/setup", json={"token": "fh_boot_" + "x" * 43, "email": "boss@example.com"}
    )
    assert bad.status_code == 404
    done = await client.post("/auth/setup", json={"token": token, "email": "Boss@Example.com"})
    assert done.status_code == 200, done.text
    assert done.json()["user"]["is_instance_admin"] is True
    assert (await client.get("/api/v1/me")).json()["email"] == "boss@example.com"
    reused = await client.post("/auth/setup", json={"token": token, "email": "x@example.com"})
    assert reused.status_code == 404
    async with db.session() as session:
        assert await create_setup_link(session, settings) is None, "an admin exists now"
    assert (await client.get("/api/config")).json()["first_run"] is False


async def test_admin_user_management(client: httpx.AsyncClient, db: Database) -> None:
    from tests.conftest import make_person

    root = await make_person(db, "root@example.com", admin=True)
    user = await make_person(db, "user@example.com")
    assert (await client.get("/api/v1/admin/users", headers=user.headers)).status_code == 403
    listed = await client.get("/api/v1/admin/users", headers=root.headers)
    assert [u["email"] for u in listed.json()] == ["root@example.com", "user@example.com"]
    self_demote = await client.patch(
        f"/api/v1/admin/users/{root.user.id}",
        headers=root.headers,
        json={"is_instance_admin": False},
    )
    assert self_demote.status_code == 409
    disabled = await client.patch(
        f"/api/v1/admin/users/{user.user.id}", headers=root.headers, json={"is_disabled": True}
    )
    assert disabled.status_code == 200
    assert (await client.get("/api/v1/me", headers=user.headers)).status_code == 401
    assert (
        await client.patch(
            "/api/v1/admin/users/nope", headers=root.headers, json={"is_disabled": True}
        )
    ).status_code == 404


async def test_signup_policy_changes_at_runtime(
    client: httpx.AsyncClient, db: Database, mailer: RecordingMailer
) -> None:
    from tests.conftest import make_person

    root = await make_person(db, "root@example.com", admin=True)
    user = await make_person(db, "user@example.com")
    assert (
        await client.patch(
            "/api/v1/admin/signup", headers=user.headers, json={"allow_signup": False}
        )
    ).status_code == 403
    closed = await client.patch(
        "/api/v1/admin/signup",
        headers=root.headers,
        json={
            "allow_signup": False,
            "allowed_emails": ["VIP@example.com"],
            "disable_workspace_creation": True,
        },
    )
    assert closed.json() == {
        "allow_signup": False,
        "allowed_email_domains": [],
        "allowed_emails": ["vip@example.com"],
        "disable_workspace_creation": True,
    }
    assert (await client.get("/api/config")).json()["allow_signup"] is False
    await client.post("/auth/send-code", json={"email": "newbie@example.com"})
    assert mailer.sent == [], "no restart needed: signup is closed at once"
    assert (await login(client, mailer, "vip@example.com")).status_code == 200
    refused = await client.post(
        "/api/v1/workspaces",
        headers=user.headers,
        json={"slug": "w", "name": "W", "key_prefix": "W"},
    )
    assert refused.status_code == 403
    reset = await client.patch(
        "/api/v1/admin/signup",
        headers=root.headers,
        json={"allow_signup": None, "disable_workspace_creation": None},
    )
    assert reset.json()["allow_signup"] is True, "null falls back to the environment"
    bad = await client.patch(
        "/api/v1/admin/signup",
        headers=root.headers,
        json={"allowed_email_domains": ["not a domain"]},
    )
    assert bad.status_code == 422


async def test_rate_limits_are_shared_by_replicas(
    settings: Settings, db: Database, mailer: RecordingMailer
) -> None:
    from forgehall.db.url import resolve_database

    other_db = Database(resolve_database(settings))
    replica_a = create_app(settings, db=db, options=AppOptions(run_services=False), mailer=mailer)
    replica_b = create_app(
        settings, db=other_db, options=AppOptions(run_services=False), mailer=mailer
    )
    try:
        async with (
            new_client(replica_a, ip="198.51.100.9") as a,
            new_client(replica_b, ip="198.51.100.9") as b,
        ):
            statuses = []
            for i in range(31):
                target = a if i % 2 else b
                response = await target.post("/auth/send-code", json={"email": f"r{i}@example.com"})
                statuses.append(response.status_code)
    finally:
        await other_db.dispose()
    assert statuses[:30] == [202] * 30
    assert statuses[30] == 429


async def test_the_code_is_never_in_the_subject(
    client: httpx.AsyncClient, mailer: RecordingMailer
) -> None:
    await client.post("/auth/send-code", json={"email": "subj@example.com"})
    code = mailer.last_code("subj@example.com")
    assert code not in mailer.sent[-1].subject, "subjects are logged; codes must not be"


async def test_a_withheld_code_answers_exactly_like_a_sent_one(
    settings: Settings, db: Database, mailer: RecordingMailer
) -> None:
    app = app_with(settings, db, mailer, allow_signup=False)
    async with new_client(app) as client:
        async with db.session() as session:
            session.add(User(email="member@example.com", name="m"))
            await session.commit()
        answers = {}
        for email in ("member@example.com", "stranger@example.com"):
            first = await client.post("/auth/send-code", json={"email": email})
            second = await client.post("/auth/send-code", json={"email": email})
            answers[email] = (first.status_code, first.json(), second.status_code)
    assert answers["member@example.com"][:2] == answers["stranger@example.com"][:2]
    assert answers["member@example.com"][2] == answers["stranger@example.com"][2] == 429
    assert [m.to for m in mailer.sent] == ["member@example.com"]


async def test_mail_failure_is_a_503_problem(settings: Settings, db: Database) -> None:
    from tests.process import free_port

    broken = Settings(
        **{**settings.model_dump(), "smtp_host": "127.0.0.1", "smtp_port": free_port()}
    )
    app = create_app(broken, db=db, options=AppOptions(run_services=False))
    async with new_client(app) as client:
        response = await client.post("/auth/send-code", json={"email": "x@example.com"})
    assert response.status_code == 503
    assert response.json()["type"] == "/problems/mail-unavailable"
    assert response.headers["retry-after"] == "60"


async def test_admin_changes_are_audited(client: httpx.AsyncClient, db: Database) -> None:
    from structlog.testing import capture_logs

    from tests.conftest import make_person

    root = await make_person(db, "root@example.com", admin=True)
    user = await make_person(db, "user@example.com")
    with capture_logs() as logs:
        await client.patch(
            f"/api/v1/admin/users/{user.user.id}",
            headers=root.headers,
            json={"is_instance_admin": True, "is_disabled": True},
        )
    events = {(e["event"], e.get("user_id"), e.get("by")) for e in logs}
    assert ("admin.user_promoted", user.user.id, root.user.id) in events
    assert ("admin.user_disabled", user.user.id, root.user.id) in events


async def test_code_attempts_are_limited_per_account_across_addresses(
    app: FastAPI, mailer: RecordingMailer
) -> None:
    statuses = []
    for attempt in range(21):
        async with new_client(app, ip=f"198.51.100.{attempt + 1}") as client:
            response = await client.post(
                "/auth/verify-code", json={"email": "target@example.com", "code": "000000"}
            )
            statuses.append(response.status_code)
    assert statuses[:20] == [400] * 20
    assert statuses[20] == 429
