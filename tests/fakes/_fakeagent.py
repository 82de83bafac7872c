"""The engine behind the fake agent CLIs in this directory (see README.md).

Each fake (``claude``, ``codex``, …) is a tiny script that describes its CLI as a
:class:`Fake` and calls :func:`run`. Standard library only: the fakes run under whatever
``python3`` is first on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STARTED = time.time()  # as early as the engine can see it: for spawn-latency measurements
STREAMS = Path(__file__).resolve().parent.parent / "daemon" / "streams"
MODES = ("ok", "malformed", "crash", "hang", "long", "huge", "comment", "spawn")
GARBAGE = (
    "this line is not JSON {",
    '{"type": "assistant", "message": {"content": [{"type": "te',
    "[1, 2, 3]",
    '{"type": 42, "message": "not an object", "content": null}',
)


@dataclass
class Fake:
    name: str  # the binary name
    stream: str  # file name under tests/daemon/streams
    required: Sequence[Sequence[str]]  # argv runs that must appear, in order within a run
    prompt: str  # "stdin", "positional", or a flag such as "-p"
    text_event: Callable[[str, str], dict[str, Any]]  # (text, session id) -> one line
    session_id: str  # the id in the recording (replaced by the resumed id)
    model_flag: str | None = "--model"
    resume_flag: str | None = "--resume"
    first_args: Sequence[str] = ()  # argv must start with these (subcommands)
    extra: dict[str, Any] = field(default_factory=dict)


def fail(fake: Fake, text: str, code: int = 2) -> None:
    sys.stderr.write(f"fake {fake.name}: {text}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def emit(line: str) -> None:
    sys.stdout.write(line if line.endswith("\n") else line + "\n")
    sys.stdout.flush()


def emit_event(event: dict[str, Any]) -> None:
    emit(json.dumps(event, separators=(",", ":")))


def value_after(argv: Sequence[str], flag: str | None) -> str | None:
    if flag is None:
        return None
    for index, arg in enumerate(argv[:-1]):
        if arg == flag:
            return argv[index + 1]
    return None


def has_run(argv: Sequence[str], run: Sequence[str]) -> bool:
    size = len(run)
    return any(list(argv[i : i + size]) == list(run) for i in range(len(argv) - size + 1))


def check_argv(fake: Fake, argv: list[str]) -> None:
    if list(argv[: len(fake.first_args)]) != list(fake.first_args):
        fail(fake, f"argv must start with {' '.join(fake.first_args)}: {argv}")
    for run in fake.required:
        if not has_run(argv, run):
            fail(fake, f"not the headless invocation, missing {' '.join(run)!r}: {argv}")


def read_prompt(fake: Fake, argv: list[str]) -> str:
    if fake.prompt == "stdin":
        return sys.stdin.read()
    if fake.prompt == "positional":
        return argv[-1] if argv and not argv[-1].startswith("-") else ""
    return value_after(argv, fake.prompt) or ""


def selected_env() -> dict[str, str]:
    keys = {k.strip() for k in os.environ.get("FAKE_AGENT_ENV_KEYS", "").split(",") if k.strip()}
    chosen: dict[str, str] = {}
    for key, value in sorted(os.environ.items()):
        if key == "FORGEHALL_TOKEN":
            chosen[key] = "<set>"  # never the value
        elif key.startswith(("FORGEHALL_", "FAKE_AGENT_")) or key in keys:
            chosen[key] = value
    return chosen


def record(fake: Fake, argv: list[str], **facts: Any) -> None:
    path = os.environ.get("FAKE_AGENT_LOG")
    if not path:
        return
    entry = {
        "binary": fake.name,
        "pid": os.getpid(),
        "started": STARTED,
        "argv": argv,
        "cwd": os.getcwd(),
        "env": selected_env(),
        **facts,
    }
    line = (json.dumps(entry) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)  # one write per record: lines of concurrent fakes do not mix
    finally:
        os.close(fd)


def recorded_lines(fake: Fake, resume: str | None) -> list[str]:
    lines = [line for line in (STREAMS / fake.stream).read_text().splitlines() if line.strip()]
    if resume:
        lines = [line.replace(fake.session_id, resume) for line in lines]
    return lines


def sleep_forever() -> None:
    while True:
        time.sleep(3600)


def post_comment(fake: Fake) -> None:
    """What a real agent does through the forgehall CLI with its task token."""
    key = os.environ.get("FORGEHALL_ISSUE_KEY")
    if not key:
        fail(fake, "comment mode needs FORGEHALL_ISSUE_KEY", 3)
    forgehall = shutil.which("forgehall")
    base = [forgehall] if forgehall else [sys.executable, "-m", "forgehall.cli.main"]
    body = os.environ.get("FAKE_AGENT_COMMENT", f"Working on it (fake {fake.name}).")
    status = os.environ.get("FAKE_AGENT_STATUS", "In Review")
    for args in (["issue", "comment", key, body], ["issue", "update", key, "--status", status]):
        done = subprocess.run(
            [*base, *args], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
        )
        sys.stderr.write(done.stdout + done.stderr)
        if done.returncode != 0:
            fail(fake, f"`forgehall {' '.join(args[:2])}` failed ({done.returncode})", 3)


def spawn_sleeper() -> None:
    child = subprocess.Popen(  # same process group: a group kill must take it too
        [sys.executable, "-c", "import time; time.sleep(3600)"],
        stdin=subprocess.DEVNULL,
    )
    pidfile = os.environ.get("FAKE_AGENT_PIDFILE")
    if pidfile:
        Path(pidfile).write_text(f"{child.pid}\n")


def replay(fake: Fake, lines: list[str], mode: str, resume: str | None) -> int:
    session = resume or fake.session_id
    if mode == "ok" or mode == "comment":
        for line in lines:
            emit(line)
        return 0
    if mode == "malformed":
        for index, line in enumerate(lines):
            if index < len(GARBAGE):
                emit(GARBAGE[index])
            emit(line)
        return 0
    if mode == "crash":
        for line in lines[: max(len(lines) // 2, 1)]:
            emit(line)
        fail(fake, "simulated crash in the middle of the stream", 1)
    if mode == "hang":
        sleep_forever()
    if mode == "spawn":
        spawn_sleeper()
        for line in lines[: max(len(lines) // 2, 1)]:
            emit(line)
        sleep_forever()
    if mode == "long":
        seconds = float(os.environ.get("FAKE_AGENT_SECONDS", "5"))
        interval = float(os.environ.get("FAKE_AGENT_INTERVAL", "0.5"))
        emit(lines[0])
        deadline, step = time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            step += 1
            emit_event(fake.text_event(f"still working, step {step}", session))
            time.sleep(interval)
        for line in lines[1:]:
            emit(line)
        return 0
    if mode == "huge":
        megabytes = float(os.environ.get("FAKE_AGENT_MB", "8"))
        chunk = "x" * 32_000
        emit(lines[0])
        for step in range(int(megabytes * 1024 * 1024 / len(chunk)) + 1):
            emit_event(fake.text_event(f"{step} {chunk}", session))
        for line in lines[1:]:
            emit(line)
        return 0
    fail(fake, f"unknown FAKE_AGENT_MODE {mode!r}; one of {', '.join(MODES)}")
    return 2


def run(fake: Fake, argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--version" in argv:
        emit(f"{fake.name} 0.0.0-fake (forgehall test double)")
        return 0
    check_argv(fake, argv)
    prompt = read_prompt(fake, argv)
    resume = value_after(argv, fake.resume_flag)  # codex: the `resume <id>` subcommand
    mode = os.environ.get("FAKE_AGENT_MODE", "ok")
    record(
        fake, argv, prompt=prompt, model=value_after(argv, fake.model_flag), resume=resume,
        mode=mode,
    )  # fmt: skip
    if not prompt.strip():
        fail(fake, "no prompt given")
    time.sleep(float(os.environ.get("FAKE_AGENT_DELAY", "0")))  # a slow CLI start
    if mode == "comment":
        post_comment(fake)
    try:
        return replay(fake, recorded_lines(fake, resume), mode, resume)
    except BrokenPipeError:  # the reader went away (killed daemon, `| head`)
        os._exit(1)
