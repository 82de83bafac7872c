"""The brief an agent reads: its instructions, the issue and how to talk back.

Written to the provider's native instructions file (``CLAUDE.md``, ``AGENTS.md`` …) in the
worktree and excluded from git. It never contains a token: the agent finds its task
token in the environment (``FORGEHALL_TOKEN``), where the ``forgehall`` CLI reads it.
"""

from __future__ import annotations

from forgehall.agents.schemas import ClaimedTask


def render_brief(task: ClaimedTask, extra_repositories: dict[str, str]) -> str:
    issue = task.issue
    lines = [f"# {issue.key}: {issue.title}", ""]
    if task.agent.instructions.strip():
        lines += ["## Your instructions", "", task.agent.instructions.strip(), ""]
    lines += [
        "## The issue",
        "",
        f"- Key: {issue.key}",
        f"- Status: {issue.status} ({issue.status_category})",
        f"- Priority: {issue.priority}",
    ]
    if issue.labels:
        lines.append(f"- Labels: {', '.join(issue.labels)}")
    lines += ["", issue.description.strip() or "(no description)", ""]
    if issue.comments:
        lines += ["## Comments (oldest first)", ""]
        for comment in issue.comments:
            when = comment.created_at.strftime("%Y-%m-%d %H:%M UTC")
            lines += [f"### {comment.author} — {when}", "", comment.body.strip(), ""]
    if extra_repositories:
        lines += ["## Other repositories of the workspace", ""]
        lines += [f"- {name}: `{path}`" for name, path in extra_repositories.items()]
        lines.append("")
    lines += [
        "## Talking back",
        "",
        "You act on the Forgehall board as yourself, through its API or the `forgehall` "
        "command line, which finds the server and your token in the environment "
        "(`FORGEHALL_SERVER_URL`, `FORGEHALL_TOKEN`; the workspace is `FORGEHALL_WORKSPACE`, "
        "the issue `FORGEHALL_ISSUE_KEY`). For example:",
        "",
        "```sh",
        f'forgehall issue comment {issue.key} "what I did and what is left"',
        f'forgehall issue update {issue.key} --status "In Review"',
        "```",
        "",
        "Say what you did in a comment on the issue when you finish. If you do not, your "
        "final answer is posted as your comment. Work on the current git branch; do not "
        "push unless your instructions say so. This file is not part of the repository.",
        "",
    ]
    return "\n".join(lines)


def render_prompt(task: ClaimedTask, brief_file: str) -> str:
    issue = task.issue
    prompt = (
        f"Work on issue {issue.key}: {issue.title}\n\n"
        f"Your brief — the issue, its comments, your instructions and how to report back — "
        f"is in {brief_file} in the current directory."
    )
    if task.trigger in ("follow_up", "commented", "mentioned") and issue.comments:
        latest = issue.comments[-1]
        prompt += f"\n\nThe latest comment, from {latest.author}:\n\n{latest.body.strip()}"
    return prompt
