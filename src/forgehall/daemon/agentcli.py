"""The daemon's use of the CLI adapters: which row runs an agent, with which argv.

The adapters (:mod:`forgehall.daemon.adapters`) are data and parsers; this module joins
them with a claimed agent (its provider, model, extra args, custom command) and this
machine's overrides (``FORGEHALL_<PROVIDER>_PATH`` / ``_MODEL`` / ``_ARGS``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from forgehall.agents.schemas import ClaimedAgent
from forgehall.daemon.adapters import session_for
from forgehall.daemon.adapters.base import Invocation, Provider, Session
from forgehall.daemon.adapters.providers import (
    PROVIDERS,
    build_invocation,
    detect,
    overrides,
    provider_for_custom,
    resolve_binary,
)

CUSTOM = "custom"


class AgentCliMissing(Exception):
    """The agent's CLI is not installed (or not executable) on this machine."""


@dataclass(frozen=True)
class ProviderInfo:
    name: str
    path: str | None
    version: str | None
    overrides: dict[str, str]


def resolve_provider(agent: ClaimedAgent) -> Provider | None:
    if agent.provider == CUSTOM:
        if agent.custom_command is None:
            return None
        return provider_for_custom(agent.custom_command.command, agent.custom_command.parser)
    return PROVIDERS.get(agent.provider)


def model_for(provider: Provider, agent: ClaimedAgent, environ: Mapping[str, str]) -> str | None:
    _, machine_model, _ = overrides(provider.name, environ)
    return agent.model or machine_model or None


def build_agent_invocation(
    provider: Provider,
    agent: ClaimedAgent,
    *,
    prompt: str,
    workdir: str,
    resume: str | None,
    environ: Mapping[str, str] | None = None,
) -> Invocation:
    env = os.environ if environ is None else environ
    binary = resolve_binary(provider, env)
    if binary is None:
        raise AgentCliMissing(
            f"{provider.binary} was not found on this machine's PATH (or is not executable); "
            f"install it or set FORGEHALL_{provider.name.upper()}_PATH"
        )
    _, _, machine_args = (
        overrides(provider.name, env) if provider.name != CUSTOM else (None, None, [])
    )
    return build_invocation(
        provider,
        binary=binary,
        prompt=prompt,
        model=model_for(provider, agent, env),
        resume=resume,
        extra_args=[*machine_args, *agent.extra_args],
        workdir=workdir,
    )


def start_session(provider: Provider, agent: ClaimedAgent) -> Session:
    return session_for(provider.parser, model=model_for(provider, agent, os.environ))


def detect_providers(environ: Mapping[str, str], *, custom: bool) -> dict[str, str]:
    """provider -> version, as the runtime advertises them."""
    found = {name: cli.version for name, cli in detect(environ).items()}
    if custom:
        found[CUSTOM] = "custom commands"
    return found


def describe_providers(environ: Mapping[str, str]) -> list[ProviderInfo]:
    """Every known provider with what this machine has of it (for ``daemon providers``)."""
    detected = detect(environ)
    rows = []
    for name in PROVIDERS:
        try:
            path, model, args = overrides(name, environ)
        except ValueError as exc:
            rows.append(ProviderInfo(name, None, None, {"error": str(exc)}))
            continue
        set_overrides = {
            key: value
            for key, value in (("path", path), ("model", model), ("args", " ".join(args)))
            if value
        }
        cli = detected.get(name)
        rows.append(
            ProviderInfo(
                name, cli.path if cli else None, cli.version if cli else None, set_overrides
            )
        )
    return rows
