"""Request and response bodies of the agents API (profiles and runtimes).

Env values are write-only: a request may carry them, no response ever does — responses
name the keys only (``env_keys``). The limits below are shared with the service, which
checks the complete profile again after a partial update.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from forgehall.gates.schemas import Tier

#: The agent CLIs a profile may name (``custom``: the workspace-defined command). Kept
#: here rather than in ``models`` so the CLI can read the schemas without SQLAlchemy.
PROVIDERS = ("claude", "codex", "cursor", "opencode", "copilot", "gemini", "qwen", "acp", "custom")

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


# --- the daemon protocol (``/api/v1/daemon/``) ---------------------------------------------

MESSAGE_BATCH_MAX = 500
MESSAGE_CONTENT_MAX = 256 * 1024
CLAIM_WAIT_MAX = 30.0
CLAIM_LIMIT_MAX = 50
MessageKind = Literal["text", "thinking", "tool_use", "tool_result", "error"]
TaskStatus = Literal["queued", "dispatched", "running", "completed", "failed", "cancelled"]
FailureClass = Literal[
    "runtime_offline",
    "lease_expired",
    "provider_network",
    "agent_error",
    "cancelled",
    "gate_failure",
]


class RuntimeRegisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    daemon_id: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="The daemon's persistent id (kept in its state directory): registering "
        "again with the same id updates that runtime instead of adding one.",
    )
    machine: str = Field("", max_length=200, description="Host name, for people.")
    providers: dict[
        Annotated[str, StringConstraints(max_length=40)],
        Annotated[str, StringConstraints(max_length=100)],
    ] = Field(
        default_factory=dict,
        max_length=20,
        description="Agent CLIs found on the machine: provider → version.",
    )
    capacity: int = Field(4, ge=1, le=100, description="Tasks the daemon runs at once.")


class RuntimeRegisteredOut(BaseModel):
    runtime_id: str
    workspace_id: str
    heartbeat_seconds: float = Field(description="Send a heartbeat at least this often.")
    lease_seconds: float = Field(
        description="A lease lasts this long; heartbeats and reports renew it."
    )
    offline_after_seconds: float = Field(
        description="Without a heartbeat for this long the runtime is shown offline."
    )


class IssueStatesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[str] = Field(
        max_length=1000,
        description="Issue keys (`ENG-42`) the daemon keeps worktrees for.",
        examples=[["ENG-42", "ENG-7"]],
    )


class IssueStatesOut(BaseModel):
    categories: dict[str, str] = Field(
        description="The status category of each key that names an issue of the workspace "
        "(backlog, todo, in_progress, in_review, done, blocked, cancelled); a key that "
        "names none is left out.",
        examples=[{"ENG-42": "done", "ENG-7": "in_progress"}],
    )


class HeartbeatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    held: list[str] | None = Field(
        None,
        max_length=1000,
        description="The tasks the daemon holds now (running, or finished with the result "
        "not yet delivered). When sent, only their leases are renewed: a task dispatched to "
        "this runtime that the daemon does not know of (a claim whose answer was lost) runs "
        "out its lease and is retried. Omitted: every task of the runtime is renewed.",
    )


class HeartbeatOut(BaseModel):
    cancel: list[str] = Field(
        description="Tasks held by this runtime whose cancellation was asked for: stop "
        "them and report `fail` with `failure_class` `cancelled`."
    )


class ClaimIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(1, ge=1, le=CLAIM_LIMIT_MAX, description="Most tasks to take.")
    wait: float = Field(
        0,
        ge=0,
        le=CLAIM_WAIT_MAX,
        description="Seconds to wait for work when none is available now (long poll). The "
        "answer comes the moment a task for this runtime is queued.",
    )


class ClaimedAgent(BaseModel):
    id: str
    name: str
    provider: str
    model: str
    instructions: str
    custom_command: CustomCommand | None
    extra_args: list[str]
    env: dict[str, str] = Field(description="Decrypted: set these for the agent process only.")


class ClaimedComment(BaseModel):
    author: str = Field(description="`member:<name>` or `agent:<name>`.")
    body: str
    created_at: datetime


class ClaimedIssue(BaseModel):
    id: str
    key: str
    title: str
    description: str
    status: str
    status_category: str
    priority: str
    labels: list[str]
    comments: list[ClaimedComment] = Field(
        description="Oldest first; the newest 200 when the issue has more."
    )


class ClaimedRepository(BaseModel):
    name: str
    url: str
    default_branch: str


class ClaimedTask(BaseModel):
    id: str
    workspace_id: str
    attempt: int
    trigger: str
    lease_token: str = Field(description="Send it with every report on this task.")
    lease_expires_at: datetime
    task_token: str = Field(
        description="`fh_tsk_…`: the agent process acts through the API with it (comments, "
        "status) as the agent; valid only while the task runs."
    )
    prior_session_id: str | None = Field(
        description="The CLI session of this agent's last run on this issue, to resume."
    )
    agent: ClaimedAgent
    issue: ClaimedIssue
    repositories: list[ClaimedRepository]
    tier: Tier = Field(
        "prototype",
        description="The workspace's tier: after the agent's work the daemon runs the gates "
        "this tier requires (when the worktree has `.forgehall/gates.yaml`).",
    )


class ClaimOut(BaseModel):
    tasks: list[ClaimedTask]
    cancel: list[str] = Field(
        description="Tasks of this runtime whose cancellation was asked for (each told once "
        "here; heartbeats repeat them)."
    )


class LeaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lease_token: str = Field(min_length=1, max_length=64)


class StartIn(LeaseIn):
    session_id: str | None = Field(None, max_length=200, description="The CLI's session id.")


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int = Field(ge=1, description="Order within this attempt, from 1; a repeat is ignored.")
    kind: MessageKind
    content: str = Field(
        description=f"Text, or JSON for tool calls; at most {MESSAGE_CONTENT_MAX} bytes."
    )


class MessagesIn(LeaseIn):
    messages: list[MessageIn] = Field(
        description=f"At most {MESSAGE_BATCH_MAX} per batch (more: 413)."
    )


class MessagesOut(BaseModel):
    stored: int
    duplicates: int = Field(description="Sequence numbers already stored, ignored.")


class UsageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    input_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)
    cache_read_tokens: int = Field(0, ge=0)
    cache_write_tokens: int = Field(0, ge=0)
    cost_usd: float | None = Field(
        None, ge=0, description="As reported by the CLI; omitted: priced from settings."
    )


class UsageReportIn(LeaseIn):
    usage: list[UsageIn] = Field(
        max_length=50,
        description="Totals so far of this task, per model. Each report replaces the "
        "previous one entirely: a model it does not name is dropped.",
    )


class ProgressIn(LeaseIn):
    summary: str = Field(max_length=500)


class CompleteIn(LeaseIn):
    summary: str = Field("", max_length=20_000, description="What the agent did, for people.")
    session_id: str | None = Field(None, max_length=200)


class FailIn(LeaseIn):
    failure_class: FailureClass = Field(
        description="Retryable: runtime_offline, lease_expired, provider_network (back to the "
        "queue with backoff until max_attempts). Final: agent_error, cancelled, gate_failure."
    )
    detail: str = Field("", max_length=4000)


class OrphansIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_ids: list[str] = Field(max_length=1000)


class OrphansOut(BaseModel):
    retried: list[str] = Field(description="Tasks put back in the queue, claimable now.")
    ended: list[str] = Field(
        description="Tasks that ended instead: out of attempts (failed) or cancelled."
    )


class TaskStateOut(BaseModel):
    id: str
    status: TaskStatus
    attempt: int
    lease_expires_at: datetime | None
    cancel_requested: bool
    follow_up_id: str | None = Field(None, description="The follow-up queued on completion.")


# --- tasks for members ----------------------------------------------------------------------


class UsageOut(BaseModel):
    model: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float
    cost_source: Literal["provider", "prices", "unpriced"]


class TaskOut(BaseModel):
    id: str
    issue_id: str
    issue_key: str
    agent_id: str
    agent_name: str
    status: TaskStatus
    trigger: str
    follow_up: bool = Field(description="Another run is queued for when this one ends.")
    runtime_id: str | None
    attempt: int
    max_attempts: int
    available_at: datetime
    failure_class: str | None
    failure_detail: str | None
    cancel_requested: bool
    progress: str
    result: str
    session_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    usage: list[UsageOut]
    cost_usd: float


class TaskMessageOut(BaseModel):
    attempt: int
    seq: int
    kind: MessageKind
    content: str
    created_at: datetime


class RunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: str | None = Field(
        None, description="Agent id or name; default: the issue's assignee agent."
    )
