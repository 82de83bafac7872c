"""The inbox, personal settings and instance admin pages without JavaScript: plain GETs
and form posts, as a browser with scripts off sends them. Notifications are made by the
board's own services (an assignment, a mention); tokens and sessions are checked by what
they do afterwards (a Bearer call, another browser's next request); secrets never show
again."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI

from forgehall.app import AppOptions, create_app, iter_api_routes
from forgehall.db.engine import Database
from forgehall.identity import oauth
from forgehall.identity import service as identity
from forgehall.settings import Settings
from tests.conftest import Person, RecordingMailer, make_person, make_workspace, new_client

HTML = {"accept": "text/html,application/xhtml+xml", "user-agent": "TestBrowser/1.0"}
DEV_CODE = "424242"
SECRET = "s3cret-client-value-9f8e7d"
FULL_TOKEN = re.compile(r"fh_pat_[A-Za-z0-9_-]{20,}")


@pytest.fixture
def app(settings: Settings, db: Database, mailer: RecordingMailer) -> FastAPI:
    """The app with an encryption key (login providers keep their secret encrypted) and a
    development login code, so each test browser signs in without reading mail."""
    keyed = Settings(
        **{
            **settings.model_dump(),
            "encryption_key": Fernet.generate_key().decode(),
            "dev_login_code": DEV_CODE,
        }
    )
    return create_app(keyed, db=db, options=AppOptions(run_services=False), mailer=mailer)


@pytest.fixture
async def running(app: FastAPI) -> AsyncIterator[FastAPI]:
    async with app.router.lifespan_context(app):
        yield app


@asynccontextmanager
async def browser(app: FastAPI, email: str) -> AsyncIterator[httpx.AsyncClient]:
    """A browser signed in as ``email`` by the sign-in form."""
    async with new_client(app) as client:
        client.headers.update(HTML)
        signed = await client.post(
            "/login/verify", data={"email": email, "code": DEV_CODE, "next": "/"}
        )
        assert signed.status_code == 303, signed.text
        yield client


def badge(page: str) -> str:
    found = re.search(r'<span id="unread-count" class="([^"]*)"[^>]*>(\d+)</span>', page)
    assert found, "the navigation shows the unread badge"
    return f"{found.group(1)}:{found.group(2)}"


def rows(page: str) -> list[tuple[str, str, str]]:
    """The inbox's notifications in order: (id, read|unread, kind)."""
    return re.findall(r'<tr id="n-([0-9a-f]+)" class="(read|unread)" data-kind="(\w+)">', page)


# --- the inbox --------------------------------------------------------------------------------


@pytest.fixture
async def team(db: Database) -> dict[str, Person]:
    ada = await make_person(db, "ada@example.com")
    bob = await make_person(db, "bob@example.com")
    await make_workspace(db, ada, "platform", {"member": bob})
    return {"ada": ada, "bob": bob}


async def test_assignment_and_mention_reach_the_inbox_and_its_badge(
    running: FastAPI, team: dict[str, Person]
) -> None:
    bob_id = team["bob"].user.id
    async with browser(running, "ada@example.com") as ada:
        made = await ada.post("/w/platform/issues", data={"title": "Rotate the keys"})
        assert made.status_code == 303
        key = made.headers["location"].rsplit("/", 1)[1]
        assigned = await ada.post(
            f"/w/platform/issues/{key}/edit", data={"revision": "1", "assignee": f"member:{bob_id}"}
        )
        assert assigned.status_code == 303, assigned.text
        mentioned = await ada.post(
            f"/w/platform/issues/{key}/comments", data={"body": "@bob can you review?"}
        )
        assert mentioned.status_code == 303
        own = await ada.get("/w/platform/inbox")
        assert rows(own.text) == [], "nobody is notified of their own actions"
        assert "You are all caught up" in own.text

    async with browser(running, "bob@example.com") as bob:
        inbox = await bob.get("/w/platform/inbox")
        assert inbox.status_code == 200
        assert "Content-Security-Policy" in inbox.headers
        listed = rows(inbox.text)
        assert sorted(kind for _, _, kind in listed) == ["assigned", "mentioned"]
        assert all(state == "unread" for _, state, _ in listed)
        assert f'href="/w/platform/issues/{key}"' in inbox.text
        assert f"{key} was assigned to you" in inbox.text
        assert "just now" in inbox.text
        assert badge(inbox.text) == "count:2"
        count = await bob.get("/w/platform/inbox/count", headers={"hx-request": "true"})
        assert count.text.strip().startswith('<span id="unread-count" class="count"')
        assert badge(count.text) == "count:2"
        assert 'data-live-url="/w/platform/inbox/count"' in count.text, "it keeps refreshing"
        assert "<nav" not in count.text, "the fragment is the badge alone"

        # Mark read: the count drops, the read one sorts below the unread one.
        first, second = listed[0][0], listed[1][0]
        marked = await bob.post(f"/w/platform/inbox/{first}/read", data={"view": "inbox"})
        assert marked.status_code == 303
        assert marked.headers["location"] == "/w/platform/inbox"
        inbox = await bob.get("/w/platform/inbox")
        assert [(i, s) for i, s, _ in rows(inbox.text)] == [(second, "unread"), (first, "read")]
        assert badge((await bob.get("/w/platform/inbox/count")).text) == "count:1"
        await bob.post(f"/w/platform/inbox/{first}/unread")
        assert badge((await bob.get("/w/platform/inbox/count")).text) == "count:2"

        # Archive hides it from the inbox (and the count); the Archived view has it.
        archived = await bob.post(f"/w/platform/inbox/{second}/archive", data={"view": "inbox"})
        assert archived.status_code == 303
        inbox = await bob.get("/w/platform/inbox")
        assert [i for i, _, _ in rows(inbox.text)] == [first]
        assert badge(inbox.text) == "count:1"
        shelf = await bob.get("/w/platform/inbox?view=archived")
        assert [i for i, _, _ in rows(shelf.text)] == [second]
        assert "Mark all read" not in shelf.text
        restored = await bob.post(f"/w/platform/inbox/{second}/restore", data={"view": "archived"})
        assert restored.headers["location"] == "/w/platform/inbox?view=archived"
        assert "Nothing archived" in (await bob.get(restored.headers["location"])).text

        # Mark all read: nothing unread, a quiet badge, the notifications still listed.
        done = await bob.post("/w/platform/inbox/read-all", data={"view": "inbox"})
        assert done.status_code == 303
        inbox = await bob.get("/w/platform/inbox")
        assert {s for _, s, _ in rows(inbox.text)} == {"read"}
        assert len(rows(inbox.text)) == 2
        assert badge(inbox.text) == "count quiet:0"
        assert "Mark all read" not in inbox.text

        # Unknown notifications and actions are not found; nothing changes.
        assert (await bob.post("/w/platform/inbox/0000/read")).status_code == 404
        assert (await bob.post(f"/w/platform/inbox/{first}/explode")).status_code == 404

    async with browser(running, "eve@example.com") as eve:
        hidden = await eve.get("/w/platform/inbox")
        assert hidden.status_code == 404
        assert "There is nothing here" in hidden.text
        poke = await eve.post(f"/w/platform/inbox/{first}/unread")
        assert poke.status_code == 404
    async with browser(running, "bob@example.com") as bob:
        assert badge((await bob.get("/w/platform/inbox/count")).text) == "count quiet:0"


async def test_someone_elses_notification_is_not_theirs_to_mark(
    running: FastAPI, team: dict[str, Person]
) -> None:
    async with browser(running, "ada@example.com") as ada:
        made = await ada.post("/w/platform/issues", data={"title": "Ping"})
        key = made.headers["location"].rsplit("/", 1)[1]
        await ada.post(f"/w/platform/issues/{key}/comments", data={"body": "@bob ping"})
    async with browser(running, "bob@example.com") as bob:
        [(notification, _, _)] = rows((await bob.get("/w/platform/inbox")).text)
    async with browser(running, "ada@example.com") as ada:
        refused = await ada.post(f"/w/platform/inbox/{notification}/read")
        assert refused.status_code == 404
    async with browser(running, "bob@example.com") as bob:
        assert badge((await bob.get("/w/platform/inbox")).text) == "count:1", "still unread"


# --- personal settings ------------------------------------------------------------------------


def token_rows(page: str) -> dict[str, str]:
    """Token id -> its row's HTML."""
    return dict(re.findall(r'<tr id="token-([0-9a-f]+)">(.*?)</tr>', page, re.S))


async def test_tokens_are_shown_once_work_and_can_be_revoked(
    running: FastAPI, db: Database
) -> None:
    await make_person(db, "ada@example.com")  # has a token named "test" already
    async with browser(running, "ada@example.com") as ada:
        page = await ada.get("/settings")
        assert page.status_code == 200
        assert "ada@example.com" in page.text
        assert len(token_rows(page.text)) == 1

        empty = await ada.post("/settings/tokens", data={"name": "  ", "expires_in_days": "30"})
        assert empty.status_code == 422
        assert 'id="token_name-error"' in empty.text
        assert "a token needs a name" in empty.text
        assert 'value="30"' in empty.text, "what was typed is kept"
        for bad in ("abc", "0", "4000", "1.5"):
            refused = await ada.post(
                "/settings/tokens", data={"name": "laptop", "expires_in_days": bad}
            )
            assert refused.status_code == 422, bad
            assert 'id="expires_in_days-error"' in refused.text
            assert "whole number of days from 1 to 3650" in refused.text
            assert 'value="laptop"' in refused.text
            assert f'value="{bad}"' in refused.text
            assert not FULL_TOKEN.search(refused.text)
        assert len(token_rows((await ada.get("/settings")).text)) == 1, "nothing was created"

        created = await ada.post(
            "/settings/tokens", data={"name": "laptop", "expires_in_days": "30"}
        )
        assert created.status_code == 201
        assert created.headers["cache-control"] == "no-store"
        found = FULL_TOKEN.search(created.text)
        assert found, "the new token is on the page"
        token = found.group(0)
        assert "shown only this once" in created.text

        again = await ada.get("/settings")
        assert token not in again.text, "never shown again"
        assert not FULL_TOKEN.search(again.text), "only the prefix is shown"
        assert f"<code>{token[:8]}" in again.text
        listed = token_rows(again.text)
        assert len(listed) == 2
        [(laptop_id, laptop_row)] = [(i, r) for i, r in listed.items() if "laptop" in r]
        assert "never" in laptop_row, "not used yet"
        assert "UTC" in laptop_row, "its expiry date"

    async with new_client(running, origin=None) as program:
        bearer = {"authorization": f"Bearer {token}"}
        me = await program.get("/api/v1/me", headers=bearer)
        assert me.status_code == 200
        assert me.json()["email"] == "ada@example.com"

    async with browser(running, "ada@example.com") as ada:
        used = token_rows((await ada.get("/settings")).text)[laptop_id]
        assert "just now" in used, "last used is shown"

    # Someone else cannot revoke it (and learns nothing); its owner can.
    async with browser(running, "bob@example.com") as bob:
        assert (await bob.post(f"/settings/tokens/{laptop_id}/revoke")).status_code == 404
    async with new_client(running, origin=None) as program:
        assert (await program.get("/api/v1/me", headers=bearer)).status_code == 200
    async with browser(running, "ada@example.com") as ada:
        revoked = await ada.post(f"/settings/tokens/{laptop_id}/revoke")
        assert revoked.status_code == 303
        row = token_rows((await ada.get("/settings")).text)[laptop_id]
        assert "revoked" in row
        assert "Revoke" not in row
        assert (await ada.post(f"/settings/tokens/{laptop_id}/revoke")).status_code == 404
    async with new_client(running, origin=None) as program:
        assert (await program.get("/api/v1/me", headers=bearer)).status_code == 401


async def test_name_is_saved_and_a_bad_name_is_refused(running: FastAPI, db: Database) -> None:
    async with browser(running, "ada@example.com") as ada:
        blank = await ada.post("/settings/profile", data={"name": "   "})
        assert blank.status_code == 422
        assert 'id="name-error"' in blank.text
        assert "a name needs 1 to 200 characters" in blank.text
        long = await ada.post("/settings/profile", data={"name": "x" * 201})
        assert long.status_code == 422
        assert f'value="{"x" * 201}"' in long.text, "what was typed is kept"
        async with db.session() as session:
            user = await identity.read_user_by_email(session, "ada@example.com")
            assert user is not None
            assert user.name == "ada", "nothing changed"
        saved = await ada.post("/settings/profile", data={"name": "Ada Lovelace"})
        assert saved.status_code == 303
        page = await ada.get("/settings")
        assert 'value="Ada Lovelace"' in page.text
        assert "<span>Ada Lovelace</span>" in page.text, "the top bar shows the new name"


async def test_sessions_are_listed_and_sign_out_everywhere_ends_them(
    running: FastAPI,
) -> None:
    async with (
        browser(running, "ada@example.com") as here,
        browser(running, "ada@example.com") as there,
        browser(running, "ada@example.com") as third,
    ):
        page = await here.get("/settings")
        sessions = re.findall(r'<tr id="session-([0-9a-f]+)">(.*?)</tr>', page.text, re.S)
        assert len(sessions) == 3
        assert sum("this browser" in row for _, row in sessions) == 1
        assert all("TestBrowser/1.0" in row and "127.0.0.1" in row for _, row in sessions)

        # One session ended from here: only that browser is signed out.
        theirs = re.findall(r'<tr id="session-([0-9a-f]+)">', (await third.get("/settings")).text)
        current = next(i for i, row in sessions if "this browser" in row)
        other = next(i for i in theirs if i != current)
        ended = await here.post(f"/settings/sessions/{other}/revoke")
        assert ended.status_code == 303
        signed_out = [(await c.get("/settings")).status_code for c in (here, there, third)].count(
            303
        )
        assert signed_out == 1

        # Sign out everywhere: every session ends, this one too (as the API does).
        everywhere = await here.post("/settings/sessions/revoke-all")
        assert everywhere.status_code == 303
        assert everywhere.headers["location"] == "/login"
        for client in (there, third, here):
            away = await client.get("/settings")
            assert away.status_code == 303
            assert away.headers["location"] == "/login?next=%2Fsettings"


# --- instance admin ---------------------------------------------------------------------------


def admin_posts(app: FastAPI) -> list[str]:
    """Every form post of the admin pages, from the route table."""
    return [
        re.sub(r"\{[a-z_]+\}", "x", route.path)
        for route in iter_api_routes(app.routes)
        if route.path.startswith("/admin") and "POST" in route.methods
    ]


async def test_non_admins_get_the_403_page_on_every_admin_page_and_form(
    running: FastAPI, db: Database
) -> None:
    member = await make_person(db, "member@example.com")
    posts = admin_posts(running)
    assert len(posts) >= 5
    async with browser(running, "member@example.com") as client:
        page = await client.get("/admin")
        assert page.status_code == 403
        assert "Not allowed" in page.text
        assert "instance administrator" in page.text
        own = f"/admin/users/{member.user.id}/promote"
        for path in [*posts, own]:
            refused = await client.post(
                path, data={"kind": "oidc", "slug": "x", "allow_signup": "on"}
            )
            assert refused.status_code == 403, path
            assert "Not allowed" in refused.text, path
        settings = await client.get("/settings")
        assert 'href="/admin"' not in settings.text, "no admin link for non-admins"
    async with db.session() as session:
        user = await identity.read_user(session, member.user.id)
        assert user is not None
        assert not user.is_instance_admin
        assert await oauth.list_login_providers(session) == []
    async with new_client(running) as anonymous:
        anonymous.headers.update(HTML)
        away = await anonymous.get("/admin")
        assert away.status_code == 303
        assert away.headers["location"] == "/login?next=%2Fadmin"


def user_row(page: str, user_id: str) -> str:
    found = re.search(rf'<tr id="user-{user_id}">(.*?)</tr>', page, re.S)
    assert found, f"no row for {user_id}"
    return found.group(1)


async def test_promote_demote_disable_and_the_last_admin_stays(
    running: FastAPI, db: Database
) -> None:
    root = await make_person(db, "root@example.com", admin=True)
    member = await make_person(db, "member@example.com")
    async with (
        browser(running, "root@example.com") as admin,
        browser(running, "member@example.com") as them,
    ):
        page = await admin.get("/admin")
        assert page.status_code == 200
        assert "(you)" in user_row(page.text, root.user.id)
        assert ">admin<" in user_row(page.text, root.user.id)
        assert 'href="/admin" aria-current="page"' in page.text

        # The only admin cannot demote or disable themselves: a clear error, no change.
        for action in ("demote", "disable"):
            refused = await admin.post(f"/admin/users/{root.user.id}/{action}")
            assert refused.status_code == 409
            row = user_row(refused.text, root.user.id)
            assert "you cannot demote or disable yourself" in row
            assert ">admin<" in row
        async with db.session() as session:
            assert await identity.count_instance_admins(session) == 1

        promoted = await admin.post(f"/admin/users/{member.user.id}/promote")
        assert promoted.status_code == 303
        assert ">admin<" in user_row((await admin.get("/admin")).text, member.user.id)
        assert (await them.get("/admin")).status_code == 200, "they are an admin now"
        demoted = await admin.post(f"/admin/users/{member.user.id}/demote")
        assert demoted.status_code == 303
        assert ">admin<" not in user_row((await admin.get("/admin")).text, member.user.id)
        assert (await them.get("/admin")).status_code == 403

        disabled = await admin.post(f"/admin/users/{member.user.id}/disable")
        assert disabled.status_code == 303
        assert "disabled" in user_row((await admin.get("/admin")).text, member.user.id)
        assert (await them.get("/settings")).status_code == 303, "their session ended"
        async with new_client(running, origin=None) as program:
            assert (await program.get("/api/v1/me", headers=member.headers)).status_code == 401
        enabled = await admin.post(f"/admin/users/{member.user.id}/enable")
        assert enabled.status_code == 303
        assert "active" in user_row((await admin.get("/admin")).text, member.user.id)

        assert (await admin.post("/admin/users/nobody/promote")).status_code == 404
        assert (await admin.post(f"/admin/users/{member.user.id}/crown")).status_code == 404


PROVIDER = {
    "kind": "oidc",
    "slug": "corp",
    "display_name": "Corp SSO",
    "issuer": "https://sso.example.com/",
    "client_id": "forgehall-web",
    "client_secret": SECRET,
    "scopes": "openid email profile",
}


async def test_login_providers_are_added_with_every_field_and_the_secret_never_shows(
    running: FastAPI, db: Database
) -> None:
    root = await make_person(db, "root@example.com", admin=True)
    async with browser(running, "root@example.com") as admin:
        seen: list[str] = []
        missing = await admin.post("/admin/login-providers", data={**PROVIDER, "client_secret": ""})
        assert missing.status_code == 422
        assert 'id="client_secret-error"' in missing.text
        assert "Client secret needs 1 to 2000 characters" in missing.text
        assert 'value="corp"' in missing.text
        assert 'value="https://sso.example.com/"' in missing.text
        no_client = await admin.post("/admin/login-providers", data={**PROVIDER, "client_id": ""})
        assert no_client.status_code == 422
        assert 'id="client_id-error"' in no_client.text
        bad_issuer = await admin.post(
            "/admin/login-providers", data={**PROVIDER, "issuer": "http://sso.example.com"}
        )
        assert bad_issuer.status_code == 422
        assert 'id="issuer-error"' in bad_issuer.text
        assert "must be an https URL" in bad_issuer.text
        bad_kind = await admin.post("/admin/login-providers", data={**PROVIDER, "kind": "saml"})
        assert bad_kind.status_code == 422
        assert 'id="kind-error"' in bad_kind.text
        seen += [missing.text, no_client.text, bad_issuer.text, bad_kind.text]
        assert "No providers added here." in (await admin.get("/admin")).text

        added = await admin.post("/admin/login-providers", data=PROVIDER)
        assert added.status_code == 303, added.text
        page = await admin.get(added.headers["location"])
        assert "The login provider was added" in page.text
        row = re.search(r'<tr id="provider-corp">(.*?)</tr>', page.text, re.S)
        assert row, "listed"
        for shown in ("Corp SSO", "https://sso.example.com<", "forgehall-web", "OpenID Connect"):
            assert shown in row.group(1), shown
        taken = await admin.post("/admin/login-providers", data=PROVIDER)
        assert taken.status_code == 409
        assert 'id="slug-error"' in taken.text
        settings_page = await admin.get("/settings")
        assert "Corp SSO" in settings_page.text, "a way to sign in"
        seen += [page.text, taken.text, settings_page.text]
        assert all(SECRET not in text for text in seen), "the secret is write-only"
    async with new_client(running, origin=None) as program:
        listing = await program.get("/api/v1/admin/login-providers", headers=root.headers)
        assert [p["slug"] for p in listing.json()] == ["corp"]

    async with browser(running, "root@example.com") as admin:
        removed = await admin.post("/admin/login-providers/corp/delete")
        assert removed.status_code == 303
        assert "No providers added here." in (await admin.get("/admin")).text
        assert (await admin.post("/admin/login-providers/corp/delete")).status_code == 404


async def test_signup_settings_are_saved_refused_when_bad_and_reset(
    running: FastAPI, db: Database
) -> None:
    await make_person(db, "root@example.com", admin=True)
    settings: Settings = running.state.settings
    async with browser(running, "root@example.com") as admin:
        page = await admin.get("/admin")
        assert re.search(r'name="allow_signup" value="on" checked', page.text)
        bad = await admin.post(
            "/admin/signup",
            data={"allowed_email_domains": "example.com\nnot-a-domain", "allowed_emails": ""},
        )
        assert bad.status_code == 422
        assert 'id="allowed_email_domains-error"' in bad.text
        assert "'not-a-domain' is not a domain name" in html.unescape(bad.text)
        assert "example.com\nnot-a-domain</textarea>" in bad.text, "what was typed is kept"
        assert not re.search(r'name="allow_signup" value="on" checked', bad.text)
        bad_email = await admin.post(
            "/admin/signup", data={"allow_signup": "on", "allowed_emails": "not an address"}
        )
        assert bad_email.status_code == 422
        assert 'id="allowed_emails-error"' in bad_email.text
        async with db.session() as session:
            policy = await identity.read_signup_policy(session, settings)
            assert policy.allow_signup
            assert policy.allowed_email_domains == ()

        saved = await admin.post(
            "/admin/signup",
            data={
                "allowed_email_domains": "Example.com",
                "allowed_emails": "Boss@Example.org",
                "disable_workspace_creation": "on",
            },
        )
        assert saved.status_code == 303
        page = await admin.get(saved.headers["location"])
        assert "The signup settings were saved" in page.text
        assert not re.search(r'name="allow_signup" value="on" checked', page.text)
        assert re.search(r'name="disable_workspace_creation" value="on" checked', page.text)
        async with db.session() as session:
            policy = await identity.read_signup_policy(session, settings)
        assert not policy.allow_signup
        assert policy.allowed_email_domains == ("example.com",)
        assert policy.allowed_emails == ("boss@example.org",)
        async with new_client(running) as stranger:
            stranger.headers.update(HTML)
            closed = await stranger.post(
                "/login/verify", data={"email": "new@example.net", "code": DEV_CODE}
            )
            assert closed.status_code == 403
            assert "signup is closed" in closed.text

        reset = await admin.post("/admin/signup/reset")
        assert reset.status_code == 303
        async with db.session() as session:
            policy = await identity.read_signup_policy(session, settings)
        assert policy.allow_signup
        assert policy.allowed_emails == ()
        assert not policy.disable_workspace_creation
