"""The board commands (`forgehall issue …`, `forgehall inbox`) against a real server.

One server for the module; two people (ann owns workspace ``team`` with prefix ENG, bob
is invited and accepts). Every command runs as a subprocess, as a user would run it.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.process import PYTHON, ServerProcess, base_env
from tests.test_cli_client import _code_from_log

pytestmark = pytest.mark.slow
T = TypeVar("T")


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

    def many(self, *calls: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
        return at_once(*[partial(self.cli, *args) for args in calls])

    def many_json(self, *calls: tuple[str, ...]) -> list[Any]:
        results = self.many(*[(*args, "--json") for args in calls])
        for args, result in zip(calls, results, strict=True):
            assert result.returncode == 0, f"{args}: {result.stderr}"
        return [json.loads(r.stdout) for r in results]

    def issue(self, key: str) -> dict[str, Any]:
        """Straight from the API, to check what a command did."""
        response = self.api.get(f"/issues/{key}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def quick_issue(self, title: str, **fields: Any) -> str:
        """An issue made through the API, where creating it is not what is tested."""
        response = self.api.post("/issues", json={"title": title, **fields})
        assert response.status_code == 201, response.text
        key: str = response.json()["key"]
        return key

    def label_ids(self) -> dict[str, str]:
        return {label["name"]: label["id"] for label in self.api.get("/labels").json()}


@dataclass
class Team:
    server: ServerProcess
    ann: Person
    bob: Person


def at_once(*calls: Callable[[], T]) -> list[T]:
    """Run independent commands concurrently (each is a process start; this keeps the
    module fast); results in order."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda call: call(), calls))


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
    _, err = login.communicate(_code_from_log(server, email) + "\n", timeout=30)
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


@contextlib.contextmanager
def team_of_two(tmp: Path) -> Iterator[Team]:
    """A server; ann (OWNER) creates workspace ``team`` (prefix ENG) through the CLI and
    invites bob (MEMBER), who accepts and makes it his current workspace."""
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
            yield Team(
                server,
                Person("ann@example.com", ann_env, a),
                Person("bob@example.com", bob_env, b),
            )
        assert server.stop() == 0


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    with team_of_two(tmp_path_factory.mktemp("board")) as team:
        for name in ("bug", "ui", "batch"):
            assert team.ann.api.post("/labels", json={"name": name}).status_code == 201
        yield team


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

    (
        shown,
        other_shown,
        bug_and_mine,
        bugs,
        backlog_low,
        backlog,
        bobs,
        unassigned,
        onboarding,
        redirect,
        onboarding_done,
    ) = ann.many_json(
        ("issue", "show", key),
        ("issue", "show", other),
        ("issue", "list", "--label", "bug", "--assignee", "me"),
        ("issue", "list", "--label", "bug"),
        ("issue", "list", "--status", "Backlog", "--priority", "low"),
        ("issue", "list", "--category", "backlog"),
        ("issue", "list", "--assignee", "bob@example.com"),
        ("issue", "list", "--assignee", "none"),
        ("issue", "search", "onboarding"),
        ("issue", "search", "REDIRECT", "--label", "bug"),
        ("issue", "search", "onboarding", "--category", "done"),
    )
    issue = shown["issue"]
    assert issue["title"] == "Fix [login] redirect"
    assert issue["description"].startswith("The redirect after login")
    assert issue["status"]["name"] == "Todo"
    assert issue["priority"] == "high"
    assert issue["due_date"] == "2031-01-15"
    assert issue["assignee"]["kind"] == "member"
    labels = ann.label_ids()
    assert issue["label_ids"] == sorted([labels["bug"], labels["ui"]])
    assert shown["comments"] == []
    assert other_shown["issue"]["status"]["name"] == "Backlog"

    assert key in _keys(bug_and_mine)
    assert other not in _keys(bugs)
    assert _keys(backlog_low) == [other]
    assert other in _keys(backlog)
    assert key not in _keys(backlog)
    assert key not in _keys(bobs)
    assert other in _keys(unassigned)
    assert _keys(onboarding) == [other]
    assert _keys(redirect) == [key]
    assert onboarding_done == []

    table, readable, missing = ann.many(
        ("issue", "list", "--label", "bug"),
        ("issue", "show", key),
        ("issue", "create", "Nope", "--label", "nosuch"),
    )
    assert key in table.stdout
    assert "Fix [login] redirect" in table.stdout, "titles are not read as Rich markup"
    assert "ann@example.com" in table.stdout
    assert "Todo" in table.stdout
    for text in (key, "Fix [login] redirect", "Todo", "high", "bug, ui", "ann@example.com"):
        assert text in readable.stdout
    assert "drops the `next` parameter" in readable.stdout
    assert "Comments (0)" in readable.stdout
    assert missing.returncode == 1
    assert missing.stderr == (
        "forgehall: error: unknown label 'nosuch'; the labels of team are: batch, bug, ui\n"
    )


def test_all_follows_the_pages(team: Team) -> None:
    ann = team.ann
    batch = ann.label_ids()["batch"]
    created = [ann.quick_issue(f"Batch item {n}", label_ids=[batch]) for n in range(5)]
    page = ("issue", "list", "--label", "batch", "--limit", "2", "--sort", "number")
    first, one_page, every, newest_first = ann.many(
        page,
        (*page, "--json"),
        (*page, "--all", "--json"),
        ("issue", "search", "batch item", "--limit", "2", "--sort", "-number", "--all", "--json"),
    )
    assert first.returncode == 0, first.stderr
    assert created[0] in first.stdout
    assert created[2] not in first.stdout
    assert "--all" in first.stderr, "a truncated list says so"
    assert _keys(json.loads(one_page.stdout)) == created[:2]
    assert _keys(json.loads(every.stdout)) == created
    assert "--all" not in every.stderr
    assert _keys(json.loads(newest_first.stdout)) == created[::-1]


def test_update_assign_close(team: Team) -> None:
    ann, bob = team.ann, team.bob
    labels = ann.label_ids()
    key = ann.quick_issue("Tidy the settings page", label_ids=[labels["ui"]])
    parent = ann.quick_issue("Settings epic")
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
    issue = ann.issue(key)
    assert out == f"updated {key} (revision {issue['revision']})\n"
    assert issue["title"] == "Tidy the settings page layout"
    assert issue["priority"] == "medium"
    assert issue["parent"] == parent
    assert issue["due_date"] == "2031-02-01"
    assert issue["status"]["name"] == "In Progress"
    assert issue["label_ids"] == [labels["bug"]]

    # Someone else changes the issue through the API; the CLI reads the new revision.
    revision = issue["revision"]
    changed = ann.api.patch(f"/issues/{key}", json={"revision": revision, "priority": "urgent"})
    assert changed.status_code == 200
    ann.ok("issue", "update", key, "--no-labels", "--parent", "none", "--due", "none")
    issue = ann.issue(key)
    assert issue["priority"] == "urgent", "only the fields given are sent"
    assert (issue["label_ids"], issue["parent"], issue["due_date"]) == ([], None, None)
    assert issue["revision"] == revision + 2
    # A write carrying the revision read before that change is refused.
    stale = ann.api.patch(f"/issues/{key}", json={"revision": revision, "title": "x"})
    assert stale.status_code == 409
    assert "changed since revision" in stale.json()["detail"]

    assigned = ann.ok("issue", "assign", key, "bob@example.com")
    assert assigned == f"{key} is assigned to bob@example.com\n"
    assert key in _keys(bob.json("issue", "list", "--assignee", "me"))
    assert ann.ok("issue", "assign", key, "none") == f"{key} is unassigned\n"
    assert ann.issue(key)["assignee"] is None
    assert ann.ok("issue", "assign", key, "me") == f"{key} is assigned to ann@example.com\n"
    unknown, agent = ann.many(
        ("issue", "assign", key, "carol@example.com"), ("issue", "assign", key, "agent:nope")
    )
    assert unknown.returncode == 1
    assert unknown.stderr == (
        "forgehall: error: carol@example.com is not a member of team; its members are: "
        "ann@example.com, bob@example.com\n"
    )
    assert agent.returncode == 1
    assert agent.stderr == (
        "forgehall: error: unknown agent 'nope'; the agents of team are: (none yet)\n"
    )

    assert ann.ok("issue", "close", key) == f"{key} is now Done\n"
    assert ann.issue(key)["status"]["category"] == "done"
    assert ann.ok("issue", "close", key, "--cancel") == f"{key} is now Cancelled\n"
    assert ann.issue(key)["status"]["category"] == "cancelled"


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
    key = ann.quick_issue("Contended issue")

    def someone_else_writes() -> None:
        current = ann.issue(key)
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
    assert raced.stderr == (
        f"forgehall: error: 409: issue {key} changed since revision 1 (now 2); "
        "reload and try again\n"
    )
    assert ann.issue(key)["title"] == "Theirs"


def test_comments_mentions_and_inbox(team: Team) -> None:
    ann, bob = team.ann, team.bob
    key = ann.quick_issue("Review the schema")
    before = bob.api.get("/inbox/unread-count").json()["unread"]
    out = ann.ok("issue", "comment", key, "@bob can you review this?")
    match = re.fullmatch(rf"commented on {key} \(comment (\w+)\)\n", out)
    assert match, out
    comment_id = match.group(1)
    ann.ok("issue", "comment", key, "-", "--reply-to", comment_id, stdin="Details:\n- one\n")

    shown, readable, inbox, table = at_once(
        lambda: ann.json("issue", "show", key),
        lambda: ann.ok("issue", "show", key),
        lambda: bob.json("inbox", "--unread"),
        lambda: bob.ok("inbox"),
    )
    bodies = [(c["body"], c["parent_id"]) for c in shown["comments"]]
    assert bodies == [("@bob can you review this?", None), ("Details:\n- one", comment_id)]
    assert "Comments (2)" in readable
    assert f"in reply to {comment_id}" in readable
    assert "(edited)" not in readable

    # bob is mentioned, which makes him a follower: the reply notifies him as well.
    new = [n for n in inbox["notifications"] if n["issue_key"] == key]
    assert sorted(n["kind"] for n in new) == ["commented", "mentioned"]
    mention = next(n for n in new if n["kind"] == "mentioned")
    assert mention["summary"] == f"You were mentioned on {key}"
    assert inbox["unread"] == before + 2
    assert "mentioned" in table
    assert key in table
    assert table.endswith(f"\n{before + 2} unread\n")

    assert bob.ok("inbox", "--read", mention["id"]).endswith(f"\n{before + 1} unread\n")
    assert bob.api.get("/inbox/unread-count").json()["unread"] == before + 1
    bob.ok("inbox", "--archive", mention["id"])
    archived, current, unknown = at_once(
        lambda: bob.json("inbox", "--archived"),
        lambda: bob.json("inbox"),
        lambda: bob.cli("inbox", "--read", "no-such-notification"),
    )
    assert mention["id"] in [n["id"] for n in archived["notifications"]]
    assert mention["id"] not in [n["id"] for n in current["notifications"]]
    assert unknown.returncode == 1
    assert unknown.stderr == (
        "forgehall: error: 404: notification no-such-notification was not found\n"
    )


def test_block_and_unblock(team: Team) -> None:
    ann = team.ann
    blocker = ann.quick_issue("Migrate the database")
    in_progress = next(
        s["id"] for s in ann.api.get("/statuses").json() if s["name"] == "In Progress"
    )
    blocked = ann.quick_issue("Ship the new schema", status_id=in_progress)
    assert ann.ok("issue", "block", blocked, "--by", blocker) == (
        f"{blocked} is blocked by {blocker}\n"
    )
    shown, readable = ann.many(("issue", "show", blocked, "--json"), ("issue", "show", blocked))
    issue = json.loads(shown.stdout)["issue"]
    assert issue["status"]["name"] == "Blocked"
    assert issue["blocked_by"] == [blocker]
    assert ann.issue(blocker)["blocks"] == [blocked]
    assert f"Blocked by: {blocker}" in readable.stdout

    ann.ok("issue", "close", blocker)
    assert ann.json("issue", "show", blocked)["issue"]["status"]["name"] == "In Progress"

    other = ann.quick_issue("Another blocker")
    ann.ok("issue", "block", blocked, "--by", other)
    assert ann.issue(blocked)["status"]["name"] == "Blocked"
    assert ann.ok("issue", "unblock", blocked, "--by", other) == (
        f"{blocked} is no longer blocked by {other}\n"
    )
    issue = ann.issue(blocked)
    assert issue["status"]["name"] == "In Progress"
    assert issue["blocked_by"] == [blocker]

    itself, not_blocking = ann.many(
        ("issue", "block", other, "--by", other), ("issue", "unblock", blocked, "--by", other)
    )
    assert itself.returncode == 1
    assert itself.stderr == "forgehall: error: 422: an issue cannot block itself\n"
    assert not_blocking.returncode == 1
    assert not_blocking.stderr == f"forgehall: error: 404: {other} does not block {blocked}\n"


def test_errors_are_one_line(team: Team) -> None:
    ann = team.ann
    key = ann.quick_issue("Some issue")
    cases: list[tuple[tuple[str, ...], str]] = [
        (("issue", "show", "ENG-9999"), "404: issue ENG-9999 was not found"),
        (("issue", "update", "ENG-9999", "--title", "x"), "404: issue ENG-9999 was not found"),
        (
            ("issue", "update", key, "--status", "Shipped"),
            "unknown status 'Shipped'; the statuses of team are: Backlog, Todo, In Progress, "
            "In Review, Done, Blocked, Cancelled",
        ),
        (("issue", "update", key), "nothing to change"),
        (("issue", "update", key, "--due", "next week"), "'next week' is not a date"),
        (("issue", "create", "x", "--priority", "asap"), "unknown priority 'asap'"),
        (("issue", "create", "x", "--parent", "ENG-9999"), "422: parent ENG-9999 is not"),
        (("issue", "list", "--category", "doing"), "unknown category 'doing'"),
        (("issue", "list", "--sort", "title"), "422: unknown sort 'title'"),
        (("issue", "create", "x", "--assignee", "bob"), "assignee 'bob' must be me, none"),
        (("issue", "create", " "), "the title is empty"),
        (("issue", "comment", key, "hi", "--reply-to", "nope"), "422: comment nope is not"),
        (("issue", "list", "-w", "elsewhere"), "404"),
    ]
    results = ann.many(*[args for args, _ in cases])
    for (args, message), result in zip(cases, results, strict=True):
        assert result.returncode == 1, args
        assert result.stderr.startswith(f"forgehall: error: {message}"), (args, result.stderr)
        assert result.stderr.count("\n") == 1, (args, result.stderr)
        assert result.stdout == "", args
    logged_out = cli("issue", "list", env={**ann.env, "XDG_CONFIG_HOME": "/nonexistent"})
    assert logged_out.returncode == 1
    assert "not logged in" in logged_out.stderr
