"""The contract between the daemon and its CLI adapters.

An adapter is data (:class:`Provider`: binary, fixed args, flags, how the prompt is
delivered, which parser family reads the output) plus a parser family (a
:class:`Session` per run) that turns the CLI's stdout lines into protocol messages,
captures the CLI's session id for resumption, and collects token usage per model.

A session may also need to *write* to the CLI (ACP agents speak JSON-RPC over stdio):
:meth:`Session.start` returns the lines to write first, and every :meth:`Session.feed`
may return more lines to write; :attr:`Session.done` tells the daemon the run is over
(close stdin and wait for the exit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

MessageKind = Literal["text", "thinking", "tool_use", "tool_result", "error"]
PromptDelivery = Literal["argument", "stdin", "protocol"]


@dataclass(frozen=True)
class Message:
    kind: MessageKind
    content: str  # plain text, or JSON text for tool_use / tool_result


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float | None = None  # as reported by the CLI; None: priced by the server


@dataclass(frozen=True)
class Provider:
    """One CLI family, as a table row."""

    name: str  # the provider name agents use: claude, codex, …
    binary: str  # looked up on PATH unless FORGEHALL_<NAME>_PATH is set
    args: tuple[str, ...]  # fixed arguments for a headless, streaming run
    parser: str  # the parser family reading stdout
    prompt: PromptDelivery = "argument"  # how the prompt reaches the CLI
    prompt_flag: str | None = None  # e.g. "-p"; None: the prompt is a positional argument
    model_flag: str | None = None  # e.g. "--model"
    resume_flag: str | None = None  # e.g. "--resume"; None: the CLI cannot resume
    workdir_flag: str | None = None  # e.g. "--workspace" for CLIs that take the directory
    version_args: tuple[str, ...] = ("--version",)
    brief_file: str = "AGENTS.md"  # the instructions file the CLI reads natively


@dataclass(frozen=True)
class Invocation:
    argv: list[str]
    stdin: str | None = None  # written once, then stdin is closed (prompt delivery "stdin")


@dataclass
class Outcome:
    """What a finished run leaves behind (filled by the session as it reads)."""

    session_id: str | None = None
    final_text: str | None = None  # the agent's last answer, for the fallback comment
    usage: dict[str, Usage] = field(default_factory=dict)  # model -> totals so far
    error: str | None = None  # a failure the CLI itself reported


class Session(Protocol):
    """Reads one run of a CLI."""

    outcome: Outcome

    @property
    def done(self) -> bool:
        """True once the CLI said the run is over (for protocol-driven CLIs)."""
        ...

    def start(self, prompt: str, workdir: str, resume: str | None) -> list[str]:
        """Lines to write to the CLI's stdin first (JSON-RPC CLIs); [] for the others."""
        ...

    def feed(self, line: str) -> tuple[list[Message], list[str]]:
        """One stdout line in; the messages it yields, and lines to write back. Never
        raises on malformed input: such a line becomes a ``text`` (or ``error``)
        message with the raw line."""
        ...

    def finish(self, exit_code: int) -> list[Message]:
        """The process ended; any last messages (e.g. an error for a crash)."""
        ...
