"""What the daemon keeps in its data directory, so that a crash loses nothing.

Layout of ``FORGEHALL_DAEMON_DIR`` (mode 0700)::

    daemon.lock        flock'ed by the running daemon (holds its pid): one daemon per dir
    daemon_id          the persistent id it registers with (same id: same runtime)
    credentials.json   server URL and daemon token (``forgehall daemon login``; 0600)
    health.json        where the health endpoint listens ({"host", "port", "pid"})
    daemon.log         the log
    held/<task>.json   tasks claimed and not yet finished (id, lease token, agent pgid)
    journal/<task>.json terminal reports not yet acknowledged by the server

Invariants: a task is written to ``held/`` (fsync) before its agent starts; its terminal
report is written to ``journal/`` (fsync) before it is sent, and both files are deleted
only after the server acknowledged the report (or refused it for good: 409/404). So
after a crash, a held task with no journal entry is an orphan, and a journal entry is
replayed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger("forgehall.daemon")


class AlreadyRunning(Exception):
    """Another daemon holds the lock on this data directory."""


def _discard_temporary(path: Path) -> None:
    """Remove what a failed :func:`write_durably` left behind."""
    with contextlib.suppress(OSError):
        path.with_name(f".{path.name}.tmp").unlink()


def write_json_durably(path: Path, data: Any) -> None:
    write_durably(path, json.dumps(data))


def write_durably(path: Path, text: str) -> None:
    """Write-then-rename with fsync of the file and its directory (mode 0600)."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@dataclass
class HeldTask:
    task_id: str
    lease_token: str
    issue_key: str = ""
    workdir: str = ""
    pgid: int | None = None  # the agent's process group, once started


@dataclass
class JournalEntry:
    """A terminal report waiting for the server's acknowledgement.

    Delivered in order: the rest of the transcript, the fallback comment (the agent's
    final answer, posted with the task token before ``complete`` revokes it; ``None``
    once posted or not needed), the usage totals, then the report itself.
    """

    task_id: str
    lease_token: str
    kind: str  # "complete" or "fail"
    body: dict[str, Any]  # the report body without the lease token
    usage: list[dict[str, Any]] = field(default_factory=list)
    comment: str | None = None
    task_token: str | None = None  # only while a fallback comment is pending
    workspace_id: str = ""
    issue_key: str = ""
    agent_id: str = ""
    started_at: str = ""  # ISO time the agent started (this machine's clock)
    comment_baseline: list[str] | None = None  # the agent's comment ids before it ran
    transcript: str = ""  # the attempt's transcript file: what was not sent yet goes first
    transcript_offset: int = 0  # byte offset of the first message not acknowledged


class DataDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.held_dir = path / "held"
        self.journal_dir = path / "journal"
        self._lock_handle: TextIO | None = None
        # Reports that could not be written (a full disk): delivered from memory, so the
        # result still reaches the server while this process lives.
        self._unsaved: dict[str, JournalEntry] = {}

    def prepare(self) -> None:
        for directory in (self.path, self.held_dir, self.journal_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)

    # --- one daemon per data directory -------------------------------------------------

    @property
    def lock_path(self) -> Path:
        return self.path / "daemon.lock"

    def acquire_lock(self) -> None:
        handle = self.lock_path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "?"
            handle.close()
            raise AlreadyRunning(
                f"another forgehall daemon (pid {pid}) is running with the data directory "
                f"{self.path}; stop it first (`forgehall daemon stop`) or give this one its "
                "own FORGEHALL_DAEMON_DIR"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_handle = handle

    def release_lock(self) -> None:
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle.fileno(), fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    def running_pid(self) -> int | None:
        """The pid of the daemon holding the lock, or None when none runs."""
        if not self.lock_path.exists():
            return None
        with self.lock_path.open("a+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                text = handle.read().strip()
                return int(text) if text.isdigit() else None
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return None

    # --- identity -------------------------------------------------------------------------

    def daemon_id(self) -> str:
        path = self.path / "daemon_id"
        if path.is_file():
            value = path.read_text(encoding="utf-8").strip()
            if value:
                return value
        value = "d-" + secrets.token_hex(12)
        write_durably(path, value)
        return value

    # --- tasks held ---------------------------------------------------------------------

    def hold(self, held: HeldTask) -> None:
        """Note a task as held (for the orphan report after a crash). Best effort: on a
        full disk the task still runs; only that crash recovery is lost for it."""
        path = self.held_dir / f"{held.task_id}.json"
        try:
            write_json_durably(path, asdict(held))
        except OSError as exc:
            _discard_temporary(path)
            log.error("held.write_failed task_id=%s reason=%s", held.task_id, exc)

    def release(self, task_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.held_dir / f"{task_id}.json").unlink()

    def held(self) -> list[HeldTask]:
        found = []
        for path in sorted(self.held_dir.glob("*.json")):
            try:
                found.append(HeldTask(**json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, TypeError):
                path.unlink(missing_ok=True)  # a torn write: nothing to learn from it
        return found

    # --- the journal of terminal reports ----------------------------------------------------

    def journal(self, entry: JournalEntry) -> None:
        path = self.journal_dir / f"{entry.task_id}.json"
        try:
            write_json_durably(path, asdict(entry))
        except OSError as exc:
            _discard_temporary(path)
            self._unsaved[entry.task_id] = entry
            log.error(
                "journal.write_failed task_id=%s reason=%s: the report is kept in memory and "
                "delivered from there (lost if the daemon stops before that)",
                entry.task_id,
                exc,
            )

    def forget_journal(self, task_id: str) -> None:
        self._unsaved.pop(task_id, None)
        with contextlib.suppress(FileNotFoundError):
            (self.journal_dir / f"{task_id}.json").unlink()

    def journal_entries(self) -> list[JournalEntry]:
        found = []
        for path in sorted(self.journal_dir.glob("*.json")):
            try:
                found.append(JournalEntry(**json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, TypeError):
                path.unlink(missing_ok=True)
        saved = {entry.task_id for entry in found}
        return found + [e for task_id, e in self._unsaved.items() if task_id not in saved]

    # --- where the health endpoint listens ------------------------------------------------

    @property
    def health_path(self) -> Path:
        return self.path / "health.json"

    @property
    def log_path(self) -> Path:
        return self.path / "daemon.log"
