"""Group commit for ledger appends: the appends one process receives at the same time
share one INSERT and one commit.

An append's cost on a busy server is its transaction (a round trip for the INSERT, one
for the COMMIT and the driver's work around them), not its rows: eight entries in one
call cost about what one does. So the first append to arrive *leads*: it inserts its rows
and commits in its own session. Appends that arrive while it does so *follow*: they queue
their rows and wait. When the leader has committed it answers its own caller and hands
the lead to the first follower still waiting, which inserts the rows of every follower
queued by then in one statement (in arrival order, so each caller's entries keep their
order), commits, and answers each of them with its own ids. No follower is answered
before the commit that stored its rows; nothing waits for a timer — under no load an
append leads alone and costs what it did before.

Rules that keep it safe:

- A follower first commits its own session (its request may have written: a token's
  ``last_used_at``), before it queues its rows, so it holds no lock while it waits: a
  leader needing that row would otherwise wait for the follower that waits for it, and
  no database sees a cycle that runs through a Python future. Committing also returns
  the follower's connection to the pool (on SQLite: the single writer).
- When the shared INSERT fails (one caller's row refused by the database), the leader
  rolls back and every caller of that group inserts its own rows alone, so only the
  caller whose rows were bad gets the error. When the COMMIT itself fails the outcome is
  unknown; every caller of the group gets the error, as it would from its own commit.
- A follower cancelled while waiting leaves the queue (or passes on the lead it was
  given); its rows may still be stored if a leader had already taken them, exactly as
  when a client disconnects after the commit.
- The rows of one group are bounded (:data:`MAX_GROUP_ROWS`); the rest wait for the next.

Groups are per process and per database engine; replicas do not wait for each other.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncSession

Rows = list[dict[str, Any]]
Write = Callable[[AsyncSession, Rows], Awaitable[list[int]]]

#: The most rows one shared INSERT carries (a caller's own rows are never split).
MAX_GROUP_ROWS = 1000


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_LEAD = _Signal("LEAD")  # the waiter now leads: it writes the queued rows itself
_ALONE = _Signal("ALONE")  # the shared INSERT failed: write your own rows alone


class GroupCommitError(RuntimeError):
    """The commit of a group this append belonged to failed; whether the rows were
    stored is unknown (as after a failed commit of one's own)."""


@dataclass(eq=False)
class _Waiter:
    rows: Rows
    future: asyncio.Future[list[int] | _Signal]


@dataclass(eq=False)
class _Group:
    loop: asyncio.AbstractEventLoop
    waiting: list[_Waiter] = field(default_factory=list)
    leading: bool = False


_GROUPS: weakref.WeakKeyDictionary[Engine, _Group] = weakref.WeakKeyDictionary()


def _group_of(session: AsyncSession) -> _Group:
    engine = session.sync_session.bind
    assert isinstance(engine, Engine), "sessions are bound to one engine"
    loop = asyncio.get_running_loop()
    group = _GROUPS.get(engine)
    if group is None or group.loop is not loop:
        group = _GROUPS[engine] = _Group(loop)
    return group


async def write_grouped(session: AsyncSession, rows: Rows, write: Write) -> list[int]:
    """Store ``rows`` with ``write`` (one INSERT … RETURNING the ids, in order) and
    commit, sharing the INSERT and the commit with the appends waiting at the same time.
    Returns the ids of ``rows``, in order, once they are committed. ``session`` is
    committed (or, on failure, rolled back) on return."""
    group = _group_of(session)
    if group.leading and session.in_transaction():
        await session.commit()  # about to wait: hold no lock and no connection meanwhile
    me = _Waiter(rows, group.loop.create_future())
    group.waiting.append(me)
    if not group.leading:  # (the lead may have ended during that commit)
        return await _lead(group, session, me, write)
    try:
        outcome = await me.future
    except BaseException:
        _leave(group, me)
        raise
    if outcome is _LEAD:
        return await _lead(group, session, me, write)
    if outcome is _ALONE:
        return await _alone(session, rows, write)
    assert not isinstance(outcome, _Signal)
    return outcome


async def _alone(session: AsyncSession, rows: Rows, write: Write) -> list[int]:
    ids = await write(session, rows)
    await session.commit()
    return ids


def _leave(group: _Group, me: _Waiter) -> None:
    """A follower gives up (cancelled): out of the queue, and the lead passed on if it
    had just been handed it."""
    if me in group.waiting:
        group.waiting.remove(me)
    future = me.future
    if future.done() and not future.cancelled() and future.result() is _LEAD:
        _hand_off(group)


def _hand_off(group: _Group) -> None:
    """Give the lead to the first follower still waiting, or end the group's lead."""
    group.waiting = [w for w in group.waiting if not w.future.done()]
    if group.waiting:
        group.waiting[0].future.set_result(_LEAD)
    else:
        group.leading = False


def _take(group: _Group, me: _Waiter) -> list[_Waiter]:
    """The leader's batch: itself first, then the followers in arrival order, up to
    :data:`MAX_GROUP_ROWS` rows."""
    group.waiting.remove(me)
    batch, size = [me], len(me.rows)
    while group.waiting:
        waiter = group.waiting[0]
        if waiter.future.done():  # cancelled while queued
            group.waiting.pop(0)
            continue
        if size + len(waiter.rows) > MAX_GROUP_ROWS:
            break
        batch.append(group.waiting.pop(0))
        size += len(waiter.rows)
    return batch


def _answer(waiters: list[_Waiter], outcome: _Signal | BaseException) -> None:
    for waiter in waiters:
        if waiter.future.done():
            continue
        if isinstance(outcome, BaseException):
            waiter.future.set_exception(outcome)
        else:
            waiter.future.set_result(outcome)


async def _lead(group: _Group, session: AsyncSession, me: _Waiter, write: Write) -> list[int]:
    group.leading = True
    batch = _take(group, me)
    followers = batch[1:]
    try:
        try:
            ids = await write(session, [row for waiter in batch for row in waiter.rows])
        except BaseException as exc:
            _answer(followers, _ALONE)
            if not followers or not isinstance(exc, Exception):
                raise
            await session.rollback()
            return await _alone(session, me.rows, write)
        try:
            await session.commit()
        except BaseException as exc:
            for waiter in followers:
                _answer([waiter], GroupCommitError(f"the shared commit failed: {exc!r}"))
            raise
        offset = len(me.rows)
        for waiter in followers:
            if not waiter.future.done():
                waiter.future.set_result(ids[offset : offset + len(waiter.rows)])
            offset += len(waiter.rows)
        return ids[: len(me.rows)]
    finally:
        _hand_off(group)
