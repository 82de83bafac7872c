"""Request and response bodies of the agents API (profiles and runtimes).

Env values are write-only: a request may carry them, no response ever does — responses
name the keys only (``env_keys``). The limits below are shared with the service, which
checks the complete profile again after a partial update.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from forgehall.agents.models import PROVIDERS

#: An agent's name doubles as its @mention handle.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
NAME_MAX = 100
ENV_KEY_PATTERN = r"^[A-Z_][A-Z0-9_]*$"
ENV_MAX_ENTRIES = 50
ENV_KEY_MAX = 200
ENV_VALUE_MAX = 10_000
ARGS_MAX_ITEMS = 50
ARG_MAX_CHARS = 500
POOL_MAX_ITEMS = 100
MAX_CONCURRENT_MIN = 1
MAX_CONCURRENT_MAX = 100
DEFAULT_MAX_CONCURRENT = 6
PARSERS = ("plain", "stream-json")

Parser = Literal["plain", "stream-json"]
Arg = Annotated[str, StringConstraints(max_length=ARG_MAX_CHARS)]
EnvKey = Annotated[str, StringConstraints(pattern=ENV_KEY_PATTERN, max_length=ENV_KEY_MAX)]
EnvValue = Annotated[str, StringConstraints(max_length=ENV_VALUE_MAX)]
Env = dict[EnvKey, EnvValue]
AgentStatus = Literal["idle", "working", "offline", "error"]

_PROVIDER_TEXT = (
    "One of " + ", ".join(PROVIDERS) + ". `custom` runs the workspace-defined "
    "`custom_command`; a runtime serves an agent when its `providers` include the provider "
    "(for `custom`, the runtime must advertise `custom`)."
)
_POOL_TEXT = (
    "Runtime ids the agent may run on. `[]` means any online runtime of the workspace "
    "that supports the provider."
)


class CustomCommand(BaseModel):
    """A workspace-defined agent CLI: the argv to run and how to read its output.

    Stored on the agent as the JSON text ``{"command": [...], "parser": "plain"}``.
    ``plain`` treats stdout as the agent's text; ``stream-json`` reads one JSON event per
    line (as Claude Code's ``--output-format stream-json``).
    """

    model_config = ConfigDict(extra="forbid")
    command: list[Arg] = Field(
        min_length=1,
        max_length=ARGS_MAX_ITEMS,
        description="argv, no shell: the program first, then its arguments.",
        examples=[["my-agent", "--json"]],
    )
    parser: Parser = Field(description="Output parser family: `plain` or `stream-json`.")


_NAME = Field(
    min_length=1,
    max_length=NAME_MAX,
    pattern=NAME_PATTERN,
    description="Unique in the workspace (case-insensitively); used as the @mention handle.",
    examples=["claude"],
)
_ENV_TEXT = (
    "Environment variables for the agent process, stored encrypted. Write-only: "
    "responses list the keys only. Keys match `^[A-Z_][A-Z0-9_]*$`; at most 50."
)


class AgentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = _NAME
    avatar: str = Field("", max_length=500, description="Image URL or emoji.")
    instructions: str = Field("", max_length=100_000, description="Markdown, prepended to tasks.")
    provider: str = Field("claude", description=_PROVIDER_TEXT, examples=["claude"])
    model: str = Field("", max_length=200, description="Empty: the provider's default.")
    custom_command: CustomCommand | None = Field(
        None, description="Required when provider is `custom`; refused otherwise."
    )
    extra_args: list[Arg] = Field(
        default_factory=list,
        max_length=ARGS_MAX_ITEMS,
        description="Appended to the provider's command line; each at most 500 characters.",
    )
    env: Env = Field(default_factory=dict, max_length=ENV_MAX_ENTRIES, description=_ENV_TEXT)
    max_concurrent_tasks: int = Field(
        DEFAULT_MAX_CONCURRENT, ge=MAX_CONCURRENT_MIN, le=MAX_CONCURRENT_MAX
    )
    runtime_pool: list[str] = Field(
        default_factory=list, max_length=POOL_MAX_ITEMS, description=_POOL_TEXT
    )


#: Fields of a patch that may be sent as ``null`` (meaning: clear).
NULLABLE_IN_PATCH = frozenset({"custom_command", "env"})


class AgentPatchIn(BaseModel):
    """Only the fields sent change. ``env`` replaces the whole map (`null` or `{}`
    clears it); ``custom_command: null`` removes the custom command."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(
        None, min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN, description=_NAME.description
    )
    avatar: str | None = Field(None, max_length=500)
    instructions: str | None = Field(None, max_length=100_000)
    provider: str | None = Field(None, description=_PROVIDER_TEXT)
    model: str | None = Field(None, max_length=200)
    custom_command: CustomCommand | None = None
    extra_args: list[Arg] | None = Field(None, max_length=ARGS_MAX_ITEMS)
    env: Env | None = Field(None, max_length=ENV_MAX_ENTRIES, description=_ENV_TEXT)
    max_concurrent_tasks: int | None = Field(None, ge=MAX_CONCURRENT_MIN, le=MAX_CONCURRENT_MAX)
    runtime_pool: list[str] | None = Field(None, max_length=POOL_MAX_ITEMS, description=_POOL_TEXT)

    @model_validator(mode="after")
    def _no_null_for_required_fields(self) -> Self:
        nulls = sorted(
            name
            for name in self.model_fields_set - NULLABLE_IN_PATCH
            if getattr(self, name) is None
        )
        if nulls:
            raise ValueError(f"{', '.join(nulls)} cannot be null; leave the field out instead")
        return self


class AgentOut(BaseModel):
    id: str
    name: str
    avatar: str
    instructions: str
    provider: str
    model: str
    custom_command: CustomCommand | None
    extra_args: list[str]
    env_keys: list[str] = Field(description="Names of the stored env variables (never values).")
    max_concurrent_tasks: int
    runtime_pool: list[str] = Field(description=_POOL_TEXT)
    status: AgentStatus = Field(
        description="`working`: a task is dispatched or running; `offline`: no online "
        "runtime of its pool supports its provider; `error`: its last finished task failed "
        "and nothing is queued or running; otherwise `idle`."
    )
    created_at: datetime
    archived_at: datetime | None


class RuntimeOut(BaseModel):
    id: str
    daemon_id: str
    machine: str
    online: bool = Field(description="A heartbeat arrived in the last 150 seconds.")
    providers: dict[str, str] = Field(description="Provider → CLI version on that machine.")
    capacity: int = Field(description="Tasks the daemon runs at once.")
    task_ids: list[str] = Field(description="Tasks dispatched to or running on it now.")
    registered_at: datetime
    last_heartbeat_at: datetime
