"""The application factory: routers, middleware and the lifespan of background services.

``create_app`` does no I/O: the caller (``forgehall serve``/``up``, or a test) decides
when to migrate. The lifespan starts the background services and, on shutdown — after
the server has drained in-flight requests — stops them and closes the database pools.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute

from forgehall import __version__
from forgehall.agents.daemon_routes import router as daemon_router
from forgehall.agents.dispatch import TaskWatchdog
from forgehall.agents.routes import router as agents_router
from forgehall.agents.task_routes import router as tasks_router
from forgehall.core.cors import OriginCORSMiddleware
from forgehall.core.errors import COMMON_RESPONSES, install_error_handlers, problem_response
from forgehall.core.events import EventBus
from forgehall.core.metrics import Metrics
from forgehall.core.middleware import RequestContextMiddleware
from forgehall.core.security import Vault
from forgehall.core.services import BackgroundService, ServiceRunner, select_services
from forgehall.db.engine import Database
from forgehall.db.types import install_vault
from forgehall.db.url import resolve_database
from forgehall.identity.mail import MailDeliveryError, Mailer, create_mailer
from forgehall.identity.oauth_routes import router as oauth_router
from forgehall.identity.routes import auth_router, config_router
from forgehall.identity.routes import router as identity_router
from forgehall.issues.routes import router as issues_router
from forgehall.ledger.routes import router as ledger_router
from forgehall.ledger.service import LedgerSequencer
from forgehall.live.routes import router as live_router
from forgehall.ops.routes import router as ops_router
from forgehall.ops.service import EventRetention, JobHistoryRetention, SqliteStatistics
from forgehall.settings import Problem, Settings, check_settings
from forgehall.web import site as web_site
from forgehall.workspaces.routes import router as workspaces_router

log = structlog.get_logger("forgehall.app")

#: Every background service a replica can run (names are documented in docs/operations.md).
BACKGROUND_SERVICES: tuple[type[BackgroundService], ...] = (
    JobHistoryRetention,
    EventRetention,
    SqliteStatistics,
    TaskWatchdog,
    LedgerSequencer,
)
API_PREFIX = "/api/v1"
STATIC_DIR = Path(__file__).parent / "web" / "static"


async def _on_mail_failure(request: Request, exc: Exception) -> Response:
    # The code or invitation is stored; the person can ask again once mail works.
    return problem_response(
        503,
        f"could not send the email: {exc}. Try again later; an operator should check "
        "the SMTP settings (docs/operations.md)",
        type_="mail-unavailable",
        instance=request.url.path,
        headers={"Retry-After": "60"},
    )


def iter_api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """Every API route of an app, however FastAPI nests included routers.

    FastAPI 0.12x flattened ``include_router``; newer releases keep an included-router
    node. Routers are included without a prefix here, so paths are already complete.
    """
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        nested = getattr(route, "original_router", None) or getattr(route, "router", None)
        if nested is not None and hasattr(nested, "routes"):
            yield from iter_api_routes(nested.routes)


def check_configuration(settings: Settings) -> list[Problem]:
    """Every configuration check: the settings' own and those needing the service list."""
    known = sorted(cls.name for cls in BACKGROUND_SERVICES)
    problems = check_settings(settings)
    for setting, names in (
        ("services_disabled", settings.services_disabled),
        ("service_intervals", list(settings.service_intervals)),
    ):
        unknown = [n for n in names if n not in known and n != "all"]
        if unknown:
            problems.append(
                Problem(
                    setting,
                    f"names unknown service(s) {', '.join(unknown)}",
                    f"use names from: {', '.join(known)} (or `all`)",
                )
            )
    return sorted(problems, key=lambda p: p.severity != "error")


@dataclass
class AppOptions:
    """What differs between ``serve``, ``up`` and tests."""

    run_services: bool = True
    metrics: bool | None = None  # default: when FORGEHALL_METRICS_ADDR is set


def create_app(
    settings: Settings,
    *,
    db: Database | None = None,
    options: AppOptions | None = None,
    services: Sequence[BackgroundService] | None = None,
    mailer: Mailer | None = None,
) -> FastAPI:
    if settings.jwt_secret is None:
        raise ValueError("create_app needs a JWT secret (the server supplies one in development)")
    options = options or AppOptions()
    install_vault(
        Vault(settings.encryption_key.get_secret_value()) if settings.encryption_key else None
    )
    database = db or Database(resolve_database(settings))
    with_metrics = options.metrics if options.metrics is not None else bool(settings.metrics_addr)
    metrics = Metrics(read_pool=database.pool_status) if with_metrics else None
    runner_id = f"{uuid.uuid4().hex[:12]}"

    bus = EventBus(database)
    if services is None and options.run_services:
        disabled = settings.services_disabled
        if "all" in disabled:
            disabled = [cls.name for cls in BACKGROUND_SERVICES]
        services = select_services(
            BACKGROUND_SERVICES,
            database,
            disabled=disabled,
            intervals=dict(settings.service_intervals),
            runner_id=runner_id,
            bus=bus,
        )
    # uvicorn drains requests for the full grace first; services get a quarter on top, so a
    # stop takes at most 1.25 x FORGEHALL_SHUTDOWN_GRACE_SECONDS (docs/operations.md).
    runner = ServiceRunner(
        services or [],
        metrics=metrics,
        stop_grace=max(settings.shutdown_grace_seconds / 4, 1.0),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await bus.start()
        runner.start()
        log.info(
            "app.started",
            version=__version__,
            database=database.dialect,
            services=[s.name for s in runner.services],
        )
        try:
            yield
        finally:
            await runner.stop()
            await bus.stop()
            if db is None:
                await database.dispose()
            log.info("app.stopped")

    app = FastAPI(
        title="Forgehall",
        version=__version__,
        description="Self-hosted control plane where humans and AI coding agents work as one team.",
        lifespan=lifespan,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.db = database
    app.state.metrics = metrics
    app.state.services = runner
    app.state.mailer = mailer or create_mailer(settings)
    app.state.events = bus
    install_error_handlers(app)
    app.add_exception_handler(MailDeliveryError, _on_mail_failure)
    for router in (ops_router, config_router, live_router):
        app.include_router(router)
    # JSON API routers: every route documents the problem responses it may give. A
    # request is matched against the routes in order, so the busiest come first (the
    # daemon protocol, the board) and the pages last.
    for router in (
        daemon_router,
        tasks_router,
        issues_router,
        agents_router,
        workspaces_router,
        ledger_router,
        auth_router,
        identity_router,
        oauth_router,
    ):
        app.include_router(router, responses=COMMON_RESPONSES)
    web_site.install(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(OriginCORSMiddleware, allowed_origins=settings.allowed_origins)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        trusted_proxies=settings.trusted_proxies,
        metrics=metrics,
    )
    return app
