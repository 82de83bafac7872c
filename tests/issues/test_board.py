"""The board through the HTTP API: issues, statuses, labels, dependencies, comments,
mentions, inbox and timeline — including the unhappy paths."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from forgehall.agents.models import Agent
from forgehall.core.events import DomainEvent
from forgehall.db import search
from forgehall.db.engine import Database
from forgehall.issues.models import Issue, IssueEvent
from tests.conftest import Person, make_person, make_workspace, new_client

WS = "/api/v1/workspaces/team"


@pytest.fixture
async def api(app: FastAPI):  # type: ignore[no-untyped-def]
    async with app.router.lifespan_context(app), new_client(app, origin=None) as client:
        yield client


@pytest.fixture
async def team(db: Database) -> dict[str, Any]:
    owner = await make_person(db, "owner@example.com")
    member = await make_person(db, "mia@example.com")
    outsider = await make_person(db, "out@example.com")
    workspace = await make_workspace(db, owner, "team", {"member": member})
    other = await make_workspace(db, outsider, "other")
    async with db.session() as session:
        agent = Agent(workspace_id=workspace.id, name="claude")
        foreign_agent = Agent(workspace_id=other.id, name="foreign")
        session.add_all([agent, foreign_agent])
        await session.commit()
    return {
        "owner": owner,
        "member": member,
        "outsider": outsider,
        "agent": agent,
        "foreign_agent": foreign_agent,
        "workspace": workspace,
        "other": other,
    }


async def collect(subscription: Any, until: str, timeout: float = 5.0) -> list[DomainEvent]:
    """Events delivered to a subscription, up to and including the first ``until``."""
    events: list[DomainEvent] = []
    async with asyncio.timeout(timeout):
        while not events or events[-1].kind != until:
            events.append(await subscription.queue.get())
    return events


async def create(api: httpx.AsyncClient, person: Person, **body: Any) -> dict[str, Any]:
    response = await api.post(
        f"{WS}/issues", headers=person.headers, json={"title": "Something", **body}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def status_id(api: httpx.AsyncClient, person: Person, category: str) -> str:
    statuses = (await api.get(f"{WS}/statuses", headers=person.headers)).json()
    return str(next(s["id"] for s in statuses if s["category"] == category))


async def test_default_statuses_and_keys(api: httpx.AsyncClient, team: dict[str, Any]) -> None:
    owner = team["owner"]
    statuses = (await api.get(f"{WS}/statuses", headers=owner.headers)).json()
    assert [s["category"] for s in statuses] == [
        "backlog",
        "todo",
        "in_progress",
        "in_review",
        "done",
        "blocked",
        "cancelled",
    ]
    first = await create(api, owner, title="First")
    second = await create(api, owner, title="Second")
    assert (first["key"], second["key"]) == ("ENG-1", "ENG-2")
    assert first["status"]["category"] == "todo"
    assert first["creator"] == {"kind": "member", "id": owner.user.id}
    by_key = await api.get(f"{WS}/issues/ENG-2", headers=owner.headers)
    by_number = await api.get(f"{WS}/issues/2", headers=owner.headers)
    assert by_key.json()["id"] == by_number.json()["id"] == second["id"]


async def test_numbers_are_never_reused_and_unique_under_concurrency(
    api: httpx.AsyncClient, team: dict[str, Any], db: Database
) -> None:
    owner = team["owner"]
    results = await asyncio.gather(*(create(api, owner, title=f"t{i}") for i in range(20)))
    assert sorted(r["number"] for r in results) == list(range(1, 21))
    async with db.session() as session:
        issue = await session.scalar(select(Issue).where(Issue.number == 20))
        await session.delete(issue)
        await session.commit()
    assert (await create(api, owner))["number"] == 21


async def test_references_must_belong_to_the_workspace(
    api: httpx.AsyncClient, team: dict[str, Any], db: Database
) -> None:
    owner, outsider = team["owner"], team["outsider"]
    foreign_status = (
        await api.get("/api/v1/workspaces/other/statuses", headers=outsider.headers)
    ).json()[0]["id"]
    foreign_issue = (
        await api.post(
            "/api/v1/workspaces/other/issues", headers=outsider.headers, json={"title": "theirs"}
        )
    ).json()
    cases = [
        {"status_id": foreign_status},
        {"assignee": {"kind": "member", "id": outsider.user.id}},
        {"assignee": {"kind": "agent", "id": team["foreign_agent"].id}},
        {"parent": foreign_issue["key"]},
        {"label_ids": ["nope"]},
        {"priority": "critical"},
    ]
    for body in cases:
        response = await api.post(
            f"{WS}/issues", headers=owner.headers, json={"title": "x", **body}
        )
        assert response.status_code == 422, (body, response.text)
    async with db.read_session() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(Issue)
            .where(Issue.workspace_id == team["workspace"].id)
        )
    assert count == 0, "refused input changes nothing"
    assert (
        await api.get(f"{WS}/issues/{foreign_issue['id']}", headers=owner.headers)
    ).status_code == 404, "another workspace's issue id is 404 here"


async def test_update_with_revision_records_the_timeline(
    api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    owner, member = team["owner"], team["member"]
    issue = await create(api, owner, title="Old title")
    doing = await status_id(api, owner, "in_progress")
    bug = (await api.post(f"{WS}/labels", headers=owner.headers, json={"name": "bug"})).json()
    updated = await api.patch(
        f"{WS}/issues/{issue['key']}",
        headers=owner.headers,
        json={
            "revision": 1,
            "title": "New title",
            "status_id": doing,
            "priority": "high",
            "label_ids": [bug["id"]],
            "assignee": {"kind": "member", "id": member.user.id},
            "due_date": "2026-12-24",
        },
    )
    assert updated.status_code == 200, updated.text
    body = updated.json()
    assert body["revision"] == 2
    assert body["label_ids"] == [bug["id"]]
    stale = await api.patch(
        f"{WS}/issues/{issue['key']}",
        headers=owner.headers,
        json={"revision": 1, "title": "Lost update"},
    )
    assert stale.status_code == 409
    assert stale.json()["current_revision"] == 2
    timeline = (await api.get(f"{WS}/issues/{issue['key']}/timeline", headers=owner.headers)).json()
    fields = {e["field"]: (e["old_value"], e["new_value"]) for e in timeline}
    assert fields["title"] == ("Old title", "New title")
    assert fields["priority"] == ("none", "high")
    assert fields["status_id"][1] == doing
    assert fields["assignee"] == (None, f"member:{member.user.id}")
    assert fields["due_date"] == (None, "2026-12-24")
    assert fields["labels"] == ("", bug["id"])
    assert all(e["actor_user_id"] == owner.user.id for e in timeline)
    current = (await api.get(f"{WS}/issues/{issue['key']}", headers=owner.headers)).json()
    assert current["title"] == "New title", "the stale update changed nothing"
    inbox = (await api.get(f"{WS}/inbox", headers=member.headers)).json()
    assert [n["kind"] for n in inbox] == ["assigned"]


async def test_sub_issues_and_parent_cycles(api: httpx.AsyncClient, team: dict[str, Any]) -> None:
    owner = team["owner"]
    parent = await create(api, owner, title="Epic")
    child = await create(api, owner, title="Part", parent=parent["key"])
    await create(api, owner, title="Part 2", parent=parent["key"])
    assert child["parent"] == parent["key"]
    done = await status_id(api, owner, "done")
    await api.patch(
        f"{WS}/issues/{child['key']}",
        headers=owner.headers,
        json={"revision": 1, "status_id": done},
    )
    detail = (await api.get(f"{WS}/issues/{parent['key']}", headers=owner.headers)).json()
    assert (detail["sub_issues_done"], detail["sub_issues_total"]) == (1, 2)
    cycle = await api.patch(
        f"{WS}/issues/{parent['key']}",
        headers=owner.headers,
        json={"revision": 1, "parent": child["key"]},
    )
    assert cycle.status_code == 422
    listed = (
        await api.get(f"{WS}/issues", headers=owner.headers, params={"parent": parent["key"]})
    ).json()
    assert sorted(i["title"] for i in listed["items"]) == ["Part", "Part 2"]


async def test_dependencies_block_and_auto_unblock(
    app: FastAPI, api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    owner, agent = team["owner"], team["agent"]
    blocker_a = await create(api, owner, title="A")
    blocker_b = await create(api, owner, title="B")
    doing = await status_id(api, owner, "in_progress")
    blocked = await create(
        api, owner, title="C", status_id=doing, assignee={"kind": "agent", "id": agent.id}
    )
    for blocker in (blocker_a, blocker_b):
        response = await api.post(
            f"{WS}/issues/{blocked['key']}/dependencies",
            headers=owner.headers,
            json={"blocked_by": blocker["key"]},
        )
        assert response.status_code == 204, response.text
    detail = (await api.get(f"{WS}/issues/{blocked['key']}", headers=owner.headers)).json()
    assert detail["status"]["category"] == "blocked"
    assert detail["blocked_by"] == ["ENG-1", "ENG-2"]
    cycle = await api.post(
        f"{WS}/issues/{blocker_a['key']}/dependencies",
        headers=owner.headers,
        json={"blocked_by": blocked["key"]},
    )
    assert cycle.status_code == 422
    assert cycle.json()["cycle"] == ["ENG-3", "ENG-1", "ENG-3"], "names the whole cycle"
    assert "ENG-3" in cycle.json()["detail"]
    subscription = app.state.events.subscribe(team["workspace"].id)
    done = await status_id(api, owner, "done")
    await api.patch(
        f"{WS}/issues/{blocker_a['key']}",
        headers=owner.headers,
        json={"revision": 1, "status_id": done},
    )
    still = (await api.get(f"{WS}/issues/{blocked['key']}", headers=owner.headers)).json()
    assert still["status"]["category"] == "blocked", "one blocker is still open"
    await api.patch(
        f"{WS}/issues/{blocker_b['key']}",
        headers=owner.headers,
        json={"revision": 1, "status_id": done},
    )
    freed = (await api.get(f"{WS}/issues/{blocked['key']}", headers=owner.headers)).json()
    assert freed["status"]["id"] == doing, "back to the status it had before"
    events = await collect(subscription, until="issue.unblocked")
    assert [e.data["issue_id"] for e in events if e.kind == "issue.unblocked"] == [blocked["id"]]
    subscription.close()


async def test_comments_mentions_and_inbox(
    api: httpx.AsyncClient, team: dict[str, Any], app: FastAPI
) -> None:
    owner, member, agent = team["owner"], team["member"], team["agent"]
    issue = await create(api, owner, title="Discuss")
    subscription = app.state.events.subscribe(team["workspace"].id)
    comment = await api.post(
        f"{WS}/issues/{issue['key']}/comments",
        headers=owner.headers,
        json={"body": "@mia and @claude, please look. @nobody ignored"},
    )
    assert comment.status_code == 201, comment.text
    inbox = (await api.get(f"{WS}/inbox", headers=member.headers)).json()
    assert [n["kind"] for n in inbox] == ["mentioned"]
    assert (await api.get(f"{WS}/inbox/unread-count", headers=member.headers)).json() == {
        "unread": 1
    }
    kinds = [
        (e.kind, e.data.get("agent_id"))
        for e in await collect(subscription, until="agent.mentioned")
    ]
    assert ("agent.mentioned", agent.id) in kinds
    assert ("comment.created", None) in kinds
    subscription.close()
    reply = await api.post(
        f"{WS}/issues/{issue['key']}/comments",
        headers=member.headers,
        json={"body": "On it", "parent_id": comment.json()["id"]},
    )
    assert reply.json()["parent_id"] == comment.json()["id"]
    owner_inbox = (await api.get(f"{WS}/inbox", headers=owner.headers)).json()
    assert [n["kind"] for n in owner_inbox] == ["commented"], "the creator follows the issue"
    marked = await api.patch(
        f"{WS}/inbox/{inbox[0]['id']}",
        headers=member.headers,
        json={"read": True, "archived": True},
    )
    assert marked.json()["read_at"] is not None
    assert (await api.get(f"{WS}/inbox/unread-count", headers=member.headers)).json() == {
        "unread": 0
    }
    assert (
        await api.patch(f"{WS}/inbox/{inbox[0]['id']}", headers=owner.headers, json={"read": True})
    ).status_code == 404, "not your notification"


async def test_comment_edits_history_and_deletion(
    api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    owner, member = team["owner"], team["member"]
    issue = await create(api, owner)
    comment = (
        await api.post(
            f"{WS}/issues/{issue['key']}/comments", headers=member.headers, json={"body": "first"}
        )
    ).json()
    assert (
        await api.patch(
            f"{WS}/comments/{comment['id']}", headers=owner.headers, json={"body": "hijack"}
        )
    ).status_code == 403
    edited = await api.patch(
        f"{WS}/comments/{comment['id']}", headers=member.headers, json={"body": "second"}
    )
    assert edited.json()["edited"] is True
    history = (
        await api.get(f"{WS}/comments/{comment['id']}/history", headers=member.headers)
    ).json()
    assert [h["body"] for h in history] == ["first"]
    assert (
        await api.delete(f"{WS}/comments/{comment['id']}", headers=owner.headers)
    ).status_code == 204, "an admin may delete any comment"
    assert (
        await api.get(f"{WS}/issues/{issue['key']}/comments", headers=owner.headers)
    ).json() == []
    invalid = await api.post(
        f"{WS}/issues/{issue['key']}/comments",
        headers=member.headers,
        json={"body": "<script>alert(1)</script> **not** an error"},
    )
    assert invalid.status_code == 201, "any Markdown is stored as text"


async def test_listing_filters_sorting_and_cursor_pagination(
    api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    owner, member = team["owner"], team["member"]
    for i in range(7):
        await create(
            api,
            owner,
            title=f"Issue {i}",
            priority="high" if i % 2 else "low",
            description="needle in here" if i == 3 else "",
            assignee={"kind": "member", "id": member.user.id} if i < 2 else None,
        )
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3, "sort": "-number"}
        if cursor:
            params["cursor"] = cursor
        page = (await api.get(f"{WS}/issues", headers=owner.headers, params=params)).json()
        seen += [i["key"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"ENG-{n}" for n in range(7, 0, -1)]
    high = (
        await api.get(f"{WS}/issues", headers=owner.headers, params={"priority": "high"})
    ).json()["items"]
    assert len(high) == 3
    mine = (
        await api.get(f"{WS}/issues", headers=member.headers, params={"assignee": "me"})
    ).json()["items"]
    assert [i["title"] for i in mine] == ["Issue 0", "Issue 1"]
    text = (await api.get(f"{WS}/issues", headers=owner.headers, params={"q": "NEEDLE"})).json()[
        "items"
    ]
    assert [i["title"] for i in text] == ["Issue 3"]
    for bad in ({"sort": "bogus"}, {"cursor": "%%%"}, {"assignee": "robot"}):
        assert (
            await api.get(f"{WS}/issues", headers=owner.headers, params=bad)
        ).status_code == 422, bad


async def test_unknown_and_foreign_ids_are_404(
    api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    owner, outsider = team["owner"], team["outsider"]
    await create(api, owner)
    for path in (f"{WS}/issues/ENG-99", f"{WS}/issues/ENG-1/comments"):
        response = await api.get(path, headers=outsider.headers)
        assert response.status_code == 404
    assert (await api.get(f"{WS}/issues/ENG-99", headers=owner.headers)).status_code == 404


async def test_events_are_recorded_in_the_same_transaction(
    api: httpx.AsyncClient, team: dict[str, Any], db: Database
) -> None:
    owner = team["owner"]
    issue = await create(api, owner)
    async with db.read_session() as session:
        created = await session.scalar(
            select(func.count()).select_from(IssueEvent).where(IssueEvent.issue_id == issue["id"])
        )
    assert created == 1


async def test_full_text_search_ranks_titles_descriptions_and_comments(
    api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    owner = team["owner"]
    title_hit = await create(api, owner, title="Login redirect loops forever")
    body_hit = await create(
        api, owner, title="Session bug", description="After login the redirect is wrong"
    )
    comment_hit = await create(api, owner, title="Unrelated")
    await create(api, owner, title="Nothing to see")
    await api.post(
        f"{WS}/issues/{comment_hit['key']}/comments",
        headers=owner.headers,
        json={"body": "I think the login redirect is involved"},
    )

    async def search(text: str, **params: Any) -> list[str]:
        response = await api.get(
            f"{WS}/issues", headers=owner.headers, params={"q": text, **params}
        )
        assert response.status_code == 200, response.text
        return [i["key"] for i in response.json()["items"]]

    found = await search("login redir")
    assert set(found) == {title_hit["key"], body_hit["key"], comment_hit["key"]}
    assert found[-1] == comment_hit["key"], "a comment match ranks below the issue's own text"
    assert await search("LOGIN") == await search("login"), "case does not matter"
    assert await search("loops") == [title_hit["key"]]
    assert await search("'; DROP TABLE issues; --") == []
    assert await search('"unbalanced') == []
    assert await search("***") == [], "no searchable words: nothing, not everything"
    paged = await search("login", limit=2)
    assert len(paged) == 2
    renamed = await api.patch(
        f"{WS}/issues/{title_hit['key']}",
        headers=owner.headers,
        json={"revision": 1, "title": "Spinner never stops"},
    )
    assert renamed.status_code == 200
    assert title_hit["key"] not in await search("loops"), "the index follows edits"
    assert await search("spinner") == [title_hit["key"]]
    comments = (
        await api.get(f"{WS}/issues/{comment_hit['key']}/comments", headers=owner.headers)
    ).json()
    await api.delete(f"{WS}/comments/{comments[0]['id']}", headers=owner.headers)
    assert comment_hit["key"] not in await search("involved"), "deleted comments vanish"
    other = await api.get(
        "/api/v1/workspaces/other/issues", headers=team["outsider"].headers, params={"q": "login"}
    )
    assert other.json()["items"] == [], "search never crosses workspaces"


async def test_search_cursor_pagination_walks_every_match(
    api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    owner = team["owner"]
    for i in range(5):
        await create(api, owner, title=f"needle {'needle ' * i}haystack {i}")
    keys: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"q": "needle", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await api.get(f"{WS}/issues", headers=owner.headers, params=params)).json()
        keys += [i["key"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(keys) == [f"ENG-{n}" for n in range(1, 6)]
    assert len(set(keys)) == 5


async def walk(
    api: httpx.AsyncClient, person: Person, limit: int, **params: Any
) -> list[dict[str, Any]]:
    """Every page of a listing, following ``next_cursor``; the items in order."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query: dict[str, Any] = {**params, "limit": limit}
        if cursor:
            query["cursor"] = cursor
        page = await api.get(f"{WS}/issues", headers=person.headers, params=query)
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if not cursor:
            return items


def updated(item: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(item["updated_at"])


async def window_ids(db: Database, workspace_id: str, words: str) -> set[str]:
    """The issues of the ranking window (db/search.py) for ``words``."""
    ranked = search.ranked_issue_ids(db.dialect, workspace_id, words)
    assert ranked is not None
    async with db.read_session() as session:
        return set((await session.execute(select(ranked.c.issue_id))).scalars())


async def test_search_ranks_the_newest_matches_first_then_every_other_match(
    api: httpx.AsyncClient, team: dict[str, Any], db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ranking window (db/search.py): a search ranks only the newest matching
    documents, then lists every other match, most recently updated first; paging through
    it is stable and finds each match once."""
    monkeypatch.setattr(search, "RANKING_WINDOW", 4)
    owner = team["owner"]
    created = [await create(api, owner, title=f"needle number {i}") for i in range(8)]
    await create(api, owner, title="no match here")
    newest_first = [issue["key"] for issue in reversed(created)]
    # PostgreSQL ranks the 2 newest issues and 2 newest comments, SQLite the 4 newest
    # documents of either kind: here, the newest 2 or 4 issues come first.
    ranked = 2 if db.dialect == "postgresql" else 4
    assert len(await window_ids(db, team["workspace"].id, "needl")) == ranked

    async def keys(limit: int) -> list[str]:
        return [i["key"] for i in await walk(api, owner, limit, q="needl")]

    one_page = await keys(50)
    assert set(one_page[:ranked]) == set(newest_first[:ranked])
    assert one_page[ranked:] == newest_first[ranked:], "then the others, newest first"
    assert await keys(1) == one_page, "page by page: the same issues, same order, once each"
    assert await keys(3) == one_page, "and again"
    # A comment on an old issue is a new matching document: it enters the window.
    await api.post(
        f"{WS}/issues/{created[0]['key']}/comments",
        headers=owner.headers,
        json={"body": "the needle is back"},
    )
    assert (await keys(50)).index(created[0]["key"]) < 4
    # Reversed: the unranked matches first (oldest first), the window last.
    reverse = [i["key"] for i in await walk(api, owner, 2, q="needl", sort="-relevance")]
    assert sorted(reverse) == sorted(one_page)
    window = {
        i["key"] for i in created if i["id"] in await window_ids(db, team["workspace"].id, "needl")
    }
    assert set(reverse[-len(window) :]) == window
    # With fewer matches than the window, every match is ranked.
    monkeypatch.setattr(search, "RANKING_WINDOW", 1000)
    assert sorted(await keys(3)) == sorted(i["key"] for i in created)


@pytest.mark.parametrize(
    ("collect_limit", "candidate_limit", "word"),
    [(1, 0, "needle"), (5000, 0, "needle"), (5000, 2000, "needle"), (5000, 2000, "need")],
    ids=["check-each", "collect", "few-candidates", "few-candidates-short-word"],
)
async def test_search_with_filters_and_sorts_finds_every_match(
    api: httpx.AsyncClient,
    team: dict[str, Any],
    db: Database,
    monkeypatch: pytest.MonkeyPatch,
    collect_limit: int,
    candidate_limit: int,
    word: str,
) -> None:
    """A search is also a filter: with any other filter and any sort, paging through the
    results yields exactly the issues matching the words and the filters — including
    the oldest ones, far outside a (tiny) ranking window that newer matches fill. Every
    way of testing "matches" runs: collecting the matches; checking issue by issue after
    counting them; checking the few issues the filters leave without counting; and, on
    SQLite, a word short enough for the prefix indexes (a seek per document)."""
    monkeypatch.setattr(search, "RANKING_WINDOW", 3)
    monkeypatch.setattr(search, "COLLECT_LIMIT", collect_limit)
    monkeypatch.setattr(search, "CANDIDATE_LIMIT", candidate_limit)
    owner, member = team["owner"], team["member"]
    bug = (await api.post(f"{WS}/labels", headers=owner.headers, json={"name": "bug"})).json()
    done, todo = await status_id(api, owner, "done"), await status_id(api, owner, "todo")
    parent = await create(api, owner, title="Parent of things")
    to_member = {"kind": "member", "id": member.user.id}
    wanted = {
        "status_id": done,
        "priority": "high",
        "label_ids": [bug["id"]],
        "assignee": to_member,
        "parent": parent["key"],
    }
    expected: dict[str, dict[str, Any]] = {}  # key -> the facts the filters look at

    async def issue(title: str, matches: bool, **fields: Any) -> dict[str, Any]:
        made = await create(api, owner, title=title, **fields)
        expected[made["key"]] = {**fields, "matches": matches}
        return made

    async def comment(made: dict[str, Any], body: str) -> dict[str, Any]:
        response = await api.post(
            f"{WS}/issues/{made['key']}/comments", headers=owner.headers, json={"body": body}
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    # The oldest issues are the ones the filters want.
    await issue("Needle in the title", True, **wanted)
    by_comment = await issue("Only a comment has it", True, **wanted)
    await comment(by_comment, "found the needle here")
    await issue("Needle with low priority", True, **{**wanted, "priority": "low"})
    hidden = await issue("Deleted comment only", False, **wanted)
    gone = await comment(hidden, "a needle that was deleted")
    assert (
        await api.delete(f"{WS}/comments/{gone['id']}", headers=owner.headers)
    ).status_code == 204
    await issue("Haystack", False, **wanted)
    await issue("Needle not assigned", True, **{**wanted, "assignee": None})
    # Newer matches fill the window many times over: open issues, their comments.
    for i in range(6):
        newer = await issue(f"needle newer {i}", True, status_id=todo, priority="high")
        await comment(newer, f"another needle {i}")
    workspace_id = team["workspace"].id
    window = await window_ids(db, workspace_id, word)
    assert not window & {
        (await api.get(f"{WS}/issues/{key}", headers=owner.headers)).json()["id"]
        for key, facts in expected.items()
        if facts.get("status_id") == done
    }, "the issues asked for are all outside the ranking window"

    filters: list[tuple[dict[str, Any], Any]] = [
        ({}, lambda facts: True),
        ({"category": "done"}, lambda facts: facts.get("status_id") == done),
        ({"status": done}, lambda facts: facts.get("status_id") == done),
        ({"priority": "high"}, lambda facts: facts.get("priority") == "high"),
        ({"label": bug["id"]}, lambda facts: bug["id"] in facts.get("label_ids", [])),
        ({"assignee": f"member:{member.user.id}"}, lambda facts: facts.get("assignee")),
        ({"parent": parent["key"]}, lambda facts: facts.get("parent") == parent["key"]),
        (
            {"category": "done", "priority": "high", "label": bug["id"]},
            lambda facts: facts.get("status_id") == done and facts.get("priority") == "high",
        ),
    ]
    for params, keep in filters:
        matching = {key for key, facts in expected.items() if facts["matches"] and keep(facts)}
        assert matching, params
        for sort in (None, "-relevance", "created", "-updated"):
            extra = {"sort": sort} if sort else {}
            everything = await walk(api, owner, 50, q=word, **params, **extra)
            keys = [i["key"] for i in everything]
            assert sorted(keys) == sorted(matching), (params, sort)
            paged = await walk(api, owner, 2, q=word, **params, **extra)
            assert [i["key"] for i in paged] == keys, (params, sort)
            if sort in (None, "-relevance"):
                ranked = [i for i in everything if i["id"] in window]
                rest = [i for i in everything if i["id"] not in window]
                by_update = sorted(rest, key=lambda i: i["id"])
                by_update.sort(key=lambda i: updated(i), reverse=sort is None)
                if sort is None:
                    assert everything == ranked + by_update, params
                else:
                    assert everything == by_update + ranked, params
    # A search still never crosses workspaces, and text without words matches nothing.
    assert await walk(api, owner, 50, q=word, category="blocked") == []
    assert await walk(api, owner, 50, q="***", category="done") == []


async def test_label_filter_with_and_without_a_status_filter(
    api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    """A label filter takes two SQL shapes (IN without a status filter, EXISTS with one);
    both select the same issues."""
    owner = team["owner"]
    bug = (await api.post(f"{WS}/labels", headers=owner.headers, json={"name": "bug"})).json()
    ui = (await api.post(f"{WS}/labels", headers=owner.headers, json={"name": "ui"})).json()
    doing = await status_id(api, owner, "in_progress")
    expected_bug_doing_high: list[str] = []
    for i in range(12):
        labels = [bug["id"]] if i % 2 else [ui["id"]]
        if i % 3 == 0:
            labels.append(ui["id"] if i % 2 else bug["id"])
        issue = await create(
            api,
            owner,
            title=f"Issue {i}",
            status_id=doing if i % 4 else None,
            priority="high" if i < 8 else "low",
            label_ids=sorted(set(labels)),
        )
        if i % 4 and i < 8 and bug["id"] in labels:
            expected_bug_doing_high.append(issue["key"])

    async def keys(**params: Any) -> list[str]:
        found: list[str] = []
        cursor = None
        while True:
            query: dict[str, Any] = {"sort": "-updated", "limit": 2, **params}
            if cursor:
                query["cursor"] = cursor
            page = await api.get(f"{WS}/issues", headers=owner.headers, params=query)
            assert page.status_code == 200, page.text
            found += [i["key"] for i in page.json()["items"]]
            cursor = page.json()["next_cursor"]
            if not cursor:
                return found

    everything = await keys()
    with_bug = await keys(label=bug["id"])
    both = await keys(label=[bug["id"], ui["id"]])
    assert both, "some issues carry both labels"
    assert set(both) < set(with_bug), "every label must match"
    filtered = await keys(category="in_progress", priority="high", label=bug["id"])
    assert sorted(filtered) == sorted(expected_bug_doing_high)
    assert filtered == [k for k in everything if k in expected_bug_doing_high], "newest first"
    by_status = await keys(status=doing, label=[bug["id"], ui["id"]])
    assert by_status == [k for k in both if k in await keys(status=doing)]


async def test_review_fixes_due_sort_edited_blank_titles_prefixes_inbox_keys(
    api: httpx.AsyncClient, team: dict[str, Any]
) -> None:
    owner, member = team["owner"], team["member"]
    for i in range(5):
        await create(api, owner, title=f"t{i}", due_date=f"2026-12-0{i + 1}" if i < 2 else None)
    keys: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"sort": "due", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = await api.get(f"{WS}/issues", headers=owner.headers, params=params)
        assert page.status_code == 200, page.text
        keys += [i["key"] for i in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if not cursor:
            break
    assert keys[:2] == ["ENG-1", "ENG-2"], "dated issues first"
    assert sorted(keys) == [f"ENG-{n}" for n in range(1, 6)], "empty dates come last, once"
    comment = await api.post(
        f"{WS}/issues/ENG-1/comments", headers=owner.headers, json={"body": "@mia hello"}
    )
    assert comment.json()["edited"] is False
    blank = await api.post(f"{WS}/issues", headers=owner.headers, json={"title": "   "})
    assert blank.status_code == 422
    assert (await api.get(f"{WS}/issues/FOO-1", headers=owner.headers)).status_code == 404
    assert (await api.get(f"{WS}/issues/eng-1", headers=owner.headers)).status_code == 200
    inbox = (await api.get(f"{WS}/inbox", headers=member.headers)).json()
    assert [n["issue_key"] for n in inbox] == ["ENG-1"]
