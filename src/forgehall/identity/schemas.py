"""Request and response bodies of the identity API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SendCodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=320, examples=["alice@example.com"])


class VerifyCodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=320, examples=["alice@example.com"])
    code: str = Field(min_length=1, max_length=12, examples=["123456"])
    token_name: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Instead of a session cookie, return a personal access token with this "
        "name (used by `forgehall login`).",
        examples=["CLI on laptop"],
    )


class Accepted(BaseModel):
    status: Literal["sent"] = "sent"
    detail: str = "if the address may sign in, a code is on its way"


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    email: str
    name: str
    is_instance_admin: bool
    created_at: datetime


class LoginOut(BaseModel):
    user: UserOut
    session_id: str | None = None
    expires_at: datetime | None = None
    token: str | None = Field(
        None, description="The personal access token, when asked for with token_name. Shown once."
    )


class SessionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    user_agent: str
    ip: str
    method: str
    current: bool = False


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, examples=["laptop CLI"])
    expires_in_days: int | None = Field(None, ge=1, le=3650)


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    kind: str
    name: str
    prefix: str
    workspace_id: str | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class IssuedTokenOut(TokenOut):
    token: str = Field(description="The token itself. Shown once; store it now.")


class RevokedCount(BaseModel):
    revoked: int


class BootstrapIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=500)


class LoginButton(BaseModel):
    slug: str = Field(description="Start at /auth/oauth/{slug}/start")
    display_name: str


class PublicConfig(BaseModel):
    """What the UI needs to know before anyone signs in."""

    login_methods: list[str] = Field(examples=[["email", "github", "oidc"]])
    login_buttons: list[LoginButton] = Field(
        default_factory=list,
        description="Every OAuth/OIDC provider, including those added "
        "at runtime by an instance admin.",
    )
    oidc_display_name: str | None
    allow_signup: bool
    disable_workspace_creation: bool
    first_run: bool = Field(description="No instance admin exists yet.")


class AdminUserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    is_instance_admin: bool | None = None
    is_disabled: bool | None = None


class SetupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=200)
    email: str = Field(max_length=320, examples=["admin@example.com"])


class SignupPolicyOut(BaseModel):
    allow_signup: bool
    allowed_email_domains: list[str]
    allowed_emails: list[str]
    disable_workspace_creation: bool


class SignupPolicyPatch(BaseModel):
    """Runtime overrides; send null for a field to fall back to the environment."""

    model_config = ConfigDict(extra="forbid")
    allow_signup: bool | None = None
    allowed_email_domains: list[str] | None = None
    allowed_emails: list[str] | None = None
    disable_workspace_creation: bool | None = None


class CliExchangeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=200, examples=["CLI on laptop"])
