"""Operator commands that run on the server host: serve, up, migrate, config."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from cryptography.fernet import Fernet
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from forgehall.cli.context import fail, state
from forgehall.settings import (
    Settings,
    _field_extra,
    env_names,
    render_configuration_markdown,
)

T = TypeVar("T")
migrate_app = typer.Typer(help="Apply or inspect database migrations.", no_args_is_help=True)
config_app = typer.Typer(help="Check, show and document configuration.", no_args_is_help=True)


admin_app = typer.Typer(help="Instance administration on the server host.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(up)
    app.add_typer(migrate_app, name="migrate")
    app.add_typer(config_app, name="config")
    app.add_typer(admin_app, name="admin")


HostOption = Annotated[str | None, typer.Option(help="Listen address (default FORGEHALL_HOST).")]
PortOption = Annotated[int | None, typer.Option(help="Listen port (default PORT/FORGEHALL_PORT).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def serve(ctx: typer.Context, host: HostOption = None, port: PortOption = None) -> None:
    """Run an API replica: the HTTP API and the background services.

    Migrations are applied at start-up (safe with several replicas on PostgreSQL).
    Use this behind a reverse proxy in production; run daemons separately.
    """
    _run_server(ctx, "serve", host, port)


def up(ctx: typer.Context, host: HostOption = None, port: PortOption = None) -> None:
    """Run everything for one person in one process, on embedded SQLite by default.

    Prints the URL to open. Data lives in FORGEHALL_DATA_DIR
    (default ~/.local/share/forgehall).
    """
    _run_server(ctx, "up", host, port)


def _run_server(ctx: typer.Context, mode: Any, host: str | None, port: int | None) -> None:
    from forgehall.server import run

    loaded = state(ctx).load()
    updates: dict[str, Any] = {}
    origins = dict(loaded.origins)
    if host is not None:
        updates["host"], origins["host"] = host, "command line --host"
    if port is not None:
        updates["port"], origins["port"] = port, "command line --port"
    if updates:
        try:
            settings = Settings(**{**loaded.settings.model_dump(), **updates})
        except ValueError as exc:
            fail(f"invalid option: {exc}", code=2)
        loaded = type(loaded)(settings=settings, origins=origins, config_file=loaded.config_file)
    raise typer.Exit(run(loaded, mode))


def _with_database(ctx: typer.Context, action: Callable[[Any], Awaitable[T]]) -> T:
    from forgehall.core.logging import configure_logging
    from forgehall.db.engine import Database
    from forgehall.db.url import DatabaseUrlError, resolve_database

    settings = state(ctx).load().settings
    configure_logging(level="warning", fmt="console", secrets=settings.secret_values())
    try:
        config = resolve_database(settings)
    except DatabaseUrlError as exc:
        fail(str(exc), code=2)

    async def _go() -> T:
        db = Database(config)
        try:
            return await action(db)
        finally:
            await db.dispose()

    try:
        return asyncio.run(_go())
    except (OSError, TimeoutError) as exc:
        fail(f"database {config.display} is unreachable: {exc}")
    except Exception as exc:
        from forgehall.db.migrate import SchemaAheadError

        if isinstance(exc, SchemaAheadError):
            fail(str(exc))
        raise


@migrate_app.command("up")
def migrate_up(ctx: typer.Context) -> None:
    """Apply all pending migrations (idempotent)."""
    from forgehall.db.migrate import upgrade_to_head

    applied = _with_database(ctx, upgrade_to_head)
    if applied:
        typer.echo(f"applied {len(applied)} migration(s): {', '.join(applied)}")
    else:
        typer.echo("the schema is up to date")


@migrate_app.command("status")
def migrate_status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show the current revision, the head and what is pending."""
    from forgehall.db.migrate import migration_status

    status = _with_database(ctx, migration_status)
    if as_json:
        typer.echo(
            json.dumps({"current": status.current, "head": status.head, "pending": status.pending})
        )
        return
    typer.echo(f"current: {status.current or '(empty database)'}")
    typer.echo(f"head:    {status.head}")
    typer.echo("pending: " + (", ".join(status.pending) if status.pending else "none"))
    if not status.is_current:
        raise typer.Exit(1)


@migrate_app.command("down")
def migrate_down(
    ctx: typer.Context,
    to: Annotated[str, typer.Option(help="Target revision, -1 for one step, or base.")] = "-1",
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Revert migrations. Data in dropped tables is lost: take a backup first."""
    from forgehall.db.migrate import downgrade

    if not yes:
        typer.confirm(f"Downgrade the schema to {to}? Data in dropped tables is lost", abort=True)
    revision = _with_database(ctx, lambda db: downgrade(db, to))
    typer.echo(f"the schema is now at {revision or 'base (empty)'}")


@config_app.command("check")
def config_check(ctx: typer.Context) -> None:
    """Run every configuration check and print each problem with its fix.

    Exits 1 when there is an error (the server would refuse to start), 0 otherwise.
    """
    from forgehall.app import check_configuration

    settings = state(ctx).load().settings
    problems = check_configuration(settings)
    if not problems:
        typer.echo(f"configuration OK ({settings.env})")
        return
    for problem in problems:
        typer.echo(problem.render())
    errors = sum(p.severity == "error" for p in problems)
    typer.echo(f"{errors} error(s), {len(problems) - errors} warning(s)")
    if errors:
        raise typer.Exit(1)


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print the effective configuration (secrets masked) and where each value came from."""
    loaded = state(ctx).load()
    rows = []
    for name, info in Settings.model_fields.items():
        value = getattr(loaded.settings, name)
        rows.append(
            {
                "setting": env_names(name)[0],
                "value": _display_value(name, value, bool(_field_extra(info).get("secret"))),
                "source": loaded.origins.get(name, "default"),
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("setting", "value", "source", title="Effective configuration")
    for row in rows:
        table.add_row(row["setting"], row["value"], row["source"])
    Console(width=160).print(table)


def _display_value(name: str, value: Any, secret: bool) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, SecretStr):
        return "********" if value.get_secret_value() else "(empty)"
    if name == "database_url":
        from sqlalchemy.engine import make_url

        try:
            return make_url(str(value)).render_as_string(hide_password=True)
        except Exception:
            return "******** (unparseable)"
    if secret:
        return "********"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


@config_app.command("docs")
def config_docs(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file.")
    ] = None,
) -> None:
    """Print docs/configuration.md, generated from the settings tree."""
    text = render_configuration_markdown()
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


@config_app.command("new-key")
def config_new_key() -> None:
    """Print a new random encryption key for FORGEHALL_ENCRYPTION_KEY."""
    typer.echo(Fernet.generate_key().decode())


@admin_app.command("bootstrap")
def admin_bootstrap(ctx: typer.Context) -> None:
    """Print a one-time link (valid 24 hours) that creates the first instance admin.

    Runs against the database directly, on the server host. Refuses when an instance
    admin already exists.
    """
    from forgehall.identity.service import create_setup_link
    from forgehall.server import ensure_jwt_secret

    settings = state(ctx).load().settings

    async def _create(db: Any) -> str | None:
        async with db.session() as session:
            return await create_setup_link(session, ensure_jwt_secret(settings))

    link = _with_database(ctx, _create)
    if link is None:
        fail("an instance admin already exists; promote others from the admin API")
    typer.echo(link)
