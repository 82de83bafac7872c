"""Shared fixtures: every database test runs on SQLite and on a real PostgreSQL.

PostgreSQL comes from ``FORGEHALL_TEST_DATABASE_URL`` (an admin URL) or the local server
on 127.0.0.1:5432. Isolation: a template database is migrated once per session and
cloned for each test (``CREATE DATABASE … TEMPLATE``); SQLite tests copy a migrated
file. When PostgreSQL is unreachable the suite says so loudly and runs the SQLite half,
unless ``FORGEHALL_REQUIRE_POSTGRES=1``, which makes that a failure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from forgehall.app import AppOptions, create_app
from forgehall.core.logging import configure_logging
from forgehall.db.engine import Database
from forgehall.db.migrate import upgrade_to_head
from forgehall.db.url import resolve_database
from forgehall.identity import service as identity_service
from forgehall.identity.mail import OutgoingMail
from forgehall.identity.models import User
from forgehall.issues.service import create_default_statuses
from forgehall.settings import Settings
from forgehall.workspaces.models import Member, Workspace

ADMIN_URL = os.environ.get(
    "FORGEHALL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_POSTGRES = os.environ.get("FORGEHALL_REQUIRE_POSTGRES") == "1"
TEST_JWT_SECRET = "test-secret-" + "x" * 40
BACKENDS = ("sqlite", "postgresql")


def _asyncpg_dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url)
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


async def _postgres_available() -> str | None:
    try:
        conn = await asyncio.wait_for(asyncpg.connect(_asyncpg_dsn(ADMIN_URL)), 5)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


class PostgresTemplates:
    """Creates the migrated template once and clones it per test."""

    def __init__(self) -> None:
        self.prefix = f"fhtest_{os.getpid()}"
        self.template = f"{self.prefix}_tmpl"
        self.created: list[str] = []

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(_asyncpg_dsn(ADMIN_URL))

    async def build_template(self) -> None:
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.template}"')
            await conn.execute(f'CREATE DATABASE "{self.template}"')
        finally:
            await conn.close()
        db = Database(resolve_database(Settings(database_url=self.url(self.template))))
        try:
            await upgrade_to_head(db)
        finally:
            await db.dispose()

    def url(self, name: str) -> str:
        return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    async def clone(self, *, migrated: bool = True) -> str:
        name = f"{self.prefix}_{uuid.uuid4().hex[:10]}"
        conn = await self._admin()
        try:
            if migrated:
                await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
            else:
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)

    async def drop(self, url: str) -> None:
        name = make_url(url).database
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    async def drop_all(self) -> None:
        conn = await self._admin()
        try:
            rows = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE $1", self.prefix + "%"
            )
            for row in rows:
                await conn.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
        finally:
            await conn.close()


_PG_PROBLEM: str | None = None


def run_in_thread(coro_factory: Any) -> Any:
    """Run a coroutine to completion on a fresh loop in another thread.

    Session fixtures may be first requested from inside a test's running loop, where
    ``asyncio.run`` is not allowed.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(coro_factory())).result()


class _CurrentStderr:
    """Whatever ``sys.stderr`` is at the time of writing: pytest's capture per test."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def pytest_configure(config: pytest.Config) -> None:
    global _PG_PROBLEM
    # Log as the server does (plain tracebacks): structlog's default renders tracebacks
    # with rich and every local variable, which takes seconds per error and stalls the
    # event loop of an in-process app.
    configure_logging(level="info", fmt="console", stream=_CurrentStderr())  # type: ignore[arg-type]
    _PG_PROBLEM = asyncio.run(_postgres_available())
    if _PG_PROBLEM is None:
        return
    banner = (
        "\n" + "!" * 78 + f"\n!! PostgreSQL is NOT reachable at {make_url(ADMIN_URL)!r}:\n"
        f"!! {_PG_PROBLEM}\n"
    )
    if REQUIRE_POSTGRES:
        raise pytest.UsageError(
            banner + "!! FORGEHALL_REQUIRE_POSTGRES=1: refusing to run "
            "only the SQLite half.\n" + "!" * 78
        )
    sys.stderr.write(
        banner + "!! Running ONLY the SQLite half of the suite. Set "
        "FORGEHALL_TEST_DATABASE_URL to an admin URL to run it all.\n" + "!" * 78 + "\n"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _PG_PROBLEM is None:
        return
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        uses_pg = callspec is not None and callspec.params.get("backend") == "postgresql"
        uses_pg = uses_pg or item.get_closest_marker("postgres_only") is not None
        (dropped if uses_pg else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session")
def pg_templates() -> Iterator[PostgresTemplates]:
    templates = PostgresTemplates()
    run_in_thread(templates.build_template)
    yield templates
    run_in_thread(templates.drop_all)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    db = Database(resolve_database(Settings(database_url=f"sqlite:///{path}")))

    async def _build() -> None:
        try:
            await upgrade_to_head(db)
        finally:
            await db.dispose()

    run_in_thread(_build)
    return path


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
async def database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """The URL of a fresh, migrated database of the test's backend."""
    if backend == "sqlite":
        yield request.getfixturevalue("sqlite_database_url")
        return
    templates: PostgresTemplates = request.getfixturevalue("pg_templates")
    url = await templates.clone()
    yield url
    await templates.drop(url)


@pytest.fixture
def sqlite_database_url(sqlite_template: Path, tmp_path: Path) -> str:
    """The URL of a fresh, migrated SQLite database, for tests whose subject does not
    depend on the database (the daemon's failure paths): they run once, not per backend."""
    path = tmp_path / "forgehall.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
async def empty_database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """The URL of an empty database (no migrations applied)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    templates: PostgresTemplates = request.getfixturevalue("pg_templates")
    url = await templates.clone(migrated=False)
    yield url
    await templates.drop(url)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "jwt_secret": TEST_JWT_SECRET,
        "log_level": "debug",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(tmp_path, database_url=database_url)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database(resolve_database(settings))
    yield database
    await database.dispose()


class RecordingMailer:
    """Collects outgoing mail in memory for API tests (SMTP itself is tested against a
    real aiosmtpd server in tests/identity/test_mail.py and the login end-to-end test)."""

    def __init__(self) -> None:
        self.sent: list[OutgoingMail] = []

    async def send(self, mail: OutgoingMail) -> None:
        self.sent.append(mail)

    def last_code(self, to: str) -> str:
        for mail in reversed(self.sent):
            if mail.to == to:
                match = re.search(r"\b(\d{6})\b", mail.text)
                assert match, mail.text
                return match.group(1)
        raise AssertionError(f"no mail to {to}")

    def last_link(self, to: str) -> str:
        for mail in reversed(self.sent):
            if mail.to == to:
                match = re.search(r"/invitations/(fh_inv_\w+)", mail.text)
                assert match, mail.text
                return match.group(1)
        raise AssertionError(f"no mail to {to}")


@pytest.fixture
def mailer() -> RecordingMailer:
    return RecordingMailer()


@pytest.fixture
def app(settings: Settings, db: Database, mailer: RecordingMailer) -> FastAPI:
    return create_app(
        settings, db=db, options=AppOptions(run_services=False, metrics=True), mailer=mailer
    )


ORIGIN = "http://localhost:8000"  # the default public origin of test settings


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app), new_client(app) as c:
        yield c


def new_client(
    app: FastAPI, *, origin: str | None = ORIGIN, ip: str = "127.0.0.1"
) -> httpx.AsyncClient:
    """A client like a browser on the public origin (sends Origin, keeps cookies)."""
    headers = {"origin": origin} if origin else {}
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver", headers=headers)


@dataclass
class Person:
    user: User
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


async def make_person(db: Database, email: str, *, admin: bool = False) -> Person:
    """A user with a personal access token, created through the services."""
    async with db.session() as session:
        user = User(email=email, name=email.split("@")[0], is_instance_admin=admin)
        session.add(user)
        await session.commit()
        issued = await identity_service.create_token(session, user, kind="pat", name="test")
    return Person(user=user, token=issued.plaintext)


async def make_workspace(
    db: Database, owner: Person, slug: str, members: dict[str, Person] | None = None
) -> Workspace:
    """A workspace owned by ``owner`` with ``members`` as {role: person}."""
    async with db.session() as session:
        workspace = Workspace(
            slug=slug, name=slug.title(), key_prefix="ENG", created_by=owner.user.id
        )
        session.add(workspace)
        await session.flush()
        session.add(Member(workspace_id=workspace.id, user_id=owner.user.id, role="OWNER"))
        for role, person in (members or {}).items():
            session.add(
                Member(workspace_id=workspace.id, user_id=person.user.id, role=role.upper())
            )
        await create_default_statuses(session, workspace.id)
        await session.commit()
    return workspace


FAKE_CLIS = Path(__file__).resolve().parent / "fakes"


@pytest.fixture(scope="session", autouse=True)
def fake_agent_clis() -> Iterator[Path]:
    """Put the fake agent CLIs (tests/fakes) first on PATH for every subprocess a test
    starts, drop machine overrides (FORGEHALL_<PROVIDER>_PATH), and fail the run if any
    provider binary would still resolve to a real CLI."""
    from forgehall.daemon.adapters.providers import PROVIDERS

    patch = pytest.MonkeyPatch()
    path = f"{FAKE_CLIS}{os.pathsep}{os.environ.get('PATH', '')}"
    patch.setenv("PATH", path)
    for name in PROVIDERS:
        patch.delenv(f"FORGEHALL_{name.upper()}_PATH", raising=False)
    for provider in PROVIDERS.values():
        found = shutil.which(provider.binary, path=path)
        if found is None or Path(found).resolve().parent != FAKE_CLIS:
            patch.undo()
            pytest.fail(
                f"agent CLI guard: {provider.binary!r} resolves to {found!r}, not to a fake in "
                f"{FAKE_CLIS}; add tests/fakes/{provider.binary} (executable) so no real "
                "agent CLI can run in the tests",
                pytrace=False,
            )
    yield FAKE_CLIS
    patch.undo()
