"""The daemon's parts that need no server: configuration, the data directory, the
transcript file, the worktree of a workspace without repositories."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest

from forgehall.agents.schemas import MESSAGE_BATCH_MAX, MESSAGE_CONTENT_MAX, ClaimedRepository
from forgehall.daemon.config import ConfigError, load_config
from forgehall.daemon.state import AlreadyRunning, DataDir, HeldTask, JournalEntry
from forgehall.daemon.transcript import Transcript, read_batch
from forgehall.daemon.workdir import Collector, Workdirs, safe_segment
from tests.daemon.harness import git, make_origin
from tests.process import base_env, run_cli

TOKEN = "fh_dmn_" + "x" * 30


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "HOME": str(tmp_path),
        "FORGEHALL_DAEMON_DIR": str(tmp_path / "data"),
        "FORGEHALL_SERVER_URL": "http://127.0.0.1:9",
        "FORGEHALL_DAEMON_TOKEN": TOKEN,
        **extra,
    }


def test_configuration_from_the_environment(tmp_path: Path) -> None:
    config = load_config(env(tmp_path, FORGEHALL_DAEMON_WRAPPER="bwrap --ro-bind / /"))
    assert config.max_concurrent == 20
    assert config.idle_timeout == 1800
    assert config.health_host == "127.0.0.1"
    assert config.health_port == 0
    assert config.wrapper == ("bwrap", "--ro-bind", "/", "/")
    assert config.work_dir == tmp_path / ".local" / "share" / "forgehall" / "work"
    assert TOKEN not in repr(config)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"FORGEHALL_DAEMON_HEALTH_ADDR": "0.0.0.0:8080"}, "loopback"),
        ({"FORGEHALL_DAEMON_HEALTH_ADDR": "8080"}, "HOST:PORT"),
        ({"FORGEHALL_DAEMON_MAX_CONCURRENT": "0"}, "at least 1"),
        ({"FORGEHALL_DAEMON_MAX_CONCURRENT": "many"}, "not a number"),
        ({"FORGEHALL_DAEMON_TOKEN": "fh_pat_abc"}, "daemon token"),
        ({"FORGEHALL_DAEMON_TOKEN": ""}, "forgehall daemon login"),
        ({"FORGEHALL_SERVER_URL": "forgehall.example.com"}, "http://"),
    ],
)
def test_bad_configuration_says_what_to_fix(
    tmp_path: Path, extra: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env(tmp_path, **extra))


def test_login_is_stored_with_mode_0600_and_used(tmp_path: Path) -> None:
    cli_env = base_env(tmp_path, FORGEHALL_DAEMON_DIR=str(tmp_path / "data"))
    done = run_cli(
        "daemon", "login", "--server", "http://h:1/", "--token", TOKEN, "--no-check", env=cli_env
    )
    assert done.returncode == 0, done.stderr
    stored = tmp_path / "data" / "credentials.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    config = load_config({"FORGEHALL_DAEMON_DIR": str(tmp_path / "data"), "HOME": str(tmp_path)})
    assert (config.server_url, config.token) == ("http://h:1", TOKEN)
    refused = run_cli(
        "daemon", "login", "--server", "http://h:1", "--token", "fh_pat_x", env=cli_env
    )
    assert refused.returncode == 2
    assert "not a daemon token" in refused.stderr


def test_the_data_directory_lock_id_held_tasks_and_journal(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "data")
    data.prepare()
    data.acquire_lock()
    try:
        other = DataDir(tmp_path / "data")
        with pytest.raises(AlreadyRunning, match="is running with the data directory"):
            other.acquire_lock()
        assert other.running_pid() is not None
        assert data.daemon_id() == data.daemon_id()
        data.hold(HeldTask(task_id="t1", lease_token="l1"))
        data.journal(JournalEntry(task_id="t1", lease_token="l1", kind="complete", body={}))
        assert [h.task_id for h in data.held()] == ["t1"]
        (entry,) = data.journal_entries()
        assert entry.kind == "complete"
        assert stat.S_IMODE((data.journal_dir / "t1.json").stat().st_mode) == 0o600
        data.forget_journal("t1")
        data.release("t1")
        assert data.held() == []
        assert data.journal_entries() == []
    finally:
        data.release_lock()
    assert DataDir(tmp_path / "data").running_pid() is None


def test_the_transcript_is_read_back_in_bounded_batches(tmp_path: Path) -> None:
    transcript = Transcript(tmp_path / "t.jsonl")
    for i in range(MESSAGE_BATCH_MAX + 20):
        transcript.append("text", f"line {i}")
    transcript.append("tool_result", "é" * MESSAGE_CONTENT_MAX)  # too large: clipped
    transcript.close()
    with (tmp_path / "t.jsonl").open("ab") as handle:
        handle.write(b'{"seq": 999, "kind": "te')  # a torn last line is not read
    first, offset = read_batch(tmp_path / "t.jsonl", 0)
    assert len(first) == MESSAGE_BATCH_MAX
    assert [m.seq for m in first[:2]] == [1, 2]
    rest, end = read_batch(tmp_path / "t.jsonl", offset)
    assert [m.seq for m in rest][-1] == MESSAGE_BATCH_MAX + 21
    assert len(rest[-1].content.encode()) <= MESSAGE_CONTENT_MAX
    assert rest[-1].content.endswith("larger than 256 KiB]")
    assert read_batch(tmp_path / "t.jsonl", end) == ([], end)


def test_a_workspace_without_repositories_gets_an_empty_repository(tmp_path: Path) -> None:
    workdirs = Workdirs(tmp_path / "work")
    first = asyncio.run(workdirs.prepare("my agent", "ENG-7", [], "AGENTS.md"))
    assert first.work == tmp_path / "work" / "my-agent" / "ENG-7" / "work"
    assert first.branch == "forgehall/my-agent/ENG-7"
    (first.work / "AGENTS.md").write_text("brief")
    (first.work / "notes.txt").write_text("kept")
    assert git("status", "--porcelain", cwd=first.work) == "?? notes.txt"
    again = asyncio.run(workdirs.prepare("my agent", "ENG-7", [], "AGENTS.md"))
    assert (again.work / "notes.txt").read_text() == "kept", "a follow-up reuses the worktree"
    assert safe_segment("../x..y.lock") == "x.y"


def test_the_collector_removes_worktrees_of_finished_issues_only(tmp_path: Path) -> None:
    origin = make_origin(tmp_path / "origin")
    repo = ClaimedRepository(name="app", url=str(origin), default_branch="main")
    workdirs = Workdirs(tmp_path / "work")
    day = 86400.0
    now = time.time()
    ages = {"ENG-1": 2 * day, "ENG-2": 2 * day, "ENG-3": 60.0, "ENG-4": 40 * day, "ENG-5": 2 * day}
    for key, age in ages.items():
        taskdir = asyncio.run(workdirs.prepare("claude", key, [repo], "CLAUDE.md"))
        (taskdir.logs / "attempt-1.jsonl").write_text("{}\n")
        for path in (taskdir.root / ".last_used", taskdir.logs, taskdir.logs / "attempt-1.jsonl"):
            os.utime(path, (now - age, now - age))
    (workdirs.root_of("claude", "ENG-1") / "work" / "unpushed.txt").write_text("x")
    git("add", "unpushed.txt", cwd=workdirs.root_of("claude", "ENG-1") / "work")
    git("commit", "-q", "-m", "agent work", cwd=workdirs.root_of("claude", "ENG-1") / "work")
    asked: list[list[str]] = []

    async def categories(keys: list[str]) -> dict[str, str]:
        asked.append(keys)
        return {"ENG-1": "done", "ENG-2": "in_progress", "ENG-3": "done", "ENG-5": "cancelled"}

    collector = Collector(workdirs, after=day, max_age=30 * day)
    in_use = {workdirs.root_of("claude", "ENG-5")}
    removed = asyncio.run(collector.collect(in_use=lambda: in_use, categories=categories, now=now))

    # ENG-1: finished and idle a day; ENG-4: idle past the maximum age (its issue unknown).
    # Kept: ENG-2 (still in progress), ENG-3 (finished a minute ago), ENG-5 (in use).
    assert sorted(p.name for p in removed) == ["ENG-1", "ENG-4"]
    assert asked == [["ENG-1", "ENG-2", "ENG-5"]], "only idle ones younger than the max age"
    left = sorted(p.name for p in (tmp_path / "work" / "claude").iterdir())
    assert left == ["ENG-2", "ENG-3", "ENG-5"]
    (cache,) = (tmp_path / "work" / ".repos").glob("*.git")
    listed = git("worktree", "list", "--porcelain", cwd=cache)
    assert "ENG-1" not in listed
    assert "ENG-4" not in listed
    assert "ENG-2" in listed
    # The branch, with the agent's unpushed commit, stays in the cache.
    assert git("log", "-1", "--format=%s", "forgehall/claude/ENG-1", cwd=cache) == "agent work"

    # A follow-up on a collected issue starts from that branch again.
    again = asyncio.run(workdirs.prepare("claude", "ENG-1", [repo], "CLAUDE.md"))
    assert (again.work / "unpushed.txt").read_text() == "x"


def test_a_full_disk_keeps_the_report_in_memory_and_still_delivers_it(tmp_path: Path) -> None:
    """/dev/full answers every write with ENOSPC: the journal's temporary file pointing
    there is a real full disk for that one write."""
    data = DataDir(tmp_path / "daemon")
    data.prepare()
    entry = JournalEntry(task_id="t-full", lease_token="lease", kind="complete", body={})
    (data.journal_dir / ".t-full.json.tmp").symlink_to("/dev/full")
    (data.held_dir / ".t-full.json.tmp").symlink_to("/dev/full")

    data.hold(HeldTask(task_id="t-full", lease_token="lease"))  # no crash: best effort
    data.journal(entry)

    assert list(data.journal_dir.iterdir()) == [], "nothing half-written is left"
    assert [e.task_id for e in data.journal_entries()] == ["t-full"], "delivered from memory"
    data.forget_journal("t-full")
    assert data.journal_entries() == []


def test_worktrees_from_the_repository_cache(tmp_path: Path) -> None:
    """A task's worktree: a new branch from the default one, the brief kept out of git,
    the same branch again for a later task after its directory was deleted by hand, and
    a clear error for a default branch that does not exist."""
    from forgehall.daemon.workdir import WorkspaceError

    origin = make_origin(tmp_path / "origin")
    repo = ClaimedRepository(name="app", url=str(origin), default_branch="main")
    workdirs = Workdirs(tmp_path / "work")
    first = asyncio.run(workdirs.prepare("bot", "ENG-1", [repo], "AGENTS.md"))
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=first.work) == "forgehall/bot/ENG-1"
    (first.work / "AGENTS.md").write_text("brief")
    assert git("status", "--porcelain", cwd=first.work) == "", "the brief is excluded"
    (first.work / "change.txt").write_text("work")
    git("add", "change.txt", cwd=first.work)
    git("commit", "--quiet", "-m", "work", cwd=first.work)

    # Someone deletes the task directory: git still lists the worktree; the branch and
    # its commit come back in a fresh worktree.
    import shutil

    shutil.rmtree(first.root)
    again = asyncio.run(workdirs.prepare("bot", "ENG-1", [repo], "AGENTS.md"))
    assert (again.work / "change.txt").read_text() == "work"

    wrong = ClaimedRepository(name="app", url=str(origin), default_branch="trunk")
    with pytest.raises(WorkspaceError, match="no branch 'trunk'") as raised:
        asyncio.run(workdirs.prepare("bot", "ENG-2", [wrong], "AGENTS.md"))
    assert raised.value.retryable is False


def test_which_refs_exist_is_read_from_git_files(tmp_path: Path) -> None:
    """The worktree step reads loose refs and packed-refs itself instead of starting git;
    it asks git instead when the refs are kept another way."""
    from forgehall.daemon.workdir import _existing_refs

    origin = make_origin(tmp_path / "origin")
    git("branch", "feature", cwd=origin)
    dot_git = origin / ".git"
    names = ("refs/heads/main", "refs/heads/feature", "refs/heads/missing")
    assert _existing_refs(dot_git, names) == {"refs/heads/main", "refs/heads/feature"}
    git("pack-refs", "--all", cwd=origin)
    assert not (dot_git / "refs" / "heads" / "feature").exists(), "now only in packed-refs"
    assert _existing_refs(dot_git, names) == {"refs/heads/main", "refs/heads/feature"}
    git("branch", "--delete", "feature", cwd=origin)
    assert _existing_refs(dot_git, names) == {"refs/heads/main"}
    (dot_git / "refs" / "heads" / "odd").write_text("ref: refs/heads/main\n")
    assert _existing_refs(dot_git, ("refs/heads/odd",)) is None, "a symbolic ref: ask git"
    (dot_git / "reftable").mkdir()
    assert _existing_refs(dot_git, names) is None, "reftable: ask git"
