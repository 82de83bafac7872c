"""The board commands (`forgehall issue …`, `forgehall inbox`) against a real server.

One server for the module; two people (ann owns workspace ``team`` with prefix ENG, bob
is invited and accepts). Every command runs as a subprocess, as a user would run it.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.process import PYTHON, ServerProcess, base_env
from tests.test_cli_client import _code_from_log

pytestmark = pytest.mark.slow


@dataclass
class Person:
    email: str
    env: dict[str, str]
    api: httpx.Client  # authenticated with the CLI's stored token, base URL = the board

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return cli(*args, env=self.env, stdin=stdin)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self.cli(*args, stdin=stdin)
        assert result.returncode == 0, f"{args}: {result.stderr}"
        assert "Traceback" not in result.stderr
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def create(self, *args: str) -> str:
        key = self.ok("issue", "create", *args).strip()
        assert re.fullmatch(r"ENG-\d+", key), key
        return key


@dataclass
class Team:
    server: ServerProcess
    ann: Person
    bob: Person


def cli(
    *args: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "forgehall", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _login(server: ServerProcess, env: dict[str, str], email: str) -> str:
    """`forgehall login --email`, typing the code from the server log; returns the token."""
    login = subprocess.Popen(
        [PYTHON, "-m", "forgehall", "login", "--server", server.url, "--email", email],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = login.communicate(_code_from_log(server, email) + "\n", timeout=30)
    assert login.returncode == 0, err
    stored = Path(env["XDG_CONFIG_HOME"]) / "forgehall" / "credentials.json"
    token: str = json.loads(stored.read_text())["token"]
    return token


def _invitation_token(server: ServerProcess, email: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.output().splitlines():
            if "mail.not_configured" in line and email in line:
                match = re.search(r"/invitations/(fh_inv_\w+)", line)
                if match:
                    return match.group(1)
        time.sleep(0.05)
    raise AssertionError("no invitation in the server log:\n" + server.output())


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    tmp = tmp_path_factory.mktemp("board")
    ann_env = base_env(tmp, XDG_CONFIG_HOME=str(tmp / "ann"))
    bob_env = {**ann_env, "XDG_CONFIG_HOME": str(tmp / "bob")}
    with ServerProcess(tmp, env=dict(ann_env)) as server:
        server.wait_ready()
        board = f"{server.url}/api/v1/workspaces/team"
        ann_token = _login(server, ann_env, "ann@example.com")
        created = cli("workspace", "create", "team", "--key-prefix", "ENG", env=ann_env)
        assert created.returncode == 0, created.stderr
        bob_token = _login(server, bob_env, "bob@example.com")
        invited = cli("member", "invite", "bob@example.com", env=ann_env)
        assert invited.returncode == 0, invited.stderr
        accepted = httpx.post(
            f"{server.url}/api/v1/invitations/"
            f"{_invitation_token(server, 'bob@example.com')}/accept",
            headers={"authorization": f"Bearer {bob_token}"},
        )
        assert accepted.status_code == 200, accepted.text
        used = cli("workspace", "use", "team", env=bob_env)
        assert used.returncode == 0, used.stderr
        with (
            httpx.Client(base_url=board, headers={"authorization": f"Bearer {ann_token}"}) as a,
            httpx.Client(base_url=board, headers={"authorization": f"Bearer {bob_token}"}) as b,
        ):
            for name in ("bug", "ui", "batch"):
                assert a.post("/labels", json={"name": name}).status_code == 201
            yield Team(
                server,
                Person("ann@example.com", ann_env, a),
                Person("bob@example.com", bob_env, b),
            )
        assert server.stop() == 0


def _keys(rows: list[dict[str, Any]]) -> list[str]:
    return [row["key"] for row in rows]


def test_create_list_search_show(team: Team, tmp_path: Path) -> None:
    ann = team.ann
    description = tmp_path / "description.md"
    description.write_text("The redirect after login drops the `next` parameter.\n")
    key = ann.create(
        "Fix [login] redirect",
        "--description-file",
        str(description),
        "--label",
        "bug",
        "--label",
        "UI",
        "--assignee",
        "me",
        "--priority",
        "high",
        "--due",
        "2031-01-15",
    )
    other = ann.create("Write the onboarding guide", "--status", "backlog", "--priority", "low")

    shown = ann.json("issue", "show", key)
    issue = shown["issue"]
    assert issue["title"] == "Fix [login] redirect"
    assert issue["description"].startswith("The redirect after login")
    assert issue["status"]["name"] == "Todo"
    assert issue["priority"] == "high"
    assert issue["due_date"] == "2031-01-15"
    assert issue["assignee"]["kind"] == "member"
    labels = {label["id"]: label["name"] for label in ann.api.get("/labels").json()}
    assert sorted(labels[i] for i in issue["label_ids"]) == ["bug", "ui"]
    assert shown["comments"] == []
    assert ann.json("issue", "show", other)["issue"]["status"]["name"] == "Backlog"

    assert key in _keys(ann.json("issue", "list", "--label", "bug", "--assignee", "me"))
    assert other not in _keys(ann.json("issue", "list", "--label", "bug"))
    assert _keys(ann.json("issue", "list", "--status", "Backlog", "--priority", "low")) == [other]
    by_category = _keys(ann.json("issue", "list", "--category", "backlog"))
    assert other in by_category
    assert key not in by_category
    assert key not in _keys(ann.json("issue", "list", "--assignee", "bob@example.com"))
    assert other in _keys(ann.json("issue", "list", "--assignee", "none"))

    table = ann.ok("issue", "list", "--label", "bug")
    assert key in table
    assert "Fix [login] redirect" in table, "titles are not read as Rich markup"
    assert "ann@example.com" in table
    assert "Todo" in table

    assert _keys(ann.json("issue", "search", "onboarding")) == [other]
    assert _keys(ann.json("issue", "search", "REDIRECT", "--label", "bug")) == [key]
    assert _keys(ann.json("issue", "search", "onboarding", "--category", "done")) == []

    readable = ann.ok("issue", "show", key)
    for text in (key, "Fix [login] redirect", "Todo", "high", "bug, ui", "ann@example.com"):
        assert text in readable
    assert "drops the `next` parameter" in readable

    missing = ann.cli("issue", "create", "Nope", "--label", "nosuch")
    assert missing.returncode == 1
    assert missing.stderr.startswith("forgehall: error: unknown label 'nosuch'")
    assert "batch, bug, ui" in missing.stderr or "bug" in missing.stderr


def test_all_follows_the_pages(team: Team) -> None:
    ann = team.ann
    created = [ann.create(f"Batch item {n}", "--label", "batch") for n in range(5)]
    first = ann.cli("issue", "list", "--label", "batch", "--limit", "2", "--sort", "number")
    assert first.returncode == 0, first.stderr
    assert "--all" in first.stderr, "a truncated list says so"
    one_page = ann.json("issue", "list", "--label", "batch", "--limit", "2", "--sort", "number")
    assert _keys(one_page) == created[:2]
    every = ann.json(
        "issue", "list", "--label", "batch", "--limit", "2", "--sort", "number", "--all"
    )
    assert _keys(every) == created
    newest_first = ann.json(
        "issue", "search", "batch item", "--limit", "2", "--sort", "-number", "--all"
    )
    assert _keys(newest_first) == created[::-1]


def test_update_assign_close(team: Team) -> None:
    ann = team.ann
    key = ann.create("Tidy the settings page", "--label", "ui")
    parent = ann.create("Settings epic")
    out = ann.ok(
        "issue",
        "update",
        key,
        "--title",
        "Tidy the settings page layout",
        "--priority",
        "medium",
        "--label",
        "bug",
        "--parent",
        parent,
        "--due",
        "2031-02-01",
        "--status",
        "in progress",
    )
    assert out.startswith(f"updated {key} (revision ")
    issue = ann.json("issue", "show", key)["issue"]
    assert issue["title"] == "Tidy the settings page layout"
    assert issue["priority"] == "medium"
    assert issue["parent"] == parent
    assert issue["due_date"] == "2031-02-01"
    assert issue["status"]["name"] == "In Progress"
    labels = {label["name"]: label["id"] for label in ann.api.get("/labels").json()}
    assert issue["label_ids"] == [labels["bug"]]

    # Someone else changes the issue through the API; the CLI reads the new revision.
    revision = issue["revision"]
    changed = ann.api.patch(f"/issues/{key}", json={"revision": revision, "priority": "urgent"})
    assert changed.status_code == 200
    ann.ok("issue", "update", key, "--no-labels", "--parent", "none", "--due", "none")
    issue = ann.json("issue", "show", key)["issue"]
    assert issue["priority"] == "urgent", "only the fields given are sent"
    assert (issue["label_ids"], issue["parent"], issue["due_date"]) == ([], None, None)
    assert issue["revision"] == revision + 2
    # A write carrying the revision read before that change is refused.
    stale = ann.api.patch(f"/issues/{key}", json={"revision": revision, "title": "x"})
    assert stale.status_code == 409
    assert "changed since revision" in stale.json()["detail"]

    assert ann.ok("issue", "assign", key, "bob@example.com").strip() == (
        f"{key} is assigned to bob@example.com"
    )
    assert key in _keys(team.bob.json("issue", "list", "--assignee", "me"))
    assert ann.ok("issue", "assign", key, "none").strip() == f"{key} is unassigned"
    assert ann.json("issue", "show", key)["issue"]["assignee"] is None
    ann.ok("issue", "assign", key, "me")
    assert key in _keys(ann.json("issue", "list", "--assignee", "me"))
    unknown = ann.cli("issue", "assign", key, "carol@example.com")
    assert unknown.returncode == 1
    assert "carol@example.com is not a member of team" in unknown.stderr
    assert "bob@example.com" in unknown.stderr
    agent = ann.cli("issue", "assign", key, "agent:no-such-agent")
    assert agent.returncode == 1
    assert "agent no-such-agent is not an agent of this workspace" in agent.stderr

    assert ann.ok("issue", "close", key).strip() == f"{key} is now Done"
    assert key in _keys(ann.json("issue", "list", "--category", "done"))
    assert ann.ok("issue", "close", key, "--cancel").strip() == f"{key} is now Cancelled"
    assert ann.json("issue", "show", key)["issue"]["status"]["category"] == "cancelled"


class _RacingProxy:
    """Forwards to the server; just before forwarding a PATCH it runs ``before_patch``
    (another writer getting in between the CLI's read and its write)."""

    def __init__(self, target: str, before_patch: Callable[[], None]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                if self.command == "PATCH":
                    before_patch()
                length = int(self.headers.get("content-length") or 0)
                upstream = httpx.request(
                    self.command,
                    target + self.path,
                    content=self.rfile.read(length) if length else None,
                    headers={
                        k: v
                        for k, v in self.headers.items()
                        if k.lower() in ("authorization", "content-type")
                    },
                )
                self.send_response(upstream.status_code)
                self.send_header("content-type", upstream.headers.get("content-type", ""))
                self.send_header("content-length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            do_GET = do_PATCH = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_update_refused_when_the_issue_changed_in_between(team: Team) -> None:
    ann = team.ann
    key = ann.create("Contended issue")

    def someone_else_writes() -> None:
        current = ann.api.get(f"/issues/{key}").json()
        ann.api.patch(f"/issues/{key}", json={"revision": current["revision"], "title": "Theirs"})

    proxy = _RacingProxy(team.server.url, someone_else_writes)
    try:
        raced = cli(
            "issue",
            "update",
            key,
            "--title",
            "Mine",
            env={**ann.env, "FORGEHALL_SERVER_URL": proxy.url},
        )
    finally:
        proxy.close()
    assert raced.returncode == 1
    assert raced.stderr.count("\n") == 1
    assert raced.stderr.startswith(f"forgehall: error: 409: issue {key} changed since revision")
    assert ann.json("issue", "show", key)["issue"]["title"] == "Theirs"


def test_comments_mentions_and_inbox(team: Team) -> None:
    ann, bob = team.ann, team.bob
    key = ann.create("Review the schema")
    before = bob.json("inbox")["unread"]
    out = ann.ok("issue", "comment", key, "@bob can you review this?")
    comment_id = re.search(r"comment (\S+)\)", out).group(1)  # type: ignore[union-attr]
    ann.ok("issue", "comment", key, "-", "--reply-to", comment_id, stdin="Details:\n- one\n")

    shown = ann.json("issue", "show", key)
    bodies = [(c["body"], c["parent_id"]) for c in shown["comments"]]
    assert bodies == [("@bob can you review this?", None), ("Details:\n- one", comment_id)]
    readable = ann.ok("issue", "show", key)
    assert "Comments (2)" in readable
    assert f"in reply to {comment_id}" in readable

    inbox = bob.json("inbox", "--unread")
    mentions = [n for n in inbox["notifications"] if n["kind"] == "mentioned"]
    assert len(mentions) == 1
    assert mentions[0]["issue_key"] == key
    assert key in mentions[0]["summary"]
    assert inbox["unread"] == before + 1
    table = bob.ok("inbox")
    assert "mentioned" in table
    assert key in table
    assert f"{before + 1} unread" in table

    cleared = bob.ok("inbox", "--read", mentions[0]["id"])
    assert f"{before} unread" in cleared
    assert bob.json("inbox", "--unread")["notifications"] == [
        n for n in bob.json("inbox", "--unread")["notifications"] if n["id"] != mentions[0]["id"]
    ]
    bob.ok("inbox", "--archive", mentions[0]["id"])
    assert mentions[0]["id"] in [n["id"] for n in bob.json("inbox", "--archived")["notifications"]]
    assert mentions[0]["id"] not in [n["id"] for n in bob.json("inbox")["notifications"]]
    unknown = bob.cli("inbox", "--read", "no-such-notification")
    assert unknown.returncode == 1
    assert (
        unknown.stderr == "forgehall: error: 404: notification no-such-notification was not found\n"
    )


def test_block_and_unblock(team: Team) -> None:
    ann = team.ann
    blocker = ann.create("Migrate the database")
    blocked = ann.create("Ship the new schema", "--status", "In Progress")
    assert ann.ok("issue", "block", blocked, "--by", blocker).strip() == (
        f"{blocked} is blocked by {blocker}"
    )
    issue = ann.json("issue", "show", blocked)["issue"]
    assert issue["status"]["name"] == "Blocked"
    assert issue["blocked_by"] == [blocker]
    assert ann.json("issue", "show", blocker)["issue"]["blocks"] == [blocked]
    assert "Blocked by: " + blocker in " ".join(ann.ok("issue", "show", blocked).split())

    ann.ok("issue", "close", blocker)
    assert ann.json("issue", "show", blocked)["issue"]["status"]["name"] == "In Progress"

    other = ann.create("Another blocker")
    ann.ok("issue", "block", blocked, "--by", other)
    assert ann.json("issue", "show", blocked)["issue"]["status"]["name"] == "Blocked"
    assert ann.ok("issue", "unblock", blocked, "--by", other).strip() == (
        f"{blocked} is no longer blocked by {other}"
    )
    issue = ann.json("issue", "show", blocked)["issue"]
    assert issue["status"]["name"] == "In Progress"
    assert issue["blocked_by"] == [blocker]

    cycle = ann.cli("issue", "block", other, "--by", other)
    assert cycle.returncode == 1
    assert cycle.stderr == "forgehall: error: 422: an issue cannot block itself\n"


def test_errors_are_one_line(team: Team) -> None:
    ann = team.ann
    for args in (("issue", "show", "ENG-9999"), ("issue", "update", "ENG-9999", "--title", "x")):
        result = ann.cli(*args)
        assert result.returncode == 1
        assert result.stderr == "forgehall: error: 404: issue ENG-9999 was not found\n"
    key = ann.create("Some issue")
    status = ann.cli("issue", "update", key, "--status", "Shipped")
    assert status.returncode == 1
    assert status.stderr == (
        "forgehall: error: unknown status 'Shipped'; the statuses of team are: Backlog, Todo, "
        "In Progress, In Review, Done, Blocked, Cancelled\n"
    )
    for args, message in (
        (("issue", "update", key), "nothing to change"),
        (("issue", "update", key, "--due", "next week"), "'next week' is not a date"),
        (("issue", "create", "x", "--priority", "asap"), "unknown priority 'asap'"),
        (("issue", "list", "--category", "doing"), "unknown category 'doing'"),
        (("issue", "list", "--sort", "title"), "422: unknown sort 'title'"),
        (("issue", "create", "x", "--assignee", "bob"), "must be me, none, an email"),
        (("issue", "create", " "), "title"),
        (("issue", "comment", key, "   "), "the comment is empty"),
        (("issue", "list", "-w", "elsewhere"), "404"),
    ):
        result = ann.cli(*args)
        assert result.returncode == 1, args
        assert result.stderr.startswith("forgehall: error: "), (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1, (args, result.stderr)
    logged_out = cli("issue", "list", env={**ann.env, "XDG_CONFIG_HOME": "/nonexistent"})
    assert logged_out.returncode == 1
    assert "not logged in" in logged_out.stderr
