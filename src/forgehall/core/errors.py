"""Problem details (RFC 9457) for every error the API returns.

A problem has a stable ``type`` (a URI under ``/problems/``), a short ``title``, the
HTTP ``status`` and a ``detail`` telling the caller what to do. Handlers here convert
every exception — ours, FastAPI's validation errors, Starlette's HTTP errors and
anything unexpected — so no stack trace ever reaches a client.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

PROBLEM_CONTENT_TYPE = "application/problem+json"
log = structlog.get_logger("forgehall.errors")

_TITLES = {
    400: ("bad-request", "Bad request"),
    401: ("unauthenticated", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    409: ("conflict", "Conflict"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("validation-error", "Invalid request"),
    429: ("rate-limited", "Too many requests"),
    500: ("internal-error", "Internal server error"),
    503: ("unavailable", "Service unavailable"),
}


class Problem(BaseModel):
    """An error (RFC 9457 problem details). ``type`` is stable; ``detail`` says what to do."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "/problems/not-found",
                    "title": "Not found",
                    "status": 404,
                    "detail": "issue ENG-99 was not found",
                    "instance": "/api/v1/workspaces/team/issues/ENG-99",
                }
            ]
        },
    )
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None


def _problem(description: str) -> dict[str, Any]:
    return {
        "model": Problem,
        "description": description,
        "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


#: Error responses every authenticated API route may give, documented on each.
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _problem("Not signed in, or the token is invalid, expired or revoked"),
    403: _problem("Signed in, but not allowed (role, token kind, CSRF or origin check)"),
    404: _problem("Not found — including anything in a workspace you cannot see"),
    413: _problem("The request body is over FORGEHALL_MAX_BODY_BYTES"),
    422: _problem("The request is invalid; `errors` lists each problem"),
    429: _problem("Too many requests; retry after the Retry-After header"),
}


class ProblemError(Exception):
    """Raise from a service or route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type_: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        default_type, default_title = _TITLES.get(status, ("error", "Error"))
        self.status = status
        self.detail = detail
        self.type = type_ or default_type
        self.title = title or default_title
        self.headers = headers or {}
        self.extensions = extensions


def problem_response(
    status: int,
    detail: str,
    *,
    type_: str | None = None,
    title: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> Response:
    default_type, default_title = _TITLES.get(status, ("error", "Error"))
    body: dict[str, Any] = {
        "type": f"/problems/{type_ or default_type}",
        "title": title or default_title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extensions)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_CONTENT_TYPE, headers=headers)


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return problem_response(
        exc.status,
        exc.detail,
        type_=exc.type,
        title=exc.title,
        instance=request.url.path,
        headers=exc.headers,
        **exc.extensions,
    )


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = (
        exc.detail
        if isinstance(exc.detail, str)
        else _TITLES.get(exc.status_code, ("", "Error"))[1]
    )
    if exc.status_code == 404 and exc.detail == "Not Found":
        detail = f"no route matches {request.method} {request.url.path}"
    if exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return problem_response(
        exc.status_code, detail, instance=request.url.path, headers=dict(exc.headers or {})
    )


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "location": ".".join(str(part) for part in error.get("loc", ())),
            "message": error.get("msg", "invalid"),
        }
        for error in exc.errors()
    ]
    summary = "; ".join(f"{e['location']}: {e['message']}" for e in errors[:5])
    return problem_response(
        422, f"the request is invalid: {summary}", instance=request.url.path, errors=errors
    )


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("request.unhandled_error", path=request.url.path, error=type(exc).__name__)
    return problem_response(
        500,
        "an unexpected error occurred; the server log has the details (search for the "
        "request id in the X-Request-ID header)",
        instance=request.url.path,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected)
