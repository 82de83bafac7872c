"""Entry point of the ``forgehall`` command."""

from __future__ import annotations

import sys

import typer

from forgehall import __version__
from forgehall.cli import agents as agent_commands
from forgehall.cli import client as client_commands
from forgehall.cli import daemon as daemon_commands
from forgehall.cli import gates as gate_commands
from forgehall.cli import issues as issue_commands
from forgehall.cli import ledger as ledger_commands
from forgehall.cli import server as server_commands
from forgehall.cli import tasks as task_commands
from forgehall.cli.context import CliState

app = typer.Typer(
    name="forgehall",
    help="Forgehall: humans and AI coding agents working as one team, self-hosted.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def main_options(
    ctx: typer.Context,
    config: str | None = typer.Option(
        None,
        "--config",
        "-c",
        envvar="FORGEHALL_CONFIG",
        metavar="FILE",
        help="TOML config file (environment and .env take precedence over it).",
    ),
) -> None:
    ctx.obj = CliState(config_file=config)


@app.command()
def version() -> None:
    """Print the Forgehall version."""
    typer.echo(__version__)


server_commands.register(app)
client_commands.register(app)
issue_commands.register(app)
daemon_commands.register(app)
agent_commands.register(app)
task_commands.register(app)
gate_commands.register(app)
ledger_commands.register(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
