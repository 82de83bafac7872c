"""The ``opencode-json`` family: ``opencode run --format json`` events.

Every event carries ``sessionID`` (``ses_…``; resumed with ``--session``). Events:
``step_start``; ``text`` (``part.text``, a finished text part); ``reasoning``
(``part.text``); ``tool_use`` (``part.tool``, ``part.callID``, ``part.state`` with
``status``, ``input``, ``output`` or ``error`` — emitted once the call has finished, so
it becomes a ``tool_use`` and a ``tool_result``); ``step_finish`` (``part.tokens``
``input``/``output``/``reasoning``/``cache.read``/``cache.write`` and ``part.cost`` in
USD, per step: summed); ``error`` (``error.name``, ``error.data.message``).

Assumptions: steps name no model, so usage is booked under the model the run asked for
(``provider/model``) or ``unknown``; reasoning tokens count as output; a reported cost of
0 is kept as 0 (OpenCode prices what it knows). There is no final event: the run is over
when the process exits.
"""

from __future__ import annotations

from typing import Any

from forgehall.daemon.adapters.base import Message, Usage
from forgehall.daemon.adapters.stream import (
    LineSession,
    add_usage,
    as_cost,
    as_dict,
    as_int,
    as_str,
    message,
    text_of,
    tool_result,
    tool_use,
)


class OpencodeJsonSession(LineSession):
    family = "opencode-json"
    expects_final_event = False

    def read_event(self, event: dict[str, Any]) -> list[Message]:
        session_id = as_str(event.get("sessionID"))
        if session_id:
            self.outcome.session_id = session_id
        kind, part = event.get("type"), as_dict(event.get("part"))
        if kind == "text":
            text = as_str(part.get("text"))
            if not text.strip():
                return []
            self.outcome.final_text = text
            return [message("text", text)]
        if kind == "reasoning":
            text = as_str(part.get("text"))
            return [message("thinking", text)] if text.strip() else []
        if kind == "tool_use":
            state = as_dict(part.get("state"))
            call_id = as_str(part.get("callID")) or as_str(part.get("id")) or None
            messages = [tool_use(call_id, as_str(part.get("tool")) or "tool", state.get("input"))]
            if state.get("status") in ("completed", "error"):
                failed = state.get("status") == "error"
                output = text_of(state.get("error") if failed else state.get("output"))
                messages.append(tool_result(call_id, output, is_error=failed))
            return messages
        if kind == "step_finish":
            tokens = as_dict(part.get("tokens"))
            cache = as_dict(tokens.get("cache"))
            add_usage(
                self.outcome,
                self.model_name(),
                Usage(
                    input_tokens=as_int(tokens.get("input")),
                    output_tokens=as_int(tokens.get("output")) + as_int(tokens.get("reasoning")),
                    cache_read_tokens=as_int(cache.get("read")),
                    cache_write_tokens=as_int(cache.get("write")),
                    cost_usd=as_cost(part.get("cost")),
                ),
            )
            return []
        if kind == "error":
            error = as_dict(event.get("error"))
            detail = as_str(as_dict(error.get("data")).get("message")) or as_str(
                error.get("message")
            )
            name = as_str(error.get("name"))
            text = f"{name}: {detail}" if name and detail else detail or name or "error"
            self.outcome.error = text
            return [message("error", text)]
        return []  # step_start, unknown future events
