"""Task commands over the HTTP API: list, show, run, cancel, rerun and the transcript.

A task is one agent working on one issue; daemons run it and report its transcript,
usage and result. ``task logs --follow`` polls the transcript with ``after=`` until the
task ends. Every read command takes ``--json``; errors print the server's problem detail
on one line and exit 1.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, get_args
from urllib.parse import quote

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from forgehall.agents.schemas import TaskMessageOut, TaskOut, TaskStatus
from forgehall.cli.agents import _facts, _maybe
from forgehall.cli.client import JsonOption, WorkspaceOption, _parse, _print
from forgehall.cli.context import fail
from forgehall.cli.issues import Board, _check_limit, _when

STATUSES: tuple[str, ...] = get_args(TaskStatus)
ENDED = ("completed", "failed", "cancelled")
#: The most messages the API returns per request.
PAGE = 1000
KIND_WIDTH = len("tool_result")

task_app = typer.Typer(
    help="Agent tasks: list, show, run an agent on an issue, cancel, rerun, read the transcript.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(task_app, name="task")


TaskArgument = Annotated[str, typer.Argument(help="Task id.")]


def _task_path(task_id: str, suffix: str = "") -> str:
    return f"/tasks/{quote(task_id.strip(), safe='')}{suffix}"


def _task(board: Board, task_id: str) -> TaskOut:
    task: TaskOut = _parse(TaskOut, board.call("GET", _task_path(task_id)))
    return task


def _state(task: TaskOut) -> str:
    cancelling = task.cancel_requested and task.status not in ENDED
    return task.status + (" (cancelling)" if cancelling else "")


def _cost(value: float) -> str:
    return f"${value:.4f}"


def _started(task: TaskOut) -> str:
    """What the user sees after run or rerun (on standard error: stdout has the id)."""
    if task.follow_up:
        return (
            f"{task.agent_name} is already working on {task.issue_key} (task {task.id}); "
            "it runs again when this run ends"
        )
    return f"{task.agent_name} will work on {task.issue_key}: task {task.id} is {task.status}"


# --- list and show ------------------------------------------------------------------------------


class TaskRow(BaseModel):
    id: str
    issue: str
    agent: str
    status: str
    attempt: str
    trigger: str
    created: str
    cost: str


@task_app.command("list")
def task_list(
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            help="queued, dispatched, running, completed, failed or cancelled (repeatable; "
            "any matches).",
        ),
    ] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Agent name or id.")] = None,
    issue: Annotated[str | None, typer.Option("--issue", help="Issue key, e.g. ENG-42.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many (1-200).")] = 50,
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """List tasks, newest first."""
    board = Board(workspace)
    _check_limit(limit)
    for value in status or []:
        if value not in STATUSES:
            fail(f"unknown task status {value!r}; use one of {', '.join(STATUSES)}")
    params: dict[str, Any] = {
        "status": status or [],
        "agent": board.agent(agent, archived_ok=True).id if agent is not None else None,
        "issue": issue,
        "limit": limit,
    }
    tasks: list[TaskOut] = _parse(list[TaskOut], board.call("GET", "/tasks", params=params))
    if as_json:
        typer.echo(json.dumps([t.model_dump(mode="json") for t in tasks], indent=2))
        return
    if not tasks:
        typer.echo("no tasks match")
        return
    rows: list[BaseModel] = [
        TaskRow(
            id=t.id,
            issue=t.issue_key,
            agent=t.agent_name,
            status=_state(t),
            attempt=f"{t.attempt}/{t.max_attempts}",
            trigger=escape(t.trigger),
            created=_when(t.created_at),
            cost=_cost(t.cost_usd),
        )
        for t in tasks
    ]
    _print(rows, list(TaskRow.model_fields), False, escape(f"Tasks of {board.slug}"))


@task_app.command("show")
def task_show(
    task_id: TaskArgument, workspace: WorkspaceOption = None, as_json: JsonOption = False
) -> None:
    """Show a task: state, attempts, failure, progress, result, usage and cost per model."""
    board = Board(workspace)
    task = _task(board, task_id)
    if as_json:
        typer.echo(json.dumps(task.model_dump(mode="json"), indent=2))
        return
    console = Console(highlight=False, soft_wrap=True)
    console.print(Text(f"Task {task.id}  {task.status}", style="bold"))
    facts = [
        ("Issue", task.issue_key),
        ("Agent", task.agent_name or task.agent_id),
        ("Trigger", task.trigger),
        ("Attempt", f"{task.attempt} of {task.max_attempts}" if task.attempt else "not started"),
        ("Runtime", task.runtime_id or "—"),
        ("Created", _when(task.created_at)),
        ("Started", _maybe(task.started_at)),
        ("Finished", _maybe(task.finished_at)),
    ]
    if task.status == "queued" and task.attempt > 0:
        facts.append(("Retry after", _when(task.available_at)))
    if task.failure_class:
        # A task that was retried keeps the failure of its earlier attempt.
        detail = f": {task.failure_detail}" if task.failure_detail else ""
        label = "Failure" if task.status != "completed" else "Earlier failure"
        facts.append((label, f"{task.failure_class}{detail}"))
    if task.cancel_requested and task.status not in ENDED:
        facts.append(("Cancel", "requested; the runtime is stopping it"))
    if task.follow_up:
        facts.append(("Follow-up", "another run is queued for when this one ends"))
    if task.progress:
        facts.append(("Progress", task.progress))
    if task.session_id:
        facts.append(("Session", task.session_id))
    facts.append(("Cost", _cost(task.cost_usd)))
    _facts(console, facts)
    if task.result.strip():
        console.print()
        console.print(Text("Result", style="bold"))
        console.print(Text(task.result.rstrip()))
    console.print()
    if not task.usage:
        console.print(Text("Usage: none reported", style="bold"))
        return
    table = Table(
        "model", "input", "output", "cache read", "cache write", "cost", "priced by", title="Usage"
    )
    for usage in task.usage:
        table.add_row(
            escape(usage.model),
            str(usage.input_tokens),
            str(usage.output_tokens),
            str(usage.cache_read_tokens),
            str(usage.cache_write_tokens),
            _cost(usage.cost_usd),
            usage.cost_source,
        )
    Console(width=140).print(table)


# --- run, cancel, rerun -------------------------------------------------------------------------


@task_app.command("run")
def task_run(
    issue: Annotated[str, typer.Argument(help="Issue key, e.g. ENG-42.")],
    agent: Annotated[
        str | None,
        typer.Option("--agent", help="Agent name or id (default: the issue's agent assignee)."),
    ] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Ask an agent to work on an issue now; prints the task id.

    If the agent is already working on the issue, another run is queued for when the
    current one ends, and the current task's id is printed.
    """
    board = Board(workspace)
    body: dict[str, Any] = {}
    if agent is not None:
        body["agent"] = board.agent(agent).id
    task = _parse(
        TaskOut, board.call("POST", f"/issues/{quote(issue.strip(), safe='')}/tasks", body)
    )
    typer.echo(task.id)
    typer.echo(_started(task), err=True)


@task_app.command("cancel")
def task_cancel(task_id: TaskArgument, workspace: WorkspaceOption = None) -> None:
    """Cancel a task: a queued one at once, a running one through its daemon."""
    board = Board(workspace)
    task = _parse(TaskOut, board.call("POST", _task_path(task_id, "/cancel")))
    if task.status == "cancelled":
        typer.echo(f"cancelled task {task.id}")
    else:
        typer.echo(f"asked the runtime to stop task {task.id} ({task.status})")


@task_app.command("rerun")
def task_rerun(task_id: TaskArgument, workspace: WorkspaceOption = None) -> None:
    """Run the task's agent on its issue again; prints the new task's id."""
    board = Board(workspace)
    task = _parse(TaskOut, board.call("POST", _task_path(task_id, "/rerun")))
    typer.echo(task.id)
    typer.echo(_started(task), err=True)


# --- logs ---------------------------------------------------------------------------------------


def _messages(board: Board, task_id: str, attempt: int, after: int) -> list[TaskMessageOut]:
    """Every message of one attempt after seq ``after``, following the pages (attempt 0:
    the task has not been claimed yet, so it has none)."""
    found: list[TaskMessageOut] = []
    if attempt < 1:
        return found
    while True:
        page: list[TaskMessageOut] = _parse(
            list[TaskMessageOut],
            board.call(
                "GET",
                _task_path(task_id, "/messages"),
                params={"attempt": attempt, "after": after, "limit": PAGE},
            ),
        )
        found += page
        if len(page) < PAGE:
            return found
        after = page[-1].seq


def _show(messages: list[TaskMessageOut], as_json: bool) -> None:
    for message in messages:
        if as_json:
            typer.echo(json.dumps(message.model_dump(mode="json")))
            continue
        lines = message.content.rstrip("\n").split("\n") or [""]
        typer.echo(f"{message.kind:<{KIND_WIDTH}} {lines[0]}")
        for line in lines[1:]:
            typer.echo(f"{'':<{KIND_WIDTH}} {line}")


@task_app.command("logs")
def task_logs(
    task_id: TaskArgument,
    attempt: Annotated[
        int | None, typer.Option("--attempt", min=1, help="Attempt to read (default: latest).")
    ] = None,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Keep printing new messages until the task ends."),
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.05, help="Seconds between polls with --follow.")
    ] = 1.0,
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a task's transcript in order, one kind-prefixed line per message line.

    Kinds: text, thinking, tool_use, tool_result, error. --json prints the messages as a
    JSON array (with --follow: one JSON object per line, as they arrive). With --follow a
    retried task's next attempt is followed too, and the final state is printed on
    standard error.
    """
    board = Board(workspace)
    task = _task(board, task_id)
    current = attempt or task.attempt
    if attempt is not None and attempt > task.attempt:
        fail(f"task {task.id} has no attempt {attempt} (attempts so far: {task.attempt})")
    if not follow:
        messages = _messages(board, task.id, current, 0)
        if as_json:
            typer.echo(json.dumps([m.model_dump(mode="json") for m in messages], indent=2))
        elif not messages:
            typer.echo(f"no messages yet (task {task.status})", err=True)
        else:
            _show(messages, False)
        return
    after = 0
    while True:
        # The state is read before the messages: once it says the attempt is over, the
        # read that follows has every message of it.
        task = _task(board, task.id)
        messages = _messages(board, task.id, current, after)
        _show(messages, as_json)
        if messages:
            after = messages[-1].seq
        if attempt is not None and task.attempt > attempt:
            break
        if task.attempt > current:
            if current > 0 and not as_json:
                typer.echo(f"--- attempt {task.attempt} ---")
            current, after = task.attempt, 0
            continue
        if task.status in ENDED:
            break
        time.sleep(interval)
    ending = f"task {task.id} {task.status}"
    if task.failure_class and task.status != "completed":
        ending += f" ({task.failure_class}" + (
            f": {task.failure_detail})" if task.failure_detail else ")"
        )
    typer.echo(ending, err=True)
