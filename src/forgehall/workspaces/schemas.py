"""Request and response bodies of the workspaces API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from forgehall.gates.schemas import Tier

_TIER = (
    "The bar the workspace's work is held to: prototype, pilot or production. Ledger "
    "readiness uses it when no tier is asked for."
)


class WorkspaceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slug: str = Field(min_length=1, max_length=60, examples=["platform"])
    name: str = Field(min_length=1, max_length=200, examples=["Platform team"])
    key_prefix: str = Field(min_length=1, max_length=10, examples=["ENG"])


class WorkspacePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=200)
    key_prefix: str | None = Field(None, min_length=1, max_length=10)
    tier: Tier | None = Field(None, description=_TIER, examples=["pilot"])


class WorkspaceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    slug: str
    name: str
    key_prefix: str
    tier: Tier = Field(description=_TIER)
    created_at: datetime
    role: str | None = None


class MemberOut(BaseModel):
    user_id: str
    email: str
    name: str
    role: str
    joined_at: datetime


class RoleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(examples=["ADMIN"])


class InvitationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=320, examples=["bob@example.com"])
    role: str = Field("MEMBER", examples=["MEMBER"])


class InvitationOut(BaseModel):
    id: str
    workspace_id: str
    email: str
    role: str
    state: str
    sends: int
    created_at: datetime
    expires_at: datetime


class InvitationPreview(BaseModel):
    workspace: WorkspaceOut
    role: str
    state: str
    expires_at: datetime


class DaemonTokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, examples=["build-box-1"])
    expires_in_days: int | None = Field(None, ge=1, le=3650)


class RepositoryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", examples=["api"]
    )
    url: str = Field(
        min_length=1,
        max_length=1000,
        description="What `git clone` takes: https://, ssh://, git@host:path or a local path.",
        examples=["https://git.example.com/acme/api.git"],
    )
    default_branch: str = Field("main", min_length=1, max_length=200)


class RepositoryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    url: str
    default_branch: str
    created_at: datetime
