"""Health, readiness, problem documents, body limits and request ids over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request

from forgehall.app import AppOptions, create_app
from forgehall.db.engine import Database
from forgehall.db.url import resolve_database
from forgehall.settings import Settings
from tests.conftest import make_settings

PROBLEM = "application/problem+json"


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_and_healthz_alias(client: httpx.AsyncClient) -> None:
    for path in ("/readyz", "/healthz"):
        response = await client.get(path)
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "ok", "checks": {"db": "ok", "migrations": "ok"}}


async def test_readyz_names_pending_migrations(empty_database_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, database_url=empty_database_url)
    db = Database(resolve_database(settings))
    app = create_app(settings, db=db, options=AppOptions(run_services=False))
    try:
        async with _client(app) as client:
            response = await client.get("/readyz")
    finally:
        await db.dispose()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["db"] == "ok"
    assert body["checks"]["migrations"].startswith("pending: ")


async def test_readyz_names_an_unreachable_database(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, database_url="postgresql://u:pw@127.0.0.1:1/nothing")
    app = create_app(settings, options=AppOptions(run_services=False))
    async with _client(app) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["db"].startswith("error: ")
    assert checks["migrations"] == "unknown"


def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")  # type: ignore[return-value]


async def test_unknown_route_is_a_problem_document(client: httpx.AsyncClient) -> None:
    response = await client.get("/no/such/thing")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["type"] == "/problems/not-found"
    assert body["status"] == 404
    assert "GET /no/such/thing" in body["detail"]


async def test_wrong_method_is_a_problem_document(client: httpx.AsyncClient) -> None:
    response = await client.post("/health")
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM


async def test_unexpected_error_is_500_without_a_traceback(
    settings: Settings, db: Database
) -> None:
    app = create_app(settings, db=db, options=AppOptions(run_services=False))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("internal detail that must not leak")

    async with _client(app) as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM
    assert "internal detail" not in response.text
    assert "Traceback" not in response.text
    assert response.json()["detail"].startswith("an unexpected error occurred")
    assert response.headers["x-request-id"]


async def test_oversized_body_by_content_length_gets_413(
    settings: Settings,
    db: Database,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    small = make_settings(tmp_path, database_url=settings.database_url, max_body_bytes=2048)
    app = create_app(small, db=db, options=AppOptions(run_services=False))
    seen: list[int] = []

    @app.post("/echo")
    async def echo(payload: dict[str, str]) -> dict[str, int]:
        seen.append(len(payload))
        return {"keys": len(payload)}

    async with _client(app) as client:
        ok = await client.post("/echo", json={"a": "b"})
        big = await client.post("/echo", json={"a": "x" * 5000})

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"a": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}'

        streamed = await client.post(
            "/echo", content=chunks(), headers={"content-type": "application/json"}
        )
    assert ok.status_code == 200
    assert big.status_code == 413
    assert big.headers["content-type"] == PROBLEM
    assert "FORGEHALL_MAX_BODY_BYTES" in big.json()["detail"]
    assert streamed.status_code == 413
    assert seen == [1], "the oversized bodies must never reach the handler"


async def test_malformed_json_is_422_problem(settings: Settings, db: Database) -> None:
    app = create_app(settings, db=db, options=AppOptions(run_services=False))

    @app.post("/echo")
    async def echo(payload: dict[str, str]) -> dict[str, str]:
        return payload

    async with _client(app) as client:
        response = await client.post(
            "/echo", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["errors"]


async def test_request_id_is_generated(client: httpx.AsyncClient) -> None:
    first = await client.get("/health")
    second = await client.get("/health")
    assert len(first.headers["x-request-id"]) == 32
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_request_id_accepted_only_from_trusted_proxy(app: FastAPI) -> None:
    async with app.router.lifespan_context(app):
        trusted = httpx.ASGITransport(app=app, client=("127.0.0.1", 1))
        untrusted = httpx.ASGITransport(app=app, client=("203.0.113.9", 1))
        async with httpx.AsyncClient(transport=trusted, base_url="http://t") as c:
            ok = await c.get("/health", headers={"x-request-id": "edge-abc.123"})
            bad = await c.get("/health", headers={"x-request-id": "has spaces\tand tabs"})
        async with httpx.AsyncClient(transport=untrusted, base_url="http://t") as c:
            spoofed = await c.get("/health", headers={"x-request-id": "edge-abc.123"})
    assert ok.headers["x-request-id"] == "edge-abc.123"
    async with app.router.lifespan_context(app):
        trusted = httpx.ASGITransport(app=app, client=("127.0.0.1", 1))
        async with httpx.AsyncClient(transport=trusted, base_url="http://t") as c:
            via_proxy = await c.get(
                "/health",
                headers={"x-request-id": "edge-xff", "x-forwarded-for": "203.0.113.5, 127.0.0.1"},
            )
    assert via_proxy.headers["x-request-id"] == "edge-xff"
    assert bad.headers["x-request-id"] != "has spaces\tand tabs"
    assert spoofed.headers["x-request-id"] != "edge-abc.123"


async def test_openapi_is_served_under_the_api_prefix(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/readyz" in paths
    assert "503" in paths["/readyz"]["get"]["responses"]


async def test_forwarded_for_is_believed_only_from_trusted_proxies(
    settings: Settings, db: Database
) -> None:
    app = create_app(settings, db=db, options=AppOptions(run_services=False))
    seen: list[tuple[str | None, str]] = []

    @app.get("/whoami-ip")
    async def whoami_ip(request: Request) -> dict[str, str]:
        seen.append((request.client.host if request.client else None, request.url.scheme))
        return {}

    async with app.router.lifespan_context(app):
        for peer in ("127.0.0.1", "203.0.113.9"):
            transport = httpx.ASGITransport(app=app, client=(peer, 1))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                await c.get(
                    "/whoami-ip",
                    headers={
                        "x-forwarded-for": "198.51.100.7, 10.9.9.9, 127.0.0.1",
                        "x-forwarded-proto": "https",
                    },
                )
    # From the trusted proxy: the rightmost untrusted hop is the client, scheme https.
    # (10.9.9.9 is not in the trusted list, so it is the client the proxy saw.)
    assert seen[0] == ("10.9.9.9", "https")
    # From an untrusted peer the headers are ignored.
    assert seen[1] == ("203.0.113.9", "http")
