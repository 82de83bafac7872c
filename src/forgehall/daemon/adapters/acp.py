"""The ``acp`` family: Agent Client Protocol agents (JSON-RPC 2.0 over stdio, one message
per line), with the daemon as the client.

The conversation: ``initialize`` (protocol version 1, no fs/terminal capabilities) →
``session/new`` {cwd, mcpServers: []} — or ``session/load`` {sessionId, cwd, mcpServers}
to resume, when the agent advertises ``loadSession`` (if loading fails, a new session is
started instead) → ``session/prompt`` {sessionId, prompt: [text block]}. The response
to the prompt ends the run (:attr:`done`); its ``stopReason`` other than ``end_turn`` is
reported as the run's error, and its ``usage`` (if the agent sends one) is the token use.

``session/update`` notifications become messages: ``agent_message_chunk`` (joined into
one ``text`` message per stretch), ``agent_thought_chunk`` (``thinking``), ``tool_call``
(``tool_use``; also ``tool_result`` if it arrives already finished),
``tool_call_update`` with status ``completed``/``failed`` (``tool_result``), ``plan``
(``thinking``). Updates that arrive while a session is being loaded replay old history
and are skipped.

Requests from the agent: ``session/request_permission`` is answered by selecting an
allow option (agents run with the daemon user's permissions, like the other CLIs);
anything else (``fs/*``, ``terminal/*``) gets JSON-RPC error -32601: the daemon offers
no client capabilities. The model is the agent's own: no ``session/set_model``.
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

PROTOCOL_VERSION = 1
METHOD_NOT_FOUND = -32601
ALLOW_PREFERENCE = ("allow_always", "allow_once")


def _line(payload: dict[str, Any]) -> str:
    return json.dumps({"jsonrpc": "2.0", **payload}, ensure_ascii=False)


class AcpSession(LineSession):
    family = "acp"

    def __init__(self, model: str | None = None) -> None:
        super().__init__(model)
        self._next_id = 0
        self._pending: dict[int, str] = {}  # request id -> method
        self._prompt = ""
        self._workdir = ""
        self._resume: str | None = None
        self._loading = False
        self._finished_tools: set[str] = set()

    # --- requests we send ------------------------------------------------------------------

    def _request(self, method: str, params: dict[str, Any]) -> str:
        self._next_id += 1
        self._pending[self._next_id] = method
        return _line({"id": self._next_id, "method": method, "params": params})

    def start(self, prompt: str, workdir: str, resume: str | None) -> list[str]:
        self._prompt, self._workdir, self._resume = prompt, workdir, resume
        capabilities = {"fs": {"readTextFile": False, "writeTextFile": False}, "terminal": False}
        return [
            self._request(
                "initialize",
                {
                    "protocolVersion": PROTOCOL_VERSION,
                    "clientCapabilities": capabilities,
                    "clientInfo": {"name": "forgehall-daemon", "version": "1"},
                },
            )
        ]

    def _new_session(self) -> str:
        return self._request("session/new", {"cwd": self._workdir, "mcpServers": []})

    def _send_prompt(self) -> str:
        return self._request(
            "session/prompt",
            {
                "sessionId": self.outcome.session_id,
                "prompt": [{"type": "text", "text": self._prompt}],
            },
        )

    # --- what the agent sends ----------------------------------------------------------------

    def feed(self, line: str) -> tuple[list[Message], list[str]]:
        stripped = line.strip()
        if not stripped:
            return [], []
        try:
            payload = json.loads(stripped)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return [*self.flush(), message("text", line.rstrip("\r\n"))], []
        try:
            return self._read(payload)
        except Exception:  # a surprising shape must not stop the run
            messages, _ = super().feed(line)  # logs once and keeps the raw line
            return messages, []

    def read_event(self, event: dict[str, Any]) -> list[Message]:
        raise ValueError("unreadable JSON-RPC message")  # reached only from feed's fallback

    def _read(self, payload: dict[str, Any]) -> tuple[list[Message], list[str]]:
        method = payload.get("method")
        if isinstance(method, str) and "id" in payload:
            answer = self._answer(payload["id"], method, as_dict(payload.get("params")))
            return self.flush(), [answer]
        if isinstance(method, str):
            if method == "session/update" and not self._loading:
                return self._update(as_dict(as_dict(payload.get("params")).get("update"))), []
            return [], []
        if "id" in payload and ("result" in payload or "error" in payload):
            return self._response(payload)
        return [*self.flush(), message("text", json.dumps(payload, ensure_ascii=False))], []

    def _answer(self, request_id: Any, method: str, params: dict[str, Any]) -> str:
        if method == "session/request_permission":
            options = [as_dict(o) for o in as_list(params.get("options"))]
            chosen = next(
                (o for kind in ALLOW_PREFERENCE for o in options if o.get("kind") == kind),
                None,
            )
            if chosen is None:
                return _line({"id": request_id, "result": {"outcome": {"outcome": "cancelled"}}})
            outcome = {"outcome": "selected", "optionId": chosen.get("optionId")}
            return _line({"id": request_id, "result": {"outcome": outcome}})
        error = {
            "code": METHOD_NOT_FOUND,
            "message": f"{method} is not offered: the Forgehall daemon has no client "
            "capabilities (file system, terminal)",
        }
        return _line({"id": request_id, "error": error})

    def _response(self, payload: dict[str, Any]) -> tuple[list[Message], list[str]]:
        request_id = payload.get("id")
        method = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if method is None:
            return [], []
        error = payload.get("error")
        result = as_dict(payload.get("result"))
        if error is not None:
            detail = as_str(as_dict(error).get("message")) or json.dumps(error)
            if method == "session/load":
                self._loading = False
                note = message("error", f"could not resume session {self._resume}: {detail}")
                return [note], [self._new_session()]
            return self._fail(f"{method} failed: {detail}"), []
        if method == "initialize":
            capabilities = as_dict(result.get("agentCapabilities"))
            if self._resume and capabilities.get("loadSession") is True:
                self._loading = True
                self.outcome.session_id = self._resume
                params = {"sessionId": self._resume, "cwd": self._workdir, "mcpServers": []}
                return [], [self._request("session/load", params)]
            return [], [self._new_session()]
        if method == "session/new":
            session_id = as_str(result.get("sessionId"))
            if not session_id:
                return self._fail("session/new answered without a sessionId"), []
            self.outcome.session_id = session_id
            models = as_dict(result.get("models"))
            self.model = self.model or as_str(models.get("currentModelId")) or None
            return [], [self._send_prompt()]
        if method == "session/load":
            self._loading = False
            return [], [self._send_prompt()]
        if method == "session/prompt":
            return self._prompt_done(result), []
        return [], []

    def _fail(self, detail: str) -> list[Message]:
        self.finished = True
        self._done = True
        self.outcome.error = detail
        return [*self.flush(), message("error", detail)]

    def _prompt_done(self, result: dict[str, Any]) -> list[Message]:
        usage = as_dict(result.get("usage"))
        if usage:
            add_usage(
                self.outcome,
                self.model_name(),
                Usage(
                    input_tokens=as_int(usage.get("inputTokens")),
                    output_tokens=as_int(usage.get("outputTokens"))
                    + as_int(usage.get("thoughtTokens")),
                    cache_read_tokens=as_int(usage.get("cachedReadTokens")),
                    cache_write_tokens=as_int(usage.get("cachedWriteTokens")),
                ),
            )
        stop = as_str(result.get("stopReason")) or "end_turn"
        if stop != "end_turn":
            return self._fail(f"the agent stopped: {stop}")
        self.finished = True
        self._done = True
        return self.flush()

    def _update(self, update: dict[str, Any]) -> list[Message]:
        kind = update.get("sessionUpdate")
        if kind == "agent_message_chunk":
            return self.buffer("text", text_of(update.get("content")))
        if kind == "agent_thought_chunk":
            return self.buffer("thinking", text_of(update.get("content")))
        if kind == "tool_call":
            call_id = as_str(update.get("toolCallId"))
            name = as_str(update.get("title")) or as_str(update.get("kind")) or "tool"
            messages = [*self.flush(), tool_use(call_id or None, name, update.get("rawInput", {}))]
            return messages + self._tool_done(update)
        if kind == "tool_call_update":
            return [*self.flush(), *self._tool_done(update)]
        if kind == "plan":
            entries = [as_dict(e) for e in as_list(update.get("entries"))]
            lines = [f"[{as_str(e.get('status'))}] {as_str(e.get('content'))}" for e in entries]
            return [*self.flush(), message("thinking", "Plan:\n" + "\n".join(lines))]
        return []  # user_message_chunk, available_commands_update, mode updates, …

    def _tool_done(self, update: dict[str, Any]) -> list[Message]:
        status = update.get("status")
        call_id = as_str(update.get("toolCallId"))
        if status not in ("completed", "failed") or call_id in self._finished_tools:
            return []
        self._finished_tools.add(call_id)
        content = update.get("content")
        output = text_of(content) if content else text_of(update.get("rawOutput"))
        return [tool_result(call_id or None, output, is_error=status == "failed")]
