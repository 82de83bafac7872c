"""Real local HTTP servers for OAuth tests: a threaded WSGI runner, WSGI wrappers that
bend a real OIDC provider in controlled ways, and a small GitHub look-alike.

The GitHub server implements the endpoints Forgehall calls with GitHub's real shapes:
``/login/oauth/authorize`` (redirects back with ``code`` and ``state``),
``/login/oauth/access_token`` (form in; JSON out when asked with
``Accept: application/json``, errors as 200 + ``{"error": …}`` like GitHub), and the
REST API under ``/api/v3`` (GitHub Enterprise Server layout): ``/user`` and
``/user/emails``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


@dataclass
class Served:
    """A server running on 127.0.0.1 in a background thread."""

    server: BaseWSGIServer

    @property
    def port(self) -> int:
        return self.server.server_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def serve_wsgi(app: WSGIApplication) -> Iterator[Served]:
    """Serve ``app`` on a free port of 127.0.0.1 until the block ends."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield Served(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class RewriteHost:
    """Make ``app`` see another ``Host`` on some paths.

    The OIDC mock names itself after the Host it is asked on, so rewriting the Host of
    token requests makes it issue real, correctly signed ID tokens from another issuer.
    """

    def __init__(self, app: WSGIApplication, *, paths: Iterable[str], host: str) -> None:
        self.app, self.paths, self.host = app, frozenset(paths), host

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in self.paths:
            environ = {**environ, "HTTP_HOST": self.host, "SERVER_NAME": self.host}
        return self.app(environ, start_response)


class KeysFrom:
    """Serve ``app`` but answer ``/jwks`` from ``other``: tokens then fail verification."""

    def __init__(self, app: WSGIApplication, other: WSGIApplication) -> None:
        self.app, self.other = app, other

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        target = self.other if environ.get("PATH_INFO") == "/jwks" else self.app
        return target(environ, start_response)


# --- GitHub -----------------------------------------------------------------------------


@dataclass
class GitHubAccount:
    id: int
    login: str
    name: str | None
    #: As ``/user/emails`` returns them: email, primary, verified, visibility.
    emails: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Grant:
    account: GitHubAccount
    client_id: str
    redirect_uri: str
    code_challenge: str | None


@dataclass
class FakeGitHub:
    """GitHub's OAuth web flow and the two REST endpoints, for one OAuth app."""

    client_id: str
    client_secret: str
    #: Who "clicks Authorize" on the next visit to /login/oauth/authorize; None denies.
    next_account: GitHubAccount | None = None
    token_requests: list[dict[str, str]] = field(default_factory=list)
    _grants: dict[str, _Grant] = field(default_factory=dict)
    _tokens: dict[str, GitHubAccount] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        routes: dict[tuple[str, str], Callable[[Request], Response]] = {
            ("GET", "/login/oauth/authorize"): self._authorize,
            ("POST", "/login/oauth/access_token"): self._access_token,
            ("GET", "/api/v3/user"): self._user,
            ("GET", "/api/v3/user/emails"): self._emails,
        }
        handler = routes.get((request.method, request.path))
        response = handler(request) if handler else _json({"message": "Not Found"}, 404)
        return response(environ, start_response)

    def _authorize(self, request: Request) -> Response:
        args = request.args
        if args.get("client_id") != self.client_id:
            return Response("<h1>404</h1>", 404, content_type="text/html")
        redirect_uri, state = args["redirect_uri"], args.get("state", "")
        if self.next_account is None:
            query = {
                "error": "access_denied",
                "error_description": "The user has denied your application access.",
                "error_uri": "https://docs.github.com/apps/troubleshooting",
                "state": state,
            }
            return Response(status=302, headers={"location": f"{redirect_uri}?{urlencode(query)}"})
        code = secrets.token_hex(10)
        challenge = args.get("code_challenge")
        if challenge is not None and args.get("code_challenge_method") != "S256":
            challenge = None
        with self._lock:
            self._grants[code] = _Grant(self.next_account, self.client_id, redirect_uri, challenge)
        query = {"code": code, "state": state}
        return Response(status=302, headers={"location": f"{redirect_uri}?{urlencode(query)}"})

    def _access_token(self, request: Request) -> Response:
        form = request.form.to_dict()
        self.token_requests.append(form)
        with self._lock:
            grant = self._grants.pop(form.get("code", ""), None)
        if form.get("client_id") != self.client_id or form.get("client_secret") != (
            self.client_secret
        ):
            body = {
                "error": "incorrect_client_credentials",
                "error_description": "The client_id and/or client_secret passed are incorrect.",
            }
        elif (
            grant is None
            or grant.redirect_uri != form.get("redirect_uri", grant.redirect_uri)
            or (grant.code_challenge and grant.code_challenge != _s256(form.get("code_verifier")))
        ):
            body = {
                "error": "bad_verification_code",
                "error_description": "The code passed is incorrect or expired.",
            }
        else:
            token = "gho_" + secrets.token_hex(18)
            with self._lock:
                self._tokens[token] = grant.account
            body = {"access_token": token, "token_type": "bearer", "scope": "read:user,user:email"}
        if "application/json" in request.headers.get("accept", ""):
            return _json(body, 200)
        return Response(urlencode(body), 200, content_type="application/x-www-form-urlencoded")

    def _account(self, request: Request) -> GitHubAccount | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() not in ("bearer", "token"):
            return None
        with self._lock:
            return self._tokens.get(token)

    def _user(self, request: Request) -> Response:
        account = self._account(request)
        if account is None:
            return _json({"message": "Bad credentials", "status": "401"}, 401)
        public = next((e["email"] for e in account.emails if e.get("visibility") == "public"), None)
        return _json(
            {
                "login": account.login,
                "id": account.id,
                "node_id": f"U_{account.id}",
                "type": "User",
                "site_admin": False,
                "name": account.name,
                "email": public,
            },
            200,
        )

    def _emails(self, request: Request) -> Response:
        account = self._account(request)
        if account is None:
            return _json({"message": "Bad credentials", "status": "401"}, 401)
        return _json(account.emails, 200)


def _s256(verifier: str | None) -> str:
    digest = hashlib.sha256((verifier or "").encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _json(body: Any, status: int) -> Response:
    return Response(json.dumps(body), status, content_type="application/json; charset=utf-8")
