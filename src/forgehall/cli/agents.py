"""Agent setup commands over the HTTP API: agent profiles, runtimes, daemon tokens and
the repositories tasks check out.

Agents are named by their name or id, runtimes by their id or daemon id, repositories by
their name or id; names are turned into ids through the API. Env values are write-only:
they go to the server and never come back (responses list the keys). Every read command
takes ``--json``; errors print the server's problem detail on one line and exit 1.
"""

from __future__ import annotations

import json
import os
import shlex
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from forgehall.agents.schemas import PARSERS, AgentOut, RuntimeOut
from forgehall.cli.client import JsonOption, WorkspaceOption, _parse, _print
from forgehall.cli.context import fail
from forgehall.cli.daemon import daemon_app
from forgehall.cli.issues import Board, _read_text, _when
from forgehall.identity.schemas import IssuedTokenOut
from forgehall.workspaces.schemas import RepositoryOut

agent_app = typer.Typer(
    help="AI coding agents of a workspace: create, list, show, change, archive, restore.",
    no_args_is_help=True,
)
runtime_app = typer.Typer(
    help="Runtimes: the machines whose daemons run agent tasks.", no_args_is_help=True
)
daemon_token_app = typer.Typer(
    help="Daemon tokens: a daemon registers its runtime in a workspace with one.",
    no_args_is_help=True,
)
repo_app = typer.Typer(
    help="Git repositories of a workspace, checked out for agent tasks.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")
    app.add_typer(runtime_app, name="runtime")
    # `forgehall daemon token …` joins the daemon's own commands (cli.daemon).
    daemon_app.add_typer(daemon_token_app, name="token")
    app.add_typer(repo_app, name="repo")


# --- helpers ------------------------------------------------------------------------------------


def _agent_path(ref: str, suffix: str = "") -> str:
    return f"/agents/{quote(ref.strip(), safe='')}{suffix}"


def _env(pairs: list[str]) -> dict[str, str]:
    """KEY=VALUE, or KEY alone for the value of KEY in this shell's environment."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not key:
            fail(f"--env {pair!r} has no key; use KEY=VALUE (or KEY to copy it from your shell)")
        if not sep:
            if key not in os.environ:
                fail(f"--env {key}: {key} is not set in your environment; use {key}=VALUE")
            value = os.environ[key]
        env[key] = value
    return env


def _custom_command(command: str, parser: str | None) -> dict[str, Any]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        fail(f"--custom-command {command!r} cannot be split into arguments: {exc}")
    if not argv:
        fail("--custom-command is empty")
    chosen = parser or "plain"
    if chosen not in PARSERS:
        fail(f"unknown parser {chosen!r}; use {' or '.join(PARSERS)}")
    return {"command": argv, "parser": chosen}


def _instructions(text: str | None, file: str | None) -> str | None:
    if text is not None and file is not None:
        fail("give --instructions or --instructions-file, not both")
    return _read_text(file) if file is not None else text


def _runtimes(board: Board) -> list[RuntimeOut]:
    rows: list[RuntimeOut] = _parse(list[RuntimeOut], board.call("GET", "/runtimes"))
    return rows


def _runtime(board: Board, ref: str, runtimes: list[RuntimeOut] | None = None) -> RuntimeOut:
    """A runtime by id or by the daemon id its daemon registered with."""
    rows = runtimes if runtimes is not None else _runtimes(board)
    wanted = ref.strip()
    found = next((r for r in rows if r.id == wanted), None) or next(
        (r for r in rows if r.daemon_id == wanted), None
    )
    if found is None:
        known = ", ".join(f"{r.daemon_id} ({r.id})" for r in rows) or (
            "none yet (a daemon registers one with a token from `forgehall daemon token create`)"
        )
        fail(f"unknown runtime {ref!r}; the runtimes of {board.slug} are: {known}")
    return found


def _pool(board: Board, refs: list[str]) -> list[str]:
    runtimes = _runtimes(board)
    return list(dict.fromkeys(_runtime(board, ref, runtimes).id for ref in refs))


def _facts(console: Console, facts: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in facts)
    for name, value in facts:
        console.print(Text.assemble((f"{name:>{width}}: ", "dim"), value))


def _maybe(moment: datetime | None) -> str:
    return _when(moment) if moment is not None else "—"


# --- options shared by create and update --------------------------------------------------------

AgentArgument = Annotated[str, typer.Argument(help="The agent's name or id.")]
ProviderOption = Annotated[
    str | None,
    typer.Option(
        "--provider",
        help="claude, codex, cursor, opencode, copilot, gemini, qwen, acp or custom (custom "
        "runs --custom-command).",
    ),
]
ModelOption = Annotated[
    str | None, typer.Option("--model", help="Model name (empty: the provider's default).")
]
InstructionsOption = Annotated[
    str | None, typer.Option("--instructions", help="Markdown instructions, prepended to tasks.")
]
InstructionsFileOption = Annotated[
    str | None,
    typer.Option("--instructions-file", help="Read the instructions from a file (- for stdin)."),
]
ExtraArgOption = Annotated[
    list[str] | None,
    typer.Option(
        "--extra-arg",
        help="Argument appended to the provider's command line (repeatable, in order; "
        "write --extra-arg=--flag for one starting with -).",
    ),
]
EnvOption = Annotated[
    list[str] | None,
    typer.Option(
        "--env",
        help="KEY=VALUE for the agent process, stored encrypted (the server needs "
        "FORGEHALL_ENCRYPTION_KEY) and never shown again (repeatable). KEY alone copies the "
        "value from your environment, which keeps it out of your shell history.",
    ),
]
MaxTasksOption = Annotated[
    int | None,
    typer.Option("--max-concurrent-tasks", help="Tasks the agent runs at once (1-100)."),
]
RuntimeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--runtime",
        help="Runtime (id or daemon id) the agent may run on (repeatable; default: any online "
        "runtime that supports its provider).",
    ),
]
CustomCommandOption = Annotated[
    str | None,
    typer.Option(
        "--custom-command",
        help="The command of a custom agent, split like a shell line (no shell runs it), "
        "e.g. 'my-agent --json'.",
    ),
]
ParserOption = Annotated[
    str | None,
    typer.Option("--parser", help="How to read a custom command's output: plain or stream-json."),
]
AvatarOption = Annotated[str | None, typer.Option("--avatar", help="Image URL or emoji.")]


# --- agent --------------------------------------------------------------------------------------


@agent_app.command("create")
def agent_create(
    name: Annotated[
        str, typer.Argument(help="Unique name in the workspace; also its @mention handle.")
    ],
    provider: ProviderOption = None,
    model: ModelOption = None,
    instructions: InstructionsOption = None,
    instructions_file: InstructionsFileOption = None,
    extra_arg: ExtraArgOption = None,
    env: EnvOption = None,
    max_concurrent_tasks: MaxTasksOption = None,
    runtime: RuntimeOption = None,
    custom_command: CustomCommandOption = None,
    parser: ParserOption = None,
    avatar: AvatarOption = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Add an agent to the workspace (admins) and print its id.

    The provider defaults to claude. Assign an issue to the agent (`forgehall issue
    assign KEY agent:NAME`) or run it on one (`forgehall task run KEY --agent NAME`);
    a daemon whose runtime supports the provider does the work.
    """
    board = Board(workspace)
    if parser is not None and custom_command is None:
        fail("--parser goes with --custom-command")
    body: dict[str, Any] = {"name": name}
    optional = {
        "provider": provider,
        "model": model,
        "avatar": avatar,
        "instructions": _instructions(instructions, instructions_file),
        "max_concurrent_tasks": max_concurrent_tasks,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if extra_arg:
        body["extra_args"] = extra_arg
    if env:
        body["env"] = _env(env)
    if runtime:
        body["runtime_pool"] = _pool(board, runtime)
    if custom_command is not None:
        body["custom_command"] = _custom_command(custom_command, parser)
    created = _parse(AgentOut, board.call("POST", "/agents", body))
    typer.echo(created.id)
    typer.echo(
        f"created agent {created.name} ({created.provider}, status {created.status})", err=True
    )


@agent_app.command("update")
def agent_update(
    agent: AgentArgument,
    name: Annotated[str | None, typer.Option("--name", help="New name.")] = None,
    provider: ProviderOption = None,
    model: ModelOption = None,
    instructions: InstructionsOption = None,
    instructions_file: InstructionsFileOption = None,
    extra_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--extra-arg",
            help="Replace the extra arguments with these (repeatable; --extra-arg=--flag for "
            "one starting with -).",
        ),
    ] = None,
    no_extra_args: Annotated[
        bool, typer.Option("--no-extra-args", help="Remove every extra argument.")
    ] = False,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            help="Replace ALL stored env variables with these KEY=VALUE pairs (repeatable; "
            "KEY alone copies the value from your environment). Values are never shown, so "
            "give every variable the agent needs.",
        ),
    ] = None,
    no_env: Annotated[bool, typer.Option("--no-env", help="Remove every env variable.")] = False,
    max_concurrent_tasks: MaxTasksOption = None,
    runtime: Annotated[
        list[str] | None,
        typer.Option(
            "--runtime",
            help="Replace the runtime pool with these runtimes (id or daemon id; repeatable).",
        ),
    ] = None,
    any_runtime: Annotated[
        bool,
        typer.Option(
            "--any-runtime", help="Clear the pool: any online runtime supporting the provider."
        ),
    ] = False,
    custom_command: CustomCommandOption = None,
    parser: ParserOption = None,
    avatar: AvatarOption = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Change the fields given (admins); the others are left alone.

    Switching --provider away from custom drops the custom command.
    """
    board = Board(workspace)
    for flag, values, clear in (
        ("extra-arg", extra_arg, no_extra_args),
        ("env", env, no_env),
        ("runtime", runtime, any_runtime),
    ):
        if values and clear:
            fail(f"give --{flag} or its clearing flag, not both")
    if parser is not None and custom_command is None:
        fail("--parser goes with --custom-command")
    body: dict[str, Any] = {}
    optional = {
        "name": name,
        "provider": provider,
        "model": model,
        "avatar": avatar,
        "instructions": _instructions(instructions, instructions_file),
        "max_concurrent_tasks": max_concurrent_tasks,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if extra_arg or no_extra_args:
        body["extra_args"] = extra_arg or []
    if env or no_env:
        body["env"] = _env(env or [])
    if runtime or any_runtime:
        body["runtime_pool"] = _pool(board, runtime or [])
    if custom_command is not None:
        body["custom_command"] = _custom_command(custom_command, parser)
    elif provider is not None and provider != "custom":
        body["custom_command"] = None
    if not body:
        fail("nothing to change; give at least one option (see --help)")
    updated = _parse(AgentOut, board.call("PATCH", _agent_path(agent), body))
    typer.echo(f"updated agent {updated.name}")


class AgentRow(BaseModel):
    name: str
    status: str
    provider: str
    model: str
    max_tasks: int
    runtimes: str
    env: str
    id: str


@agent_app.command("list")
def agent_list(
    archived: Annotated[
        bool, typer.Option("--archived", help="List the archived agents instead.")
    ] = False,
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the agents of the workspace with their status.

    Status: working (a task is dispatched or running), offline (no online runtime of its
    pool supports its provider), error (its last task failed) or idle.
    """
    board = Board(workspace)
    agents: list[AgentOut] = _parse(
        list[AgentOut],
        board.call("GET", "/agents", params={"archived": "true" if archived else None}),
    )
    if as_json:
        typer.echo(json.dumps([a.model_dump(mode="json") for a in agents], indent=2))
        return
    if not agents:
        typer.echo("no archived agents" if archived else "no agents; add one with `agent create`")
        return
    rows: list[BaseModel] = [
        AgentRow(
            name=a.name,
            status=a.status,
            provider=a.provider,
            model=escape(a.model) or "default",
            max_tasks=a.max_concurrent_tasks,
            runtimes=str(len(a.runtime_pool)) if a.runtime_pool else "any",
            env=", ".join(a.env_keys) or "—",
            id=a.id,
        )
        for a in agents
    ]
    title = f"{'Archived agents' if archived else 'Agents'} of {board.slug}"
    _print(rows, list(AgentRow.model_fields), False, escape(title))


@agent_app.command("show")
def agent_show(
    agent: AgentArgument, workspace: WorkspaceOption = None, as_json: JsonOption = False
) -> None:
    """Show an agent's profile (env keys only: values are never shown)."""
    board = Board(workspace)
    found = _parse(AgentOut, board.call("GET", _agent_path(agent)))
    if as_json:
        typer.echo(json.dumps(found.model_dump(mode="json"), indent=2))
        return
    command = (
        f"{shlex.join(found.custom_command.command)} (parser {found.custom_command.parser})"
        if found.custom_command
        else "—"
    )
    console = Console(highlight=False, soft_wrap=True)
    console.print(Text(f"{found.name}  {found.status}", style="bold"))
    _facts(
        console,
        [
            ("Id", found.id),
            ("Provider", found.provider),
            ("Model", found.model or "provider default"),
            ("Custom command", command),
            ("Extra args", shlex.join(found.extra_args) if found.extra_args else "—"),
            ("Env keys", ", ".join(found.env_keys) or "—"),
            ("Max tasks", str(found.max_concurrent_tasks)),
            ("Runtimes", ", ".join(found.runtime_pool) or "any online runtime"),
            ("Avatar", found.avatar or "—"),
            ("Created", _when(found.created_at)),
            ("Archived", _maybe(found.archived_at)),
        ],
    )
    console.print()
    console.print(Text("Instructions", style="bold"))
    console.print(Text(found.instructions.rstrip() or "(none)"))


@agent_app.command("archive")
def agent_archive(agent: AgentArgument, workspace: WorkspaceOption = None) -> None:
    """Archive an agent (admins): hidden from the list, cannot be assigned or run."""
    board = Board(workspace)
    archived = _parse(AgentOut, board.call("POST", _agent_path(agent, "/archive")))
    typer.echo(f"archived agent {archived.name}")


@agent_app.command("restore")
def agent_restore(agent: AgentArgument, workspace: WorkspaceOption = None) -> None:
    """Bring an archived agent back (admins)."""
    board = Board(workspace)
    restored = _parse(AgentOut, board.call("POST", _agent_path(agent, "/restore")))
    typer.echo(f"restored agent {restored.name}")


# --- runtime ------------------------------------------------------------------------------------


class RuntimeRow(BaseModel):
    daemon_id: str
    machine: str
    online: str
    providers: str
    capacity: int
    tasks: int
    last_heartbeat: str
    id: str


def _providers(runtime: RuntimeOut) -> str:
    return ", ".join(f"{p} {v}".strip() for p, v in sorted(runtime.providers.items())) or "—"


@runtime_app.command("list")
def runtime_list(workspace: WorkspaceOption = None, as_json: JsonOption = False) -> None:
    """List the runtimes registered in the workspace, online or not."""
    board = Board(workspace)
    runtimes = _runtimes(board)
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in runtimes], indent=2))
        return
    if not runtimes:
        typer.echo("no runtimes; start a daemon with a token from `forgehall daemon token create`")
        return
    rows: list[BaseModel] = [
        RuntimeRow(
            daemon_id=escape(r.daemon_id),
            machine=escape(r.machine) or "—",
            online="yes" if r.online else "no",
            providers=escape(_providers(r)),
            capacity=r.capacity,
            tasks=len(r.task_ids),
            last_heartbeat=_when(r.last_heartbeat_at),
            id=r.id,
        )
        for r in runtimes
    ]
    _print(rows, list(RuntimeRow.model_fields), False, escape(f"Runtimes of {board.slug}"))


@runtime_app.command("show")
def runtime_show(
    runtime: Annotated[str, typer.Argument(help="Runtime id or daemon id.")],
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a runtime: its machine, providers, liveness and the tasks it holds."""
    board = Board(workspace)
    found = _runtime(board, runtime)
    if as_json:
        typer.echo(json.dumps(found.model_dump(mode="json"), indent=2))
        return
    console = Console(highlight=False, soft_wrap=True)
    console.print(Text(f"{found.daemon_id}  {'online' if found.online else 'offline'}", "bold"))
    _facts(
        console,
        [
            ("Id", found.id),
            ("Machine", found.machine or "—"),
            ("Providers", _providers(found)),
            ("Capacity", f"{found.capacity} tasks at once"),
            ("Tasks", ", ".join(found.task_ids) or "—"),
            ("Registered", _when(found.registered_at)),
            ("Heartbeat", _when(found.last_heartbeat_at)),
        ],
    )


# --- daemon token -------------------------------------------------------------------------------


@daemon_token_app.command("create")
def daemon_token_create(
    name: Annotated[str, typer.Argument(help="What the token is for, e.g. the machine's name.")],
    expires_in_days: Annotated[
        int | None, typer.Option("--expires-in-days", help="Expiry in days (default: never).")
    ] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Mint a daemon token for the workspace (admins); it is printed once.

    Only the token goes to standard output, so it can be captured by a script; store it
    where the daemon reads it. It lets a daemon register a runtime and run the
    workspace's agent tasks; revoke it with `forgehall token revoke ID`.
    """
    board = Board(workspace)
    body: dict[str, Any] = {"name": name}
    if expires_in_days is not None:
        body["expires_in_days"] = expires_in_days
    issued = _parse(IssuedTokenOut, board.call("POST", "/daemon-tokens", body))
    typer.echo(issued.token)
    typer.echo(
        f"daemon token {issued.name!r} for workspace {board.slug} (id {issued.id}). "
        "It is shown only this once: store it now.",
        err=True,
    )


# --- repo ---------------------------------------------------------------------------------------


def _repositories(board: Board) -> list[RepositoryOut]:
    rows: list[RepositoryOut] = _parse(list[RepositoryOut], board.call("GET", "/repositories"))
    return rows


@repo_app.command("list")
def repo_list(workspace: WorkspaceOption = None, as_json: JsonOption = False) -> None:
    """List the workspace's repositories."""
    board = Board(workspace)
    repositories = _repositories(board)
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in repositories], indent=2))
        return
    if not repositories:
        typer.echo("no repositories; add one with `forgehall repo add NAME URL`")
        return
    _print(
        [r.model_copy(update={"url": escape(r.url)}) for r in repositories],
        ["name", "url", "default_branch", "id"],
        False,
        escape(f"Repositories of {board.slug}"),
    )


@repo_app.command("add")
def repo_add(
    name: Annotated[str, typer.Argument(help="Short name, e.g. api (the checkout's directory).")],
    url: Annotated[
        str,
        typer.Argument(help="What `git clone` takes: https://, ssh://, git@host:path or a path."),
    ],
    default_branch: Annotated[
        str, typer.Option("--default-branch", help="Branch tasks start from.")
    ] = "main",
    workspace: WorkspaceOption = None,
) -> None:
    """Add a repository (admins); agent tasks of the workspace check it out."""
    board = Board(workspace)
    added = _parse(
        RepositoryOut,
        board.call(
            "POST",
            "/repositories",
            {"name": name, "url": url, "default_branch": default_branch},
        ),
    )
    typer.echo(f"added repository {added.name} ({added.url}, branch {added.default_branch})")


@repo_app.command("remove")
def repo_remove(
    repository: Annotated[str, typer.Argument(help="The repository's name or id.")],
    workspace: WorkspaceOption = None,
) -> None:
    """Remove a repository (admins); tasks stop checking it out."""
    board = Board(workspace)
    rows = _repositories(board)
    wanted = repository.strip()
    found = next((r for r in rows if r.id == wanted), None) or next(
        (r for r in rows if r.name.casefold() == wanted.casefold()), None
    )
    if found is None:
        names = ", ".join(r.name for r in rows) or "(none)"
        fail(f"unknown repository {repository!r}; the repositories of {board.slug} are: {names}")
    board.call("DELETE", f"/repositories/{quote(found.id, safe='')}")
    typer.echo(f"removed repository {found.name}")
