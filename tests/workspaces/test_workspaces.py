"""Workspaces, members, roles and invitations through the HTTP API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update

from forgehall.app import AppOptions, create_app
from forgehall.db.engine import Database
from forgehall.settings import Settings
from forgehall.workspaces.models import Invitation, Member, Workspace
from tests.conftest import Person, RecordingMailer, make_person, make_workspace, new_client


@pytest.fixture
async def api(app: FastAPI):  # type: ignore[no-untyped-def]
    async with app.router.lifespan_context(app), new_client(app, origin=None) as client:
        yield client


async def test_create_and_list(api: httpx.AsyncClient, db: Database) -> None:
    alice = await make_person(db, "alice@example.com")
    created = await api.post(
        "/api/v1/workspaces",
        headers=alice.headers,
        json={"slug": "platform", "name": "Platform", "key_prefix": "eng"},
    )
    assert created.status_code == 201, created.text
    assert created.json()["role"] == "OWNER"
    assert created.json()["key_prefix"] == "ENG"
    listed = await api.get("/api/v1/workspaces", headers=alice.headers)
    assert [w["slug"] for w in listed.json()] == ["platform"]
    by_id = await api.get(f"/api/v1/workspaces/{created.json()['id']}", headers=alice.headers)
    assert by_id.json()["slug"] == "platform"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"slug": "Bad Slug", "name": "x", "key_prefix": "ENG"}, 422),
        ({"slug": "-dash", "name": "x", "key_prefix": "ENG"}, 422),
        ({"slug": "api", "name": "x", "key_prefix": "ENG"}, 422),
        ({"slug": "ok", "name": "x", "key_prefix": "1AB"}, 422),
        ({"slug": "ok", "name": "x"}, 422),
    ],
)
async def test_invalid_workspaces_are_refused(
    api: httpx.AsyncClient, db: Database, body: dict[str, str], status: int
) -> None:
    alice = await make_person(db, "alice@example.com")
    response = await api.post("/api/v1/workspaces", headers=alice.headers, json=body)
    assert response.status_code == status
    async with db.read_session() as session:
        assert await session.scalar(select(func.count()).select_from(Workspace)) == 0


async def test_slug_conflict_is_409(api: httpx.AsyncClient, db: Database) -> None:
    alice = await make_person(db, "alice@example.com")
    body = {"slug": "dup", "name": "Dup", "key_prefix": "DUP"}
    assert (
        await api.post("/api/v1/workspaces", headers=alice.headers, json=body)
    ).status_code == 201
    again = await api.post("/api/v1/workspaces", headers=alice.headers, json=body)
    assert again.status_code == 409
    assert again.json()["type"] == "/problems/slug-taken"


async def test_workspace_creation_can_be_locked_down(
    settings: Settings, db: Database, mailer: RecordingMailer
) -> None:
    locked = create_app(
        Settings(**{**settings.model_dump(), "disable_workspace_creation": True}),
        db=db,
        options=AppOptions(run_services=False),
        mailer=mailer,
    )
    user = await make_person(db, "user@example.com")
    admin = await make_person(db, "root@example.com", admin=True)
    body = {"slug": "w", "name": "W", "key_prefix": "W"}
    async with new_client(locked, origin=None) as client:
        refused = await client.post("/api/v1/workspaces", headers=user.headers, json=body)
        assert refused.status_code == 403
        assert refused.json()["type"] == "/problems/workspace-creation-disabled"
        assert (
            await client.post("/api/v1/workspaces", headers=admin.headers, json=body)
        ).status_code == 201


async def people(db: Database) -> tuple[Person, Person, Person, Workspace]:
    owner = await make_person(db, "owner@example.com")
    admin = await make_person(db, "admin@example.com")
    member = await make_person(db, "member@example.com")
    workspace = await make_workspace(db, owner, "team", {"admin": admin, "member": member})
    return owner, admin, member, workspace


async def test_only_owners_grant_or_revoke_owner(api: httpx.AsyncClient, db: Database) -> None:
    owner, admin, member, _ = await people(db)
    url = f"/api/v1/workspaces/team/members/{member.user.id}"
    by_admin = await api.patch(url, headers=admin.headers, json={"role": "OWNER"})
    assert by_admin.status_code == 403
    ok = await api.patch(url, headers=admin.headers, json={"role": "ADMIN"})
    assert ok.json()["role"] == "ADMIN"
    by_owner = await api.patch(url, headers=owner.headers, json={"role": "OWNER"})
    assert by_owner.json()["role"] == "OWNER"
    demote_owner = await api.patch(url, headers=admin.headers, json={"role": "MEMBER"})
    assert demote_owner.status_code == 403
    bad = await api.patch(url, headers=owner.headers, json={"role": "KING"})
    assert bad.status_code == 422


async def test_the_last_owner_cannot_leave_or_be_demoted(
    api: httpx.AsyncClient, db: Database
) -> None:
    owner, _, _, _ = await people(db)
    base = f"/api/v1/workspaces/team/members/{owner.user.id}"
    demote = await api.patch(base, headers=owner.headers, json={"role": "ADMIN"})
    assert demote.status_code == 409
    leave = await api.delete(base, headers=owner.headers)
    assert leave.status_code == 409
    assert leave.json()["type"] == "/problems/last-owner"


async def test_members_leave_admins_remove_but_not_owners(
    api: httpx.AsyncClient, db: Database
) -> None:
    owner, admin, member, _ = await people(db)
    members = "/api/v1/workspaces/team/members/"
    assert (await api.delete(members + owner.user.id, headers=admin.headers)).status_code == 403
    assert (await api.delete(members + admin.user.id, headers=member.headers)).status_code == 403
    assert (await api.delete(members + member.user.id, headers=member.headers)).status_code == 204
    assert (await api.get("/api/v1/workspaces/team", headers=member.headers)).status_code == 404
    assert (await api.delete(members + admin.user.id, headers=owner.headers)).status_code == 204
    listing = await api.get("/api/v1/workspaces/team/members", headers=owner.headers)
    assert [m["email"] for m in listing.json()] == ["owner@example.com"]


async def test_only_owners_delete_and_instance_admins_are_never_owner(
    api: httpx.AsyncClient, db: Database
) -> None:
    owner, admin, _, _ = await people(db)
    root = await make_person(db, "root@example.com", admin=True)
    async with db.session() as session:
        workspace = await session.scalar(select(Workspace))
        assert workspace is not None
        session.add(Member(workspace_id=workspace.id, user_id=root.user.id, role="MEMBER"))
        await session.commit()
    seen = await api.get("/api/v1/workspaces/team", headers=root.headers)
    assert seen.json()["role"] == "ADMIN", "an instance admin member acts as ADMIN"
    assert (await api.delete("/api/v1/workspaces/team", headers=root.headers)).status_code == 403
    assert (await api.delete("/api/v1/workspaces/team", headers=admin.headers)).status_code == 403
    assert (await api.delete("/api/v1/workspaces/team", headers=owner.headers)).status_code == 204
    assert (await api.get("/api/v1/workspaces/team", headers=owner.headers)).status_code == 404


async def test_invitation_accepted_by_the_invited_address(
    api: httpx.AsyncClient, db: Database, mailer: RecordingMailer
) -> None:
    owner, _, _, _ = await people(db)
    bob = await make_person(db, "bob@example.com")
    eve = await make_person(db, "eve@example.com")
    invited = await api.post(
        "/api/v1/workspaces/team/invitations",
        headers=owner.headers,
        json={"email": "Bob@Example.com", "role": "ADMIN"},
    )
    assert invited.status_code == 201, invited.text
    assert invited.json()["state"] == "pending"
    token = mailer.last_link("bob@example.com")
    assert "team".title() in mailer.sent[-1].subject
    other = await api.post(f"/api/v1/invitations/{token}/accept", headers=eve.headers)
    assert other.status_code == 403
    assert other.json()["type"] == "/problems/invitation-other-address"
    preview = await api.get(f"/api/v1/invitations/{token}", headers=bob.headers)
    assert preview.json()["role"] == "ADMIN"
    accepted = await api.post(f"/api/v1/invitations/{token}/accept", headers=bob.headers)
    assert accepted.status_code == 200
    again = await api.post(f"/api/v1/invitations/{token}/accept", headers=bob.headers)
    assert again.status_code == 409
    bob_view = await api.get("/api/v1/workspaces/team", headers=bob.headers)
    assert bob_view.json()["role"] == "ADMIN"
    assert (await api.get("/api/v1/workspaces/team", headers=eve.headers)).status_code == 404


async def test_invitation_rules(
    api: httpx.AsyncClient, db: Database, mailer: RecordingMailer
) -> None:
    owner, admin, member, _ = await people(db)
    invitations = "/api/v1/workspaces/team/invitations"
    assert (
        await api.post(invitations, headers=member.headers, json={"email": "x@example.com"})
    ).status_code == 403
    assert (
        await api.post(
            invitations, headers=admin.headers, json={"email": "x@example.com", "role": "OWNER"}
        )
    ).status_code == 422
    assert (
        await api.post(invitations, headers=admin.headers, json={"email": "member@example.com"})
    ).status_code == 409
    first = await api.post(invitations, headers=admin.headers, json={"email": "x@example.com"})
    assert first.status_code == 201
    duplicate = await api.post(invitations, headers=admin.headers, json={"email": "x@example.com"})
    assert duplicate.json()["type"] == "/problems/invitation-pending"
    old_token = mailer.last_link("x@example.com")
    resent = await api.post(f"{invitations}/{first.json()['id']}/resend", headers=admin.headers)
    assert resent.json()["sends"] == 2
    new_token = mailer.last_link("x@example.com")
    assert new_token != old_token
    x = await make_person(db, "x@example.com")
    assert (
        await api.post(f"/api/v1/invitations/{old_token}/accept", headers=x.headers)
    ).status_code == 404, "a resent invitation's old link stops working"
    revoked = await api.delete(f"{invitations}/{first.json()['id']}", headers=admin.headers)
    assert revoked.status_code == 204
    refused = await api.post(f"/api/v1/invitations/{new_token}/accept", headers=x.headers)
    assert refused.status_code == 409
    assert refused.json()["state"] == "revoked"
    listed = await api.get(invitations, headers=owner.headers)
    assert [i["state"] for i in listed.json()] == ["revoked"]


async def test_expired_and_declined_invitations(
    api: httpx.AsyncClient, db: Database, mailer: RecordingMailer
) -> None:
    owner, _, _, _ = await people(db)
    invitations = "/api/v1/workspaces/team/invitations"
    for address in ("late@example.com", "no@example.com"):
        await api.post(invitations, headers=owner.headers, json={"email": address})
    async with db.session() as session:
        await session.execute(
            update(Invitation)
            .where(Invitation.email == "late@example.com")
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()
    late = await make_person(db, "late@example.com")
    expired = await api.post(
        f"/api/v1/invitations/{mailer.last_link('late@example.com')}/accept", headers=late.headers
    )
    assert expired.status_code == 409
    assert expired.json()["state"] == "expired"
    no = await make_person(db, "no@example.com")
    token = mailer.last_link("no@example.com")
    assert (
        await api.post(f"/api/v1/invitations/{token}/decline", headers=no.headers)
    ).status_code == 204
    assert (
        await api.post(f"/api/v1/invitations/{token}/accept", headers=no.headers)
    ).status_code == 409


async def test_invitations_are_rate_limited(api: httpx.AsyncClient, db: Database) -> None:
    owner, _, _, _ = await people(db)
    statuses = [
        (
            await api.post(
                "/api/v1/workspaces/team/invitations",
                headers=owner.headers,
                json={"email": f"p{i}@example.com"},
            )
        ).status_code
        for i in range(51)
    ]
    assert statuses[:50] == [201] * 50
    assert statuses[50] == 429


async def test_tokens(api: httpx.AsyncClient, db: Database) -> None:
    owner, _, member, _ = await people(db)
    created = await api.post("/api/v1/me/tokens", headers=owner.headers, json={"name": "cli"})
    assert created.status_code == 201
    token = created.json()["token"]
    assert token.startswith("fh_pat_")
    listed = await api.get("/api/v1/me/tokens", headers=owner.headers)
    assert all("token" not in t for t in listed.json()), "a token is shown only once"
    assert any(t["prefix"] == token[:11] for t in listed.json())
    bearer = {"authorization": f"Bearer {token}"}
    assert (await api.get("/api/v1/me", headers=bearer)).status_code == 200
    assert (
        await api.delete(f"/api/v1/me/tokens/{created.json()['id']}", headers=member.headers)
    ).status_code == 404
    assert (
        await api.delete(f"/api/v1/me/tokens/{created.json()['id']}", headers=owner.headers)
    ).status_code == 204
    assert (await api.get("/api/v1/me", headers=bearer)).status_code == 401
    for header in ("Bearer fh_pat_" + "x" * 43, "Bearer nonsense", "Basic abc", "Bearer "):
        response = await api.get("/api/v1/me", headers={"authorization": header})
        assert response.status_code == 401, header
        assert response.headers["content-type"] == "application/problem+json"


async def test_expired_token_is_refused(api: httpx.AsyncClient, db: Database) -> None:
    owner, _, _, _ = await people(db)
    from forgehall.identity.models import ApiToken

    async with db.session() as session:
        await session.execute(
            update(ApiToken).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()
    response = await api.get("/api/v1/me", headers=owner.headers)
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


RUNTIME = {"daemon_id": "box-1", "machine": "box", "providers": {"claude": "2.0.1"}}


async def test_daemon_tokens_reach_only_their_workspace(
    api: httpx.AsyncClient, db: Database
) -> None:
    owner, _, member, _ = await people(db)
    await make_workspace(db, owner, "other")
    assert (
        await api.post(
            "/api/v1/workspaces/team/daemon-tokens", headers=member.headers, json={"name": "box"}
        )
    ).status_code == 403
    minted = await api.post(
        "/api/v1/workspaces/team/daemon-tokens", headers=owner.headers, json={"name": "box"}
    )
    assert minted.status_code == 201
    token = minted.json()["token"]
    assert token.startswith("fh_dmn_")
    daemon = {"authorization": f"Bearer {token}"}
    # It speaks the daemon protocol, for its own workspace...
    registered = await api.post("/api/v1/daemon/runtimes", headers=daemon, json=RUNTIME)
    assert registered.status_code == 200, registered.text
    assert (
        registered.json()["workspace_id"]
        == (await api.get("/api/v1/workspaces/team", headers=owner.headers)).json()["id"]
    )
    # ... and nothing else: not its own workspace's board, not another's, not /me.
    for method, path in [
        ("GET", "/api/v1/workspaces/team"),
        ("PATCH", "/api/v1/workspaces/team"),
        ("GET", "/api/v1/workspaces/other"),
        ("GET", "/api/v1/me"),
    ]:
        refused = await api.request(method, path, headers=daemon, json={"name": "x"})
        assert refused.status_code == 403, (method, path)
        assert refused.json()["type"] == "/problems/wrong-token-kind"


async def test_daemon_tokens_die_with_their_minters_membership_and_manage_no_one(
    api: httpx.AsyncClient, db: Database
) -> None:
    owner, admin, _, _ = await people(db)
    minted = await api.post(
        "/api/v1/workspaces/team/daemon-tokens", headers=admin.headers, json={"name": "box"}
    )
    daemon = {"authorization": f"Bearer {minted.json()['token']}"}
    registered = await api.post("/api/v1/daemon/runtimes", headers=daemon, json=RUNTIME)
    assert registered.status_code == 200, registered.text
    removal = await api.delete(f"/api/v1/workspaces/team/members/{admin.user.id}", headers=daemon)
    assert removal.status_code == 403, "a daemon token may not remove (or 'leave' as) anyone"
    assert (
        await api.delete(f"/api/v1/workspaces/team/members/{admin.user.id}", headers=owner.headers)
    ).status_code == 204
    orphaned = await api.post("/api/v1/daemon/runtimes", headers=daemon, json=RUNTIME)
    assert orphaned.status_code == 403
    assert orphaned.json()["type"] == "/problems/daemon-token-orphaned"
