"""The agents and runtimes pages: the agent list, the create and edit forms, the runtimes
of the workspace and the "connect a daemon" panel.

Roles follow the API (``agents.routes``, ``workspaces.routes``): members see agents and
runtimes; admins create, change, archive and restore agents and mint daemon tokens.

Secrets: env values are write-only. The edit page shows the keys only; a line ``KEY=``
keeps the stored value (the service merges it, see ``AgentPatch``), a deleted line removes
the key. A daemon token is shown once, in the answer to the form that minted it (not
cached), and never again.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.agents import dispatch
from forgehall.agents import service as agents
from forgehall.agents.schemas import DEFAULT_MAX_CONCURRENT, PARSERS, PROVIDERS, TaskOut
from forgehall.agents.task_routes import tasks_out
from forgehall.core.deps import SessionDep, SettingsDep
from forgehall.core.errors import ProblemError
from forgehall.identity import service as identity
from forgehall.settings import Settings
from forgehall.web.board import Person
from forgehall.web.pages import discard, is_fragment, page, render, workspace_url
from forgehall.workspaces.access import Access, AdminAccess, MemberAccess, Role

router = APIRouter(include_in_schema=False)

ACTIVE = ("queued", "dispatched", "running")
#: At most this many active tasks are read for the "current work" columns.
ACTIVE_LIMIT = 500


# --- the agent list -----------------------------------------------------------------------


@dataclass
class AgentRow:
    view: agents.AgentView
    person: Person
    tasks: list[TaskOut] = field(default_factory=list)

    @property
    def busy(self) -> int:
        return sum(1 for t in self.tasks if t.status in agents.BUSY_STATES)

    @property
    def queued(self) -> int:
        return sum(1 for t in self.tasks if t.status == "queued")


async def _active_tasks(session: AsyncSession, access: Access) -> list[TaskOut]:
    tasks = await dispatch.list_tasks(session, access, statuses=ACTIVE, limit=ACTIVE_LIMIT)
    return await tasks_out(session, access, list(reversed(tasks)))  # oldest first


async def _rows(
    session: AsyncSession, access: Access, archived: bool, tasks: list[TaskOut]
) -> list[AgentRow]:
    found = await agents.list_agents(session, access, archived=archived)
    rows = [
        AgentRow(view, Person("agent", view.agent.id, view.agent.name, view.agent.name))
        for view in await agents.describe_agents(session, access, found)
    ]
    by_id = {row.view.agent.id: row for row in rows}
    for task in tasks:
        if task.agent_id in by_id:
            by_id[task.agent_id].tasks.append(task)
    return rows


async def _list_context(session: AsyncSession, access: Access) -> dict[str, Any]:
    tasks = await _active_tasks(session, access)
    return {
        "agents": await _rows(session, access, False, tasks),
        "archived": await _rows(session, access, True, []),
        "base": workspace_url(access),
    }


@router.get("/w/{workspace}/agents", response_class=HTMLResponse)
async def agents_page(request: Request, access: MemberAccess, session: SessionDep) -> HTMLResponse:
    context = await _list_context(session, access)
    if is_fragment(request):
        return render(request, "agents/_list.html", is_admin=access.role >= Role.ADMIN, **context)
    return await page(request, session, access, "agents/list.html", "agents", **context)


# --- the form ------------------------------------------------------------------------------


@dataclass
class AgentForm:
    """What the form shows: a new agent's defaults, a stored agent, or what was typed."""

    name: str = ""
    provider: str = "claude"
    model: str = ""
    instructions: str = ""
    command: str = ""
    parser: str = "plain"
    pool: str = "any"  # "any" | "chosen"
    runtime_ids: list[str] = field(default_factory=list)
    max_concurrent_tasks: str = str(DEFAULT_MAX_CONCURRENT)
    extra_args: str = ""
    env: str = ""


def _form_of(view: agents.AgentView) -> AgentForm:
    agent = view.agent
    return AgentForm(
        name=agent.name,
        provider=agent.provider,
        model=agent.model,
        instructions=agent.instructions,
        command="\n".join(view.custom_command.command) if view.custom_command else "",
        parser=view.custom_command.parser if view.custom_command else "plain",
        pool="chosen" if view.runtime_pool else "any",
        runtime_ids=list(view.runtime_pool),
        max_concurrent_tasks=str(agent.max_concurrent_tasks),
        extra_args="\n".join(view.extra_args),
        # Keys only: the values never leave the service.
        env="".join(f"{key}=\n" for key in view.env_keys),
    )


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass
class Parsed:
    """The form's values in the service's terms (raises 422 on what cannot be parsed)."""

    custom_command: agents.CustomCommand | None
    extra_args: list[str]
    env: dict[str, str | None]
    max_concurrent_tasks: int
    runtime_pool: list[str]


def _parse(form: AgentForm, stored_env_keys: list[str]) -> Parsed:
    if not form.name.strip():
        raise ProblemError(422, "give the agent a name", field="name")
    try:
        concurrency = int(form.max_concurrent_tasks.strip())
    except ValueError:
        raise ProblemError(
            422,
            f"max concurrent tasks must be a whole number, not {form.max_concurrent_tasks!r}",
            field="max_concurrent_tasks",
        ) from None
    env: dict[str, str | None] = {}
    for number, line in enumerate(form.env.splitlines(), start=1):
        if not line.strip():
            continue
        key, equals, value = line.partition("=")
        key = key.strip()
        if not equals or not key:
            # The line is not echoed: it may hold a secret.
            raise ProblemError(422, f"env line {number} is not KEY=value", field="env")
        if key in env:
            raise ProblemError(422, f"env key {key} is given twice", field="env")
        # ``KEY=`` keeps a stored value; a new key without a value is set empty.
        env[key] = None if value == "" and key in stored_env_keys else value
    if form.pool == "chosen" and not form.runtime_ids:
        raise ProblemError(
            422,
            "choose at least one runtime, or let the agent run on any online runtime",
            field="runtime_pool",
        )
    command = None
    if form.provider == "custom":  # otherwise the command box is ignored, not refused
        command = agents.CustomCommand(command=_lines(form.command), parser=form.parser)
    return Parsed(
        custom_command=command,
        extra_args=_lines(form.extra_args),
        env=env,
        max_concurrent_tasks=concurrency,
        runtime_pool=list(form.runtime_ids) if form.pool == "chosen" else [],
    )


def _field_of(exc: ProblemError) -> str:
    if exc.type == "agent-name-taken":
        return "name"
    if exc.type == "encryption-key-required":
        return "env"
    return str(exc.extensions.get("field") or "")


async def _form_context(session: AsyncSession, access: Access) -> dict[str, Any]:
    return {
        "providers": PROVIDERS,
        "parsers": PARSERS,
        "runtimes": await agents.list_runtimes(session, access),
        "base": workspace_url(access),
    }


async def _form_page(
    request: Request,
    session: AsyncSession,
    access: Access,
    form: AgentForm,
    *,
    view: agents.AgentView | None = None,
    status: int = 200,
    error: ProblemError | None = None,
) -> HTMLResponse:
    return await page(
        request,
        session,
        access,
        "agents/form.html",
        "agents",
        status=status,
        form=form,
        view=view,
        error=error.detail if error else None,
        error_field=_field_of(error) if error else "",
        **(await _form_context(session, access)),
    )


FormText = Annotated[str, Form(max_length=200_000)]


def _typed(
    name: str,
    provider: str,
    model: str,
    instructions: str,
    command: str,
    parser: str,
    pool: str,
    runtime_ids: list[str] | None,
    max_concurrent_tasks: str,
    extra_args: str,
    env: str,
) -> AgentForm:
    return AgentForm(
        name=name.strip(),
        provider=provider,
        model=model.strip(),
        instructions=instructions,
        command=command,
        parser=parser,
        pool="chosen" if pool == "chosen" else "any",
        runtime_ids=list(runtime_ids or []),
        max_concurrent_tasks=max_concurrent_tasks,
        extra_args=extra_args,
        env=env,
    )


@router.get("/w/{workspace}/agents/new", response_class=HTMLResponse)
async def new_agent_page(
    request: Request, access: AdminAccess, session: SessionDep
) -> HTMLResponse:
    return await _form_page(request, session, access, AgentForm())


@router.post("/w/{workspace}/agents", response_model=None)
async def create_agent(
    request: Request,
    access: AdminAccess,
    session: SessionDep,
    name: FormText = "",
    provider: FormText = "claude",
    model: FormText = "",
    instructions: FormText = "",
    command: FormText = "",
    parser: FormText = "plain",
    pool: FormText = "any",
    runtime_ids: Annotated[list[str] | None, Form()] = None,
    max_concurrent_tasks: FormText = str(DEFAULT_MAX_CONCURRENT),
    extra_args: FormText = "",
    env: FormText = "",
) -> Response:
    form = _typed(
        name, provider, model, instructions, command, parser, pool, runtime_ids,
        max_concurrent_tasks, extra_args, env,
    )  # fmt: skip
    try:
        parsed = _parse(form, [])
        agent = await agents.create_agent(
            session,
            access,
            agents.AgentInput(
                name=form.name,
                instructions=form.instructions,
                provider=form.provider,
                model=form.model,
                custom_command=parsed.custom_command,
                extra_args=parsed.extra_args,
                env={k: v or "" for k, v in parsed.env.items()},
                max_concurrent_tasks=parsed.max_concurrent_tasks,
                runtime_pool=parsed.runtime_pool,
            ),
        )
    except ProblemError as exc:
        await discard(session, access.workspace, access.principal.user)
        return await _form_page(request, session, access, form, status=exc.status, error=exc)
    return RedirectResponse(f"{workspace_url(access)}/agents/{agent.id}?saved=1", status_code=303)


async def _view(session: AsyncSession, access: Access, agent_id: str) -> agents.AgentView:
    agent = await agents.get_agent_or_404(session, access, agent_id)
    return (await agents.describe_agents(session, access, [agent]))[0]


@router.get("/w/{workspace}/agents/{agent_id}", response_class=HTMLResponse)
async def agent_page(
    request: Request, agent_id: str, access: MemberAccess, session: SessionDep
) -> HTMLResponse:
    """The agent's profile: the edit form for admins, read-only for members."""
    view = await _view(session, access, agent_id)
    return await _form_page(request, session, access, _form_of(view), view=view)


@router.post("/w/{workspace}/agents/{agent_id}", response_model=None)
async def update_agent(
    request: Request,
    agent_id: str,
    access: AdminAccess,
    session: SessionDep,
    name: FormText = "",
    provider: FormText = "claude",
    model: FormText = "",
    instructions: FormText = "",
    command: FormText = "",
    parser: FormText = "plain",
    pool: FormText = "any",
    runtime_ids: Annotated[list[str] | None, Form()] = None,
    max_concurrent_tasks: FormText = str(DEFAULT_MAX_CONCURRENT),
    extra_args: FormText = "",
    env: FormText = "",
) -> Response:
    view = await _view(session, access, agent_id)
    form = _typed(
        name, provider, model, instructions, command, parser, pool, runtime_ids,
        max_concurrent_tasks, extra_args, env,
    )  # fmt: skip
    try:
        parsed = _parse(form, view.env_keys)
        patch = agents.AgentPatch(
            name=form.name,
            instructions=form.instructions,
            provider=form.provider,
            model=form.model,
            custom_command=parsed.custom_command,
            extra_args=parsed.extra_args,
            env=parsed.env,
            max_concurrent_tasks=parsed.max_concurrent_tasks,
            runtime_pool=parsed.runtime_pool,
        )
        await agents.update_agent(session, access, view.agent.id, patch)
    except ProblemError as exc:
        await discard(session, access.workspace, access.principal.user)
        view = await _view(session, access, agent_id)
        return await _form_page(
            request, session, access, form, view=view, status=exc.status, error=exc
        )
    return RedirectResponse(
        f"{workspace_url(access)}/agents/{view.agent.id}?saved=1", status_code=303
    )


@router.post("/w/{workspace}/agents/{agent_id}/{action}", response_model=None)
async def archive_or_restore(
    agent_id: str, action: str, access: AdminAccess, session: SessionDep
) -> Response:
    if action not in ("archive", "restore"):
        raise ProblemError(404, "there is nothing here")
    await agents.set_archived(session, access, agent_id, action == "archive")
    return RedirectResponse(f"{workspace_url(access)}/agents", status_code=303)


# --- runtimes ------------------------------------------------------------------------------


@dataclass
class RuntimeRow:
    view: agents.RuntimeView
    tasks: list[TaskOut]


async def _runtimes_context(session: AsyncSession, access: Access) -> dict[str, Any]:
    tasks = {t.id: t for t in await _active_tasks(session, access)}
    runtimes = [
        RuntimeRow(view, [tasks[t] for t in view.task_ids if t in tasks])
        for view in await agents.list_runtimes(session, access)
    ]
    is_admin = access.role >= Role.ADMIN
    tokens = (
        await identity.list_workspace_tokens(session, access.workspace.id, "dmn")
        if is_admin
        else []
    )
    return {
        "runtimes": runtimes,
        "tokens": tokens,
        "base": workspace_url(access),
    }


async def _runtimes_page(
    request: Request,
    session: AsyncSession,
    access: Access,
    status: int = 200,
    **extra: Any,
) -> HTMLResponse:
    context = await _runtimes_context(session, access)
    return await page(
        request, session, access, "agents/runtimes.html", "runtimes", status, **context, **extra
    )


@router.get("/w/{workspace}/runtimes", response_class=HTMLResponse)
async def runtimes_page(
    request: Request, access: MemberAccess, session: SessionDep
) -> HTMLResponse:
    if is_fragment(request):
        context = await _runtimes_context(session, access)
        return render(
            request, "agents/_runtimes.html", is_admin=access.role >= Role.ADMIN, **context
        )
    return await _runtimes_page(request, session, access)


def daemon_command(settings: Settings, token: str) -> str:
    """The one line that starts a daemon for this server and token (see docs/daemon.md)."""
    return (
        f"FORGEHALL_SERVER_URL={shlex.quote(settings.origin)} "
        f"FORGEHALL_DAEMON_TOKEN={shlex.quote(token)} forgehall daemon"
    )


@router.post("/w/{workspace}/runtimes/daemon-tokens", response_model=None)
async def mint_daemon_token(
    request: Request,
    access: AdminAccess,
    session: SessionDep,
    settings: SettingsDep,
    name: Annotated[str, Form(max_length=1000)] = "",
    expires_in_days: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    """Mint a daemon token (as ``POST …/daemon-tokens``) and show it, once, in this answer."""
    typed = {"name": name, "expires_in_days": expires_in_days}
    try:
        label = name.strip()
        if not label or len(label) > 200:
            raise ProblemError(
                422, "name the token (1-200 characters), e.g. the machine's name", field="name"
            )
        days: int | None = None
        if expires_in_days.strip():
            try:
                days = int(expires_in_days.strip())
            except ValueError:
                days = 0
            if not 1 <= days <= 3650:
                raise ProblemError(
                    422,
                    "expiry must be a whole number of days from 1 to 3650, or empty for never",
                    field="expires_in_days",
                )
        issued = await identity.create_token(
            session,
            access.principal.user,
            kind="dmn",
            name=label,
            workspace_id=access.workspace.id,
            expires_in=timedelta(days=days) if days else None,
        )
    except ProblemError as exc:
        await discard(session, access.workspace, access.principal.user)
        return await _runtimes_page(
            request,
            session,
            access,
            exc.status,
            error=exc.detail,
            error_field=str(exc.extensions.get("field") or ""),
            typed=typed,
        )
    response = await _runtimes_page(
        request,
        session,
        access,
        201,
        issued=issued.row,
        command=daemon_command(settings, issued.plaintext),
        login_command=(
            f"forgehall daemon login --server {shlex.quote(settings.origin)} "
            f"--token {shlex.quote(issued.plaintext)}"
        ),
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/w/{workspace}/runtimes/daemon-tokens/{token_id}/revoke", response_model=None)
async def revoke_daemon_token(token_id: str, access: AdminAccess, session: SessionDep) -> Response:
    await identity.revoke_workspace_token(session, access.workspace.id, "dmn", token_id)
    return RedirectResponse(f"{workspace_url(access)}/runtimes", status_code=303)
