"""The ``codex-json`` family: ``codex exec --json`` events (Codex CLI ≥ 0.44).

Events: ``thread.started`` (``thread_id``: the session id, resumed with
``codex exec resume <id>``), ``turn.started``, ``item.started`` / ``item.updated`` /
``item.completed`` (items ``agent_message``, ``reasoning``, ``command_execution``,
``file_change``, ``mcp_tool_call``, ``web_search``, ``todo_list``, ``error``),
``turn.completed`` with ``usage`` (``input_tokens``, ``cached_input_tokens``,
``output_tokens``), ``turn.failed`` and ``error``.

Assumptions: the usage names no model, so it is booked under the model the run asked
for (or ``unknown``); ``input_tokens`` includes the cached ones (OpenAI counts them
inside), so the uncached part is ``input_tokens - cached_input_tokens``; one
``turn.completed`` per turn, summed. A tool call becomes ``tool_use`` when it starts
(or when it completes, if it was never seen starting) and ``tool_result`` when done.
``todo_list`` items are not transcribed. The pre-0.44 event shape (``{"id", "msg"}``)
is not read (kept as raw text would be noise, so it is ignored like any unknown event).
"""

from __future__ import annotations

import json
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


def _tool(item: dict[str, Any]) -> tuple[str, Any] | None:
    """(tool name, input) for items that are tool calls; None for the others."""
    kind = item.get("type")
    if kind == "command_execution":
        return "shell", {"command": item.get("command")}
    if kind == "file_change":
        return "apply_patch", {"changes": item.get("changes", [])}
    if kind == "mcp_tool_call":
        server, tool = as_str(item.get("server")), as_str(item.get("tool"))
        return f"{server}/{tool}" if server else tool or "mcp", item.get("arguments", {})
    if kind == "web_search":
        return "web_search", {"query": item.get("query")}
    return None


class CodexJsonSession(LineSession):
    family = "codex-json"

    def __init__(self, model: str | None = None) -> None:
        super().__init__(model)
        self._started: set[str] = set()

    def read_event(self, event: dict[str, Any]) -> list[Message]:
        kind = event.get("type")
        if kind == "thread.started":
            self.outcome.session_id = as_str(event.get("thread_id")) or self.outcome.session_id
            return []
        if kind == "item.started":
            return self._started_item(as_dict(event.get("item")))
        if kind == "item.completed":
            return self._completed_item(as_dict(event.get("item")))
        if kind == "turn.completed":
            self.finished = True
            usage = as_dict(event.get("usage"))
            cached = as_int(usage.get("cached_input_tokens"))
            add_usage(
                self.outcome,
                self.model_name(),
                Usage(
                    input_tokens=max(as_int(usage.get("input_tokens")) - cached, 0),
                    output_tokens=as_int(usage.get("output_tokens")),
                    cache_read_tokens=cached,
                ),
            )
            return []
        if kind == "turn.failed":
            self.finished = True
            detail = as_str(as_dict(event.get("error")).get("message")) or "the turn failed"
            self.outcome.error = detail
            return [message("error", detail)]
        if kind == "error":
            return [message("error", as_str(event.get("message")) or text_of(event))]
        return []  # turn.started, item.updated (todo lists), unknown future events

    def _started_item(self, item: dict[str, Any]) -> list[Message]:
        tool = _tool(item)
        if tool is None:
            return []
        item_id = as_str(item.get("id"))
        self._started.add(item_id)
        return [tool_use(item_id or None, *tool)]

    def _completed_item(self, item: dict[str, Any]) -> list[Message]:
        kind, item_id = item.get("type"), as_str(item.get("id"))
        if kind == "agent_message":
            text = as_str(item.get("text"))
            if not text.strip():
                return []
            self.outcome.final_text = text
            return [message("text", text)]
        if kind == "reasoning":
            text = as_str(item.get("text"))
            return [message("thinking", text)] if text.strip() else []
        if kind == "error":
            return [message("error", as_str(item.get("message")) or "error")]
        tool = _tool(item)
        if tool is None:
            return []
        messages = [] if item_id in self._started else [tool_use(item_id or None, *tool)]
        status = item.get("status")
        failed = status == "failed" or status == "declined"
        if kind == "command_execution":
            output = as_str(item.get("aggregated_output"))
            exit_code = item.get("exit_code")
            failed = failed or (isinstance(exit_code, int) and exit_code != 0)
        elif kind == "mcp_tool_call":
            error = as_dict(item.get("error"))
            result = as_dict(item.get("result"))
            output = as_str(error.get("message")) or text_of(result.get("content", result or None))
            failed = failed or bool(error)
        elif kind == "file_change":
            changes = [
                f"{as_str(as_dict(c).get('kind'))} {as_str(as_dict(c).get('path'))}"
                for c in as_list(item.get("changes"))
            ]
            output = "\n".join(changes) or json.dumps(status)
        else:
            output = as_str(status) or "completed"
        messages.append(tool_result(item_id or None, output, is_error=failed))
        return messages
