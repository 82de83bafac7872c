"""A task attempt's transcript on disk: the agent never waits for the server.

Every message the adapter yields is appended at once to a JSON-lines file in the task's
``logs/`` directory (``{"seq", "kind", "content"}``, seq from 1 per attempt); senders read
batches from a byte offset. Memory stays bounded whatever the server's speed (a batch is
at most 500 messages and ~4 MiB), nothing is lost while the server is unreachable, and a
journal entry can point at the offset of the first message not yet acknowledged so the
rest is sent after a restart, before the terminal report.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from forgehall.agents.schemas import MESSAGE_BATCH_MAX, MESSAGE_CONTENT_MAX, MessageIn

BATCH_BYTES_MAX = 4 * 1024 * 1024  # well under the server's 10 MiB body limit
_TRUNCATED = "\n… [truncated by the daemon: the message was larger than 256 KiB]"


def clip(content: str) -> str:
    """Content that fits the protocol's per-message limit (bytes of UTF-8)."""
    raw = content.encode()
    if len(raw) <= MESSAGE_CONTENT_MAX:
        return content
    room = MESSAGE_CONTENT_MAX - len(_TRUNCATED.encode())
    return raw[:room].decode(errors="ignore") + _TRUNCATED


class Transcript:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.next_seq = 1
        self._handle = path.open("ab")
        self.last_text: str | None = None

    def append(self, kind: str, content: str) -> None:
        if kind == "text" and content.strip():
            self.last_text = content
        record = {"seq": self.next_seq, "kind": kind, "content": clip(content)}
        self._handle.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        self._handle.flush()
        self.next_seq += 1

    def close(self) -> None:
        self._handle.close()


def read_batch(path: Path, offset: int) -> tuple[list[MessageIn], int]:
    """Messages from ``offset`` (at most one batch) and the offset after them."""
    messages: list[MessageIn] = []
    size = 0
    with path.open("rb") as handle:
        handle.seek(offset)
        while len(messages) < MESSAGE_BATCH_MAX:
            line = handle.readline()
            if not line.endswith(b"\n"):
                break  # end of file, or a line still being written
            if messages and size + len(line) > BATCH_BYTES_MAX:
                break
            with contextlib.suppress(ValueError):  # a torn line after a crash: skip it
                messages.append(MessageIn.model_validate_json(line))
            size += len(line)
            offset += len(line)
    return messages, offset
