"""Board commands: issues, comments, dependencies and the inbox, over the HTTP API.

Names typed on the command line (statuses, labels, member emails) are turned into ids
through the API; nothing here reads the server's database. Every read command takes
``--json``; errors print the server's problem detail on one line and exit 1.
"""

from __future__ import annotations

import json
import sys
from datetime import date, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, get_args
from urllib.parse import quote, urlencode

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from forgehall.agents.schemas import AgentOut
from forgehall.cli.client import JsonOption, Server, WorkspaceOption, _parse, _print, _workspace
from forgehall.cli.context import fail
from forgehall.cli.credentials import load_credentials
from forgehall.identity.schemas import UserOut
from forgehall.issues.schemas import (
    ActorRef,
    Category,
    CommentIn,
    CommentOut,
    DependencyIn,
    IssueDetailOut,
    IssueIn,
    IssueOut,
    IssuePage,
    IssuePatchIn,
    LabelOut,
    NotificationOut,
    NotificationPatch,
    Priority,
    StatusOut,
    UnreadCount,
)
from forgehall.workspaces.schemas import MemberOut

PRIORITIES: tuple[str, ...] = get_args(Priority)
CATEGORIES: tuple[str, ...] = get_args(Category)
ASSIGNEE_HELP = "me, a member's email, or agent:NAME (an agent's name or id)."

issue_app = typer.Typer(
    help="Issues on the board: create, list, search, show, change, comment, dependencies.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(issue_app, name="issue")
    app.command("inbox")(inbox)


# --- talking to the board ---------------------------------------------------------------


class Board:
    """One workspace's board API, with the name-to-id lookups the commands need (each
    fetched at most once per command)."""

    def __init__(self, workspace: str | None) -> None:
        self.server = Server(load_credentials())
        self.slug = _workspace(workspace)
        self.base = f"/api/v1/workspaces/{quote(self.slug, safe='')}"

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        query = ""
        if params:
            cleaned = {k: v for k, v in params.items() if v not in (None, [], "")}
            query = "?" + urlencode(cleaned, doseq=True) if cleaned else ""
        return self.server.request(method, self.base + path + query, body)

    def issue_path(self, key: str, suffix: str = "") -> str:
        return f"/issues/{quote(key, safe='')}{suffix}"

    def issue(self, key: str) -> IssueDetailOut:
        issue: IssueDetailOut = _parse(IssueDetailOut, self.call("GET", self.issue_path(key)))
        return issue

    @cached_property
    def statuses(self) -> list[StatusOut]:
        rows: list[StatusOut] = _parse(list[StatusOut], self.call("GET", "/statuses"))
        return sorted(rows, key=lambda s: s.position)

    @cached_property
    def labels(self) -> list[LabelOut]:
        rows: list[LabelOut] = _parse(list[LabelOut], self.call("GET", "/labels"))
        return rows

    @cached_property
    def members(self) -> list[MemberOut]:
        rows: list[MemberOut] = _parse(list[MemberOut], self.call("GET", "/members"))
        return rows

    @cached_property
    def agents(self) -> list[AgentOut]:
        rows: list[AgentOut] = _parse(list[AgentOut], self.call("GET", "/agents"))
        return rows

    @cached_property
    def archived_agents(self) -> list[AgentOut]:
        rows: list[AgentOut] = _parse(
            list[AgentOut], self.call("GET", "/agents", params={"archived": "true"})
        )
        return rows

    @cached_property
    def me(self) -> UserOut:
        user: UserOut = _parse(UserOut, self.server.request("GET", "/api/v1/me"))
        return user

    def status_id(self, name: str) -> str:
        wanted = name.strip().casefold()
        found = next((s.id for s in self.statuses if s.name.casefold() == wanted), None)
        if found is None:
            valid = ", ".join(s.name for s in self.statuses)
            fail(f"unknown status {name!r}; the statuses of {self.slug} are: {valid}")
        return found

    def label_ids(self, names: list[str]) -> list[str]:
        by_name = {label.name.casefold(): label.id for label in self.labels}
        missing = [n for n in names if n.strip().casefold() not in by_name]
        if missing:
            existing = ", ".join(label.name for label in self.labels) or "(none yet)"
            fail(
                f"unknown label {', '.join(repr(n) for n in missing)}; the labels of "
                f"{self.slug} are: {existing}"
            )
        return list(dict.fromkeys(by_name[n.strip().casefold()] for n in names))

    def member_id(self, email: str) -> str:
        wanted = email.strip().casefold()
        found = next((m.user_id for m in self.members if m.email.casefold() == wanted), None)
        if found is None:
            emails = ", ".join(m.email for m in self.members)
            fail(f"{email} is not a member of {self.slug}; its members are: {emails}")
        return found

    def agent(self, ref: str, *, archived_ok: bool = False) -> AgentOut:
        """An agent by id or name (names are case-insensitive, as on the server).

        An archived agent is refused unless ``archived_ok`` (filters may name one;
        nothing can be assigned to it)."""
        wanted = ref.strip()

        def find(rows: list[AgentOut]) -> AgentOut | None:
            return next((a for a in rows if a.id == wanted), None) or next(
                (a for a in rows if a.name.casefold() == wanted.casefold()), None
            )

        found = find(self.agents)
        if found is None:
            found = find(self.archived_agents)
            if found is None:
                names = ", ".join(a.name for a in self.agents) or "(none yet)"
                fail(f"unknown agent {ref!r}; the agents of {self.slug} are: {names}")
            if not archived_ok:
                fail(
                    f"agent {found.name} is archived; restore it first "
                    f"(`forgehall agent restore {found.name}`)"
                )
        return found

    def assignee(self, value: str, *, archived_ok: bool = False) -> ActorRef | None:
        """me | EMAIL | agent:NAME | agent:ID | none → the API's reference."""
        text = value.strip()
        if text.casefold() == "none":
            return None
        if text.casefold() == "me":
            return ActorRef(kind="member", id=self.me.id)
        agent_ref = text[len("agent:") :] if text.casefold().startswith("agent:") else ""
        if not agent_ref and "@" not in text:
            fail(f"assignee {value!r} must be me, none, an email or agent:NAME")
        if agent_ref:
            return ActorRef(kind="agent", id=self.agent(agent_ref, archived_ok=archived_ok).id)
        return ActorRef(kind="member", id=self.member_id(text))

    def who(self, ref: ActorRef | None) -> str:
        if ref is None:
            return "—"
        if ref.kind == "agent":
            for agent in self.agents:
                if agent.id == ref.id:
                    return f"agent:{agent.name}"
            for agent in self.archived_agents:
                if agent.id == ref.id:
                    return f"agent:{agent.name} (archived)"
            return f"agent:{ref.id}"
        for member in self.members:
            if member.user_id == ref.id:
                return member.email
        return f"member:{ref.id}"

    def label_names(self, ids: list[str]) -> list[str]:
        names = {label.id: label.name for label in self.labels}
        return sorted(names.get(i, i) for i in ids)


def _body(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """Validate a request body with the API's own schema; only the given fields are sent."""
    try:
        checked = model.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        fail(problems)
    return checked.model_dump(mode="json", exclude_unset=True)


def _choice(kind: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        fail(f"unknown {kind} {value!r}; use one of {', '.join(choices)}")
    return value


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= 200:
        fail(f"--limit must be between 1 and 200, not {limit}")


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"{value!r} is not a date; use YYYY-MM-DD")


def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")


def _description(text: str | None, file: str | None) -> str | None:
    if text is not None and file is not None:
        fail("give --description or --description-file, not both")
    return _read_text(file) if file is not None else text


def _when(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


# --- options shared by several commands -------------------------------------------------

KeyArgument = Annotated[str, typer.Argument(help="Issue key, e.g. ENG-42.")]
DescriptionOption = Annotated[
    str | None, typer.Option("--description", help="Markdown description.")
]
DescriptionFileOption = Annotated[
    str | None,
    typer.Option("--description-file", help="Read the description from a file (- for stdin)."),
]
PriorityOption = Annotated[
    str | None, typer.Option("--priority", help="urgent, high, medium, low or none.")
]
StatusFilter = Annotated[
    list[str] | None, typer.Option("--status", help="Status name (repeatable; any matches).")
]
CategoryFilter = Annotated[
    list[str] | None,
    typer.Option(
        "--category",
        help="Status category: backlog, todo, in_progress, in_review, done, blocked or "
        "cancelled (repeatable; any matches).",
    ),
]
AssigneeFilter = Annotated[
    str | None,
    typer.Option("--assignee", help="me, none, a member's email, or agent:NAME."),
]
LabelFilter = Annotated[
    list[str] | None, typer.Option("--label", help="Label name (repeatable; all must match).")
]
PriorityFilter = Annotated[
    list[str] | None,
    typer.Option("--priority", help="urgent, high, medium, low or none (repeatable)."),
]
ParentFilter = Annotated[
    str | None, typer.Option("--parent", help="Only sub-issues of this issue key.")
]
SortOption = Annotated[
    str | None,
    typer.Option(
        "--sort",
        help="relevance (search only), position, created, updated, number or due; prefix - "
        "to reverse (default: relevance when searching, else position).",
    ),
]
LimitOption = Annotated[int, typer.Option("--limit", help="Issues per page (1-200).")]
AllOption = Annotated[
    bool, typer.Option("--all", help="Follow the pages to the end instead of stopping at one.")
]


# --- issue commands ---------------------------------------------------------------------


@issue_app.command("create")
def issue_create(
    title: Annotated[str, typer.Argument(help="Title of the issue.")],
    description: DescriptionOption = None,
    description_file: DescriptionFileOption = None,
    status: Annotated[
        str | None, typer.Option("--status", help="Status name (default: the first todo one).")
    ] = None,
    priority: PriorityOption = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", help="Label name (repeatable); the label must exist."),
    ] = None,
    assignee: Annotated[str | None, typer.Option("--assignee", help=ASSIGNEE_HELP)] = None,
    parent: Annotated[str | None, typer.Option("--parent", help="Key of the parent issue.")] = None,
    due: Annotated[str | None, typer.Option("--due", help="Due date, YYYY-MM-DD.")] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Create an issue and print its key."""
    board = Board(workspace)
    if not title.strip():
        fail("the title is empty")
    values: dict[str, Any] = {"title": title}
    text = _description(description, description_file)
    if text is not None:
        values["description"] = text
    if status is not None:
        values["status_id"] = board.status_id(status)
    if priority is not None:
        values["priority"] = _choice("priority", priority, PRIORITIES)
    if label:
        values["label_ids"] = board.label_ids(label)
    if assignee is not None:
        ref = board.assignee(assignee)
        values["assignee"] = ref.model_dump() if ref else None
    if parent is not None:
        values["parent"] = parent
    if due is not None:
        values["due_date"] = _date(due)
    created = _parse(IssueDetailOut, board.call("POST", "/issues", _body(IssueIn, values)))
    typer.echo(created.key)


class IssueRow(BaseModel):
    """One line of the issue table (markup-escaped for Rich)."""

    key: str
    title: str
    status: str
    priority: str
    assignee: str
    updated: str


def _list(
    board: Board,
    *,
    text: str | None,
    status: list[str] | None,
    category: list[str] | None,
    assignee: str | None,
    label: list[str] | None,
    priority: list[str] | None,
    parent: str | None,
    sort: str | None,
    limit: int,
    follow: bool,
    as_json: bool,
    title: str,
) -> None:
    _check_limit(limit)
    if text is not None and not text.strip():
        fail("the search text is empty")
    params: dict[str, Any] = {
        "status": [board.status_id(s) for s in status or []],
        "category": [_choice("category", c, CATEGORIES) for c in category or []],
        "label": board.label_ids(label) if label else [],
        "priority": [_choice("priority", p, PRIORITIES) for p in priority or []],
        "parent": parent,
        "q": text,
        "sort": sort,
        "limit": limit,
    }
    if assignee is not None:
        wanted = assignee.strip().casefold()
        if wanted in ("me", "none"):
            params["assignee"] = wanted
        else:
            ref = board.assignee(assignee, archived_ok=True)
            assert ref is not None
            params["assignee"] = f"{ref.kind}:{ref.id}"
    items: list[IssueOut] = []
    cursor: str | None = None
    while True:
        page = _parse(IssuePage, board.call("GET", "/issues", params={**params, "cursor": cursor}))
        items += page.items
        cursor = page.next_cursor
        if cursor is None or not follow:
            break
    if as_json:
        typer.echo(json.dumps([i.model_dump(mode="json") for i in items], indent=2))
    elif not items:
        typer.echo("no issues match")
    else:
        rows: list[BaseModel] = [
            IssueRow(
                key=i.key,
                title=escape(i.title),
                status=escape(i.status.name),
                priority=i.priority,
                assignee=escape(board.who(i.assignee)),
                updated=_when(i.updated_at),
            )
            for i in items
        ]
        _print(rows, list(IssueRow.model_fields), False, escape(title))
    if cursor is not None:
        typer.echo(
            f"more issues match; pass --all (or a larger --limit) to see them ({len(items)} shown)",
            err=True,
        )


@issue_app.command("list")
def issue_list(
    status: StatusFilter = None,
    category: CategoryFilter = None,
    assignee: AssigneeFilter = None,
    label: LabelFilter = None,
    priority: PriorityFilter = None,
    parent: ParentFilter = None,
    sort: SortOption = None,
    limit: LimitOption = 50,
    all_pages: AllOption = False,
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """List issues, filtered and sorted (one page unless --all)."""
    board = Board(workspace)
    _list(
        board,
        text=None,
        status=status,
        category=category,
        assignee=assignee,
        label=label,
        priority=priority,
        parent=parent,
        sort=sort,
        limit=limit,
        follow=all_pages,
        as_json=as_json,
        title=f"Issues of {board.slug}",
    )


@issue_app.command("search")
def issue_search(
    text: Annotated[str, typer.Argument(help="Text to look for in titles and descriptions.")],
    status: StatusFilter = None,
    category: CategoryFilter = None,
    assignee: AssigneeFilter = None,
    label: LabelFilter = None,
    priority: PriorityFilter = None,
    parent: ParentFilter = None,
    sort: SortOption = None,
    limit: LimitOption = 50,
    all_pages: AllOption = False,
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Search issues for TEXT, best matches first.

    Every word matches by prefix, in titles, descriptions and comments.
    """
    board = Board(workspace)
    _list(
        board,
        text=text,
        status=status,
        category=category,
        assignee=assignee,
        label=label,
        priority=priority,
        parent=parent,
        sort=sort,
        limit=limit,
        follow=all_pages,
        as_json=as_json,
        title=f"Issues of {board.slug} matching {text!r}",
    )


@issue_app.command("show")
def issue_show(
    key: KeyArgument, workspace: WorkspaceOption = None, as_json: JsonOption = False
) -> None:
    """Show an issue with its description and comments."""
    board = Board(workspace)
    issue = board.issue(key)
    comments: list[CommentOut] = _parse(
        list[CommentOut], board.call("GET", board.issue_path(key, "/comments"))
    )
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "issue": issue.model_dump(mode="json"),
                    "comments": [c.model_dump(mode="json") for c in comments],
                },
                indent=2,
            )
        )
        return
    console = Console(highlight=False, soft_wrap=True)
    console.print(Text(f"{issue.key}  {issue.title}", style="bold"))
    facts = [
        ("Status", issue.status.name),
        ("Priority", issue.priority),
        ("Assignee", board.who(issue.assignee)),
        ("Creator", board.who(issue.creator)),
        ("Labels", ", ".join(board.label_names(issue.label_ids)) or "—"),
        ("Parent", issue.parent or "—"),
        ("Due", issue.due_date.isoformat() if issue.due_date else "—"),
        ("Blocked by", ", ".join(issue.blocked_by) or "—"),
        ("Blocks", ", ".join(issue.blocks) or "—"),
        ("Sub-issues", f"{issue.sub_issues_done}/{issue.sub_issues_total} done"),
        ("Created", _when(issue.created_at)),
        ("Updated", f"{_when(issue.updated_at)} (revision {issue.revision})"),
    ]
    for name, value in facts:
        console.print(Text.assemble((f"{name:>11}: ", "dim"), value))
    if issue.description.strip():
        console.print()
        console.print(Text(issue.description.rstrip()))
    console.print()
    console.print(Text(f"Comments ({len(comments)})", style="bold"))
    for comment in comments:
        reply = f" in reply to {comment.parent_id}" if comment.parent_id else ""
        # The server stamps created_at and updated_at separately, so a fresh comment can
        # come back with edited=true; only a later change counts here.
        edited = (
            " (edited)"
            if comment.edited and comment.updated_at - comment.created_at > timedelta(seconds=1)
            else ""
        )
        console.print()
        console.print(
            Text(
                f"{board.who(comment.author)} · {_when(comment.created_at)}{edited} · "
                f"id {comment.id}{reply}",
                style="dim",
            )
        )
        console.print(Text(comment.body.rstrip()))


def _patch(board: Board, key: str, values: dict[str, Any]) -> IssueDetailOut:
    """Send the changes with the revision just read (409 if someone changed it since)."""
    current = board.issue(key)
    body = _body(IssuePatchIn, {"revision": current.revision, **values})
    updated: IssueDetailOut = _parse(
        IssueDetailOut, board.call("PATCH", board.issue_path(key), body)
    )
    return updated


@issue_app.command("update")
def issue_update(
    key: KeyArgument,
    title: Annotated[str | None, typer.Option("--title", help="New title.")] = None,
    description: DescriptionOption = None,
    description_file: DescriptionFileOption = None,
    status: Annotated[str | None, typer.Option("--status", help="Status name.")] = None,
    priority: PriorityOption = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", help="Set the labels to exactly these names (repeatable)."),
    ] = None,
    no_labels: Annotated[bool, typer.Option("--no-labels", help="Remove every label.")] = False,
    parent: Annotated[
        str | None, typer.Option("--parent", help="Key of the parent issue, or none.")
    ] = None,
    due: Annotated[str | None, typer.Option("--due", help="Due date YYYY-MM-DD, or none.")] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Change the fields given; the others are left alone.

    The issue is read first and its revision sent with the change: if someone changed
    it in between, the server refuses (409) and nothing is written.
    """
    board = Board(workspace)
    if label and no_labels:
        fail("give --label or --no-labels, not both")
    values: dict[str, Any] = {}
    if title is not None:
        if not title.strip():
            fail("the title is empty")
        values["title"] = title
    text = _description(description, description_file)
    if text is not None:
        values["description"] = text
    if status is not None:
        values["status_id"] = board.status_id(status)
    if priority is not None:
        values["priority"] = _choice("priority", priority, PRIORITIES)
    if label:
        values["label_ids"] = board.label_ids(label)
    if no_labels:
        values["label_ids"] = []
    if parent is not None:
        values["parent"] = None if parent.strip().casefold() == "none" else parent
    if due is not None:
        values["due_date"] = None if due.strip().casefold() == "none" else _date(due)
    if not values:
        fail("nothing to change; give at least one option (see --help)")
    updated = _patch(board, key, values)
    typer.echo(f"updated {updated.key} (revision {updated.revision})")


@issue_app.command("assign")
def issue_assign(
    key: KeyArgument,
    assignee: Annotated[
        str, typer.Argument(help="me, an email, agent:NAME (name or id), or none.")
    ],
    workspace: WorkspaceOption = None,
) -> None:
    """Assign an issue to a member or an agent (none: unassign).

    Assigning an agent queues a task for it (a daemon with a runtime for its provider
    picks it up); see `forgehall task list --issue KEY`.
    """
    board = Board(workspace)
    ref = board.assignee(assignee)
    updated = _patch(board, key, {"assignee": ref.model_dump() if ref else None})
    if updated.assignee is None:
        typer.echo(f"{updated.key} is unassigned")
    else:
        typer.echo(f"{updated.key} is assigned to {board.who(updated.assignee)}")


@issue_app.command("close")
def issue_close(
    key: KeyArgument,
    cancel: Annotated[
        bool, typer.Option("--cancel", help="Move to the first cancelled status instead.")
    ] = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Move an issue to the first done status (issues it blocked are released)."""
    board = Board(workspace)
    category = "cancelled" if cancel else "done"
    target = next((s for s in board.statuses if s.category == category), None)
    if target is None:
        fail(f"workspace {board.slug} has no status of category {category}")
    updated = _patch(board, key, {"status_id": target.id})
    typer.echo(f"{updated.key} is now {updated.status.name}")


@issue_app.command("comment")
def issue_comment(
    key: KeyArgument,
    body: Annotated[
        str, typer.Argument(help="Markdown text; @email or @name mentions someone; - reads stdin.")
    ],
    reply_to: Annotated[
        str | None, typer.Option("--reply-to", help="Id of the comment to answer.")
    ] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Comment on an issue; @mentions notify members and agents."""
    board = Board(workspace)
    text = sys.stdin.read() if body == "-" else body
    if not text.strip():
        fail("the comment is empty")
    values: dict[str, Any] = {"body": text.rstrip("\n")}
    if reply_to is not None:
        values["parent_id"] = reply_to
    comment = _parse(
        CommentOut,
        board.call("POST", board.issue_path(key, "/comments"), _body(CommentIn, values)),
    )
    typer.echo(f"commented on {key} (comment {comment.id})")


BlockerOption = Annotated[str, typer.Option("--by", help="Key of the blocking issue.")]


@issue_app.command("block")
def issue_block(key: KeyArgument, by: BlockerOption, workspace: WorkspaceOption = None) -> None:
    """Record that another issue blocks this one.

    While the blocker is open the issue sits in the blocked status; it returns to its
    previous status when its last blocker is done.
    """
    board = Board(workspace)
    board.call(
        "POST", board.issue_path(key, "/dependencies"), _body(DependencyIn, {"blocked_by": by})
    )
    typer.echo(f"{key} is blocked by {by}")


@issue_app.command("unblock")
def issue_unblock(key: KeyArgument, by: BlockerOption, workspace: WorkspaceOption = None) -> None:
    """Remove a dependency; with no open blocker left the issue leaves the blocked status."""
    board = Board(workspace)
    board.call("DELETE", board.issue_path(key, f"/dependencies/{quote(by, safe='')}"))
    typer.echo(f"{key} is no longer blocked by {by}")


# --- inbox ------------------------------------------------------------------------------


class NotificationRow(BaseModel):
    id: str
    new: str
    kind: str
    issue: str
    summary: str
    time: str


def inbox(
    unread: Annotated[bool, typer.Option("--unread", help="Only unread notifications.")] = False,
    archived: Annotated[
        bool, typer.Option("--archived", help="Show archived notifications instead.")
    ] = False,
    read: Annotated[
        list[str] | None,
        typer.Option("--read", help="Mark this notification id read first (repeatable)."),
    ] = None,
    archive: Annotated[
        list[str] | None,
        typer.Option("--archive", help="Archive this notification id first (repeatable)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many (1-200).")] = 50,
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Your notifications in a workspace (newest first) and the unread count."""
    board = Board(workspace)
    _check_limit(limit)
    changes = [(i, {"read": True}) for i in read or []]
    changes += [(i, {"archived": True}) for i in archive or []]
    for notification_id, change in changes:
        path = f"/inbox/{quote(notification_id, safe='')}"
        board.call("PATCH", path, _body(NotificationPatch, change))
    items: list[NotificationOut] = _parse(
        list[NotificationOut],
        board.call(
            "GET",
            "/inbox",
            params={
                "unread": "true" if unread else None,
                "archived": "true" if archived else None,
                "limit": limit,
            },
        ),
    )
    count = _parse(UnreadCount, board.call("GET", "/inbox/unread-count")).unread
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "notifications": [n.model_dump(mode="json") for n in items],
                    "unread": count,
                },
                indent=2,
            )
        )
        return
    rows: list[BaseModel] = [
        NotificationRow(
            id=n.id,
            new="•" if n.read_at is None else "",
            kind=n.kind,
            issue=n.issue_key or n.issue_id,
            summary=escape(n.summary),
            time=_when(n.created_at),
        )
        for n in items
    ]
    title = f"Inbox of {board.slug}" + (" (archived)" if archived else "")
    if rows:
        _print(rows, list(NotificationRow.model_fields), False, escape(title))
    else:
        typer.echo("no archived notifications" if archived else "no notifications")
    typer.echo(f"{count} unread")
