"""Group commit of ledger appends (``ledger.grouping``), on SQLite and PostgreSQL:
appends arriving together share one INSERT and one commit, each caller gets its own ids
once they are committed, a row the database refuses fails only its own caller, a failed
shared commit fails every caller of the group, a waiting caller holds no lock, and a
cancelled caller neither stalls the others nor loses their rows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, Text, event, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from forgehall.core.security import Vault
from forgehall.db.engine import Database
from forgehall.db.types import install_vault
from forgehall.identity.auth import Principal
from forgehall.ledger import grouping, service
from forgehall.ledger.models import LedgerPending
from forgehall.ledger.schemas import EntriesIn
from forgehall.settings import Settings
from forgehall.workspaces.access import Access, Role
from tests.conftest import make_person, make_workspace
from tests.ledger.test_server import entry

Rows = list[dict[str, Any]]
Result = list[int] | BaseException

CHILD = Table(
    "grp_child",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("tag", Text),
    Column("parent", Integer),
)


@pytest.fixture
async def child_table(db: Database) -> None:
    """A scratch table whose ``parent`` is a foreign key checked only at COMMIT (so a row
    can pass its INSERT and fail the commit) and whose ``tag`` is NOT NULL (so a row can
    fail its INSERT), on both databases."""
    key = "INTEGER PRIMARY KEY" if db.is_sqlite else "SERIAL PRIMARY KEY"
    async with db.session() as session:
        await session.execute(text("CREATE TABLE grp_parent (id INTEGER PRIMARY KEY, n INTEGER)"))
        await session.execute(
            text(
                f"CREATE TABLE grp_child (id {key}, tag TEXT NOT NULL, parent INTEGER "
                "REFERENCES grp_parent (id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
        await session.execute(text("INSERT INTO grp_parent (id, n) VALUES (1, 0)"))
        await session.commit()


async def insert_children(session: AsyncSession, rows: Rows) -> list[int]:
    statement = insert(CHILD).returning(CHILD.c.id, sort_by_parameter_order=True)
    result = await session.execute(statement, rows)
    return [int(i) for i in result.scalars()]


def children(*tags: str | None, parent: int = 1) -> Rows:
    return [{"tag": tag, "parent": parent} for tag in tags]


async def append(db: Database, rows: Rows, write: grouping.Write = insert_children) -> list[int]:
    async with db.session() as session:
        return await grouping.write_grouped(session, rows, write)


async def stored(db: Database) -> dict[int, str]:
    async with db.read_session() as session:
        return {i: t for i, t in (await session.execute(select(CHILD.c.id, CHILD.c.tag))).all()}


@contextmanager
def counting_commits(db: Database) -> Iterator[Callable[[], int]]:
    """How many transactions the engine committed meanwhile."""
    seen: list[object] = []

    def _commit(connection: object) -> None:
        seen.append(connection)

    engine = db.engine.sync_engine
    event.listen(engine, "commit", _commit)
    try:
        yield lambda: len(seen)
    finally:
        event.remove(engine, "commit", _commit)


class Blocking:
    """A write that, when the first row's tag is one it holds, says so (``holding[tag]``)
    and waits for ``release[tag]`` before inserting."""

    def __init__(self, *held: str) -> None:
        self.holding = {tag: asyncio.Event() for tag in held}
        self.release = {tag: asyncio.Event() for tag in held}

    async def __call__(self, session: AsyncSession, rows: Rows) -> list[int]:
        tag = rows[0]["tag"]
        if tag in self.holding:
            self.holding[tag].set()
            await self.release[tag].wait()
        return await insert_children(session, rows)


async def queued(count: int) -> None:
    """Let ``count`` freshly created tasks run up to their first wait."""
    for _ in range(count + 1):
        await asyncio.sleep(0)


async def test_appends_arriving_together_share_one_insert_and_get_their_own_ids(
    db: Database, settings: Settings
) -> None:
    assert settings.encryption_key is not None
    install_vault(Vault(settings.encryption_key.get_secret_value()))  # as the app does
    owner = await make_person(db, "owner@example.com")
    workspace = await make_workspace(db, owner, "team")
    access = Access(workspace, Principal(user=owner.user, kind="pat"), Role.OWNER, Role.OWNER)

    async def one(body: EntriesIn) -> service.AppendResult:
        async with db.session() as session:
            return await service.append_entries(session, access, settings, body)

    await one(EntriesIn.model_validate({"entries": [entry("first")]}))  # creates the head
    bodies = [
        EntriesIn.model_validate({"entries": [entry(f"g{n}-{i}") for i in range(1 + n % 3)]})
        for n in range(12)
    ]
    with counting_commits(db) as commits:
        results = await asyncio.gather(*(one(body) for body in bodies))
        # The first leads alone; the eleven that arrived meanwhile share the next commit.
        assert commits() == 2
        await one(EntriesIn.model_validate({"entries": [entry("after")]}))
        assert commits() == 3, "the lead was given back: a lone append commits at once"
    async with db.read_session() as session:
        rows = (await session.execute(select(LedgerPending.id, LedgerPending.entry))).all()
    gate_of = {i: json.loads(e)["gate_id"] for i, e in rows}
    assert len(gate_of) == 1 + sum(len(b.entries) for b in bodies) + 1
    for body, result in zip(bodies, results, strict=True):
        assert [gate_of[i] for i in result.submissions] == [e.gate_id for e in body.entries]
        assert result.submissions == sorted(result.submissions), "a caller's order is kept"


async def test_a_row_refused_by_the_database_fails_only_its_own_append(
    db: Database, child_table: None
) -> None:
    tags: list[tuple[str | None, ...]] = [("a",), ("b1", "b2"), (None,), ("d",), ("e",)]
    with counting_commits(db) as commits:
        results: list[Result] = await asyncio.gather(
            *(append(db, children(*t)) for t in tags), return_exceptions=True
        )
        # a alone; b, None, d, e together, refused; then each of those alone (None fails).
        assert commits() == 1 + 3
    assert isinstance(results[2], IntegrityError), results[2]
    table = await stored(db)
    for group, result in zip(tags, results, strict=True):
        if group != (None,):
            assert isinstance(result, list), result
            assert [table[i] for i in result] == list(group)
    assert sorted(table.values()) == ["a", "b1", "b2", "d", "e"]


async def test_a_failed_shared_commit_fails_every_append_of_the_group(
    db: Database, child_table: None
) -> None:
    held = Blocking("a")
    first = asyncio.create_task(append(db, children("a"), held))
    await held.holding["a"].wait()
    group = [
        asyncio.create_task(append(db, rows, held))
        for rows in (children("b"), children("c", parent=99), children("d"))
    ]
    await queued(len(group))
    held.release["a"].set()
    assert len(await first) == 1
    results = await asyncio.gather(*group, return_exceptions=True)
    # b led the group: the commit's own error; c and d: told the shared commit failed.
    assert isinstance(results[0], IntegrityError), results[0]
    for result in results[1:]:
        assert isinstance(result, grouping.GroupCommitError), result
        assert "shared commit failed" in str(result)
    assert sorted((await stored(db)).values()) == ["a"], "nothing of the group is stored"
    assert len(await append(db, children("after"))) == 1, "the group does not stay stuck"


async def test_a_waiting_append_holds_no_lock(db: Database, child_table: None) -> None:
    async def touch_then_insert(session: AsyncSession, rows: Rows) -> list[int]:
        await session.execute(text("UPDATE grp_parent SET n = n + 1 WHERE id = 1"))
        return await insert_children(session, rows)

    async with db.session() as waiting:
        # This request has written (a lock on PostgreSQL, the writer on SQLite) ...
        await waiting.execute(text("UPDATE grp_parent SET n = n + 1 WHERE id = 1"))
        # ... when it joins a group whose leader needs that same row.
        leader = asyncio.create_task(append(db, children("leader"), touch_then_insert))
        await queued(1)
        follower = grouping.write_grouped(waiting, children("follower"), touch_then_insert)
        ids = await asyncio.wait_for(follower, timeout=20)
    assert len(await asyncio.wait_for(leader, timeout=20)) == 1
    assert [(await stored(db))[i] for i in ids] == ["follower"]
    async with db.read_session() as session:
        assert await session.scalar(text("SELECT n FROM grp_parent WHERE id = 1")) == 3


async def test_a_cancelled_append_stalls_nobody_and_loses_no_one_elses_rows(
    db: Database, child_table: None
) -> None:
    held = Blocking("x", "leader")
    first = asyncio.create_task(append(db, children("x"), held))
    await held.holding["x"].wait()
    # Queued behind x: "quitter" is cancelled while it waits.
    waiting = {
        tag: asyncio.create_task(append(db, children(tag), held))
        for tag in ("leader", "quitter", "kept")
    }
    await queued(len(waiting))
    waiting["quitter"].cancel()
    held.release["x"].set()
    assert len(await first) == 1
    # "leader" leads the next group (itself and "kept") and is held in its write: cancel it.
    await held.holding["leader"].wait()
    waiting["leader"].cancel()
    kept = await asyncio.wait_for(waiting["kept"], timeout=20)  # retried alone
    for tag in ("quitter", "leader"):
        with pytest.raises(asyncio.CancelledError):
            await waiting[tag]
    table = await stored(db)
    assert [table[i] for i in kept] == ["kept"]
    assert sorted(table.values()) == ["kept", "x"]
    assert len(await append(db, children("after"))) == 1, "the group does not stay stuck"


async def test_a_cancelled_caller_handed_the_lead_passes_it_on() -> None:
    loop = asyncio.get_running_loop()
    group = grouping._Group(loop, leading=True)
    first, second = (grouping._Waiter([{}], loop.create_future()) for _ in range(2))
    group.waiting = [first, second]
    grouping._hand_off(group)
    assert first.future.result() is grouping._LEAD
    assert not second.future.done()
    grouping._leave(group, first)  # cancelled before it could lead
    assert second.future.result() is grouping._LEAD
    assert group.waiting == [second]
    assert group.leading
    grouping._leave(group, second)
    assert group.waiting == []
    assert not group.leading
