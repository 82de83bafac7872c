"""Client commands: they talk to a Forgehall server over HTTP, never to its database.

Authentication is a personal access token kept by ``forgehall login`` (see
``credentials.py``). Every read command takes ``--json``; errors print the server's
problem detail on one line and exit non-zero.
"""

from __future__ import annotations

import json
import queue
import secrets
import socket
import threading
import webbrowser
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Annotated, Any, NoReturn
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import typer
from pydantic import BaseModel, TypeAdapter
from rich.console import Console
from rich.table import Table

from forgehall.cli.context import fail
from forgehall.cli.credentials import (
    Credentials,
    credentials_path,
    forget_credentials,
    load_credentials,
    save_credentials,
)
from forgehall.identity.schemas import IssuedTokenOut, LoginOut, TokenOut, UserOut
from forgehall.workspaces.schemas import InvitationOut, MemberOut, WorkspaceOut

DEFAULT_SERVER = "http://localhost:8000"
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
WorkspaceOption = Annotated[
    str | None, typer.Option("--workspace", "-w", help="Workspace slug (default: current).")
]

token_app = typer.Typer(help="Personal access tokens.", no_args_is_help=True)
workspace_app = typer.Typer(help="Workspaces you belong to.", no_args_is_help=True)
member_app = typer.Typer(help="Members and invitations of a workspace.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command()(login)
    app.command()(logout)
    app.command()(whoami)
    app.add_typer(token_app, name="token")
    app.add_typer(workspace_app, name="workspace")
    app.add_typer(member_app, name="member")


class Server:
    """A small HTTP client for the API with one way of failing."""

    def __init__(self, credentials: Credentials, *, need_token: bool = True) -> None:
        if credentials.server_url is None or (need_token and credentials.token is None):
            fail(
                "not logged in; run `forgehall login` (or set FORGEHALL_SERVER_URL and "
                "FORGEHALL_TOKEN)"
            )
        self.url = credentials.server_url.rstrip("/")
        headers = {"authorization": f"Bearer {credentials.token}"} if credentials.token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self.http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            fail(f"cannot reach the server at {self.url}: {exc}")
        if response.status_code >= 400:
            _fail_with(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()


def _fail_with(response: httpx.Response) -> NoReturn:
    try:
        detail = response.json().get("detail") or response.text
    except ValueError:
        detail = response.text[:200]
    fail(f"{response.status_code}: {detail}")


def _parse(model: Any, data: Any) -> Any:
    return TypeAdapter(model).validate_python(data)


def _print(rows: list[BaseModel], columns: list[str], as_json: bool, title: str) -> None:
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    table = Table(*columns, title=title)
    for row in rows:
        data = row.model_dump(mode="json")
        table.add_row(*[str(data.get(c) if data.get(c) is not None else "—") for c in columns])
    Console(width=140).print(table)


def login(
    server: Annotated[str | None, typer.Option(help="Server URL.")] = None,
    token: Annotated[
        str | None, typer.Option(help="Store this personal access token (headless machines).")
    ] = None,
    email: Annotated[
        str | None,
        typer.Option(help="Sign in by email code typed in the terminal instead of the browser."),
    ] = None,
    no_open: Annotated[
        bool,
        typer.Option("--no-open", help="Print the sign-in URL instead of opening a browser."),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the browser.")] = 300,
) -> None:
    """Sign in and store a personal access token (file mode 0600).

    By default a browser opens on the server's sign-in page; after you authorize the CLI
    the server hands a one-time code to a listener on 127.0.0.1, which the CLI trades for
    a token named after this machine. --email signs in by code in the terminal instead;
    --token stores a token you already have.
    """
    stored = load_credentials()
    url = server or stored.server_url or typer.prompt("Server URL", default=DEFAULT_SERVER)
    url = url.rstrip("/")
    name = f"CLI on {socket.gethostname()}"
    if token is None and email is not None:
        anonymous = Server(Credentials(server_url=url), need_token=False)
        anonymous.request("POST", "/auth/send-code", {"email": email})
        code = typer.prompt("Code from the email")
        result = _parse(
            LoginOut,
            anonymous.request(
                "POST", "/auth/verify-code", {"email": email, "code": code, "token_name": name}
            ),
        )
        token = result.token
    elif token is None:
        token = _browser_login(url, name, open_browser=not no_open, timeout=timeout)
    assert token is not None
    me = _parse(
        UserOut, Server(Credentials(server_url=url, token=token)).request("GET", "/api/v1/me")
    )
    path = save_credentials(Credentials(server_url=url, token=token, workspace=stored.workspace))
    typer.echo(f"Logged in to {url} as {me.email} (token stored in {path})")


def _browser_login(url: str, name: str, *, open_browser: bool, timeout: float) -> str:
    """The localhost-callback flow: returns a new personal access token."""
    state = secrets.token_urlsafe(24)
    received: queue.Queue[dict[str, str]] = queue.Queue()

    class Callback(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
            ok = query.get("state") == state and "code" in query
            self.send_response(200 if ok else 400)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(
                b"<h1>Forgehall CLI</h1><p>"
                + (
                    b"Signed in. You can close this tab."
                    if ok
                    else b"This sign-in did not come from the CLI that is waiting."
                )
                + b"</p>"
            )
            if ok:
                received.put(query)

        def log_message(self, format: str, *args: Any) -> None:
            """Keep the terminal quiet."""

    listener = HTTPServer(("127.0.0.1", 0), Callback)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    callback = f"http://127.0.0.1:{listener.server_address[1]}/callback"
    query = urlencode({"callback": callback, "state": state, "name": name})
    authorize = f"{url}/auth/cli/authorize?{query}"
    typer.echo(f"Sign in at:\n\n  {authorize}\n", err=True)
    if open_browser:
        webbrowser.open(authorize)
    try:
        result = received.get(timeout=timeout)
    except queue.Empty:
        fail(f"no sign-in within {int(timeout)} seconds; run `forgehall login` again")
    finally:
        listener.shutdown()
    exchanged = _parse(
        LoginOut,
        Server(Credentials(server_url=url), need_token=False).request(
            "POST", "/auth/cli/exchange", {"code": result["code"], "name": name}
        ),
    )
    token: str | None = exchanged.token
    assert token is not None
    return token


def logout() -> None:
    """Revoke the stored token on the server and forget it locally."""
    credentials = load_credentials()
    if credentials.token and credentials.server_url:
        server = Server(credentials)
        tokens = _parse(list[TokenOut], server.request("GET", "/api/v1/me/tokens"))
        for item in tokens:
            if credentials.token.startswith(item.prefix) and item.revoked_at is None:
                server.request("DELETE", f"/api/v1/me/tokens/{item.id}")
                break
    forgotten = forget_credentials()
    typer.echo("Logged out" if forgotten else f"Not logged in ({credentials_path()} absent)")


def whoami(as_json: JsonOption = False) -> None:
    """Show the signed-in account, server and current workspace."""
    credentials = load_credentials()
    me = _parse(UserOut, Server(credentials).request("GET", "/api/v1/me"))
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "user": me.model_dump(mode="json"),
                    "server": credentials.server_url,
                    "workspace": credentials.workspace,
                }
            )
        )
        return
    admin = " (instance admin)" if me.is_instance_admin else ""
    typer.echo(
        f"{me.email}{admin} on {credentials.server_url}; workspace: "
        f"{credentials.workspace or '(none; `forgehall workspace use SLUG`)'}"
    )


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="What the token is for.")],
    expires_in_days: Annotated[int | None, typer.Option(help="Expiry in days.")] = None,
) -> None:
    """Create a personal access token; it is printed once."""
    issued = _parse(
        IssuedTokenOut,
        Server(load_credentials()).request(
            "POST", "/api/v1/me/tokens", {"name": name, "expires_in_days": expires_in_days}
        ),
    )
    typer.echo(issued.token)


@token_app.command("list")
def token_list(as_json: JsonOption = False) -> None:
    """List your personal access tokens (never the tokens themselves)."""
    tokens = _parse(list[TokenOut], Server(load_credentials()).request("GET", "/api/v1/me/tokens"))
    _print(
        tokens,
        ["id", "name", "prefix", "created_at", "last_used_at", "expires_at", "revoked_at"],
        as_json,
        "Personal access tokens",
    )


@token_app.command("revoke")
def token_revoke(token_id: Annotated[str, typer.Argument(help="Token id.")]) -> None:
    """Revoke a personal access token."""
    Server(load_credentials()).request("DELETE", f"/api/v1/me/tokens/{token_id}")
    typer.echo(f"revoked {token_id}")


@workspace_app.command("create")
def workspace_create(
    slug: Annotated[str, typer.Argument(help="Short name used in URLs, e.g. platform.")],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    key_prefix: Annotated[str, typer.Option(help="Issue key prefix, e.g. ENG.")] = "ENG",
) -> None:
    """Create a workspace (you become its OWNER) and make it current."""
    created = _parse(
        WorkspaceOut,
        Server(load_credentials()).request(
            "POST",
            "/api/v1/workspaces",
            {"slug": slug, "name": name or slug, "key_prefix": key_prefix},
        ),
    )
    credentials = load_credentials()
    credentials.workspace = created.slug
    save_credentials(credentials)
    typer.echo(f"created workspace {created.slug} ({created.key_prefix}); now current")


@workspace_app.command("list")
def workspace_list(as_json: JsonOption = False) -> None:
    """List the workspaces you belong to."""
    rows = _parse(
        list[WorkspaceOut], Server(load_credentials()).request("GET", "/api/v1/workspaces")
    )
    _print(rows, ["slug", "name", "key_prefix", "role"], as_json, "Workspaces")


@workspace_app.command("use")
def workspace_use(slug: Annotated[str, typer.Argument(help="Workspace slug.")]) -> None:
    """Make a workspace the current one for later commands."""
    credentials = load_credentials()
    found = _parse(WorkspaceOut, Server(credentials).request("GET", f"/api/v1/workspaces/{slug}"))
    credentials.workspace = found.slug
    save_credentials(credentials)
    typer.echo(f"current workspace: {found.slug}")


def _workspace(option: str | None) -> str:
    chosen = option or load_credentials().workspace
    if not chosen:
        fail("no workspace given; pass --workspace SLUG or run `forgehall workspace use SLUG`")
    return chosen


@member_app.command("list")
def member_list(workspace: WorkspaceOption = None, as_json: JsonOption = False) -> None:
    """List members and their roles."""
    rows = _parse(
        list[MemberOut],
        Server(load_credentials()).request(
            "GET", f"/api/v1/workspaces/{_workspace(workspace)}/members"
        ),
    )
    _print(rows, ["user_id", "email", "role", "joined_at"], as_json, "Members")


@member_app.command("invite")
def member_invite(
    email: Annotated[str, typer.Argument(help="Address to invite.")],
    role: Annotated[str, typer.Option(help="ADMIN or MEMBER.")] = "MEMBER",
    workspace: WorkspaceOption = None,
) -> None:
    """Invite someone by email (valid 7 days)."""
    invitation = _parse(
        InvitationOut,
        Server(load_credentials()).request(
            "POST",
            f"/api/v1/workspaces/{_workspace(workspace)}/invitations",
            {"email": email, "role": role},
        ),
    )
    typer.echo(
        f"invited {invitation.email} as {invitation.role} (expires "
        f"{invitation.expires_at:%Y-%m-%d})"
    )


@member_app.command("remove")
def member_remove(
    user_id: Annotated[str, typer.Argument(help="The member's user id.")],
    workspace: WorkspaceOption = None,
) -> None:
    """Remove a member (your own id: leave the workspace)."""
    Server(load_credentials()).request(
        "DELETE", f"/api/v1/workspaces/{_workspace(workspace)}/members/{user_id}"
    )
    typer.echo(f"removed {user_id}")


@member_app.command("role")
def member_role(
    user_id: Annotated[str, typer.Argument(help="The member's user id.")],
    role: Annotated[str, typer.Argument(help="OWNER, ADMIN or MEMBER.")],
    workspace: WorkspaceOption = None,
) -> None:
    """Change a member's role (only OWNERs grant or revoke OWNER)."""
    member = _parse(
        MemberOut,
        Server(load_credentials()).request(
            "PATCH", f"/api/v1/workspaces/{_workspace(workspace)}/members/{user_id}", {"role": role}
        ),
    )
    typer.echo(f"{member.email} is now {member.role}")
