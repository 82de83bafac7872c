"""The provider table, invocations, machine overrides, CLI detection, and the fake CLIs
(tests/fakes) read by the real parsers through real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from forgehall.agents.schemas import PROVIDERS as SERVER_PROVIDERS
from forgehall.daemon.adapters import FAMILIES, session_for
from forgehall.daemon.adapters.base import Message, Session
from forgehall.daemon.adapters.providers import (
    PROVIDERS,
    build_invocation,
    detect,
    overrides,
    provider_for_custom,
    resolve_binary,
)

FAKES = Path(__file__).resolve().parent.parent / "fakes"


def test_table_covers_the_server_providers() -> None:
    assert set(PROVIDERS) | {"custom"} == set(SERVER_PROVIDERS)
    for provider in PROVIDERS.values():
        assert provider.parser in FAMILIES, provider


def test_invocations() -> None:
    claude = build_invocation(
        PROVIDERS["claude"],
        binary="/bin/claude",
        prompt="fix ENG-42",
        model="claude-sonnet-4-5",
        resume="s-1",
        extra_args=["--max-turns", "30"],
        workdir="/w",
    )
    assert claude.argv == [
        "/bin/claude",
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-mode",
        "bypassPermissions",
        "--model",
        "claude-sonnet-4-5",
        "--max-turns",
        "30",
        "--resume",
        "s-1",
    ]
    assert claude.stdin == "fix ENG-42"

    codex = build_invocation(
        PROVIDERS["codex"], binary="codex", prompt="p", model=None, resume="t-1", workdir="/w"
    )
    assert codex.argv[-4:] == ["--cd", "/w", "resume", "t-1"]  # options before the subcommand
    assert codex.stdin == "p"

    cursor = build_invocation(PROVIDERS["cursor"], binary="cursor-agent", prompt="p", workdir="/w")
    assert cursor.argv[-3:] == ["--workspace", "/w", "p"]
    assert cursor.stdin is None

    gemini = build_invocation(PROVIDERS["gemini"], binary="gemini", prompt="p", model="m")
    assert gemini.argv == ["gemini", "-o", "stream-json", "--yolo", "-m", "m", "-p", "p"]

    acp = build_invocation(PROVIDERS["acp"], binary="kimi", prompt="p", model="m", resume="s")
    assert acp.argv == ["kimi", "acp"]  # prompt, model and resume go through the protocol
    assert acp.stdin is None


def test_prompt_starting_with_a_dash_is_not_an_option() -> None:
    copilot = build_invocation(PROVIDERS["copilot"], binary="copilot", prompt="- item")
    assert copilot.argv[-2:] == ["-p", "\n- item"]


def test_custom_command() -> None:
    provider = provider_for_custom(["my-agent", "--json"], "stream-json")
    invocation = build_invocation(provider, binary="/opt/my-agent", prompt="p", model="m")
    assert invocation.argv == ["/opt/my-agent", "--json"]
    assert invocation.stdin == "p"
    with pytest.raises(ValueError, match="plain or stream-json"):
        provider_for_custom(["x"], "acp")
    with pytest.raises(ValueError, match="at least the program"):
        provider_for_custom([], "plain")


def test_overrides() -> None:
    environ = {
        "FORGEHALL_CLAUDE_PATH": "/opt/claude",
        "FORGEHALL_CLAUDE_MODEL": "claude-opus-4-1",
        "FORGEHALL_CLAUDE_ARGS": "--max-turns 30 --append-system-prompt 'be brief'",
    }
    assert overrides("claude", environ) == (
        "/opt/claude",
        "claude-opus-4-1",
        ["--max-turns", "30", "--append-system-prompt", "be brief"],
    )
    assert overrides("codex", environ) == (None, None, [])
    with pytest.raises(ValueError, match="FORGEHALL_CODEX_ARGS is not valid shell quoting"):
        overrides("codex", {"FORGEHALL_CODEX_ARGS": "--x 'open"})


def _script(path: Path, body: str, mode: int = 0o755) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(mode)
    return path


def test_detect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("forgehall.daemon.adapters.providers.VERSION_TIMEOUT_SECONDS", 0.5)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _script(bin_dir / "claude", 'echo "2.0.14 (Claude Code)"')
    _script(bin_dir / "codex", "echo codex-cli 0.46.0", mode=0o644)  # not executable
    _script(bin_dir / "gemini", "echo broken >&2; exit 3")  # --version fails
    _script(bin_dir / "qwen", "sleep 30")  # hangs (killed after the timeout)
    custom = _script(tmp_path / "my-opencode", "echo 0.15.0")
    environ = {"PATH": str(bin_dir), "FORGEHALL_OPENCODE_PATH": str(custom)}
    found = detect(environ)
    assert {name: cli.version for name, cli in found.items()} == {
        "claude": "2.0.14 (Claude Code)",
        "opencode": "0.15.0",
    }
    assert found["claude"].path == str(bin_dir / "claude")
    assert resolve_binary(PROVIDERS["codex"], environ) is None


def test_guard_puts_the_fakes_first() -> None:
    for provider in PROVIDERS.values():
        found = shutil.which(provider.binary)
        assert found is not None
        assert Path(found).parent == FAKES
    assert set(detect(dict(os.environ))) == set(PROVIDERS)


# --- the fakes, read by the real parsers ----------------------------------------------


def run_fake(
    name: str, tmp_path: Path, mode: str = "ok", resume: str | None = None, **env: str
) -> tuple[list[Message], int, Session]:
    provider = PROVIDERS[name]
    invocation = build_invocation(
        provider,
        binary=str(FAKES / provider.binary),
        prompt="Fix ENG-42",
        model="m-1",
        resume=resume,
        workdir=str(tmp_path),
    )
    session = session_for(provider.parser, model="m-1")
    process = subprocess.Popen(
        invocation.argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "FAKE_AGENT_MODE": mode, **env},
    )
    assert process.stdin is not None
    assert process.stdout is not None
    for line in session.start("Fix ENG-42", str(tmp_path), resume):
        process.stdin.write(line + "\n")
    if invocation.stdin is not None:
        process.stdin.write(invocation.stdin)
    process.stdin.flush()
    if provider.prompt != "protocol":
        process.stdin.close()
    messages: list[Message] = []
    for line in process.stdout:
        out, writes = session.feed(line)
        messages += out
        for write in writes:
            process.stdin.write(write + "\n")
            process.stdin.flush()
        if session.done and provider.prompt == "protocol":
            break
    if provider.prompt == "protocol":
        process.stdin.close()
    code = process.wait(timeout=30)
    assert process.stderr is not None
    stderr = process.stderr.read()
    process.stdout.close()
    process.stderr.close()
    assert code in (0, 1), stderr
    return messages + session.finish(code), code, session


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_fake_ok(name: str, tmp_path: Path) -> None:
    log = tmp_path / "agents.jsonl"
    messages, code, session = run_fake(
        name, tmp_path, FAKE_AGENT_LOG=str(log), FORGEHALL_TOKEN="fh_tsk_secret"
    )
    assert code == 0
    assert session.outcome.error is None
    assert session.outcome.session_id
    assert {"text", "tool_use", "tool_result"} <= {m.kind for m in messages}
    errors = [m for m in messages if m.kind == "error"]
    assert len(errors) == (1 if name == "gemini" else 0)  # gemini's recording has a warning
    (entry,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert entry["prompt"].strip() == "Fix ENG-42"
    assert entry["cwd"] == str(tmp_path)
    assert entry["env"]["FORGEHALL_TOKEN"] == "<set>"
    assert "fh_tsk_secret" not in log.read_text()


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_fake_resume_keeps_the_session(name: str, tmp_path: Path) -> None:
    _, code, session = run_fake(name, tmp_path, resume="resumed-session-1")
    assert code == 0
    if PROVIDERS[name].resume_flag or name == "acp":
        assert session.outcome.session_id == "resumed-session-1"


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_fake_crash_and_malformed(name: str, tmp_path: Path) -> None:
    messages, code, session = run_fake(name, tmp_path, mode="crash")
    assert code == 1
    assert messages[-1].kind == "error"
    assert session.outcome.error is not None
    messages, code, session = run_fake(name, tmp_path, mode="malformed")
    assert code == 0
    assert "this line is not JSON {" in [m.content for m in messages if m.kind == "text"]
    assert session.outcome.error is None


def test_fake_rejects_a_wrong_invocation(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(FAKES / "claude"), "-p"], input="x", capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "not the headless invocation" in done.stderr


def test_fake_huge_and_long(tmp_path: Path) -> None:
    messages, code, _ = run_fake("codex", tmp_path, mode="huge", FAKE_AGENT_MB="2")
    assert code == 0
    assert sum(len(m.content) for m in messages) > 2_000_000
    messages, code, _ = run_fake(
        "claude", tmp_path, mode="long", FAKE_AGENT_SECONDS="0.3", FAKE_AGENT_INTERVAL="0.05"
    )
    assert code == 0
    assert any(m.content.startswith("still working") for m in messages)


def test_fake_spawn_writes_the_child_pid(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    process = subprocess.Popen(
        [str(FAKES / "gemini"), "-o", "stream-json", "-p", "x"],
        stdout=subprocess.PIPE,
        env={**os.environ, "FAKE_AGENT_MODE": "spawn", "FAKE_AGENT_PIDFILE": str(pidfile)},
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()  # the first event: the child exists by now
        child = int(pidfile.read_text())
        os.kill(child, 0)  # alive
    finally:
        os.killpg(process.pid, 9)
        process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()
