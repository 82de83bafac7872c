"""The ``stream-json`` family: Claude Code's NDJSON and the CLIs that copy it.

One session reads every dialect, dispatching on the event's ``type`` (the dialects use
distinct event types, except ``result``, read for both shapes):

- **Claude Code** (``-p --output-format stream-json --verbose``): ``system``/``init``
  (session id, model), ``assistant`` (content blocks ``text``, ``thinking``,
  ``tool_use``), ``user`` (``tool_result`` blocks), final ``result`` with ``result``,
  ``usage``, ``total_cost_usd`` and, in newer versions, ``modelUsage`` per model.
  ``stream_event`` partials (``--include-partial-messages``) are ignored: the complete
  ``assistant`` event follows them.
- **Qwen Code**: the same shapes; its init is ``system``/``session_start``.
- **Cursor Agent**: ``system``/``init``, ``assistant`` segments, the prompt echoed as a
  ``user`` text event (skipped), ``tool_call`` ``started``/``completed`` with the tool
  under ``tool_call.<name>ToolCall`` (or ``tool_call.function``), ``thinking`` deltas,
  final ``result`` (no token figures).
- **Gemini CLI** (``-o stream-json``): ``init`` (session id, model), ``message`` (user or
  assistant; ``delta: true`` chunks are joined), ``tool_use``, ``tool_result``, ``error``
  (non-fatal), final ``result`` with ``status`` and ``stats`` (tokens, optionally
  ``models`` per model).
- Workspace custom commands with ``parser: stream-json`` speak any of the above.

Usage: while the run goes on, totals come from the per-message ``usage`` of Claude's
``assistant`` events (each API message counted once, by id); the final ``result``
replaces them with the CLI's own totals. Cost comes only from ``total_cost_usd`` /
``modelUsage.*.costUSD``; the other dialects leave it to the server's prices.
"""

from __future__ import annotations

from typing import Any

from forgehall.daemon.adapters.base import Message, Usage
from forgehall.daemon.adapters.stream import (
    LineSession,
    as_cost,
    as_dict,
    as_int,
    as_list,
    as_str,
    message,
    text_of,
    tool_result,
    tool_use,
)


def _claude_usage(raw: dict[str, Any]) -> Usage:
    return Usage(
        input_tokens=as_int(raw.get("input_tokens", raw.get("inputTokens"))),
        output_tokens=as_int(raw.get("output_tokens", raw.get("outputTokens"))),
        cache_read_tokens=as_int(
            raw.get("cache_read_input_tokens", raw.get("cacheReadInputTokens"))
        ),
        cache_write_tokens=as_int(
            raw.get("cache_creation_input_tokens", raw.get("cacheCreationInputTokens"))
        ),
    )


def _gemini_usage(raw: dict[str, Any]) -> Usage:
    # Gemini counts cached tokens inside input_tokens; ``input`` (when present) is the
    # uncached part. Split them the way the server prices them.
    tokens = raw.get("tokens")
    if isinstance(tokens, dict):  # the per-model shape of ``-o json`` session metrics
        cached = as_int(tokens.get("cached"))
        return Usage(
            input_tokens=max(as_int(tokens.get("prompt")) - cached, 0),
            output_tokens=as_int(tokens.get("candidates")) + as_int(tokens.get("thoughts")),
            cache_read_tokens=cached,
        )
    cached = as_int(raw.get("cached"))
    uncached = raw.get("input")
    total_input = as_int(raw.get("input_tokens"))
    return Usage(
        input_tokens=as_int(uncached) if uncached is not None else max(total_input - cached, 0),
        output_tokens=as_int(raw.get("output_tokens")),
        cache_read_tokens=cached,
    )


def _cursor_tool(tool_call: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The tool name and body of a Cursor ``tool_call`` object."""
    for key, body in tool_call.items():
        if not isinstance(body, dict):
            continue
        if key == "function":
            return as_str(body.get("name")) or "function", body
        name = key.removesuffix("ToolCall") if key.endswith("ToolCall") else key
        return name, body
    return "tool", {}


class StreamJsonSession(LineSession):
    family = "stream-json"

    def __init__(self, model: str | None = None) -> None:
        super().__init__(model)
        self._message_usage: dict[str, tuple[str, Usage]] = {}

    def read_event(self, event: dict[str, Any]) -> list[Message]:
        kind = event.get("type")
        session_id = event.get("session_id") or event.get("sessionId")
        if isinstance(session_id, str) and session_id:
            self.outcome.session_id = session_id
        if kind == "system":
            if event.get("subtype") in ("init", "session_start") and event.get("model"):
                self.model = as_str(event["model"]) or self.model
            return []
        if kind == "init":  # Gemini
            if event.get("model"):
                self.model = as_str(event["model"]) or self.model
            return []
        if kind == "assistant":
            return self._assistant(as_dict(event.get("message")))
        if kind == "user":
            return self._user(as_dict(event.get("message")))
        if kind == "message":  # Gemini
            return self._gemini_message(event)
        if kind == "tool_use":  # Gemini
            return [
                *self.flush(),
                tool_use(
                    as_str(event.get("tool_id")) or None,
                    as_str(event.get("tool_name")) or "tool",
                    event.get("parameters", {}),
                ),
            ]
        if kind == "tool_result":  # Gemini
            error = as_dict(event.get("error"))
            output = text_of(event.get("output")) or as_str(error.get("message"))
            return [
                *self.flush(),
                tool_result(
                    as_str(event.get("tool_id")) or None,
                    output,
                    is_error=event.get("status") == "error" or bool(error),
                ),
            ]
        if kind == "tool_call":  # Cursor
            return self._cursor_tool_call(event)
        if kind == "thinking":  # Cursor
            if event.get("subtype") == "delta":
                return self.buffer("thinking", as_str(event.get("text")))
            return self.flush()
        if kind == "error":  # Gemini: non-fatal warnings and errors
            text = as_str(event.get("message")) or text_of(event.get("error"))
            return [*self.flush(), message("error", text or "the CLI reported an error")]
        if kind == "result":
            return self._result(event)
        return []  # stream_event partials, hooks, status lines, unknown future events

    # --- Claude / Qwen / Cursor ----------------------------------------------------------

    def _assistant(self, body: dict[str, Any]) -> list[Message]:
        messages = self.flush()
        model = as_str(body.get("model"))
        if model and not model.startswith("<"):  # "<synthetic>" marks CLI-made messages
            self.model = model
        content = body.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        for block in as_list(content):
            block = as_dict(block)
            block_type = block.get("type")
            if block_type == "text" and as_str(block.get("text")).strip():
                self.outcome.final_text = block["text"]
                messages.append(message("text", block["text"]))
            elif block_type == "thinking" and as_str(block.get("thinking")).strip():
                messages.append(message("thinking", block["thinking"]))
            elif block_type == "tool_use":
                messages.append(
                    tool_use(
                        as_str(block.get("id")) or None,
                        as_str(block.get("name")) or "tool",
                        block.get("input", {}),
                    )
                )
        message_id, usage = as_str(body.get("id")), body.get("usage")
        if message_id and isinstance(usage, dict) and model and not model.startswith("<"):
            self._message_usage[message_id] = (model, _claude_usage(usage))
            self.outcome.usage = {}
            for name, figures in self._message_usage.values():
                total = self.outcome.usage.setdefault(name, Usage())
                total.input_tokens += figures.input_tokens
                total.output_tokens += figures.output_tokens
                total.cache_read_tokens += figures.cache_read_tokens
                total.cache_write_tokens += figures.cache_write_tokens
        return messages

    def _user(self, body: dict[str, Any]) -> list[Message]:
        messages = self.flush()
        for block in as_list(body.get("content")):
            block = as_dict(block)
            if block.get("type") != "tool_result":
                continue  # the prompt echo (Cursor), images, interruptions
            messages.append(
                tool_result(
                    as_str(block.get("tool_use_id")) or None,
                    text_of(block.get("content")),
                    is_error=block.get("is_error") is True,
                )
            )
        return messages

    def _cursor_tool_call(self, event: dict[str, Any]) -> list[Message]:
        messages = self.flush()
        call_id = as_str(event.get("call_id")) or None
        name, body = _cursor_tool(as_dict(event.get("tool_call")))
        if event.get("subtype") == "started":
            args = body.get("args", body.get("arguments", {}))
            messages.append(tool_use(call_id, name, args))
        elif event.get("subtype") == "completed":
            result = as_dict(body.get("result"))
            failure = result.get("error") or result.get("failure") or result.get("rejected")
            if failure is not None:
                output = text_of(failure)
            elif isinstance(result.get("success"), dict):
                success = result["success"]
                output = text_of(
                    success.get("content", success.get("output", success.get("stdout", success)))
                )
            else:
                output = text_of(result) if result else ""
            messages.append(tool_result(call_id, output, is_error=failure is not None))
        return messages

    # --- Gemini --------------------------------------------------------------------------

    def _gemini_message(self, event: dict[str, Any]) -> list[Message]:
        if event.get("role") != "assistant":
            return []  # the prompt, echoed
        text = text_of(event.get("content"))
        if event.get("delta") is True:
            return self.buffer("text", text)
        if not text.strip():
            return self.flush()
        self.outcome.final_text = text
        return [*self.flush(), message("text", text)]

    # --- the final event (all dialects) ----------------------------------------------------

    def _result(self, event: dict[str, Any]) -> list[Message]:
        messages = self.flush()
        self.finished = True
        self._done = True
        final = event.get("result")
        if isinstance(final, str) and final.strip():
            self.outcome.final_text = final
        self._result_usage(event)
        failed = (
            event.get("is_error") is True
            or as_str(event.get("subtype")).startswith("error")
            or event.get("status") == "error"
        )
        if failed:
            error = as_dict(event.get("error"))
            detail = (
                as_str(error.get("message"))
                or (final if isinstance(final, str) and final.strip() else "")
                or as_str(event.get("subtype"))
                or "the CLI reported a failed run"
            )
            errors = [as_str(e) for e in as_list(event.get("errors")) if as_str(e)]
            if errors:
                detail = detail + ": " + "; ".join(errors)
            self.outcome.error = detail
            messages.append(message("error", detail))
        return messages

    def _result_usage(self, event: dict[str, Any]) -> None:
        per_model = as_dict(event.get("modelUsage"))
        if per_model:
            self.outcome.usage = {}
            for name, raw in per_model.items():
                figures = _claude_usage(as_dict(raw))
                figures.cost_usd = as_cost(as_dict(raw).get("costUSD"))
                self.outcome.usage[name] = figures
            return
        usage = event.get("usage")
        if isinstance(usage, dict):
            figures = _claude_usage(usage)
            figures.cost_usd = as_cost(event.get("total_cost_usd"))
            self.outcome.usage = {self.model_name(): figures}
            return
        stats = as_dict(event.get("stats"))
        models = as_dict(stats.get("models"))
        if models:
            self.outcome.usage = {
                name: _gemini_usage(as_dict(raw)) for name, raw in models.items() if name
            }
        elif stats:
            self.outcome.usage = {self.model_name(): _gemini_usage(stats)}
