"""HTTP routes of agent profiles and runtimes, under ``/workspaces/{workspace}``.

Members read; admins create, change, archive and restore. Responses carry env keys,
never env values.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.agents import service
from forgehall.agents.models import Agent
from forgehall.agents.schemas import AgentIn, AgentOut, AgentPatchIn, CustomCommand, RuntimeOut
from forgehall.core.deps import ReadSessionDep, SessionDep
from forgehall.workspaces.access import Access, AdminAccess, MemberAccess

router = APIRouter(prefix="/api/v1/workspaces/{workspace}", tags=["agents"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown agent, or one of another workspace"}
}
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"description": "Invalid profile, or a runtime of another workspace in the pool"}
}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {
        "description": "The name is taken (`agent-name-taken`), or env was sent but the "
        "server has no encryption key (`encryption-key-required`)"
    }
}
AgentRef = Annotated[str, Path(description="The agent's id or its name (case-insensitive).")]


def _command_in(command: CustomCommand | None) -> service.CustomCommand | None:
    if command is None:
        return None
    return service.CustomCommand(command=list(command.command), parser=command.parser)


async def agents_out(session: AsyncSession, access: Access, agents: list[Agent]) -> list[AgentOut]:
    return [
        AgentOut(
            id=view.agent.id,
            name=view.agent.name,
            avatar=view.agent.avatar,
            instructions=view.agent.instructions,
            provider=view.agent.provider,
            model=view.agent.model,
            custom_command=(
                CustomCommand.model_validate(
                    {"command": view.custom_command.command, "parser": view.custom_command.parser}
                )
                if view.custom_command
                else None
            ),
            extra_args=view.extra_args,
            env_keys=view.env_keys,
            max_concurrent_tasks=view.agent.max_concurrent_tasks,
            runtime_pool=view.runtime_pool,
            status=view.status,
            created_at=view.agent.created_at,
            archived_at=view.agent.archived_at,
        )
        for view in await service.describe_agents(session, access, agents)
    ]


async def agent_out(session: AsyncSession, access: Access, agent: Agent) -> AgentOut:
    return (await agents_out(session, access, [agent]))[0]


@router.get("/agents", response_model=list[AgentOut], summary="Agents of the workspace")
async def read_agents(
    access: MemberAccess,
    session: ReadSessionDep,
    archived: Annotated[bool, Query(description="List the archived agents instead")] = False,
) -> list[AgentOut]:
    agents = await service.list_agents(session, access, archived=archived)
    return await agents_out(session, access, agents)


@router.post(
    "/agents",
    response_model=AgentOut,
    status_code=201,
    summary="Add an agent (admin)",
    responses={**CONFLICT, **INVALID},
)
async def create_agent(body: AgentIn, access: AdminAccess, session: SessionDep) -> AgentOut:
    agent = await service.create_agent(
        session,
        access,
        service.AgentInput(
            name=body.name,
            avatar=body.avatar,
            instructions=body.instructions,
            provider=body.provider,
            model=body.model,
            custom_command=_command_in(body.custom_command),
            extra_args=list(body.extra_args),
            env=dict(body.env),
            max_concurrent_tasks=body.max_concurrent_tasks,
            runtime_pool=list(body.runtime_pool),
        ),
    )
    return await agent_out(session, access, agent)


@router.get(
    "/agents/{agent_id}",
    response_model=AgentOut,
    summary="One agent, by id or name",
    responses=NOT_FOUND,
)
async def read_agent(agent_id: AgentRef, access: MemberAccess, session: ReadSessionDep) -> AgentOut:
    return await agent_out(
        session, access, await service.get_agent_or_404(session, access, agent_id)
    )


@router.patch(
    "/agents/{agent_id}",
    response_model=AgentOut,
    summary="Change an agent (admin)",
    responses={**CONFLICT, **NOT_FOUND, **INVALID},
)
async def update_agent(
    agent_id: AgentRef, body: AgentPatchIn, access: AdminAccess, session: SessionDep
) -> AgentOut:
    patch = service.AgentPatch()
    for name in body.model_fields_set:
        value = getattr(body, name)
        if name == "custom_command":
            value = _command_in(value)
        elif isinstance(value, list | dict):
            value = type(value)(value)
        setattr(patch, name, value)
    agent = await service.update_agent(session, access, agent_id, patch)
    return await agent_out(session, access, agent)


@router.post(
    "/agents/{agent_id}/archive",
    response_model=AgentOut,
    summary="Archive an agent (admin): hidden from the list, cannot be assigned",
    responses=NOT_FOUND,
)
async def archive_agent(agent_id: AgentRef, access: AdminAccess, session: SessionDep) -> AgentOut:
    agent = await service.set_archived(session, access, agent_id, True)
    return await agent_out(session, access, agent)


@router.post(
    "/agents/{agent_id}/restore",
    response_model=AgentOut,
    summary="Restore an archived agent (admin)",
    responses=NOT_FOUND,
)
async def restore_agent(agent_id: AgentRef, access: AdminAccess, session: SessionDep) -> AgentOut:
    agent = await service.set_archived(session, access, agent_id, False)
    return await agent_out(session, access, agent)


@router.get(
    "/runtimes",
    response_model=list[RuntimeOut],
    summary="Runtimes of the workspace, with liveness and current tasks",
)
async def read_runtimes(access: MemberAccess, session: ReadSessionDep) -> list[RuntimeOut]:
    return [
        RuntimeOut(
            id=view.runtime.id,
            daemon_id=view.runtime.daemon_id,
            machine=view.runtime.machine,
            online=view.online,
            providers=view.providers,
            capacity=view.runtime.capacity,
            task_ids=view.task_ids,
            registered_at=view.runtime.registered_at,
            last_heartbeat_at=view.runtime.last_heartbeat_at,
        )
        for view in await service.list_runtimes(session, access)
    ]
