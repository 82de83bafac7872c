"""Agent profiles and the runtimes they run on: rules, validation and derived status.

Invariants:
- An agent's name is its @mention handle: it matches ``NAME_PATTERN`` and is unique in
  its workspace case-insensitively (409 otherwise). Names stay reserved while an agent
  is archived, so restoring never collides.
- Every profile is checked as a whole after a create or a partial update, so no write
  leaves a ``custom`` agent without a command, or another provider with one. A refused
  request (422/409) writes nothing.
- Every runtime in an explicit pool belongs to the agent's workspace (422 otherwise).
- Env values are encrypted at rest (``EncryptedText``) and never leave this module
  except through :func:`agent_env`, for the code that starts the agent process. Without
  FORGEHALL_ENCRYPTION_KEY an env cannot be stored or read: 409
  ``encryption-key-required``, never plaintext.
- Status is derived, never stored: from the ``tasks`` and ``runtimes`` rows at read
  time (see :func:`agent_statuses`).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.agents.models import IN_FLIGHT, Agent, Runtime, Task
from forgehall.agents.schemas import (
    ARG_MAX_CHARS,
    ARGS_MAX_ITEMS,
    DEFAULT_MAX_CONCURRENT,
    ENV_KEY_MAX,
    ENV_KEY_PATTERN,
    ENV_MAX_ENTRIES,
    ENV_VALUE_MAX,
    MAX_CONCURRENT_MAX,
    MAX_CONCURRENT_MIN,
    NAME_MAX,
    NAME_PATTERN,
    PARSERS,
    POOL_MAX_ITEMS,
    PROVIDERS,
    AgentStatus,
)
from forgehall.core.errors import ProblemError
from forgehall.db.types import CredentialKeyError, utcnow
from forgehall.workspaces.access import Access, Role

log = structlog.get_logger("forgehall.agents")

#: A runtime is online while its last heartbeat is at most this old.
RUNTIME_OFFLINE_AFTER = timedelta(seconds=150)
#: Task states that occupy a runtime (and make an agent ``working``).
BUSY_STATES = IN_FLIGHT  # the tasks an agent or runtime is working on
FINISHED_STATES = ("completed", "failed", "cancelled")
#: Failure classes that end a task for a reason of the agent's own (the final classes of
#: ``agents.queue`` except ``cancelled``, which ends a task as cancelled, not failed). A
#: task that failed after exhausting retries of a runtime problem does not count: that is
#: what ``offline`` reports. A test keeps this in step with the queue.
AGENT_FAILURE_CLASSES = frozenset({"agent_error", "gate_failure"})

_NAME = re.compile(NAME_PATTERN)
_ENV_KEY = re.compile(ENV_KEY_PATTERN)
_KEY_REQUIRED = (
    "FORGEHALL_ENCRYPTION_KEY is not configured, so agent env values cannot be stored "
    "or read; an operator must set it (generate one with `forgehall config new-key`) "
    "and restart the server"
)


# --- the profile -------------------------------------------------------------------------


@dataclass(frozen=True)
class CustomCommand:
    """A workspace-defined agent CLI; stored as ``{"command": [...], "parser": ...}``."""

    command: list[str]
    parser: str


@dataclass
class AgentInput:
    name: str
    avatar: str = ""
    instructions: str = ""
    provider: str = "claude"
    model: str = ""
    custom_command: CustomCommand | None = None
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    max_concurrent_tasks: int = DEFAULT_MAX_CONCURRENT
    runtime_pool: list[str] = field(default_factory=list)


UNSET: Any = object()


@dataclass
class AgentPatch:
    """Fields left ``UNSET`` keep their value; ``env`` replaces the whole map, except that
    a key mapped to ``None`` keeps its stored value (so a form that never shows the
    values can keep them: see :func:`_merge_env`)."""

    name: Any = UNSET
    avatar: Any = UNSET
    instructions: Any = UNSET
    provider: Any = UNSET
    model: Any = UNSET
    custom_command: Any = UNSET  # CustomCommand | None
    extra_args: Any = UNSET
    env: Any = UNSET  # dict[str, str | None] | None
    max_concurrent_tasks: Any = UNSET
    runtime_pool: Any = UNSET


def _merge_env(stored: dict[str, str], new: dict[str, str | None] | None) -> dict[str, str]:
    """The env a patch asks for: ``None`` clears it; a key whose value is ``None`` keeps
    its stored value (422 when it has none, so a typo never stores an empty secret)."""
    merged: dict[str, str] = {}
    for key, value in (new or {}).items():
        if value is not None:
            merged[key] = value
        elif key in stored:
            merged[key] = stored[key]
        else:
            raise _invalid(f"env key {key} has no stored value to keep; give it a value", "env")
    return merged


@dataclass(frozen=True)
class AgentView:
    """An agent with its JSON columns parsed and its derived status; no env values."""

    agent: Agent
    custom_command: CustomCommand | None
    extra_args: list[str]
    env_keys: list[str]
    runtime_pool: list[str]
    status: AgentStatus


def _invalid(detail: str, field_name: str, type_: str = "invalid-agent") -> ProblemError:
    return ProblemError(422, detail, type_=type_, field=field_name)


def _check_profile(data: AgentInput) -> None:
    """Refuse (422) a profile that breaks a rule; checked whole, after every change."""
    if not (1 <= len(data.name) <= NAME_MAX) or not _NAME.match(data.name):
        raise _invalid(
            f"name {data.name!r} is not a valid handle: 1-{NAME_MAX} characters, letters, "
            "digits, '.', '_' or '-', starting with a letter or digit",
            "name",
        )
    if data.provider not in PROVIDERS:
        raise _invalid(
            f"unknown provider {data.provider!r}; use one of {', '.join(PROVIDERS)}",
            "provider",
            "unknown-provider",
        )
    if data.provider == "custom":
        command = data.custom_command
        if command is None or not command.command or not command.command[0].strip():
            raise _invalid(
                "provider custom needs a custom_command with a non-empty command "
                '(e.g. {"command": ["my-agent", "--json"], "parser": "plain"})',
                "custom_command",
            )
        if command.parser not in PARSERS:
            raise _invalid(
                f"unknown parser {command.parser!r}; use {' or '.join(PARSERS)}",
                "custom_command",
            )
        _check_args(command.command, "custom_command")
    elif data.custom_command is not None:
        raise _invalid(
            f"provider {data.provider} takes no custom_command; send custom_command: null "
            "or use provider custom",
            "custom_command",
        )
    _check_args(data.extra_args, "extra_args")
    if len(data.env) > ENV_MAX_ENTRIES:
        raise _invalid(f"env has {len(data.env)} entries; at most {ENV_MAX_ENTRIES}", "env")
    for key, value in data.env.items():
        if len(key) > ENV_KEY_MAX or not _ENV_KEY.match(key):
            raise _invalid(
                f"env key {key!r} is invalid: use upper-case letters, digits and '_', "
                "not starting with a digit",
                "env",
            )
        if not isinstance(value, str) or len(value) > ENV_VALUE_MAX:
            # The value itself is never echoed back: it may be a secret.
            raise _invalid(
                f"env value of {key} must be a string of at most {ENV_VALUE_MAX} characters",
                "env",
            )
    if not MAX_CONCURRENT_MIN <= data.max_concurrent_tasks <= MAX_CONCURRENT_MAX:
        raise _invalid(
            f"max_concurrent_tasks must be between {MAX_CONCURRENT_MIN} and {MAX_CONCURRENT_MAX}",
            "max_concurrent_tasks",
        )
    if len(data.runtime_pool) > POOL_MAX_ITEMS:
        raise _invalid(f"runtime_pool lists more than {POOL_MAX_ITEMS} runtimes", "runtime_pool")


def _check_args(args: Sequence[str], field_name: str) -> None:
    if len(args) > ARGS_MAX_ITEMS:
        raise _invalid(f"{field_name} has {len(args)} items; at most {ARGS_MAX_ITEMS}", field_name)
    for arg in args:
        if not isinstance(arg, str) or len(arg) > ARG_MAX_CHARS:
            raise _invalid(
                f"each item of {field_name} must be a string of at most {ARG_MAX_CHARS} characters",
                field_name,
            )


async def _check_name_free(
    session: AsyncSession, access: Access, name: str, agent_id: str | None = None
) -> None:
    query = select(Agent.name).where(
        Agent.workspace_id == access.workspace.id, func.lower(Agent.name) == name.lower()
    )
    if agent_id is not None:
        query = query.where(Agent.id != agent_id)
    taken = await session.scalar(query.limit(1))
    if taken is not None:
        raise _name_taken(name, taken)


def _name_taken(name: str, taken: str) -> ProblemError:
    return ProblemError(
        409,
        f"an agent named {taken!r} already exists in this workspace (names are "
        f"case-insensitive @mention handles); choose another name than {name!r}",
        type_="agent-name-taken",
    )


async def _check_pool(session: AsyncSession, access: Access, runtime_ids: list[str]) -> list[str]:
    """The pool without duplicates; 422 when an id is not a runtime of this workspace."""
    pool = list(dict.fromkeys(runtime_ids))
    if not pool:
        return []
    found = set(
        (
            await session.execute(
                select(Runtime.id).where(
                    Runtime.workspace_id == access.workspace.id, Runtime.id.in_(pool)
                )
            )
        ).scalars()
    )
    missing = [runtime_id for runtime_id in pool if runtime_id not in found]
    if missing:
        raise ProblemError(
            422,
            f"runtimes {', '.join(missing)} are not runtimes of this workspace; "
            "see GET /runtimes (or send [] for any online runtime)",
            type_="invalid-reference",
            field="runtime_pool",
        )
    return pool


def _dump_command(command: CustomCommand | None) -> str:
    if command is None:
        return ""
    return json.dumps({"command": command.command, "parser": command.parser})


def _load_command(text: str) -> CustomCommand | None:
    if not text:
        return None
    data = json.loads(text)
    return CustomCommand(command=[str(a) for a in data["command"]], parser=str(data["parser"]))


def _load_env(agent: Agent) -> dict[str, str]:
    if not agent.env:
        return {}
    data = json.loads(agent.env)
    return {str(k): str(v) for k, v in data.items()}


def _load_list(text: str) -> list[str]:
    return [str(item) for item in json.loads(text or "[]")]


def _profile_of(agent: Agent) -> AgentInput:
    return AgentInput(
        name=agent.name,
        avatar=agent.avatar,
        instructions=agent.instructions,
        provider=agent.provider,
        model=agent.model,
        custom_command=_load_command(agent.custom_command),
        extra_args=_load_list(agent.extra_args),
        env=_load_env(agent),
        max_concurrent_tasks=agent.max_concurrent_tasks,
        runtime_pool=_load_list(agent.runtime_pool),
    )


def _apply(agent: Agent, data: AgentInput, *, with_env: bool) -> None:
    agent.name = data.name
    agent.avatar = data.avatar
    agent.instructions = data.instructions
    agent.provider = data.provider
    agent.model = data.model
    agent.custom_command = _dump_command(data.custom_command)
    agent.extra_args = json.dumps(data.extra_args)
    agent.max_concurrent_tasks = data.max_concurrent_tasks
    agent.runtime_pool = json.dumps(data.runtime_pool)
    if with_env:
        # An empty env is stored as NULL: it needs no key and has nothing to hide.
        agent.env = json.dumps(data.env, sort_keys=True) if data.env else None


@asynccontextmanager
async def _credentials(session: AsyncSession) -> AsyncIterator[None]:
    """Turn a missing encryption key (raised by ``EncryptedText``) into a 409 problem."""
    try:
        yield
    except (CredentialKeyError, StatementError) as exc:
        cause = exc.orig if isinstance(exc, StatementError) else exc
        if not isinstance(cause, CredentialKeyError):
            raise
        await session.rollback()
        log.warning("agent.env_key_missing", error=str(cause))
        raise ProblemError(409, _KEY_REQUIRED, type_="encryption-key-required") from None


async def _commit(session: AsyncSession, name: str) -> None:
    async with _credentials(session):
        try:
            await session.commit()
        except IntegrityError:
            # Two requests raced past the name check (the index is case-sensitive).
            await session.rollback()
            raise _name_taken(name, name) from None


# --- reading -----------------------------------------------------------------------------


async def _agents(session: AsyncSession, query: Select[Agent]) -> list[Agent]:
    async with _credentials(session):
        return list((await session.execute(query)).scalars())


async def get_agent_or_404(session: AsyncSession, access: Access, ref: str) -> Agent:
    """Find an agent of this workspace by id, else by name (case-insensitively)."""
    in_workspace = select(Agent).where(Agent.workspace_id == access.workspace.id)
    found = await _agents(session, in_workspace.where(Agent.id == ref))
    if not found:
        found = await _agents(
            session, in_workspace.where(func.lower(Agent.name) == ref.lower()).limit(1)
        )
    if not found:
        raise ProblemError(404, f"agent {ref} was not found")
    return found[0]


async def list_agents(
    session: AsyncSession, access: Access, *, archived: bool = False
) -> list[Agent]:
    """Active agents, or with ``archived`` the archived ones, by name."""
    query = select(Agent).where(Agent.workspace_id == access.workspace.id)
    if archived:
        query = query.where(Agent.archived_at.is_not(None))
    else:
        query = query.where(Agent.archived_at.is_(None))
    return await _agents(session, query.order_by(func.lower(Agent.name)))


def agent_env(agent: Agent) -> dict[str, str]:
    """The decrypted env, for the code that starts the agent process (never a response)."""
    return _load_env(agent)


async def describe_agents(
    session: AsyncSession, access: Access, agents: Sequence[Agent]
) -> list[AgentView]:
    """Parse each agent's JSON columns and derive its status; env values are dropped."""
    statuses = await agent_statuses(session, access.workspace.id, agents)
    views = []
    for agent in agents:
        profile = _profile_of(agent)
        views.append(
            AgentView(
                agent=agent,
                custom_command=profile.custom_command,
                extra_args=profile.extra_args,
                env_keys=sorted(profile.env),
                runtime_pool=profile.runtime_pool,
                status=statuses[agent.id],
            )
        )
    return views


# --- writing -----------------------------------------------------------------------------


async def create_agent(session: AsyncSession, access: Access, data: AgentInput) -> Agent:
    access.require(Role.ADMIN)
    _check_profile(data)
    await _check_name_free(session, access, data.name)
    data.runtime_pool = await _check_pool(session, access, data.runtime_pool)
    agent = Agent(workspace_id=access.workspace.id)
    _apply(agent, data, with_env=True)
    session.add(agent)
    await _commit(session, data.name)
    log.info(
        "agent.created",
        agent_id=agent.id,
        workspace_id=access.workspace.id,
        provider=agent.provider,
    )
    return agent


async def update_agent(session: AsyncSession, access: Access, ref: str, patch: AgentPatch) -> Agent:
    access.require(Role.ADMIN)
    agent = await get_agent_or_404(session, access, ref)
    data = _profile_of(agent)
    changed = []
    for name in (f.name for f in fields(AgentPatch)):
        value = getattr(patch, name)
        if value is UNSET:
            continue
        if name == "env":
            value = _merge_env(data.env, value)
        setattr(data, name, value)
        changed.append(name)
    _check_profile(data)
    if "name" in changed:
        await _check_name_free(session, access, data.name, agent.id)
    if "runtime_pool" in changed:
        data.runtime_pool = await _check_pool(session, access, data.runtime_pool)
    _apply(agent, data, with_env="env" in changed)
    await _commit(session, data.name)
    log.info("agent.updated", agent_id=agent.id, workspace_id=access.workspace.id, fields=changed)
    return agent


async def set_archived(session: AsyncSession, access: Access, ref: str, archived: bool) -> Agent:
    """Archive (hide from the default list, refuse as assignee) or restore; idempotent."""
    access.require(Role.ADMIN)
    agent = await get_agent_or_404(session, access, ref)
    if archived and agent.archived_at is None:
        agent.archived_at = utcnow()
    elif not archived and agent.archived_at is not None:
        agent.archived_at = None
    else:
        return agent
    await _commit(session, agent.name)
    log.info(
        "agent.archived" if archived else "agent.restored",
        agent_id=agent.id,
        workspace_id=access.workspace.id,
    )
    return agent


# --- runtimes and status -----------------------------------------------------------------


def runtime_online(runtime: Runtime, now: datetime) -> bool:
    return now - runtime.last_heartbeat_at <= RUNTIME_OFFLINE_AFTER


def runtime_providers(runtime: Runtime) -> dict[str, str]:
    """Provider → version, as the daemon reported it."""
    data = json.loads(runtime.providers or "{}")
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def pool_runtimes(agent: Agent, runtimes: Iterable[Runtime], now: datetime) -> list[Runtime]:
    """Online runtimes of the agent's pool (any of the workspace when the pool is empty)."""
    pool = set(_load_list(agent.runtime_pool))
    return [
        r
        for r in runtimes
        if r.workspace_id == agent.workspace_id
        and (not pool or r.id in pool)
        and runtime_online(r, now)
    ]


def eligible_runtimes(agent: Agent, runtimes: Iterable[Runtime], now: datetime) -> list[Runtime]:
    """Online runtimes of the agent's pool that support its provider."""
    return [
        r for r in pool_runtimes(agent, runtimes, now) if agent.provider in runtime_providers(r)
    ]


async def agent_statuses(
    session: AsyncSession,
    workspace_id: str,
    agents: Sequence[Agent],
    now: datetime | None = None,
) -> dict[str, AgentStatus]:
    """Each agent's status, in this order of precedence:

    ``working`` — it has a dispatched or running task; ``offline`` — no online runtime
    of its pool supports its provider; ``error`` — its most recently finished task
    failed with a final failure class of its own (:data:`AGENT_FAILURE_CLASSES`) and none
    is queued, dispatched or running; ``idle`` otherwise.

    Three queries whatever the number of agents: active task counts, the latest finished
    task of each agent, and the workspace's runtimes.
    """
    if not agents:
        return {}
    now = now or utcnow()
    ids = [a.id for a in agents]
    active_rows = await session.execute(
        select(Task.agent_id, Task.status, func.count())
        .where(
            Task.workspace_id == workspace_id,
            Task.agent_id.in_(ids),
            Task.status.in_(("queued", *BUSY_STATES)),
        )
        .group_by(Task.agent_id, Task.status)
    )
    busy: set[str] = set()
    active: set[str] = set()
    for agent_id, status, _count in active_rows:
        active.add(agent_id)
        if status in BUSY_STATES:
            busy.add(agent_id)
    latest = (
        select(
            Task.agent_id,
            Task.status,
            Task.failure_class,
            func.row_number()
            .over(
                partition_by=Task.agent_id,
                order_by=(func.coalesce(Task.finished_at, Task.created_at).desc(), Task.id.desc()),
            )
            .label("rank"),
        )
        .where(
            Task.workspace_id == workspace_id,
            Task.agent_id.in_(ids),
            Task.status.in_(FINISHED_STATES),
        )
        .subquery()
    )
    failed = set(
        (
            await session.execute(
                select(latest.c.agent_id).where(
                    latest.c.rank == 1,
                    latest.c.status == "failed",
                    latest.c.failure_class.in_(AGENT_FAILURE_CLASSES),
                )
            )
        ).scalars()
    )
    runtimes = list(
        (
            await session.execute(select(Runtime).where(Runtime.workspace_id == workspace_id))
        ).scalars()
    )
    statuses: dict[str, AgentStatus] = {}
    for agent in agents:
        if agent.id in busy:
            statuses[agent.id] = "working"
        elif not eligible_runtimes(agent, runtimes, now):
            statuses[agent.id] = "offline"
        elif agent.id in failed and agent.id not in active:
            statuses[agent.id] = "error"
        else:
            statuses[agent.id] = "idle"
    return statuses


@dataclass(frozen=True)
class RuntimeView:
    runtime: Runtime
    online: bool
    providers: dict[str, str]
    task_ids: list[str]


async def list_runtimes(session: AsyncSession, access: Access) -> list[RuntimeView]:
    """The workspace's runtimes with their liveness and the tasks they hold now."""
    now = utcnow()
    runtimes = list(
        (
            await session.execute(
                select(Runtime)
                .where(Runtime.workspace_id == access.workspace.id)
                .order_by(Runtime.machine, Runtime.daemon_id)
            )
        ).scalars()
    )
    tasks: dict[str, list[str]] = {r.id: [] for r in runtimes}
    if runtimes:
        rows = await session.execute(
            select(Task.runtime_id, Task.id)
            .where(
                Task.workspace_id == access.workspace.id,
                Task.runtime_id.in_(list(tasks)),
                Task.status.in_(BUSY_STATES),
            )
            .order_by(Task.created_at, Task.id)
        )
        for runtime_id, task_id in rows:
            if runtime_id is not None:
                tasks[runtime_id].append(task_id)
    return [
        RuntimeView(
            runtime=r,
            online=runtime_online(r, now),
            providers=runtime_providers(r),
            task_ids=tasks[r.id],
        )
        for r in runtimes
    ]
