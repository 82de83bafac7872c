"""What every line-reading parser session shares.

Invariants kept here for all families:

- ``feed`` never raises: a line that is not a JSON object is kept as a ``text`` message
  with the raw line, and a JSON event whose shape surprises a parser is kept the same way
  (and logged once per session as ``adapter.event_unreadable``).
- Message content is bounded (:data:`MAX_CONTENT_CHARS`) so one huge tool output cannot
  exceed the protocol's per-message limit.
- ``tool_use`` content is the JSON text ``{"id", "tool", "input"}``; ``tool_result``
  content is ``{"id", "output", "is_error"}``.
"""

from __future__ import annotations

import json
from typing import Any

import structlog

from forgehall.daemon.adapters.base import Message, MessageKind, Outcome, Usage

log = structlog.get_logger("forgehall.daemon.adapters")

# The protocol caps a message at 256 KiB; 60k characters stay under it even when every
# character takes four bytes in UTF-8.
MAX_CONTENT_CHARS = 60_000
UNKNOWN_MODEL = "unknown"


def bounded(text: str, limit: int = MAX_CONTENT_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n… [truncated {len(text) - limit} characters]"


def message(kind: MessageKind, content: str) -> Message:
    return Message(kind, bounded(content))


def tool_use(call_id: str | None, tool: str, tool_input: Any) -> Message:
    payload = {"id": call_id, "tool": tool, "input": tool_input}
    return message("tool_use", json.dumps(payload, ensure_ascii=False, default=str))


def tool_result(call_id: str | None, output: str, *, is_error: bool = False) -> Message:
    payload = {"id": call_id, "output": bounded(output), "is_error": is_error}
    return Message("tool_result", json.dumps(payload, ensure_ascii=False))


def as_int(value: Any) -> int:
    """A token count from a CLI: anything that is not a non-negative number counts 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(int(value), 0)


def as_cost(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value)


def as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def text_of(value: Any) -> str:
    """Readable text from the shapes CLIs use for tool output: a string, a list of
    ``{"type": "text", "text": …}`` blocks, or any other JSON (dumped)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                parts.append(item["text"])
            elif isinstance(item, dict) and isinstance(item.get("content"), dict | list | str):
                parts.append(text_of(item["content"]))
            else:
                parts.append(json.dumps(item, ensure_ascii=False, default=str))
        return "\n".join(parts)
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return str(value["text"])
    return json.dumps(value, ensure_ascii=False, default=str)


def add_usage(outcome: Outcome, model: str, usage: Usage) -> None:
    """Add one step's figures to the model's running totals."""
    total = outcome.usage.setdefault(model, Usage())
    total.input_tokens += usage.input_tokens
    total.output_tokens += usage.output_tokens
    total.cache_read_tokens += usage.cache_read_tokens
    total.cache_write_tokens += usage.cache_write_tokens
    if usage.cost_usd is not None:
        total.cost_usd = (total.cost_usd or 0.0) + usage.cost_usd


class LineSession:
    """Base for the families that only read stdout (everything but ACP).

    Subclasses implement :meth:`read_event` for one decoded JSON object; this class
    handles decoding, malformed lines, text-delta buffering and the end of the run.
    """

    family = "line"

    def __init__(self, model: str | None = None) -> None:
        self.outcome = Outcome()
        self.model = model or None  # the model asked for; CLIs may report the real one
        self.finished = False  # the CLI printed its final event
        self._done = False
        self._buffer_kind: MessageKind | None = None
        self._buffer: list[str] = []
        self._logged_unreadable = False

    @property
    def done(self) -> bool:
        return self._done

    def start(self, prompt: str, workdir: str, resume: str | None) -> list[str]:
        return []

    def feed(self, line: str) -> tuple[list[Message], list[str]]:
        stripped = line.strip()
        if not stripped:
            return [], []
        try:
            event = json.loads(stripped)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            return [*self.flush(), message("text", line.rstrip("\r\n"))], []
        try:
            return self.read_event(event), []
        except Exception as exc:  # a surprising shape must not stop the run
            if not self._logged_unreadable:
                log.warning(
                    "adapter.event_unreadable",
                    family=self.family,
                    event_type=str(event.get("type"))[:80],
                    error=f"{type(exc).__name__}: {exc}",
                )
                self._logged_unreadable = True
            return [*self.flush(), message("text", line.rstrip("\r\n"))], []

    def read_event(self, event: dict[str, Any]) -> list[Message]:
        raise NotImplementedError

    def finish(self, exit_code: int) -> list[Message]:
        messages = self.flush()
        if exit_code != 0 and self.outcome.error is None:
            self.outcome.error = f"the CLI exited with code {exit_code}" + (
                "" if self.finished else " before its final result"
            )
            messages.append(Message("error", self.outcome.error))
        elif not self.finished and self.expects_final_event:
            # A stream cut short but exiting 0 (e.g. killed by something that mapped the
            # status): say so, so nobody mistakes it for a complete answer.
            messages.append(Message("error", "the CLI's output ended before its final result"))
        return messages

    expects_final_event = True

    def model_name(self) -> str:
        return self.model or UNKNOWN_MODEL

    # --- buffering of streamed chunks (text deltas, thought chunks) -------------------

    def buffer(self, kind: MessageKind, chunk: str) -> list[Message]:
        """Collect a streamed chunk; returns the previous buffer if the kind changed."""
        flushed = self.flush() if self._buffer_kind not in (None, kind) else []
        self._buffer_kind = kind
        self._buffer.append(chunk)
        return flushed

    def flush(self) -> list[Message]:
        if self._buffer_kind is None:
            return []
        kind, text = self._buffer_kind, "".join(self._buffer)
        self._buffer_kind, self._buffer = None, []
        if not text.strip():
            return []
        if kind == "text":
            self.outcome.final_text = text
        return [message(kind, text)]
