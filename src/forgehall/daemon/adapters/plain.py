"""The ``plain`` family: every stdout line is a text message (workspace custom commands).

There is no session id, no usage and no final event: the run is over when the process
exits, and a non-zero exit is the error. The last lines (bounded) are kept as the final
answer for the fallback comment.
"""

from __future__ import annotations

from typing import Any

from forgehall.daemon.adapters.base import Message
from forgehall.daemon.adapters.stream import MAX_CONTENT_CHARS, LineSession, message


class PlainSession(LineSession):
    family = "plain"
    expects_final_event = False

    def __init__(self, model: str | None = None) -> None:
        super().__init__(model)
        self._tail: list[str] = []
        self._tail_chars = 0

    def feed(self, line: str) -> tuple[list[Message], list[str]]:
        text = line.rstrip("\r\n")
        if not text.strip():
            return [], []
        self._tail.append(text)
        self._tail_chars += len(text) + 1
        while self._tail_chars > MAX_CONTENT_CHARS and len(self._tail) > 1:
            self._tail_chars -= len(self._tail.pop(0)) + 1
        self.outcome.final_text = "\n".join(self._tail)
        return [message("text", text)], []

    def read_event(self, event: dict[str, Any]) -> list[Message]:  # pragma: no cover
        raise NotImplementedError("plain output is never decoded")
