"""``forgehall daemon …``: run the runtime daemon and look after it.

The daemon itself lives in :mod:`forgehall.daemon` (it talks HTTP to the server like the
rest of the CLI); these commands start it in the foreground, store its login, read its
health endpoint and log, and stop it with SIGTERM (a clean drain).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import deque
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from forgehall.cli.context import fail
from forgehall.daemon.config import ConfigError, data_dir_from, load_config, store_login
from forgehall.daemon.state import AlreadyRunning, DataDir

daemon_app = typer.Typer(
    help="The runtime daemon: runs coding agents for a workspace on this machine.",
    invoke_without_command=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(daemon_app, name="daemon")


def _custom_enabled() -> bool:
    return os.environ.get("FORGEHALL_DAEMON_CUSTOM_COMMANDS", "") in ("1", "true", "yes")


@daemon_app.callback()
def daemon_default(ctx: typer.Context) -> None:
    """Run the daemon in the foreground (same as `forgehall daemon start`).

    Configuration comes from the environment (FORGEHALL_DAEMON_*; see docs/daemon.md) and
    the login stored by `forgehall daemon login`. SIGTERM drains it cleanly.
    """
    if ctx.invoked_subcommand is None:
        start()


@daemon_app.command()
def start() -> None:
    """Run the daemon in the foreground until SIGTERM or Ctrl-C."""
    from forgehall.daemon.loop import run_daemon

    try:
        config = load_config()
    except ConfigError as exc:
        fail(str(exc), code=2)
    try:
        code = run_daemon(config, custom_commands=_custom_enabled())
    except AlreadyRunning as exc:
        fail(str(exc), code=3)
    if code:
        raise typer.Exit(code)


@daemon_app.command()
def login(
    server: Annotated[str, typer.Option(help="Server URL, e.g. https://forgehall.example.com")],
    token: Annotated[
        str, typer.Option(help="A daemon token (fh_dmn_…) minted by a workspace admin.")
    ],
    check: Annotated[
        bool, typer.Option("--check/--no-check", help="Ask the server whether the token works.")
    ] = True,
) -> None:
    """Store the server URL and daemon token in the daemon's data directory (mode 0600)."""
    if not token.startswith("fh_dmn_"):
        fail("that is not a daemon token (fh_dmn_…); a workspace admin mints one", code=2)
    url = server.rstrip("/")
    if check:
        try:
            # Authentication comes before the runtime lookup: 404 means the token works.
            response = httpx.post(
                f"{url}/api/v1/daemon/runtimes/-/heartbeat",
                headers={"authorization": f"Bearer {token}"},
                timeout=15,
            )
        except httpx.HTTPError as exc:
            fail(f"cannot reach the server at {url}: {exc} (use --no-check to store anyway)")
        if response.status_code in (401, 403):
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            fail(f"the server refused the token: {detail}")
    path = store_login(data_dir_from(os.environ), url, token)
    typer.echo(f"Daemon login stored in {path}")


def _health() -> tuple[DataDir, dict[str, object] | None]:
    data = DataDir(data_dir_from(os.environ))
    if data.running_pid() is None:
        return data, None
    from forgehall.daemon.loop import read_health_file

    where = read_health_file(data)
    if where is None:
        return data, {"status": "starting", "pid": data.running_pid()}
    try:
        response = httpx.get(f"http://{where['host']}:{where['port']}/health", timeout=5)
        body: dict[str, object] = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return data, {"status": "unknown", "pid": data.running_pid(), "error": str(exc)}
    return data, body


@daemon_app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Whether a daemon runs on this data directory, and what it does (exit 1: not running)."""
    data, health = _health()
    if health is None:
        if as_json:
            typer.echo(json.dumps({"status": "stopped"}))
        else:
            typer.echo(f"No daemon is running (data directory {data.path}).")
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(health, indent=2))
        return
    for key in ("status", "pid", "server", "runtime_id", "daemon_id", "connected", "journal"):
        if key in health:
            typer.echo(f"{key:11} {health[key]}")
    tasks = health.get("tasks")
    if isinstance(tasks, list):
        typer.echo(f"{'tasks':11} {', '.join(map(str, tasks)) or '—'}")
    providers = health.get("providers")
    if isinstance(providers, dict):
        typer.echo(f"{'providers':11} {', '.join(sorted(providers)) or '—'}")


@daemon_app.command()
def stop(
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the drain before giving up.")
    ] = 120,
    now: Annotated[
        bool, typer.Option("--now", help="Skip the drain grace: stop running agents at once.")
    ] = False,
) -> None:
    """Stop the daemon of this data directory cleanly (SIGTERM: it drains first)."""
    data = DataDir(data_dir_from(os.environ))
    pid = data.running_pid()
    if pid is None:
        typer.echo("No daemon is running.")
        return
    os.kill(pid, signal.SIGTERM)
    if now:
        time.sleep(0.2)
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if data.running_pid() is None:
            typer.echo(f"Daemon {pid} stopped.")
            return
        time.sleep(0.2)
    fail(f"daemon {pid} is still draining after {timeout:g} s")


@daemon_app.command()
def logs(
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many last lines.")] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
) -> None:
    """Print the end of the daemon's log (daemon.log in its data directory)."""
    path = DataDir(data_dir_from(os.environ)).log_path
    if not path.exists():
        fail(f"no log at {path}: the daemon never ran with this data directory")
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in deque(handle, maxlen=lines):
            typer.echo(line.rstrip("\n"))
        while follow:
            line = handle.readline()
            if line:
                typer.echo(line.rstrip("\n"))
            else:
                time.sleep(0.5)


@daemon_app.command()
def providers(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The agent CLIs found on this machine, their versions and the overrides in effect."""
    from forgehall.daemon.agentcli import describe_providers

    rows = describe_providers(dict(os.environ))
    if as_json:
        typer.echo(json.dumps([row.__dict__ for row in rows], indent=2))
        return
    table = Table("provider", "path", "version", "overrides", title="Agent CLIs")
    for row in rows:
        table.add_row(
            row.name,
            row.path or "— (not found)",
            row.version or "—",
            ", ".join(f"{k}={v}" for k, v in row.overrides.items()) or "—",
        )
    Console(width=140).print(table)
