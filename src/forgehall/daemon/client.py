"""The daemon's side of the daemon protocol (docs/daemon-protocol.md), over httpx.

Every call either returns the parsed answer or raises:

- :class:`Unreachable` — a connection error, a timeout or a 5xx: worth retrying with a
  backoff (the protocol makes heartbeats, message batches and lease checks idempotent;
  terminal reports answer 409 ``stale-lease`` when a lost answer had taken effect);
- :class:`Refused` — any other 4xx, with the problem's ``type`` (``stale-lease``,
  ``invalid-token`` …) and ``current_state``: not retried unchanged.

Tokens go in headers only and are never logged.
"""

from __future__ import annotations

import random
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from forgehall.agents.schemas import (
    ClaimIn,
    ClaimOut,
    CompleteIn,
    FailIn,
    HeartbeatIn,
    HeartbeatOut,
    IssueStatesIn,
    IssueStatesOut,
    LeaseIn,
    MessageIn,
    MessagesIn,
    MessagesOut,
    OrphansIn,
    OrphansOut,
    ProgressIn,
    RuntimeRegisteredOut,
    RuntimeRegisterIn,
    StartIn,
    TaskStateOut,
    UsageIn,
    UsageReportIn,
)

M = TypeVar("M", bound=BaseModel)


class Unreachable(Exception):
    """The server could not be reached or failed (5xx): retry later."""


class Refused(Exception):
    """The server refused the request (4xx)."""

    def __init__(self, status: int, problem: str, detail: str, current_state: str | None) -> None:
        super().__init__(f"{status} {problem}: {detail}")
        self.status = status
        self.problem = problem  # the problem type's last segment: "stale-lease", …
        self.detail = detail
        self.current_state = current_state

    @property
    def lease_lost(self) -> bool:
        """The task is no longer ours (or is gone): stop it, report nothing more."""
        return self.problem == "stale-lease" or self.status == 404

    @property
    def credentials(self) -> bool:
        """The daemon token is not usable: stop and ask for a new one."""
        return self.status == 401 or self.problem in ("wrong-token-kind", "daemon-token-orphaned")


def _refused(response: httpx.Response) -> Refused:
    problem, detail, state = "", response.text[:300], None
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        problem = str(data.get("type", "")).rsplit("/", 1)[-1]
        detail = str(data.get("detail", detail))
        state = data.get("current_state")
    return Refused(response.status_code, problem, detail, state)


class ProtocolClient:
    def __init__(self, server_url: str, token: str, *, timeout: float = 15.0) -> None:
        self.server_url = server_url.rstrip("/")
        self._token = token
        self.http = httpx.AsyncClient(
            base_url=self.server_url,
            headers={"authorization": f"Bearer {token}", "user-agent": "forgehall-daemon"},
            timeout=timeout,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        body: BaseModel | dict[str, Any] | None,
        answer: type[M] | None,
        *,
        timeout: float | None = None,
        token: str | None = None,
    ) -> Any:
        kwargs: dict[str, Any] = {}
        if isinstance(body, dict):
            kwargs["json"] = body
        elif body is not None:
            kwargs["content"] = body.model_dump_json(exclude_unset=False)
            kwargs["headers"] = {"content-type": "application/json"}
        if token is not None:
            kwargs.setdefault("headers", {})["authorization"] = f"Bearer {token}"
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unreachable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise Unreachable(f"{method} {path}: {response.status_code}")
        if response.status_code >= 400:
            raise _refused(response)
        if answer is None:
            return response.json() if response.content else None
        return answer.model_validate_json(response.content)

    # --- runtime ----------------------------------------------------------------------

    async def register(self, body: RuntimeRegisterIn) -> RuntimeRegisteredOut:
        result: RuntimeRegisteredOut = await self._call(
            "POST", "/api/v1/daemon/runtimes", body, RuntimeRegisteredOut
        )
        return result

    async def heartbeat(self, runtime_id: str, held: list[str]) -> HeartbeatOut:
        result: HeartbeatOut = await self._call(
            "POST",
            f"/api/v1/daemon/runtimes/{runtime_id}/heartbeat",
            HeartbeatIn(held=held),
            HeartbeatOut,
        )
        return result

    async def claim(self, runtime_id: str, limit: int, wait: float) -> ClaimOut:
        result: ClaimOut = await self._call(
            "POST",
            f"/api/v1/daemon/runtimes/{runtime_id}/claim",
            ClaimIn(limit=limit, wait=wait),
            ClaimOut,
            timeout=wait + 15,
        )
        return result

    async def orphans(self, runtime_id: str, task_ids: list[str]) -> OrphansOut:
        result: OrphansOut = await self._call(
            "POST",
            f"/api/v1/daemon/runtimes/{runtime_id}/orphans",
            OrphansIn(task_ids=task_ids),
            OrphansOut,
        )
        return result

    async def issue_states(self, runtime_id: str, keys: list[str]) -> IssueStatesOut:
        result: IssueStatesOut = await self._call(
            "POST",
            f"/api/v1/daemon/runtimes/{runtime_id}/issue-states",
            IssueStatesIn(keys=keys),
            IssueStatesOut,
        )
        return result

    # --- tasks --------------------------------------------------------------------------

    async def _task(self, task_id: str, report: str, body: BaseModel) -> TaskStateOut:
        result: TaskStateOut = await self._call(
            "POST", f"/api/v1/daemon/tasks/{task_id}/{report}", body, TaskStateOut
        )
        return result

    async def start(self, task_id: str, lease: str, session_id: str | None) -> TaskStateOut:
        return await self._task(task_id, "start", StartIn(lease_token=lease, session_id=session_id))

    async def messages(self, task_id: str, lease: str, messages: list[MessageIn]) -> MessagesOut:
        result: MessagesOut = await self._call(
            "POST",
            f"/api/v1/daemon/tasks/{task_id}/messages",
            MessagesIn(lease_token=lease, messages=messages),
            MessagesOut,
        )
        return result

    async def usage(self, task_id: str, lease: str, usage: list[dict[str, Any]]) -> TaskStateOut:
        body = UsageReportIn(lease_token=lease, usage=[UsageIn(**u) for u in usage])
        return await self._task(task_id, "usage", body)

    async def progress(self, task_id: str, lease: str, summary: str) -> TaskStateOut:
        return await self._task(task_id, "progress", ProgressIn(lease_token=lease, summary=summary))

    async def lease(self, task_id: str, lease: str) -> TaskStateOut:
        return await self._task(task_id, "lease", LeaseIn(lease_token=lease))

    async def complete(self, task_id: str, lease: str, body: dict[str, Any]) -> TaskStateOut:
        return await self._task(task_id, "complete", CompleteIn(lease_token=lease, **body))

    async def fail(self, task_id: str, lease: str, body: dict[str, Any]) -> TaskStateOut:
        return await self._task(task_id, "fail", FailIn(lease_token=lease, **body))

    # --- the member API, as the agent (task token) --------------------------------------

    async def issue_comments(
        self, workspace_id: str, issue_key: str, task_token: str
    ) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._call(
            "GET",
            f"/api/v1/workspaces/{workspace_id}/issues/{issue_key}/comments",
            None,
            None,
            token=task_token,
        )
        return result

    async def post_comment(
        self, workspace_id: str, issue_key: str, task_token: str, body: str
    ) -> None:
        await self._call(
            "POST",
            f"/api/v1/workspaces/{workspace_id}/issues/{issue_key}/comments",
            _CommentBody(body=body),
            None,
            token=task_token,
        )

    async def ledger_append(self, workspace_id: str, task_token: str, body: dict[str, Any]) -> Any:
        """Append gate results to the workspace's ledger as the task (its token)."""
        return await self._call(
            "POST",
            f"/api/v1/workspaces/{workspace_id}/ledger/entries",
            body,
            None,
            token=task_token,
        )


class _CommentBody(BaseModel):
    body: str


class Backoff:
    """Exponential backoff with full jitter: 0.5 s, 1 s, 2 s … capped at ``cap``.

    The cap stays well under the 60 s lease: a daemon that reconnects later than that
    loses its running tasks to the server's watchdog.
    """

    def __init__(self, base: float = 0.5, cap: float = 15.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * 2**self.failures)
        self.failures += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> bool:
        """Forget the failures; True when there were some (a reconnect)."""
        had = self.failures > 0
        self.failures = 0
        return had
