"""CORS for the allowed origins (``FORGEHALL_CORS_ALLOWED_ORIGINS``).

Starlette answers a preflight from a disallowed origin with 400; we answer 403 with a
problem document, the same status the WebSocket origin check and CSRF check give.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp

from forgehall.core.errors import problem_response


class OriginCORSMiddleware(CORSMiddleware):
    def __init__(self, app: ASGIApp, *, allowed_origins: Sequence[str]) -> None:
        super().__init__(
            app,
            allow_origins=list(allowed_origins),
            allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 400:
            origin = request_headers.get("origin", "")
            return problem_response(
                403,
                f"origin {origin} is not allowed (FORGEHALL_CORS_ALLOWED_ORIGINS)",
                type_="cors",
            )
        return response
