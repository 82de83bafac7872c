"""Agent, runtime, daemon-token, repository and task commands against a real server.

One server for the module; ann owns workspace ``team`` (prefix ENG), bob is a member.
Every command runs as a subprocess, as a user would run it. Tasks are moved through
their states by a daemon scripted over the HTTP daemon protocol (no real daemon).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.process import PYTHON, ServerProcess
from tests.test_cli_issues import Person, Team, at_once, cli, team_of_two

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    with team_of_two(tmp_path_factory.mktemp("agents")) as team:
        yield team


class Daemon:
    """What a runtime daemon sends, scripted over HTTP with a daemon token."""

    def __init__(self, server: ServerProcess, token: str, daemon_id: str) -> None:
        self.http = httpx.Client(
            base_url=f"{server.url}/api/v1/daemon",
            headers={"authorization": f"Bearer {token}"},
            timeout=30,
        )
        self.daemon_id = daemon_id
        self.runtime_id = ""

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(path, json=body)
        assert response.status_code == 200, (path, response.text)
        data: dict[str, Any] = response.json()
        return data

    def register(self, providers: dict[str, str] | None = None) -> Daemon:
        registered = self.post(
            "/runtimes",
            {
                "daemon_id": self.daemon_id,
                "machine": f"host-{self.daemon_id}",
                "providers": providers or {"claude": "2.0.1"},
                "capacity": 2,
            },
        )
        self.runtime_id = registered["runtime_id"]
        return self

    def claim(self) -> dict[str, Any]:
        """Claim exactly one task (waiting briefly for it to become available)."""
        claimed = self.post(f"/runtimes/{self.runtime_id}/claim", {"limit": 1, "wait": 5})
        assert len(claimed["tasks"]) == 1, claimed
        task: dict[str, Any] = claimed["tasks"][0]
        return task

    def report(self, task: dict[str, Any], what: str, **body: Any) -> dict[str, Any]:
        return self.post(
            f"/tasks/{task['id']}/{what}", {"lease_token": task["lease_token"], **body}
        )

    def say(self, task: dict[str, Any], *messages: tuple[int, str, str]) -> None:
        self.report(
            task,
            "messages",
            messages=[{"seq": s, "kind": k, "content": c} for s, k, c in messages],
        )

    def close(self) -> None:
        self.http.close()


def daemon_token(ann: Person, name: str = "box") -> str:
    """`forgehall daemon token create`, checking it prints the token alone."""
    result = ann.cli("daemon", "token", "create", name)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == f"{token}\n"
    assert token.startswith("fh_dmn_"), token
    return token


def agent_named(person: Person, name: str, **fields: Any) -> dict[str, Any]:
    """An agent made through the API, where creating it is not what is tested."""
    response = person.api.post("/agents", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def fail_line(result: subprocess.CompletedProcess[str], message: str) -> None:
    """A refusal: exit 1, one error line starting with ``message``, nothing on stdout."""
    assert result.returncode == 1, (result.args, result.stdout, result.stderr)
    assert result.stderr.startswith(f"forgehall: error: {message}"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


# --- agents -------------------------------------------------------------------------------------


def test_agent_create_show_list_update_archive_restore(team: Team, tmp_path: Path) -> None:
    ann = team.ann
    runtime = Daemon(team.server, daemon_token(ann), "pool-box").register()
    instructions = tmp_path / "instructions.md"
    instructions.write_text("Keep changes small.\nRun the tests first.\n")
    created = cli(
        "agent",
        "create",
        "reviewer",
        "--provider",
        "codex",
        "--model",
        "gpt-5",
        "--instructions-file",
        str(instructions),
        "--extra-arg=--full-auto",
        "--extra-arg",
        "two words",
        "--env",
        "API_KEY=s3cret-value",
        "--env",
        "FROM_SHELL",
        "--max-concurrent-tasks",
        "2",
        "--runtime",
        "pool-box",
        env={**ann.env, "FROM_SHELL": "from-the-shell"},
    )
    assert created.returncode == 0, created.stderr
    agent_id = created.stdout.strip()
    assert created.stdout == f"{agent_id}\n"
    assert "created agent reviewer (codex" in created.stderr

    shown, by_id, readable, listed, table = at_once(
        lambda: ann.json("agent", "show", "REVIEWER"),
        lambda: ann.json("agent", "show", agent_id),
        lambda: ann.cli("agent", "show", "reviewer"),
        lambda: ann.json("agent", "list"),
        lambda: ann.cli("agent", "list"),
    )
    assert shown == by_id
    assert shown["id"] == agent_id
    assert shown["provider"] == "codex"
    assert shown["model"] == "gpt-5"
    assert shown["instructions"] == "Keep changes small.\nRun the tests first.\n"
    assert shown["extra_args"] == ["--full-auto", "two words"]
    assert shown["env_keys"] == ["API_KEY", "FROM_SHELL"]
    assert shown["max_concurrent_tasks"] == 2
    assert shown["runtime_pool"] == [runtime.runtime_id]
    assert shown["status"] == "offline", "its only runtime offers claude, not codex"
    for output in (readable.stdout, table.stdout, json.dumps(shown), json.dumps(listed)):
        assert "s3cret-value" not in output
        assert "from-the-shell" not in output
    for text in (
        "reviewer  offline",
        "codex",
        "gpt-5",
        "--full-auto 'two words'",
        "API_KEY, FROM_SHELL",
        runtime.runtime_id,
        "Keep changes small.",
    ):
        assert text in readable.stdout, text
    assert agent_id in [a["id"] for a in listed]
    assert "reviewer" in table.stdout
    assert "API_KEY, FROM_SHELL" in table.stdout

    # The env value reaches the daemon that claims the agent's task, decrypted.
    ann.ok("agent", "update", "reviewer", "--provider", "claude")
    issue = ann.api.post("/issues", json={"title": "Env check"}).json()["key"]
    ann.ok("task", "run", issue, "--agent", "reviewer")
    claimed = runtime.claim()
    assert claimed["agent"]["env"] == {"API_KEY": "s3cret-value", "FROM_SHELL": "from-the-shell"}
    runtime.report(claimed, "complete", summary="done")
    runtime.close()

    assert ann.ok(
        "agent",
        "update",
        "reviewer",
        "--name",
        "critic",
        "--no-extra-args",
        "--env",
        "OTHER=1",
        "--any-runtime",
        "--model",
        "",
        "--instructions",
        "Be kind.",
    ) == ("updated agent critic\n")
    changed = ann.json("agent", "show", "critic")
    assert changed["extra_args"] == []
    assert changed["env_keys"] == ["OTHER"], "--env replaces the whole map"
    assert changed["runtime_pool"] == []
    assert changed["model"] == ""
    assert changed["instructions"] == "Be kind."
    assert changed["max_concurrent_tasks"] == 2, "fields not given are left alone"
    ann.ok("agent", "update", "critic", "--no-env")
    assert ann.json("agent", "show", "critic")["env_keys"] == []

    custom = ann.cli(
        "agent",
        "create",
        "homemade",
        "--provider",
        "custom",
        "--custom-command",
        "my-agent --json 'a b'",
        "--parser",
        "stream-json",
    )
    assert custom.returncode == 0, custom.stderr
    command = ann.json("agent", "show", "homemade")["custom_command"]
    assert command == {"command": ["my-agent", "--json", "a b"], "parser": "stream-json"}
    ann.ok("agent", "update", "homemade", "--provider", "gemini")
    assert ann.json("agent", "show", "homemade")["custom_command"] is None

    assert ann.ok("agent", "archive", "critic") == "archived agent critic\n"
    active, archived = at_once(
        lambda: ann.json("agent", "list"), lambda: ann.json("agent", "list", "--archived")
    )
    assert "critic" not in [a["name"] for a in active]
    assert [a["name"] for a in archived] == ["critic"]
    assert ann.json("agent", "show", "critic")["archived_at"] is not None
    assert ann.ok("agent", "restore", "critic") == "restored agent critic\n"
    assert "critic" in [a["name"] for a in ann.json("agent", "list")]


def test_agent_refusals(team: Team) -> None:
    ann, bob = team.ann, team.bob
    agent_named(ann, "taken")
    cases = [
        (("agent", "show", "nope"), "404: agent nope was not found"),
        (("agent", "update", "nope", "--model", "x"), "404: agent nope was not found"),
        (("agent", "archive", "nope"), "404: agent nope was not found"),
        (
            ("agent", "create", "TAKEN"),
            "409: an agent named 'taken' already exists in this workspace",
        ),
        (
            ("agent", "create", "x1", "--provider", "nope"),
            "422: unknown provider 'nope'; use one of claude, codex",
        ),
        (("agent", "create", "bad name"), "422: the request is invalid: body.name"),
        (("agent", "create", "x2", "--env", "lower=1"), "422: the request is invalid: body.env"),
        (
            ("agent", "create", "x3", "--max-concurrent-tasks", "0"),
            "422: the request is invalid: body.max_concurrent_tasks",
        ),
        (
            ("agent", "create", "x4", "--provider", "custom"),
            "422: provider custom needs a custom_command",
        ),
        (
            ("agent", "create", "x5", "--env", "NOT_SET_ANYWHERE"),
            "--env NOT_SET_ANYWHERE: NOT_SET_ANYWHERE is not set in your environment",
        ),
        (("agent", "create", "x6", "--runtime", "ghost"), "unknown runtime 'ghost'"),
        (("agent", "create", "x7", "--parser", "plain"), "--parser goes with --custom-command"),
        (("agent", "update", "taken"), "nothing to change"),
        (("agent", "update", "taken", "--env", "A=1", "--no-env"), "give --env or its clearing"),
        (("agent", "list", "-w", "elsewhere"), "404"),
    ]
    results = ann.many(*[args for args, _ in cases])
    for (_, message), result in zip(cases, results, strict=True):
        fail_line(result, message)
    names = [a["name"] for a in ann.api.get("/agents").json()]
    assert not [n for n in names if re.fullmatch(r"x\d", n)], "refusals create nothing"

    member = bob.cli("agent", "create", "bobs-agent")
    assert member.returncode == 1
    assert member.stderr.startswith("forgehall: error: 403: ")
    assert [a["name"] for a in bob.json("agent", "list")] == names, "members may read"


# --- runtimes, daemon tokens, repositories ------------------------------------------------------


def test_daemon_token_and_runtimes(team: Team) -> None:
    ann, bob = team.ann, team.bob
    result = ann.cli("daemon", "token", "create", "build-box", "--expires-in-days", "30")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert "shown only this once" in result.stderr
    assert "workspace team" in result.stderr
    assert token not in result.stderr
    daemon = Daemon(team.server, token, "build-box-1").register({"claude": "2.0.1", "codex": ""})

    listed, shown, by_id, table, readable = at_once(
        lambda: bob.json("runtime", "list"),
        lambda: bob.json("runtime", "show", "build-box-1"),
        lambda: bob.json("runtime", "show", daemon.runtime_id),
        lambda: bob.cli("runtime", "list"),
        lambda: bob.cli("runtime", "show", "build-box-1"),
    )
    daemon.close()
    mine = next(r for r in listed if r["daemon_id"] == "build-box-1")
    assert mine == shown == by_id
    assert mine["online"] is True
    assert mine["providers"] == {"claude": "2.0.1", "codex": ""}
    assert mine["capacity"] == 2
    assert mine["machine"] == "host-build-box-1"
    assert "build-box-1" in table.stdout
    assert "claude 2.0.1, codex" in table.stdout
    assert "build-box-1  online" in readable.stdout
    assert "host-build-box-1" in readable.stdout

    unknown, refused, invalid = at_once(
        lambda: bob.cli("runtime", "show", "ghost"),
        lambda: bob.cli("daemon", "token", "create", "bobs-box"),
        lambda: ann.cli("daemon", "token", "create", "x", "--expires-in-days", "0"),
    )
    fail_line(unknown, "unknown runtime 'ghost'; the runtimes of team are: ")
    assert "build-box-1" in unknown.stderr
    fail_line(refused, "403: ")
    fail_line(invalid, "422: the request is invalid: body.expires_in_days")


def test_repositories(team: Team) -> None:
    ann, bob = team.ann, team.bob
    assert ann.ok("repo", "add", "api", "https://git.example.com/acme/api.git") == (
        "added repository api (https://git.example.com/acme/api.git, branch main)\n"
    )
    ann.ok("repo", "add", "web", "git@git.example.com:acme/web.git", "--default-branch", "trunk")
    listed, table = at_once(lambda: bob.json("repo", "list"), lambda: bob.cli("repo", "list"))
    assert [(r["name"], r["default_branch"]) for r in listed] == [("api", "main"), ("web", "trunk")]
    assert "git@git.example.com:acme/web.git" in table.stdout

    duplicate, unknown, not_admin = at_once(
        lambda: ann.cli("repo", "add", "api", "https://git.example.com/other.git"),
        lambda: ann.cli("repo", "remove", "nope"),
        lambda: bob.cli("repo", "remove", "api"),
    )
    fail_line(duplicate, "409: ")
    fail_line(unknown, "unknown repository 'nope'; the repositories of team are: api, web")
    fail_line(not_admin, "403: ")

    assert ann.ok("repo", "remove", "web") == "removed repository web\n"
    web_id = next(r["id"] for r in listed if r["name"] == "web")
    assert web_id not in ann.ok("repo", "list", "--json")
    api_id = listed[0]["id"]
    assert ann.ok("repo", "remove", api_id) == "removed repository api\n"
    assert ann.ok("repo", "list") == "no repositories; add one with `forgehall repo add NAME URL`\n"


# --- tasks --------------------------------------------------------------------------------------


def test_assign_by_agent_name_and_a_task_through_its_life(team: Team) -> None:
    ann, bob = team.ann, team.bob
    agent = agent_named(ann, "Claude-Main")
    daemon = Daemon(team.server, daemon_token(ann), "life-box").register()
    key = ann.api.post("/issues", json={"title": "Fix the login redirect"}).json()["key"]

    assert ann.ok("issue", "assign", key, "agent:claude-main") == (
        f"{key} is assigned to agent:Claude-Main\n"
    )
    assert ann.api.get(f"/issues/{key}").json()["assignee"] == {"kind": "agent", "id": agent["id"]}
    shown, filtered = at_once(
        lambda: ann.ok("issue", "show", key),
        lambda: ann.json("issue", "list", "--assignee", f"agent:{agent['id']}"),
    )
    assert "Assignee: agent:Claude-Main" in shown
    assert [i["key"] for i in filtered] == [key]

    queued = bob.json("task", "list", "--issue", key)
    assert [(t["status"], t["trigger"], t["agent_name"]) for t in queued] == [
        ("queued", "assigned", "Claude-Main")
    ]
    task_id = queued[0]["id"]
    not_yet, queued_show = at_once(
        lambda: bob.cli("task", "logs", task_id), lambda: bob.cli("task", "show", task_id)
    )
    assert not_yet.returncode == 0
    assert (not_yet.stdout, not_yet.stderr) == ("", "no messages yet (task queued)\n")
    assert "Attempt: not started" in queued_show.stdout

    task = daemon.claim()
    assert task["id"] == task_id
    daemon.report(task, "start", session_id="sess-1")
    daemon.say(
        task,
        (1, "thinking", "The redirect drops next."),
        (2, "tool_use", '{"name": "Read", "input": {"path": "login.py"}}'),
        (3, "tool_result", "def login():\n    return redirect('/')"),
    )
    daemon.report(task, "progress", summary="Reading the login flow")
    follower = subprocess.Popen(
        [PYTHON, "-m", "forgehall", "task", "logs", task_id, "--follow", "--interval", "0.1"],
        env=bob.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    running, logs, logs_json = at_once(
        lambda: bob.cli("task", "show", task_id),
        lambda: bob.ok("task", "logs", task_id),
        lambda: bob.json("task", "logs", task_id),
    )
    for text in (
        f"Task {task_id}  running",
        f"Issue: {key}",
        "Agent: Claude-Main",
        "Trigger: assigned",
        "Attempt: 1 of 3",
        f"Runtime: {daemon.runtime_id}",
        "Progress: Reading the login flow",
        "Session: sess-1",
        "Usage: none reported",
    ):
        assert text in running.stdout, text
    assert logs == (
        "thinking    The redirect drops next.\n"
        'tool_use    {"name": "Read", "input": {"path": "login.py"}}\n'
        "tool_result def login():\n"
        "                return redirect('/')\n"
    )
    assert [(m["seq"], m["kind"]) for m in logs_json] == [
        (1, "thinking"),
        (2, "tool_use"),
        (3, "tool_result"),
    ]

    time.sleep(0.5)
    daemon.say(task, (4, "text", "Fixed: keep next through the redirect."))
    daemon.report(
        task,
        "usage",
        usage=[
            {"model": "m-big", "input_tokens": 1200, "output_tokens": 300, "cost_usd": 0.25},
            {"model": "m-small", "input_tokens": 50, "output_tokens": 5, "cost_usd": 0.0125},
        ],
    )
    daemon.report(task, "complete", summary="Kept `next` through the redirect.")
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    assert out == logs + "text        Fixed: keep next through the redirect.\n"
    assert err == f"task {task_id} completed\n"

    done, readable = at_once(
        lambda: bob.json("task", "show", task_id), lambda: bob.cli("task", "show", task_id)
    )
    assert done["status"] == "completed"
    assert done["result"] == "Kept `next` through the redirect."
    assert done["cost_usd"] == pytest.approx(0.2625)
    assert [(u["model"], u["input_tokens"], u["cost_source"]) for u in done["usage"]] == [
        ("m-big", 1200, "provider"),
        ("m-small", 50, "provider"),
    ]
    for text in ("completed", "Result", "Kept `next` through the redirect.", "m-big", "1200"):
        assert text in readable.stdout, text
    assert "$0.2625" in readable.stdout
    assert "$0.2500" in readable.stdout
    daemon.close()

    # Run again: a new task for the same agent and issue, then cancelled while queued.
    rerun = bob.cli("task", "rerun", task_id)
    assert rerun.returncode == 0, rerun.stderr
    new_id = rerun.stdout.strip()
    assert new_id != task_id
    assert f"Claude-Main will work on {key}: task {new_id} is queued" in rerun.stderr
    assert bob.ok("task", "cancel", new_id) == f"cancelled task {new_id}\n"
    again = bob.cli("task", "cancel", new_id)
    fail_line(again, "409: ")
    by_agent, cancelled, completed_json, table = at_once(
        lambda: bob.json("task", "list", "--agent", "claude-main"),
        lambda: bob.json("task", "list", "--status", "cancelled", "--issue", key),
        lambda: bob.json("task", "list", "--status", "completed", "--status", "failed"),
        lambda: bob.cli("task", "list", "--issue", key),
    )
    assert [t["id"] for t in by_agent] == [new_id, task_id], "newest first"
    assert [t["id"] for t in cancelled] == [new_id]
    assert task_id in [t["id"] for t in completed_json]
    assert new_id not in [t["id"] for t in completed_json]
    for text in (task_id, new_id, "completed", "cancelled", "Claude-Main", "1/3", "$0.2625"):
        assert text in table.stdout, text
    assert bob.json("task", "list", "--limit", "1")[0]["id"] == new_id


def test_run_fail_and_cancel_a_running_task(team: Team) -> None:
    ann, bob = team.ann, team.bob
    agent_named(ann, "runner")
    daemon = Daemon(team.server, daemon_token(ann), "run-box").register()
    key = ann.api.post("/issues", json={"title": "Flaky test"}).json()["key"]

    unassigned = bob.cli("task", "run", key)
    fail_line(unassigned, f"422: {key} is not assigned to an agent; name the agent to run")
    started = bob.cli("task", "run", key, "--agent", "runner")
    assert started.returncode == 0, started.stderr
    task_id = started.stdout.strip()
    task = daemon.claim()
    assert task["id"] == task_id
    daemon.report(task, "start")
    coalesced = bob.cli("task", "run", key, "--agent", "RUNNER")
    assert coalesced.returncode == 0, coalesced.stderr
    assert coalesced.stdout == f"{task_id}\n"
    assert "already working on" in coalesced.stderr
    assert "runs again when this run ends" in coalesced.stderr

    asked = bob.ok("task", "cancel", task_id)
    assert asked == f"asked the runtime to stop task {task_id} (running)\n"
    assert "running (cancelling)" in bob.ok("task", "list", "--issue", key)
    daemon.report(task, "fail", failure_class="cancelled", detail="stopped on request")
    assert bob.json("task", "show", task_id)["status"] == "cancelled"

    # A final failure shows its class and detail.
    second = bob.ok("task", "run", key, "--agent", "runner").strip()
    claimed = daemon.claim()
    assert claimed["id"] == second
    daemon.report(claimed, "start")
    daemon.say(claimed, (1, "error", "segfault in the agent CLI"))
    daemon.report(claimed, "fail", failure_class="agent_error", detail="exit code 139")
    daemon.close()
    failed, readable, logs, follow = at_once(
        lambda: bob.json("task", "list", "--status", "failed", "--issue", key),
        lambda: bob.cli("task", "show", second),
        lambda: bob.ok("task", "logs", second),
        lambda: bob.cli("task", "logs", second, "--follow", "--json"),
    )
    assert [(t["id"], t["failure_class"]) for t in failed] == [(second, "agent_error")]
    assert f"Task {second}  failed" in readable.stdout
    assert "Failure: agent_error: exit code 139" in readable.stdout
    assert logs == "error       segfault in the agent CLI\n"
    assert follow.returncode == 0, follow.stderr
    assert [json.loads(line)["content"] for line in follow.stdout.splitlines()] == [
        "segfault in the agent CLI"
    ]
    assert follow.stderr == f"task {second} failed (agent_error: exit code 139)\n"


def test_task_refusals(team: Team) -> None:
    ann, bob = team.ann, team.bob
    agent_named(ann, "spare")
    archived = agent_named(ann, "retired")
    ann.ok("agent", "archive", "retired")
    key = ann.api.post("/issues", json={"title": "Nothing runs here"}).json()["key"]
    queued = bob.ok("task", "run", key, "--agent", "spare").strip()
    cases = [
        (("task", "show", "nope"), "404: task nope was not found"),
        (("task", "logs", "nope"), "404: task nope was not found"),
        (("task", "cancel", "nope"), "404: task nope was not found"),
        (("task", "rerun", "nope"), "404: task nope was not found"),
        (("task", "logs", queued, "--attempt", "1"), f"task {queued} has no attempt 1"),
        (("task", "list", "--status", "done"), "unknown task status 'done'; use one of queued"),
        (("task", "list", "--agent", "nope"), "unknown agent 'nope'; the agents of team are: "),
        (("task", "list", "--limit", "0"), "--limit must be between 1 and 200"),
        (("task", "list", "--issue", "ENG-9999"), "404: issue ENG-9999 was not found"),
        (("task", "run", "ENG-9999", "--agent", "spare"), "404: issue ENG-9999 was not found"),
        (("task", "run", key, "--agent", "ghost"), "unknown agent 'ghost'"),
        (("task", "run", key, "--agent", "retired"), "agent retired is archived; restore it"),
        (("issue", "assign", key, "agent:retired"), "agent retired is archived; restore it"),
        (("issue", "assign", key, "agent:ghost"), "unknown agent 'ghost'; the agents of team"),
    ]
    results = bob.many(*[args for args, _ in cases])
    for (_, message), result in zip(cases, results, strict=True):
        fail_line(result, message)
    # An archived agent can still be named in filters.
    assert bob.json("task", "list", "--agent", archived["id"]) == []
    assert bob.ok("task", "cancel", queued) == f"cancelled task {queued}\n"


def test_follow_continues_into_the_next_attempt(team: Team) -> None:
    ann, bob = team.ann, team.bob
    agent_named(ann, "retrier")
    daemon = Daemon(team.server, daemon_token(ann), "retry-box").register()
    key = ann.api.post("/issues", json={"title": "Network trouble"}).json()["key"]
    task_id = bob.ok("task", "run", key, "--agent", "retrier").strip()
    first = daemon.claim()
    daemon.report(first, "start")
    daemon.say(first, (1, "text", "first try"))
    follower = subprocess.Popen(
        [PYTHON, "-m", "forgehall", "task", "logs", task_id, "-f", "--interval", "0.1"],
        env=bob.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    daemon.report(first, "fail", failure_class="provider_network", detail="connection reset")
    retrying = bob.cli("task", "show", task_id)
    assert "Retry after:" in retrying.stdout
    assert "Failure: provider_network: connection reset" in retrying.stdout
    # The retry waits out its backoff (10 seconds after the first attempt).
    deadline = time.monotonic() + 30
    while True:
        claimed = daemon.post(f"/runtimes/{daemon.runtime_id}/claim", {"limit": 1, "wait": 2})
        if claimed["tasks"]:
            break
        assert time.monotonic() < deadline, "the retry never became available"
    second = claimed["tasks"][0]
    assert (second["id"], second["attempt"]) == (task_id, 2)
    daemon.report(second, "start")
    daemon.say(second, (1, "text", "second try"))
    daemon.report(second, "complete", summary="ok")
    daemon.close()
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    assert out == "text        first try\n--- attempt 2 ---\ntext        second try\n"
    assert err == f"task {task_id} completed\n"
    assert bob.ok("task", "logs", task_id, "--attempt", "1") == "text        first try\n"


def test_client_commands_start_without_the_server_stack() -> None:
    """The CLI reads the API's schemas but never loads SQLAlchemy or FastAPI: every
    command (and every test here) pays for what it imports at start."""
    probe = subprocess.run(
        [
            PYTHON,
            "-c",
            "import sys, forgehall.cli.main; print(sorted(m for m in ('sqlalchemy', "
            "'fastapi', 'forgehall.db', 'forgehall.agents.models') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert probe.stdout == "[]\n"
