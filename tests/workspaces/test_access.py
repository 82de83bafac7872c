"""The one access check: no workspace route escapes it, and every route answers each kind
of caller as its declared role requires.

The matrix is derived from the app's route table, so a new route is covered (or fails the
walk) without anyone remembering to add it here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from forgehall.app import iter_api_routes
from forgehall.db.engine import Database
from forgehall.workspaces.access import Role, resolve_access
from tests.conftest import Person, make_person, make_workspace, new_client


def _dependencies(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _dependencies(sub)


def workspace_routes(app: FastAPI) -> list[tuple[APIRoute, str]]:
    """Every API route with {workspace} in its path and each of its methods."""
    return [
        (route, method)
        for route in iter_api_routes(app.routes)
        if "{workspace}" in route.path
        for method in sorted(route.methods)
    ]


def minimum_role(route: APIRoute) -> Role:
    roles = [getattr(call, "minimum_role", None) for call in _dependencies(route.dependant)]
    declared = [r for r in roles if r is not None]
    assert declared, f"{route.path} declares no role (use MemberAccess/AdminAccess/OwnerAccess)"
    return max(declared)


def test_every_workspace_route_goes_through_the_access_check(app: FastAPI) -> None:
    routes = workspace_routes(app)
    assert len(routes) >= 10
    missing = [
        f"{method} {route.path}"
        for route, method in routes
        if resolve_access not in set(_dependencies(route.dependant))
    ]
    assert missing == [], f"routes without workspaces.access: {missing}"


def test_no_route_takes_a_workspace_id_outside_the_path_convention(app: FastAPI) -> None:
    # A route naming a workspace any other way (query, body, {workspace_id}) would bypass
    # the walk above; refuse the spelling outright.
    routes = list(iter_api_routes(app.routes))
    assert len(routes) > 20
    for route in routes:
        assert "{workspace_id}" not in route.path, route.path
        for param in route.dependant.query_params:
            assert param.name not in ("workspace", "workspace_id"), route.path


PERSONAS = ("anonymous", "outsider", "instance_admin", "member", "admin", "owner")


def expected(persona: str, needed: Role) -> str:
    if persona == "anonymous":
        return "401"
    if persona in ("outsider", "instance_admin"):
        return "hidden"
    have = {"member": Role.MEMBER, "admin": Role.ADMIN, "owner": Role.OWNER}[persona]
    return "allowed" if have >= needed else "403"


@pytest.fixture
async def world(db: Database) -> dict[str, Person]:
    return {
        "owner": await make_person(db, "owner@example.com"),
        "admin": await make_person(db, "admin@example.com"),
        "member": await make_person(db, "member@example.com"),
        "outsider": await make_person(db, "outsider@example.com"),
        "instance_admin": await make_person(db, "root@example.com", admin=True),
    }


async def test_authorization_matrix(app: FastAPI, db: Database, world: dict[str, Person]) -> None:
    counter = 0
    failures: list[str] = []
    async with app.router.lifespan_context(app), new_client(app, origin=None) as client:
        for route, method in workspace_routes(app):
            needed = minimum_role(route)
            counter += 1
            slug = f"ws{counter}"
            await make_workspace(
                db, world["owner"], slug, {"admin": world["admin"], "member": world["member"]}
            )
            await make_workspace(db, world["outsider"], f"other{counter}")
            for persona in PERSONAS:  # the owner goes last: its DELETE may remove things
                person = world.get(persona)
                path = route.path.replace("{workspace}", slug)
                own_id = person.user.id if person else "nobody"
                path = path.replace("{user_id}", own_id)
                path = re.sub(r"\{[a-z_]+\}", "unknown-id", path)
                headers = person.headers if person else {}
                body = None if method in ("GET", "DELETE") else {}
                response = await client.request(method, path, headers=headers, json=body)
                outcome = classify(response)
                want = expected(persona, needed)
                if outcome != want:
                    failures.append(
                        f"{method} {route.path} as {persona}: got {outcome} "
                        f"({response.status_code} {response.text[:120]}), "
                        f"want {want}"
                    )
    assert failures == [], "\n".join(failures)


def classify(response: httpx.Response) -> str:
    if response.status_code == 401:
        return "401"
    if (
        response.status_code == 404
        and "workspace" in response.json().get("detail", "")
        and "was not found" in response.json()["detail"]
    ):
        return "hidden"
    if response.status_code == 403 and response.json().get("type") == "/problems/forbidden":
        return "403"
    return "allowed"


#: Routes anyone may call without signing in. Everything else must answer 401.
PUBLIC_ROUTES = {
    ("GET", "/health"),
    ("GET", "/readyz"),
    ("GET", "/healthz"),
    ("GET", "/api/config"),
    ("POST", "/auth/send-code"),
    ("POST", "/auth/verify-code"),
    ("POST", "/auth/setup"),
    ("POST", "/auth/logout"),
    ("GET", "/auth/oauth/{provider}/start"),
    ("GET", "/auth/oauth/{provider}/callback"),
    ("POST", "/auth/cli/exchange"),
    # Sign-in pages: they redirect to /login or show a form instead of answering 401.
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/login/verify"),
    ("GET", "/auth/cli/authorize"),
    ("GET", "/"),
    ("POST", "/logout"),
    ("GET", "/setup/{token}"),
    ("POST", "/setup/{token}"),
    ("GET", "/invitations/{token}"),
    ("POST", "/invitations/{token}/{answer}"),
    ("POST", "/auth/cli/authorize"),
    ("POST", "/workspaces"),  # the home page's create form: back to /login when signed out
    ("GET", "/switch"),  # the workspace menu without JavaScript: only a redirect
    # The ledger's checkpoint-signing public key: what an offline verifier needs.
    ("GET", "/api/v1/ledger/public-key"),
}


def _fill(path: str) -> str:
    return re.sub(r"\{[a-z_]+\}", "unknown-id", path)


async def test_every_other_route_requires_authentication(app: FastAPI) -> None:
    checked = 0
    async with app.router.lifespan_context(app), new_client(app, origin=None) as client:
        for route in iter_api_routes(app.routes):
            for method in sorted(route.methods):
                if (method, route.path) in PUBLIC_ROUTES or method == "HEAD":
                    continue
                body = None if method in ("GET", "DELETE") else {}
                response = await client.request(method, _fill(route.path), json=body)
                assert response.status_code == 401, f"{method} {route.path}"
                checked += 1
    assert checked > 25


async def test_admin_routes_refuse_non_admins_and_daemon_tokens_only_speak_the_protocol(
    app: FastAPI, db: Database, world: dict[str, Person]
) -> None:
    from forgehall.identity import service as identity

    workspace = await make_workspace(db, world["owner"], "dmn")
    async with db.session() as session:
        daemon = await identity.create_token(
            session, world["owner"].user, kind="dmn", name="box", workspace_id=workspace.id
        )
    daemon_headers = {"authorization": f"Bearer {daemon.plaintext}"}
    async with app.router.lifespan_context(app), new_client(app, origin=None) as client:
        for route in iter_api_routes(app.routes):
            for method in sorted(route.methods):
                body = None if method in ("GET", "DELETE") else {}
                path = _fill(route.path)
                if (
                    route.path.startswith("/api/v1/admin/")
                    and route.path != "/api/v1/admin/bootstrap"
                ):
                    response = await client.request(
                        method, path, json=body, headers=world["member"].headers
                    )
                    assert response.status_code == 403, f"{method} {route.path}"
                if route.path.startswith(("/api/v1/me", "/api/v1/admin")) or (
                    "{workspace}" in route.path
                ):
                    response = await client.request(method, path, json=body, headers=daemon_headers)
                    assert response.status_code == 403, f"{method} {route.path} (daemon)"
                    assert response.json()["type"] == "/problems/wrong-token-kind"
