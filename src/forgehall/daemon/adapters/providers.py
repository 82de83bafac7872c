"""The provider table: each coding CLI the daemon can run, as one row of data.

A new CLI is a new :class:`Provider` row (plus a parser family if its output is new).
Every row asks for a headless, streaming run that acts without asking for permission:
agents run with the daemon user's permissions (see the daemon docs; wrap the binary in a
container through ``FORGEHALL_<PROVIDER>_PATH`` to confine it).

Argument order built by :func:`build_invocation` (it matters for Codex, whose resume is a
subcommand): ``binary, fixed args, model flag, workdir flag, extra args, resume, prompt``.

Machine overrides (read by :func:`overrides`): ``FORGEHALL_<PROVIDER>_PATH`` (the binary),
``FORGEHALL_<PROVIDER>_MODEL`` (the model when the agent names none) and
``FORGEHALL_<PROVIDER>_ARGS`` (shell-split, appended to the fixed args).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import structlog

from forgehall.daemon.adapters.base import Invocation, Provider

log = structlog.get_logger("forgehall.daemon.adapters")

VERSION_TIMEOUT_SECONDS = 5.0
CUSTOM_PARSERS = ("plain", "stream-json")

PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider(
            name="claude",
            binary="claude",
            args=(
                "-p",
                "--output-format",
                "stream-json",
                "--verbose",
                "--permission-mode",
                "bypassPermissions",
            ),
            parser="stream-json",
            prompt="stdin",  # argv caps one argument at 128 KiB; prompts can be longer
            model_flag="--model",
            resume_flag="--resume",
            brief_file="CLAUDE.md",
        ),
        Provider(
            name="codex",
            binary="codex",
            args=(
                "exec",
                "--json",
                "--dangerously-bypass-approvals-and-sandbox",
                "--skip-git-repo-check",
            ),
            parser="codex-json",
            prompt="stdin",  # `codex exec` reads the prompt from stdin when none is given
            model_flag="--model",
            resume_flag="resume",  # a subcommand: `codex exec … resume <id>`
            workdir_flag="--cd",
        ),
        Provider(
            name="cursor",
            binary="cursor-agent",
            args=("-p", "--output-format", "stream-json", "--force"),
            parser="stream-json",
            model_flag="--model",
            resume_flag="--resume",
            workdir_flag="--workspace",
        ),
        Provider(
            name="opencode",
            binary="opencode",
            args=("run", "--format", "json"),
            parser="opencode-json",
            model_flag="--model",  # provider/model, e.g. anthropic/claude-sonnet-4-5
            resume_flag="--session",
            workdir_flag="--dir",
        ),
        Provider(
            name="copilot",
            binary="copilot",
            args=("--output-format", "json", "--allow-all-tools"),
            parser="copilot-json",
            prompt_flag="-p",
            model_flag="--model",
            resume_flag="--resume",
        ),
        Provider(
            name="gemini",
            binary="gemini",
            args=("-o", "stream-json", "--yolo"),
            parser="stream-json",
            prompt_flag="-p",
            model_flag="-m",
            resume_flag="--resume",
            brief_file="GEMINI.md",
        ),
        Provider(
            name="qwen",
            binary="qwen",
            args=("--output-format", "stream-json", "--yolo"),
            parser="stream-json",
            prompt_flag="-p",
            model_flag="--model",
            resume_flag="--resume",
            brief_file="QWEN.md",
        ),
        Provider(
            # ACP agents differ in binary (Kimi, Hermes, Kiro, Qoder, …): point
            # FORGEHALL_ACP_PATH at the one this machine runs. Resuming goes through the
            # protocol (session/load), not a flag; so does the model (the agent's own).
            name="acp",
            binary="acp-agent",
            args=("acp",),
            parser="acp",
            prompt="protocol",
        ),
    )
}


@dataclass(frozen=True)
class DetectedCli:
    path: str
    version: str


def provider_for_custom(
    command: Sequence[str], parser: Literal["plain", "stream-json"] | str
) -> Provider:
    """The row for a workspace-defined custom command: its argv as binary and fixed args,
    read by ``parser``; the prompt arrives on stdin (then stdin is closed).

    Raises:
        ValueError: an empty command or a parser other than ``plain`` / ``stream-json``.
    """
    if not command or not command[0]:
        raise ValueError("a custom command needs at least the program to run")
    if parser not in CUSTOM_PARSERS:
        raise ValueError(f"a custom command's parser must be plain or stream-json, not {parser!r}")
    return Provider(
        name="custom",
        binary=command[0],
        args=tuple(command[1:]),
        parser=parser,
        prompt="stdin",
    )


def build_invocation(
    provider: Provider,
    *,
    binary: str,
    prompt: str,
    model: str | None = None,
    resume: str | None = None,
    extra_args: Sequence[str] = (),
    workdir: str | None = None,
) -> Invocation:
    """The argv (and stdin) for one headless run of ``provider``.

    Args:
        binary: the resolved executable (:func:`resolve_binary`).
        prompt: the whole prompt; placed per ``provider.prompt``.
        model: empty or None: the CLI's default (no model flag).
        resume: a CLI session id to continue; ignored by CLIs without a resume flag.
        extra_args: the agent's ``extra_args`` and the machine's ``_ARGS`` override.
        workdir: passed with ``workdir_flag`` for CLIs that take the directory as a flag
            (the daemon also starts the process in it).
    """
    argv = [binary, *provider.args]
    if model and provider.model_flag:
        argv += [provider.model_flag, model]
    if workdir and provider.workdir_flag:
        argv += [provider.workdir_flag, workdir]
    argv += list(extra_args)
    if resume and provider.resume_flag:
        argv += [provider.resume_flag, resume]
    if provider.prompt == "stdin":
        return Invocation(argv=argv, stdin=prompt)
    if provider.prompt == "argument":
        # A prompt starting with "-" (a Markdown list) would be read as an option.
        text = "\n" + prompt if prompt.startswith("-") else prompt
        argv += [provider.prompt_flag, text] if provider.prompt_flag else [text]
    return Invocation(argv=argv)


def _variable(provider_name: str, suffix: str) -> str:
    stem = "".join(c if c.isalnum() else "_" for c in provider_name.upper())
    return f"FORGEHALL_{stem}_{suffix}"


def overrides(
    provider_name: str, environ: Mapping[str, str]
) -> tuple[str | None, str | None, list[str]]:
    """This machine's ``(path, model, args)`` overrides for a provider (unset: None, [] ).

    Raises:
        ValueError: ``FORGEHALL_<PROVIDER>_ARGS`` is not valid shell quoting.
    """
    path = environ.get(_variable(provider_name, "PATH")) or None
    model = environ.get(_variable(provider_name, "MODEL")) or None
    raw_args = environ.get(_variable(provider_name, "ARGS"), "")
    try:
        args = shlex.split(raw_args)
    except ValueError as exc:
        raise ValueError(
            f"{_variable(provider_name, 'ARGS')} is not valid shell quoting ({exc}): {raw_args!r}"
        ) from None
    return path, model, args


def resolve_binary(provider: Provider, environ: Mapping[str, str]) -> str | None:
    """The executable to run: the ``_PATH`` override (a path, or a name looked up on PATH)
    or the row's binary on ``environ``'s PATH; None when missing or not executable."""
    path, _, _ = overrides(provider.name, environ)
    candidate = shutil.which(path or provider.binary, path=environ.get("PATH", os.defpath))
    if candidate is None or not os.path.isfile(candidate):
        return None
    return candidate if os.access(candidate, os.X_OK) else None


def _version(provider: Provider, binary: str, environ: Mapping[str, str]) -> str | None:
    try:
        done = subprocess.run(  # noqa: S603 - argv from the table, no shell
            [binary, *provider.version_args],
            env=dict(environ),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=VERSION_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("provider.version_failed", provider=provider.name, error=str(exc))
        return None
    if done.returncode != 0:
        log.info("provider.version_failed", provider=provider.name, exit_code=done.returncode)
        return None
    lines = [line.strip() for line in (done.stdout or done.stderr).splitlines() if line.strip()]
    return (lines[0] if lines else "unknown")[:100]  # the protocol caps versions at 100


def detect(
    environ: Mapping[str, str], providers: Mapping[str, Provider] = PROVIDERS
) -> dict[str, DetectedCli]:
    """The CLIs this machine can run: found on PATH (or by ``_PATH`` override), executable,
    and answering ``--version`` within a few seconds. The others are left out, so the
    runtime does not advertise them."""

    def probe(provider: Provider) -> tuple[str, DetectedCli | None]:
        try:
            binary = resolve_binary(provider, environ)
        except ValueError as exc:  # a malformed _ARGS override
            log.warning("provider.misconfigured", provider=provider.name, error=str(exc))
            return provider.name, None
        if binary is None:
            return provider.name, None
        version = _version(provider, binary, environ)
        return provider.name, None if version is None else DetectedCli(binary, version)

    with ThreadPoolExecutor(max_workers=max(len(providers), 1)) as pool:
        found = dict(pool.map(probe, providers.values()))
    return {name: cli for name, cli in found.items() if cli is not None}
