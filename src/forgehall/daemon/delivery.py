"""Delivers the journal of terminal reports until the server acknowledges each.

One entry at a time, in order: the rest of the attempt's transcript, the fallback comment,
the usage totals, then ``complete`` or ``fail``. An entry leaves the journal (and its task
leaves ``held/``) when the report was acknowledged (2xx) or refused for good: 409
``stale-lease`` (the task moved on, or a lost answer had already taken effect) and 404
are dropped with a log line. While the server is unreachable, or refuses the daemon's
token, entries stay and are retried with a backoff, after every reconnect and at the
next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from forgehall.daemon.client import Backoff, ProtocolClient, Refused, Unreachable
from forgehall.daemon.state import DataDir, JournalEntry
from forgehall.daemon.transcript import read_batch

log = logging.getLogger("forgehall.daemon")


class Deliverer:
    def __init__(self, client: ProtocolClient, data: DataDir) -> None:
        self.client = client
        self.data = data
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()

    def notify(self) -> None:
        self.wake.set()

    async def run(self) -> None:
        backoff = Backoff()
        self.wake.set()  # replay at start
        while True:
            await self.wake.wait()
            self.wake.clear()
            self.idle.clear()
            try:
                await self.deliver_all()
            except Unreachable as exc:
                delay = backoff.next()
                log.warning("journal.retry in=%.1fs reason=%s", delay, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), delay)
                self.wake.set()
                continue
            backoff.reset()
            self.idle.set()

    async def deliver_all(self) -> None:
        for entry in self.data.journal_entries():
            await self.deliver(entry)

    async def flush(self, timeout: float) -> bool:
        """Try to deliver everything within ``timeout``; True when the journal is empty."""
        try:
            await asyncio.wait_for(self.deliver_all(), timeout)
        except (Unreachable, TimeoutError) as exc:
            log.warning(
                "journal.pending entries=%d reason=%s", len(self.data.journal_entries()), exc
            )
            return False
        return True

    async def deliver(self, entry: JournalEntry) -> None:
        """Raises :class:`Unreachable` to be retried later; otherwise the entry is done."""
        try:
            await self._send_transcript(entry)
            if entry.comment and entry.task_token:
                await self._post_fallback_comment(entry)
                entry.comment = None
                entry.task_token = None  # nothing secret stays on disk longer than needed
                self.data.journal(entry)
            if entry.usage:
                await self.client.usage(entry.task_id, entry.lease_token, entry.usage)
            if entry.kind == "complete":
                state = await self.client.complete(entry.task_id, entry.lease_token, entry.body)
            else:
                state = await self.client.fail(entry.task_id, entry.lease_token, entry.body)
            log.info(
                "task.reported task_id=%s report=%s status=%s follow_up=%s",
                entry.task_id,
                entry.kind,
                state.status,
                state.follow_up_id,
            )
        except Refused as exc:
            if exc.credentials:
                log.error("journal.refused task_id=%s reason=%s", entry.task_id, exc)
                raise Unreachable(str(exc)) from exc
            if exc.lease_lost:
                log.warning(
                    "task.report_dropped task_id=%s report=%s state=%s reason=%s",
                    entry.task_id,
                    entry.kind,
                    exc.current_state,
                    exc.problem or exc.status,
                )
            else:
                log.error("task.report_refused task_id=%s reason=%s", entry.task_id, exc)
        self.data.forget_journal(entry.task_id)
        self.data.release(entry.task_id)

    async def _send_transcript(self, entry: JournalEntry) -> None:
        path = Path(entry.transcript) if entry.transcript else None
        while path is not None and path.exists():
            messages, offset = read_batch(path, entry.transcript_offset)
            if not messages:
                return
            try:
                await self.client.messages(entry.task_id, entry.lease_token, messages)
            except Refused as exc:
                if exc.lease_lost or exc.credentials:
                    raise
                log.error("task.transcript_refused task_id=%s reason=%s", entry.task_id, exc)
                return
            entry.transcript_offset = offset

    async def _post_fallback_comment(self, entry: JournalEntry) -> None:
        """The agent's final answer as its comment, unless it commented itself."""
        assert entry.task_token is not None
        assert entry.comment is not None
        try:
            comments = await self.client.issue_comments(
                entry.workspace_id, entry.issue_key, entry.task_token
            )
            mine = [
                c["id"]
                for c in comments
                if (c.get("author") or {}).get("kind") == "agent"
                and (c.get("author") or {}).get("id") == entry.agent_id
            ]
            baseline = set(entry.comment_baseline or [])
            # Without a baseline (the server was unreachable when the agent started) any
            # comment of the agent on the issue counts as its own answer.
            if [c for c in mine if c not in baseline]:
                return
            await self.client.post_comment(
                entry.workspace_id, entry.issue_key, entry.task_token, entry.comment
            )
            log.info("task.commented task_id=%s issue=%s", entry.task_id, entry.issue_key)
        except Refused as exc:
            # 401: the task token died (the task ended meanwhile); 404: the issue is gone.
            log.warning("task.comment_skipped task_id=%s reason=%s", entry.task_id, exc)
