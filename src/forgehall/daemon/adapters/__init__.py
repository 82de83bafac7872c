"""CLI adapters: the provider table (:mod:`.providers`) and one parser family per output
format. :func:`session_for` picks the parser session for a provider's ``parser`` name."""

from __future__ import annotations

from collections.abc import Callable

from forgehall.daemon.adapters.acp import AcpSession
from forgehall.daemon.adapters.base import Session
from forgehall.daemon.adapters.claude_stream import StreamJsonSession
from forgehall.daemon.adapters.codex_json import CodexJsonSession
from forgehall.daemon.adapters.copilot_json import CopilotJsonSession
from forgehall.daemon.adapters.opencode_json import OpencodeJsonSession
from forgehall.daemon.adapters.plain import PlainSession

FAMILIES: dict[str, Callable[[str | None], Session]] = {
    "stream-json": StreamJsonSession,
    "codex-json": CodexJsonSession,
    "opencode-json": OpencodeJsonSession,
    "copilot-json": CopilotJsonSession,
    "acp": AcpSession,
    "plain": PlainSession,
}


def session_for(parser_family: str, *, model: str | None = None) -> Session:
    """A fresh parser session for one run.

    Args:
        parser_family: a :class:`~forgehall.daemon.adapters.base.Provider`'s ``parser``.
        model: the model the run asked for, used to label token usage when the CLI's
            output does not name the model (Codex, OpenCode, Copilot, ACP).

    Raises:
        KeyError: for an unknown family (a bug in the table, or a custom command's parser
            the server should have refused).
    """
    try:
        factory = FAMILIES[parser_family]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise KeyError(f"unknown parser family {parser_family!r}; known: {known}") from None
    return factory(model)
