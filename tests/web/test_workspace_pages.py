"""The workspace settings page without JavaScript: every form posts, redirects and
changes what the JSON API then reads back; a refused form shows the service's message
next to that form with what was typed kept and nothing changed; roles are those of the
API; another workspace is "Not found"."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from forgehall.identity.mail import MailDeliveryError, OutgoingMail
from forgehall.web.pages import NOT_FOUND_TEXT
from tests.conftest import RecordingMailer, new_client
from tests.web.test_pages import sign_in

HTML = {"accept": "text/html,application/xhtml+xml"}
SETTINGS = "/w/platform/settings"
OpenAs = Callable[[str], Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def open_as(app: FastAPI, mailer: RecordingMailer) -> AsyncIterator[OpenAs]:
    """Opens a browser (own cookies) signed in as an address."""
    async with app.router.lifespan_context(app), AsyncExitStack() as stack:

        async def open_browser(email: str) -> httpx.AsyncClient:
            client = await stack.enter_async_context(new_client(app))
            client.headers.update(HTML)
            signed = await sign_in(client, mailer, email)
            assert signed.status_code == 303, signed.text
            return client

        yield open_browser


@pytest.fixture
async def ada(open_as: OpenAs) -> httpx.AsyncClient:
    """The owner of workspace "platform", which she created on the home page."""
    client = await open_as("ada@example.com")
    created = await client.post(
        "/workspaces", data={"name": "Platform", "slug": "platform", "key_prefix": "PLT"}
    )
    assert created.status_code == 303, created.text
    return client


async def api(client: httpx.AsyncClient, path: str = "", slug: str = "platform") -> Any:
    """What the JSON API reads back (the browser's session works there too)."""
    response = await client.get(
        f"/api/v1/workspaces/{slug}{path}", headers={"accept": "application/json"}
    )
    assert response.status_code == 200, response.text
    return response.json()


def problem(page: str, form: str) -> str:
    """The message shown next to ``form`` (``member-<id>``/``invitation-<id>`` for a row)."""
    found = re.search(rf'<p class="error" id="{form}-error" role="alert">([^<]*)</p>', page)
    assert found, f"no message next to the {form} form"
    return html.unescape(found.group(1))


def kept(page: str, name: str, value: str) -> bool:
    """An input ``name`` shows ``value`` again."""
    shown = re.findall(rf'name="{name}"[^>]*value="([^"]*)"', page)
    return value in [html.unescape(v) for v in shown]


async def join(
    ada: httpx.AsyncClient, open_as: OpenAs, mailer: RecordingMailer, email: str, role: str
) -> httpx.AsyncClient:
    """Invite ``email`` from the page, then accept as that person through the link."""
    sent = await ada.post(f"{SETTINGS}/invitations", data={"email": email, "role": role})
    assert sent.status_code == 303, sent.text
    token = mailer.last_link(email)
    client = await open_as(email)
    accepted = await client.post(f"/invitations/{token}/accept")
    assert accepted.status_code == 303, accepted.text
    return client


async def test_general_section_saves_and_refuses_bad_input(ada: httpx.AsyncClient) -> None:
    page = await ada.get(SETTINGS)
    assert page.status_code == 200
    assert "Content-Security-Policy" in page.headers
    assert kept(page.text, "name", "Platform")
    assert 'aria-current="page">Workspace settings' in page.text

    saved = await ada.post(
        f"{SETTINGS}/general", data={"name": "Platform team", "key_prefix": "pf", "tier": "pilot"}
    )
    assert saved.status_code == 303
    assert saved.headers["location"] == f"{SETTINGS}?done=general#general"
    workspace = await api(ada)
    assert (workspace["name"], workspace["key_prefix"], workspace["tier"]) == (
        "Platform team",
        "PF",
        "pilot",
    )
    shown = await ada.get(saved.headers["location"])
    assert "Workspace saved." in shown.text

    for data, message in (
        ({"name": "Renamed", "key_prefix": "9x", "tier": "production"}, "key prefix '9X'"),
        ({"name": "Renamed", "key_prefix": "PF", "tier": "gold"}, "Tier: input should be"),
        ({"name": "  ", "key_prefix": "PF", "tier": "production"}, "Name: string should have"),
    ):
        bad = await ada.post(f"{SETTINGS}/general", data=data)
        assert bad.status_code == 422, data
        assert message in problem(bad.text, "general")
        assert kept(bad.text, "key_prefix", data["key_prefix"])
        assert kept(bad.text, "name", data["name"])
        assert (await api(ada))["name"] == "Platform team", "nothing changed"
    assert (await api(ada))["tier"] == "pilot"


async def test_statuses_and_labels(ada: httpx.AsyncClient) -> None:
    added = await ada.post(
        f"{SETTINGS}/statuses", data={"name": "QA", "category": "in_review", "color": "#a0b"}
    )
    assert added.status_code == 303
    statuses = await api(ada, "/statuses")
    qa = statuses[-1]
    assert (qa["name"], qa["category"], qa["color"]) == ("QA", "in_review", "#a0b")
    page = await ada.get(SETTINGS)
    assert "<td>QA</td>" in page.text

    duplicate = await ada.post(
        f"{SETTINGS}/statuses", data={"name": "QA", "category": "done", "color": "#123"}
    )
    assert duplicate.status_code == 409
    assert "a status named 'QA' already exists" in problem(duplicate.text, "status")
    assert kept(duplicate.text, "color", "#123")
    assert '<option value="done" selected>' in duplicate.text, "the chosen category is kept"
    sideways = await ada.post(
        f"{SETTINGS}/statuses", data={"name": "Limbo", "category": "sideways", "color": ""}
    )
    assert sideways.status_code == 422
    assert "Category" in problem(sideways.text, "status")
    assert kept(sideways.text, "name", "Limbo")
    assert len(await api(ada, "/statuses")) == len(statuses), "nothing added"

    label = await ada.post(f"{SETTINGS}/labels", data={"name": "bug", "color": "red"})
    assert label.status_code == 303
    assert [(x["name"], x["color"]) for x in await api(ada, "/labels")] == [("bug", "red")]
    again = await ada.post(f"{SETTINGS}/labels", data={"name": "bug", "color": "blue"})
    assert again.status_code == 409
    assert "already exists" in problem(again.text, "label")
    assert kept(again.text, "color", "blue")
    assert "status-error" not in again.text, "the message is next to the label form only"
    empty = await ada.post(f"{SETTINGS}/labels", data={"name": "", "color": "x"})
    assert empty.status_code == 422
    assert "Name" in problem(empty.text, "label")
    hostile = '"><script>alert(1)</script>'
    long = await ada.post(f"{SETTINGS}/labels", data={"name": hostile, "color": "c" * 21})
    assert long.status_code == 422
    assert "Colour: string should have at most 20 characters" in problem(long.text, "label")
    assert "<script>alert(1)" not in long.text, "what was typed comes back escaped"
    assert kept(long.text, "name", hostile)
    assert len(await api(ada, "/labels")) == 1


async def test_repositories(ada: httpx.AsyncClient) -> None:
    url = "https://git.example.com/acme/api.git"
    added = await ada.post(
        f"{SETTINGS}/repositories", data={"name": "api", "url": url, "default_branch": "trunk"}
    )
    assert added.status_code == 303
    repos = await api(ada, "/repositories")
    assert [(r["name"], r["url"], r["default_branch"]) for r in repos] == [("api", url, "trunk")]

    for data, status, message in (
        ({"name": "web", "url": "not a url", "default_branch": "main"}, 422, "is not a git URL"),
        ({"name": "-web", "url": url, "default_branch": "main"}, 422, "Name: use letters"),
        ({"name": "api", "url": url, "default_branch": "main"}, 409, "named 'api' already"),
        ({"name": "web", "url": url, "default_branch": ""}, 422, "Default branch"),
    ):
        bad = await ada.post(f"{SETTINGS}/repositories", data=data)
        assert bad.status_code == status, data
        assert message in problem(bad.text, "repository")
        assert kept(bad.text, "url", data["url"])
        assert kept(bad.text, "name", data["name"])
    assert len(await api(ada, "/repositories")) == 1, "nothing added"

    removed = await ada.post(f"{SETTINGS}/repositories/{repos[0]['id']}/remove")
    assert removed.status_code == 303
    assert await api(ada, "/repositories") == []
    gone = await ada.post(f"{SETTINGS}/repositories/{repos[0]['id']}/remove")
    assert gone.status_code == 404
    assert NOT_FOUND_TEXT in gone.text


async def test_invitation_reaches_the_mailer_and_the_invited_person_joins(
    ada: httpx.AsyncClient, open_as: OpenAs, mailer: RecordingMailer
) -> None:
    before = len(mailer.sent)
    sent = await ada.post(
        f"{SETTINGS}/invitations", data={"email": "Bob@Example.com", "role": "ADMIN"}
    )
    assert sent.status_code == 303
    assert sent.headers["location"] == f"{SETTINGS}?done=invited#invitations"
    mail = mailer.sent[-1]
    assert len(mailer.sent) == before + 1
    assert mail.to == "bob@example.com"
    assert "Platform" in mail.subject
    token = mailer.last_link("bob@example.com")
    page = await ada.get(SETTINGS)
    row = page.text.split("bob@example.com", 1)[1].split("</tr>", 1)[0]
    assert "pending" in row
    assert "admin" in row
    assert token not in page.text, "the link is in the mail only"
    [listed] = await api(ada, "/invitations")
    assert (listed["email"], listed["role"], listed["state"]) == (
        "bob@example.com",
        "ADMIN",
        "pending",
    )

    bob = await open_as("bob@example.com")
    offer = await bob.get(f"/invitations/{token}")
    assert "Join Platform" in offer.text
    accepted = await bob.post(f"/invitations/{token}/accept")
    assert accepted.status_code == 303
    members = (await ada.get(SETTINGS)).text.split('id="members"', 1)[1].split("</section>", 1)[0]
    assert "bob@example.com" in members
    assert {(m["email"], m["role"]) for m in await api(ada, "/members")} == {
        ("ada@example.com", "OWNER"),
        ("bob@example.com", "ADMIN"),
    }
    assert (await bob.get(SETTINGS)).status_code == 200, "the new member reaches the page"

    # Bad input: the message next to the invitation form, typed values kept, no mail.
    before = len(mailer.sent)
    for data, status, message in (
        ({"email": "not-an-email", "role": "MEMBER"}, 422, "is not a valid email address"),
        ({"email": "bob@example.com", "role": "MEMBER"}, 409, "already a member"),
        ({"email": "carol@example.com", "role": "OWNER"}, 422, "ADMIN or MEMBER"),
    ):
        bad = await ada.post(f"{SETTINGS}/invitations", data=data)
        assert bad.status_code == status, data
        assert message in problem(bad.text, "invite")
        assert kept(bad.text, "email", data["email"])
    assert len(mailer.sent) == before
    assert len(await api(ada, "/invitations")) == 1


async def test_resend_and_revoke(
    ada: httpx.AsyncClient, open_as: OpenAs, mailer: RecordingMailer
) -> None:
    await ada.post(f"{SETTINGS}/invitations", data={"email": "carol@example.com", "role": "MEMBER"})
    first = mailer.last_link("carol@example.com")
    [invitation] = await api(ada, "/invitations")

    resent = await ada.post(f"{SETTINGS}/invitations/{invitation['id']}/resend")
    assert resent.status_code == 303
    second = mailer.last_link("carol@example.com")
    assert second != first
    [again] = await api(ada, "/invitations")
    assert again["sends"] == 2

    carol = await open_as("carol@example.com")
    old = await carol.get(f"/invitations/{first}")
    assert old.status_code == 404, "the previous link stops working"
    assert "Join Platform" in (await carol.get(f"/invitations/{second}")).text

    revoked = await ada.post(f"{SETTINGS}/invitations/{invitation['id']}/revoke")
    assert revoked.status_code == 303
    [closed] = await api(ada, "/invitations")
    assert closed["state"] == "revoked"
    shown = await carol.get(f"/invitations/{second}")
    assert "This invitation is revoked." in shown.text
    assert "Accept" not in shown.text
    refused = await carol.post(f"/invitations/{second}/accept")
    assert refused.status_code == 409
    assert [m["email"] for m in await api(ada, "/members")] == ["ada@example.com"]

    twice = await ada.post(f"{SETTINGS}/invitations/{invitation['id']}/revoke")
    assert twice.status_code == 409
    assert "the invitation is revoked" in problem(twice.text, f"invitation-{invitation['id']}")
    unknown = await ada.post(f"{SETTINGS}/invitations/nope/revoke")
    assert unknown.status_code == 404
    other = await ada.post(f"{SETTINGS}/invitations/{invitation['id']}/explode")
    assert other.status_code == 404


async def test_a_mail_failure_is_explained_and_the_invitation_kept(
    ada: httpx.AsyncClient, mailer: RecordingMailer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(mail: OutgoingMail) -> None:
        raise MailDeliveryError("the SMTP relay refused the connection")

    monkeypatch.setattr(mailer, "send", broken)
    failed = await ada.post(
        f"{SETTINGS}/invitations", data={"email": "dan@example.com", "role": "MEMBER"}
    )
    assert failed.status_code == 503
    assert "could not be sent" in problem(failed.text, "invite")
    assert "resend it" in failed.text
    [saved] = await api(ada, "/invitations")
    assert saved["email"] == "dan@example.com"


async def test_members_roles_and_the_last_owner(
    ada: httpx.AsyncClient, open_as: OpenAs, mailer: RecordingMailer
) -> None:
    bob = await join(ada, open_as, mailer, "bob@example.com", "MEMBER")
    members = {m["email"]: m for m in await api(ada, "/members")}
    ada_id, bob_id = members["ada@example.com"]["user_id"], members["bob@example.com"]["user_id"]

    promoted = await ada.post(f"{SETTINGS}/members/{bob_id}/role", data={"role": "ADMIN"})
    assert promoted.status_code == 303
    assert {m["email"]: m["role"] for m in await api(ada, "/members")}["bob@example.com"] == (
        "ADMIN"
    )

    # The last owner cannot step down: the message sits in her row, nothing changes.
    demoted = await ada.post(f"{SETTINGS}/members/{ada_id}/role", data={"role": "MEMBER"})
    assert demoted.status_code == 409
    assert "last OWNER cannot be demoted" in problem(demoted.text, f"member-{ada_id}")
    assert f'<select id="role-{ada_id}" name="role"><option value="MEMBER" selected>' in (
        demoted.text
    ), "the chosen role is kept"
    left = await ada.post(f"{SETTINGS}/members/{ada_id}/remove")
    assert left.status_code == 409
    assert "last OWNER cannot leave" in problem(left.text, f"member-{ada_id}")
    bad_role = await ada.post(f"{SETTINGS}/members/{bob_id}/role", data={"role": "SUPERUSER"})
    assert bad_role.status_code == 422
    assert "unknown role" in problem(bad_role.text, f"member-{bob_id}")
    assert {m["email"]: m["role"] for m in await api(ada, "/members")} == {
        "ada@example.com": "OWNER",
        "bob@example.com": "ADMIN",
    }

    # An ADMIN may not touch an OWNER (the API's 403), nor delete the workspace.
    bob_page = await bob.get(SETTINGS)
    assert f'action="{SETTINGS}/members/{ada_id}/role"' not in bob_page.text
    assert 'id="delete"' not in bob_page.text
    assert 'id="invitations"' in bob_page.text
    for path, data in (
        (f"{SETTINGS}/members/{ada_id}/role", {"role": "MEMBER"}),
        (f"{SETTINGS}/members/{ada_id}/remove", {}),
        (f"{SETTINGS}/delete", {"confirm": "platform"}),
    ):
        refused = await bob.post(path, data=data)
        assert refused.status_code == 403, path
        assert "Not allowed" in refused.text
    assert len(await api(ada, "/members")) == 2

    removed = await ada.post(f"{SETTINGS}/members/{bob_id}/remove")
    assert removed.status_code == 303
    assert [m["email"] for m in await api(ada, "/members")] == ["ada@example.com"]
    assert (await bob.get(SETTINGS)).status_code == 404


async def test_a_member_reads_only_what_the_api_lets_them_change(
    ada: httpx.AsyncClient, open_as: OpenAs, mailer: RecordingMailer
) -> None:
    bob = await join(ada, open_as, mailer, "bob@example.com", "MEMBER")
    page = await bob.get(SETTINGS)
    assert page.status_code == 200
    assert "read-only for you" in page.text
    assert "<dt>Issue key prefix</dt><dd>PLT</dd>" in page.text
    for hidden in ("/general", "/statuses", "/repositories", "/invitations", "/delete", "/role"):
        assert f'{hidden}"' not in page.text, f"no {hidden} form for a member"
    assert 'id="invitations"' not in page.text
    assert f'action="{SETTINGS}/labels"' in page.text, "members may add labels, as in the API"

    ada_id = {m["email"]: m["user_id"] for m in await api(ada, "/members")}["ada@example.com"]
    workspace = await api(ada)
    for path, data in (
        ("/general", {"name": "Mine", "key_prefix": "MINE", "tier": "production"}),
        ("/statuses", {"name": "QA", "category": "todo", "color": ""}),
        ("/repositories", {"name": "api", "url": "https://x.test/a.git", "default_branch": "m"}),
        ("/invitations", {"email": "eve@example.com", "role": "ADMIN"}),
        ("/delete", {"confirm": "platform"}),
        (f"/members/{ada_id}/role", {"role": "MEMBER"}),
        (f"/members/{ada_id}/remove", {}),
    ):
        refused = await bob.post(SETTINGS + path, data=data)
        assert refused.status_code == 403, path
        assert "Not allowed" in refused.text
        needed = "OWNER" if path == "/delete" else "ADMIN"
        assert f"this needs the {needed} role in workspace platform" in refused.text, path
    assert await api(ada) == workspace
    assert len(await api(ada, "/statuses")) == 7
    assert await api(ada, "/repositories") == []
    assert [i["email"] for i in await api(ada, "/invitations")] == ["bob@example.com"]
    assert len(await api(ada, "/members")) == 2

    label = await bob.post(f"{SETTINGS}/labels", data={"name": "ux", "color": ""})
    assert label.status_code == 303
    assert [x["name"] for x in await api(ada, "/labels")] == ["ux"]

    bob_id = {m["email"]: m["user_id"] for m in await api(ada, "/members")}["bob@example.com"]
    leaving = await bob.post(f"{SETTINGS}/members/{bob_id}/remove")
    assert leaving.status_code == 303
    assert leaving.headers["location"] == "/"
    assert [m["email"] for m in await api(ada, "/members")] == ["ada@example.com"]


async def test_another_workspace_is_not_found(ada: httpx.AsyncClient, open_as: OpenAs) -> None:
    zed = await open_as("zed@example.com")
    made = await zed.post(
        "/workspaces", data={"name": "Secret", "slug": "secret", "key_prefix": "SEC"}
    )
    assert made.status_code == 303
    await zed.post(
        "/w/secret/settings/repositories",
        data={"name": "vault", "url": "https://x.test/vault.git", "default_branch": "main"},
    )
    [vault] = await api(zed, "/repositories", slug="secret")

    for method, path in (
        ("GET", "/w/secret/settings"),
        ("GET", "/w/nowhere/settings"),
        ("POST", "/w/secret/settings/general"),
        ("POST", "/w/secret/settings/delete"),
        ("POST", f"/w/secret/settings/repositories/{vault['id']}/remove"),
    ):
        response = await ada.request(method, path, data={"confirm": "secret"})
        assert response.status_code == 404, path
        assert NOT_FOUND_TEXT in response.text
        assert "Secret" not in response.text
    # Ada's own workspace does not reach Zed's repository either.
    crossed = await ada.post(f"{SETTINGS}/repositories/{vault['id']}/remove")
    assert crossed.status_code == 404
    assert NOT_FOUND_TEXT in crossed.text
    assert len(await api(zed, "/repositories", slug="secret")) == 1


async def test_deleting_needs_the_exact_slug(ada: httpx.AsyncClient) -> None:
    page = await ada.get(SETTINGS)
    assert 'id="delete"' in page.text
    for typed in ("", "Platform", "platform-", "plat"):
        refused = await ada.post(f"{SETTINGS}/delete", data={"confirm": typed})
        assert refused.status_code == 422, typed
        assert "type the workspace's address, platform, exactly" in problem(refused.text, "delete")
        assert kept(refused.text, "confirm", typed)
        assert (await api(ada))["slug"] == "platform", "still there"
    deleted = await ada.post(f"{SETTINGS}/delete", data={"confirm": "platform"})
    assert deleted.status_code == 303
    assert deleted.headers["location"] == "/"
    gone = await ada.get("/api/v1/workspaces/platform", headers={"accept": "application/json"})
    assert gone.status_code == 404
    assert (await ada.get(SETTINGS)).status_code == 404
    assert (
        "platform"
        not in (await ada.get("/"))
        .text.split("Your workspaces", 1)[1]
        .split("Create a workspace")[0]
    )
