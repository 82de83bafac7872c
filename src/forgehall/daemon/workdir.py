"""A task's directory on disk: a git worktree, a private TMPDIR, logs, the brief.

Layout under ``FORGEHALL_DAEMON_WORKDIR``::

    .repos/<name>-<hash>.git         bare clone cache, one per repository URL
    <agent>/<issue-key>/work/        the agent's working directory: a git worktree of the
                                     first repository on branch forgehall/<agent>/<key>
                                     (an empty git repository when the workspace has none)
    <agent>/<issue-key>/repos/<name> worktrees of the other repositories, same branch
    <agent>/<issue-key>/tmp/         the agent's TMPDIR
    <agent>/<issue-key>/logs/        transcript (JSON lines) and stderr of every attempt

One directory per (agent, issue): the server runs at most one task per (agent, issue) at
a time, so concurrent tasks never share a worktree, and a follow-up finds the previous
run's worktree (and branch) as it was left. The brief file is excluded from git in the
worktree's ``info/exclude``.

A clone or fetch that fails because the git host could not be reached raises
:class:`WorkspaceError` with ``retryable=True`` (reported as ``runtime_offline``: another
attempt, perhaps on another runtime, may succeed); any other git failure (no such
repository, no access, no such branch) is final (``agent_error``) so that a person looks.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from forgehall.agents.schemas import ClaimedRepository

_NETWORK_ERRORS = re.compile(
    r"could not resolve host|connection (refused|reset|timed out)|timed out|"
    r"network is unreachable|failed to connect|temporary failure in name resolution|"
    r"the remote end hung up unexpectedly|early eof|tls|ssl",
    re.IGNORECASE,
)
GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",  # never wait for a password on a terminal
    "GIT_ASKPASS": "true",
    "GIT_CONFIG_NOSYSTEM": "1",
}


class WorkspaceError(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def safe_segment(value: str) -> str:
    """A path segment and branch component from a name: [A-Za-z0-9._-], no '..'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip(".-") or "x"
    cleaned = re.sub(r"\.\.+", ".", cleaned)
    return cleaned.removesuffix(".lock")[:100]


@dataclass(frozen=True)
class TaskDir:
    root: Path
    work: Path  # the agent's cwd
    tmp: Path
    logs: Path
    branch: str
    extra: dict[str, Path]  # other repositories: name -> worktree


async def _git(*args: str, cwd: Path | None = None, timeout: float = 600) -> str:
    process = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise WorkspaceError(
            f"git {args[0]} timed out after {timeout:g} s", retryable=True
        ) from None
    if process.returncode != 0:
        text = err.decode(errors="replace").strip()[-2000:]
        raise WorkspaceError(
            f"git {' '.join(args[:2])} failed: {text}", retryable=bool(_NETWORK_ERRORS.search(text))
        )
    return out.decode(errors="replace")


class _FileLock:
    """An flock held across event-loop awaits (taken in a worker thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    async def __aenter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        await asyncio.to_thread(fcntl.flock, self.fd, fcntl.LOCK_EX)

    async def __aexit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


class Workdirs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache = root / ".repos"  # agent names start with a letter or digit: no clash

    def _cache_path(self, repo: ClaimedRepository) -> Path:
        digest = hashlib.sha256(repo.url.encode()).hexdigest()[:12]
        return self.cache / f"{safe_segment(repo.name)}-{digest}.git"

    async def _refresh_cache(self, repo: ClaimedRepository) -> Path:
        """Clone (bare) or fetch the repository into the cache; returns the cache path."""
        self.cache.mkdir(parents=True, exist_ok=True)
        path = self._cache_path(repo)
        if not (path / "HEAD").exists():
            shutil.rmtree(path, ignore_errors=True)
            await _git("init", "--bare", "--quiet", str(path))
            await _git("remote", "add", "origin", repo.url, cwd=path)
        await _git(
            "fetch", "--quiet", "--prune", "origin", "+refs/heads/*:refs/remotes/origin/*", cwd=path
        )
        return path

    async def _worktree(self, repo: ClaimedRepository, target: Path, branch: str) -> None:
        self.cache.mkdir(parents=True, exist_ok=True)
        async with _FileLock(self.cache / f"{self._cache_path(repo).name}.lock"):
            cache = await self._refresh_cache(repo)
            if (target / ".git").exists():
                return  # a follow-up: the worktree stays as the last run left it
            await _git("worktree", "prune", cwd=cache)
            start = f"refs/remotes/origin/{repo.default_branch}"
            has_branch = True
            try:
                await _git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", cwd=cache)
            except WorkspaceError:
                has_branch = False
            if has_branch:
                await _git("worktree", "add", "--quiet", str(target), branch, cwd=cache)
            else:
                try:
                    await _git("rev-parse", "--verify", "--quiet", start, cwd=cache)
                except WorkspaceError:
                    raise WorkspaceError(
                        f"repository {repo.name}: no branch {repo.default_branch!r} at {repo.url}",
                        retryable=False,
                    ) from None
                await _git(
                    "worktree", "add", "--quiet", "-b", branch, str(target), start, cwd=cache
                )

    async def prepare(
        self, agent: str, issue_key: str, repositories: list[ClaimedRepository], brief_file: str
    ) -> TaskDir:
        agent_part, key_part = safe_segment(agent), safe_segment(issue_key)
        root = self.root / agent_part / key_part
        branch = f"forgehall/{agent_part}/{key_part}"
        work, tmp, logs = root / "work", root / "tmp", root / "logs"
        for directory in (root, tmp, logs):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        extra: dict[str, Path] = {}
        if repositories:
            await self._worktree(repositories[0], work, branch)
            for repo in repositories[1:]:
                target = root / "repos" / safe_segment(repo.name)
                target.parent.mkdir(exist_ok=True)
                await self._worktree(repo, target, branch)
                extra[repo.name] = target
        elif not (work / ".git").exists():
            work.mkdir(exist_ok=True)
            await _git("init", "--quiet", "-b", branch, str(work))
        for tree in (work, *extra.values()):
            await self._exclude(tree, brief_file)
        return TaskDir(root=root, work=work, tmp=tmp, logs=logs, branch=branch, extra=extra)

    async def _exclude(self, tree: Path, name: str) -> None:
        """Keep the brief out of git: the worktree's own info/exclude."""
        # A linked worktree's git dir is <cache>/worktrees/<name>; info/exclude is read
        # from the common dir, which is shared by all worktrees of the cache: fine, the
        # brief's name is the same for every task of a provider.
        answer = await _git("rev-parse", "--absolute-git-dir", "--git-common-dir", cwd=tree)
        git_dir_text, common_text = answer.splitlines()[:2]
        git_dir, common = Path(git_dir_text.strip()), Path(common_text.strip())
        if not common.is_absolute():
            common = (tree / common).resolve()
        for directory in {git_dir, common}:
            exclude = directory / "info" / "exclude"
            exclude.parent.mkdir(parents=True, exist_ok=True)
            lines = exclude.read_text().splitlines() if exclude.exists() else []
            if f"/{name}" not in lines:
                exclude.write_text("\n".join([*lines, f"/{name}"]) + "\n")
