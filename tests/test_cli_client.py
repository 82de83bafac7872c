"""The client CLI against a real server process: login by email code, tokens,
workspaces, members — and the operator's first-run link."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.process import PYTHON, ServerProcess, base_env, run_cli

pytestmark = pytest.mark.slow


def _code_from_log(server: ServerProcess, email: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.output().splitlines():
            if "mail.not_configured" in line and email in line:
                match = re.search(r"login code is (\d{6})", line)
                if match:
                    return match.group(1)
        time.sleep(0.05)
    raise AssertionError("no login code in the server log:\n" + server.output())


def test_cli_session(tmp_path: Path) -> None:
    env = base_env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "config"))
    with ServerProcess(tmp_path, env=dict(env)) as server:
        server.wait_ready()
        link = run_cli("admin", "bootstrap", env=env)
        assert link.returncode == 0, link.stderr
        assert re.fullmatch(r"http://localhost:\d+/setup/fh_boot_\w+\n", link.stdout)

        login = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "forgehall",
                "login",
                "--server",
                server.url,
                "--email",
                "ann@example.com",
            ],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        code = _code_from_log(server, "ann@example.com")
        out, err = login.communicate(code + "\n", timeout=30)
        assert login.returncode == 0, err
        assert "Logged in to" in out
        assert "ann@example.com" in out
        stored = tmp_path / "config" / "forgehall" / "credentials.json"
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        assert stat.S_IMODE(stored.parent.stat().st_mode) == 0o700

        who = run_cli("whoami", "--json", env=env)
        assert json.loads(who.stdout)["user"]["email"] == "ann@example.com"

        created = run_cli("workspace", "create", "team", "--key-prefix", "TM", env=env)
        assert created.returncode == 0, created.stderr
        listed = json.loads(run_cli("workspace", "list", "--json", env=env).stdout)
        assert [(w["slug"], w["role"]) for w in listed] == [("team", "OWNER")]

        invited = run_cli("member", "invite", "bob@example.com", "--role", "ADMIN", env=env)
        assert "invited bob@example.com as ADMIN" in invited.stdout
        members = json.loads(run_cli("member", "list", "--json", env=env).stdout)
        assert [m["email"] for m in members] == ["ann@example.com"]

        minted = run_cli("token", "create", "ci", env=env)
        ci_token = minted.stdout.strip()
        assert ci_token.startswith("fh_pat_")
        tokens = json.loads(run_cli("token", "list", "--json", env=env).stdout)
        assert {t["name"] for t in tokens} >= {"ci"}
        assert ci_token not in json.dumps(tokens)

        missing = run_cli("workspace", "use", "nope", env=env)
        assert missing.returncode == 1
        assert missing.stderr.startswith("forgehall: error: 404:")
        assert "Traceback" not in missing.stderr

        out_ = run_cli("logout", env=env)
        assert out_.returncode == 0
        assert not stored.exists()
        after = run_cli("whoami", env=env)
        assert after.returncode == 1
        assert "not logged in" in after.stderr

        headless = run_cli("login", "--server", server.url, "--token", ci_token, env=env)
        assert headless.returncode == 0, headless.stderr
        assert "ann@example.com" in headless.stdout
        bad = run_cli("login", "--server", server.url, "--token", "fh_pat_" + "x" * 43, env=env)
        assert bad.returncode == 1
        assert "401" in bad.stderr

        again = run_cli("admin", "bootstrap", env=env)
        assert again.returncode == 0, "no admin yet: the link may be printed again"
        assert server.stop() == 0


def test_browser_login_with_localhost_callback(tmp_path: Path) -> None:
    """`forgehall login` prints (or opens) the sign-in URL; the test plays the browser."""
    env = base_env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "config"))
    with ServerProcess(tmp_path, env=dict(env)) as server:
        server.wait_ready()
        origin = f"http://localhost:{server.port}"
        cli = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "forgehall",
                "login",
                "--server",
                origin,
                "--no-open",
                "--timeout",
                "60",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert cli.stderr is not None
        line = ""
        while "/auth/cli/authorize" not in line:
            line = cli.stderr.readline()
            assert line, "the CLI exited without printing the sign-in URL"
        authorize = line.strip()
        with httpx.Client(follow_redirects=False, timeout=10) as browser:
            to_login = browser.get(authorize)
            assert to_login.status_code == 303
            login_page = browser.get(origin + to_login.headers["location"])
            assert 'name="email"' in login_page.text
            next_path = re.search(r'name="next" value="([^"]+)"', login_page.text)
            assert next_path
            next_value = next_path.group(1).replace("&amp;", "&")
            code_page = browser.post(
                origin + "/login", data={"email": "cli@example.com", "next": next_value}
            )
            assert 'name="code"' in code_page.text
            wrong = browser.post(
                origin + "/login/verify",
                data={"email": "cli@example.com", "code": "000000", "next": next_value},
            )
            assert wrong.status_code == 400
            assert 'role="alert"' in wrong.text
            assert "cli@example.com" in wrong.text, "what the user typed is kept"
            signed_in = browser.post(
                origin + "/login/verify",
                data={
                    "email": "cli@example.com",
                    "code": _code_from_log(server, "cli@example.com"),
                    "next": next_value,
                },
            )
            assert signed_in.status_code == 303
            prompt = browser.get(origin + signed_in.headers["location"])
            assert "Authorize the command line?" in prompt.text
            form = dict(re.findall(r'name="(callback|state|name)" value="([^"]*)"', prompt.text))
            forged = browser.post(
                origin + "/auth/cli/authorize",
                data=form,
                headers={"origin": "https://evil.example"},
            )
            assert forged.status_code == 403, "cross-site form posts are refused"
            granted = browser.post(
                origin + "/auth/cli/authorize", data=form, headers={"origin": origin}
            )
            assert granted.status_code == 303
            callback = granted.headers["location"]
            assert callback.startswith("http://127.0.0.1:")
            assert browser.get(callback).status_code == 200
        out, err = cli.communicate(timeout=30)
        assert cli.returncode == 0, err
        assert "Logged in to" in out
        assert "cli@example.com" in out
        who = run_cli("whoami", env=env)
        assert who.stdout.startswith("cli@example.com")
        replay = httpx.post(
            origin + "/auth/cli/exchange",
            json={
                "code": re.search(r"code=([^&]+)", callback).group(1),  # type: ignore[union-attr]
                "name": "again",
            },
        )
        assert replay.status_code == 400, "a login code works once"
        assert server.stop() == 0


def test_cli_authorize_refuses_non_loopback_callbacks(tmp_path: Path) -> None:
    with ServerProcess(tmp_path) as server:
        server.wait_ready()
        for callback in (
            "https://evil.example/cb",
            "http://127.0.0.1/cb",
            "http://user:pw@127.0.0.1:9/cb",
        ):
            response = httpx.get(
                server.url + "/auth/cli/authorize", params={"callback": callback, "state": "s"}
            )
            assert response.status_code == 400, callback
        assert server.stop() == 0
