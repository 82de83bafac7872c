"""The ``copilot-json`` family: GitHub Copilot CLI's ``--output-format json``.

One JSON object per line in Copilot's session-event shape: ``{"type", "data", …}``.
Read: ``session.start`` (``data.sessionId``, ``data.selectedModel``);
``assistant.message`` (``data.content``, ``data.toolRequests`` with ``toolCallId``,
``name``, ``arguments``); ``assistant.reasoning`` (``data.content``);
``tool.execution_start`` (``toolCallId``, ``toolName``, ``arguments``; a ``tool_use``
unless the message's ``toolRequests`` already announced it);
``tool.execution_complete`` (``success``, ``result.content``, ``error.message``);
``assistant.usage`` (``model``, ``inputTokens``, ``outputTokens``, ``cacheReadTokens``,
``cacheWriteTokens``: summed per model); ``session.error`` (``data.message``); and the
final ``result`` (``sessionId``, ``exitCode``, ``usage``).

Assumptions: ``*_delta`` events are skipped (the complete message follows); Copilot's
``cost`` is a premium-request multiplier, not dollars, so it is not reported as cost;
when no ``assistant.usage`` appears (the terminal ``result`` only carries request counts
and durations), no token usage is reported.
"""

from __future__ import annotations

from typing import Any

from forgehall.daemon.adapters.base import Message, Usage
from forgehall.daemon.adapters.stream import (
    LineSession,
    add_usage,
    as_dict,
    as_int,
    as_list,
    as_str,
    message,
    text_of,
    tool_result,
    tool_use,
)


class CopilotJsonSession(LineSession):
    family = "copilot-json"

    def __init__(self, model: str | None = None) -> None:
        super().__init__(model)
        self._announced: set[str] = set()

    def read_event(self, event: dict[str, Any]) -> list[Message]:
        kind, data = event.get("type"), as_dict(event.get("data"))
        if kind == "session.start":
            self.outcome.session_id = as_str(data.get("sessionId")) or self.outcome.session_id
            self.model = as_str(data.get("selectedModel")) or self.model
            return []
        if kind == "assistant.message":
            return self._assistant(data)
        if kind == "assistant.reasoning":
            text = as_str(data.get("content"))
            return [message("thinking", text)] if text.strip() else []
        if kind == "tool.execution_start":
            call_id = as_str(data.get("toolCallId"))
            if call_id and call_id in self._announced:
                return []
            self._announced.add(call_id)
            name = as_str(data.get("toolName")) or "tool"
            return [tool_use(call_id or None, name, data.get("arguments"))]
        if kind == "tool.execution_complete":
            failed = data.get("success") is False
            error = as_dict(data.get("error"))
            result = as_dict(data.get("result"))
            output = as_str(error.get("message")) if error else text_of(result.get("content"))
            return [tool_result(as_str(data.get("toolCallId")) or None, output, is_error=failed)]
        if kind == "assistant.usage":
            add_usage(
                self.outcome,
                as_str(data.get("model")) or self.model_name(),
                Usage(
                    input_tokens=as_int(data.get("inputTokens")),
                    output_tokens=as_int(data.get("outputTokens")),
                    cache_read_tokens=as_int(data.get("cacheReadTokens")),
                    cache_write_tokens=as_int(data.get("cacheWriteTokens")),
                ),
            )
            return []
        if kind == "session.error":
            detail = as_str(data.get("message")) or as_str(data.get("errorType")) or "error"
            self.outcome.error = detail
            return [message("error", detail)]
        if kind == "result":
            self.finished = True
            self._done = True
            session_id = as_str(event.get("sessionId")) or as_str(data.get("sessionId"))
            self.outcome.session_id = session_id or self.outcome.session_id
            exit_code = event.get("exitCode", data.get("exitCode"))
            if isinstance(exit_code, int) and exit_code != 0 and self.outcome.error is None:
                self.outcome.error = f"the CLI reported exit code {exit_code}"
                return [message("error", self.outcome.error)]
            return []
        return []  # deltas, turn markers, user.message, session.idle, unknown events

    def _assistant(self, data: dict[str, Any]) -> list[Message]:
        messages = []
        text = as_str(data.get("content"))
        if text.strip():
            self.outcome.final_text = text
            messages.append(message("text", text))
        for request in as_list(data.get("toolRequests")):
            request = as_dict(request)
            call_id = as_str(request.get("toolCallId"))
            self._announced.add(call_id)
            name = as_str(request.get("name")) or "tool"
            messages.append(tool_use(call_id or None, name, request.get("arguments")))
        return messages
