"""The outermost HTTP middleware: request id, body limit, access log, metrics.

Written as plain ASGI so it wraps streaming bodies and WebSockets without buffering.

- The direct peer decides trust: only when it is one of ``trusted_proxies`` are its
  ``X-Request-ID`` (if it looks like an id), ``X-Forwarded-For`` (the rightmost
  untrusted address becomes the client) and ``X-Forwarded-Proto`` believed. uvicorn's
  own proxy handling is off so this decision is made on the real peer, once.
- The request id is on every log line of the request and in the response.
- A body larger than the limit gets 413 — by ``Content-Length`` up front, or while
  streaming for chunked uploads — before the application reads it whole.
- An exception escaping the application is logged once, with the request id, and
  answered with a problem document; no stack trace reaches the client.
"""

from __future__ import annotations

import ipaddress
import re
import time
import uuid
from collections.abc import Sequence

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from forgehall.core.errors import problem_response
from forgehall.core.logging import bind_context, clear_context
from forgehall.core.metrics import Metrics

log = structlog.get_logger("forgehall.http")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: Sequence[str]) -> list[_Network]:
    return [ipaddress.ip_network(item, strict=False) for item in items]


def is_trusted(client_host: str | None, networks: Sequence[_Network]) -> bool:
    if not client_host:
        return False
    try:
        address = ipaddress.ip_address(client_host)
    except ValueError:
        return False
    return any(address in net for net in networks)


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        trusted_proxies: Sequence[str],
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.trusted = parse_networks(trusted_proxies)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        client = scope.get("client")
        from_proxy = is_trusted(client[0] if client else None, self.trusted)
        offered = headers.get("x-request-id", "")
        if from_proxy and offered and _REQUEST_ID.match(offered):
            request_id = offered
        else:
            request_id = uuid.uuid4().hex
        if from_proxy:
            self._apply_forwarded(scope, headers)
        scope.setdefault("state", {})["request_id"] = request_id
        clear_context()
        bind_context(request_id=request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        if scope["type"] == "websocket":
            try:
                await self.app(scope, receive, send)
            finally:
                clear_context()
            return

        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(scope, receive, send, request_id)
            self._record(scope, 413, started)
            clear_context()
            return

        received = 0
        rejected = False

        async def limited_receive() -> Message:
            # Frameworks turn exceptions raised while reading a body into their own 400,
            # so an oversized stream is answered here and the app sees a disconnect.
            nonlocal received, rejected, status, response_started
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    rejected = True
                    if not response_started:
                        response_started = True
                        status = 413
                        await self._too_large(scope, receive, send, request_id)
                    return {"type": "http.disconnect"}
            return message

        async def tagged_send(message: Message) -> None:
            nonlocal status, response_started
            if rejected:
                return  # the 413 has been sent; whatever the app answers is dropped
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        try:
            await self.app(scope, limited_receive, tagged_send)
        except Exception as exc:
            if rejected:
                return
            log.exception("request.unhandled_error", path=scope["path"], error=type(exc).__name__)
            status = 500
            if not response_started:
                response = problem_response(
                    500,
                    "an unexpected error occurred; the server log has the details (search "
                    f"for request id {request_id})",
                    instance=scope["path"],
                    headers={"x-request-id": request_id},
                )
                await response(scope, receive, send)
        finally:
            self._record(scope, status, started)
            clear_context()

    def _apply_forwarded(self, scope: Scope, headers: dict[str, str]) -> None:
        forwarded = [a.strip() for a in headers.get("x-forwarded-for", "").split(",") if a.strip()]
        for address in reversed(forwarded):
            if not is_trusted(address, self.trusted):
                scope["client"] = (address, 0)
                break
        proto = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        if proto in ("http", "https") and scope["type"] == "http":
            scope["scheme"] = proto
        elif proto in ("http", "https"):
            scope["scheme"] = "wss" if proto == "https" else "ws"

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        response = problem_response(
            413,
            f"the request body is larger than the limit of {self.max_body_bytes} bytes "
            "(FORGEHALL_MAX_BODY_BYTES)",
            instance=scope["path"],
            headers={"x-request-id": request_id, "connection": "close"},
        )
        await response(scope, receive, send)

    def _record(self, scope: Scope, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope.get("method", "GET")
        log.info(
            "http.request",
            method=method,
            path=scope["path"],
            route=route,
            status=status,
            duration_ms=round(elapsed * 1000, 2),
        )
        if self.metrics is not None:
            self.metrics.observe_request(method, route, status, elapsed)
