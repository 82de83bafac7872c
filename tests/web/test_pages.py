"""Server-rendered pages, driven like a browser without JavaScript (plain form posts)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from fastapi import FastAPI
from pydantic import SecretStr

from forgehall.db.engine import Database
from forgehall.identity.service import create_setup_link
from forgehall.settings import Settings
from tests.conftest import RecordingMailer, make_person, make_workspace, new_client


async def sign_in(
    browser: httpx.AsyncClient, mailer: RecordingMailer, email: str, next_path: str = "/"
) -> httpx.Response:
    await browser.post("/login", data={"email": email, "next": next_path})
    return await browser.post(
        "/login/verify", data={"email": email, "code": mailer.last_code(email), "next": next_path}
    )


async def test_first_run_page_creates_the_admin(
    app: FastAPI, db: Database, settings: Settings
) -> None:
    async with db.session() as session:
        link = await create_setup_link(session, settings)
    assert link is not None
    path = link.removeprefix(settings.origin)
    async with app.router.lifespan_context(app), new_client(app) as browser:
        page = await browser.get(path)
        assert page.status_code == 200
        assert "Create the administrator" in page.text
        bad = await browser.post(path, data={"email": "not an email"})
        assert bad.status_code == 422
        assert 'value="not an email"' in bad.text, "what was typed is kept"
        done = await browser.post(path, data={"email": "boss@example.com"})
        assert done.status_code == 303
        home = await browser.get("/")
        assert "boss@example.com" in home.text
        assert "instance administrator" in home.text
        reused = await browser.post(path, data={"email": "other@example.com"})
        assert reused.status_code == 404


async def test_invitation_page_after_sign_in(
    app: FastAPI, db: Database, mailer: RecordingMailer
) -> None:
    owner = await make_person(db, "owner@example.com")
    await make_workspace(db, owner, "team")
    async with app.router.lifespan_context(app):
        async with new_client(app, origin=None) as api:
            await api.post(
                "/api/v1/workspaces/team/invitations",
                headers=owner.headers,
                json={"email": "guest@example.com", "role": "MEMBER"},
            )
        token = mailer.last_link("guest@example.com")
        async with new_client(app) as browser:
            anonymous = await browser.get(f"/invitations/{token}")
            assert anonymous.status_code == 303
            assert anonymous.headers["location"].startswith("/login?next=%2Finvitations%2F")
            signed = await sign_in(browser, mailer, "guest@example.com", f"/invitations/{token}")
            assert signed.headers["location"] == f"/invitations/{token}"
            page = await browser.get(f"/invitations/{token}")
            assert "Join Team" in page.text
            assert "MEMBER" in page.text
            accepted = await browser.post(f"/invitations/{token}/accept")
            assert accepted.status_code == 303
            home = await browser.get("/")
            assert re.search(r">Team</a>", home.text), (
                "the new workspace is listed on the home page"
            )
            assert "<td>member</td>" in home.text, "with the role it has there"
            out = await browser.post("/logout")
            assert out.headers["location"] == "/login"
            assert (await browser.get("/")).status_code == 303


async def test_login_page_next_is_only_ever_relative(app: FastAPI, mailer: RecordingMailer) -> None:
    evil_targets = ("https://evil.example/", "//evil.example/x", "/\\evil.example")
    async with app.router.lifespan_context(app):
        for index, evil in enumerate(evil_targets):
            async with new_client(app) as browser:
                response = await sign_in(browser, mailer, f"n{index}@example.com", evil)
                assert response.status_code == 303, evil
                assert response.headers["location"] == "/", evil


async def test_a_mail_failure_on_the_login_page_is_a_page_not_json(
    app: FastAPI, mailer: RecordingMailer
) -> None:
    from forgehall.identity.mail import MailDeliveryError, OutgoingMail

    async def broken(mail: OutgoingMail) -> None:
        raise MailDeliveryError("connection refused by smtp.example.com:587")

    mailer.send = broken  # type: ignore[method-assign]
    async with app.router.lifespan_context(app), new_client(app) as browser:
        page = await browser.post(
            "/login", data={"email": "ada@example.com"}, headers={"accept": "text/html"}
        )
        assert page.status_code == 503
        assert page.headers["content-type"].startswith("text/html")
        assert "Could not send the email" in page.text
        assert "smtp.example.com" in page.text
        api = await browser.post("/auth/send-code", json={"email": "bob@example.com"})
        assert api.status_code == 503
        assert api.headers["content-type"].startswith("application/problem+json")


async def test_the_login_page_offers_each_configured_provider(
    tmp_path: Path, db: Database, settings: Settings, mailer: RecordingMailer
) -> None:
    from forgehall.app import AppOptions, create_app

    plain = create_app(settings, db=db, options=AppOptions(run_services=False), mailer=mailer)
    async with plain.router.lifespan_context(plain), new_client(plain) as browser:
        page = await browser.get("/login")
        assert "Sign in with" not in page.text, "no provider configured: email only"
    with_github = settings.model_copy(
        update={"github_client_id": "gh-id", "github_client_secret": SecretStr("gh-secret")}
    )
    app = create_app(with_github, db=db, options=AppOptions(run_services=False), mailer=mailer)
    async with app.router.lifespan_context(app), new_client(app) as browser:
        page = await browser.get("/login", params={"next": "/w/x/board"})
        assert "Sign in with GitHub" in page.text
        assert 'href="/auth/oauth/github/start?redirect_to=%2Fw%2Fx%2Fboard"' in page.text
        away = await browser.get("/login", params={"next": "https://evil.example/"})
        assert 'href="/auth/oauth/github/start?redirect_to=%2F"' in away.text, "off-site next"
