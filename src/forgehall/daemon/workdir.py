"""A task's directory on disk: a git worktree, a private TMPDIR, logs, the brief.

Layout under ``FORGEHALL_DAEMON_WORKDIR``::

    .repos/<name>-<hash>.git         bare clone cache, one per repository URL
    <agent>/<issue-key>/work/        the agent's working directory: a git worktree of the
                                     first repository on branch forgehall/<agent>/<key>
                                     (an empty git repository when the workspace has none)
    <agent>/<issue-key>/repos/<name> worktrees of the other repositories, same branch
    <agent>/<issue-key>/tmp/         the agent's TMPDIR
    <agent>/<issue-key>/logs/        transcript (JSON lines) and stderr of every attempt
    <agent>/<issue-key>/.last_used   touched when a task starts there (for the collector)

One directory per (agent, issue): the server runs at most one task per (agent, issue) at
a time, so concurrent tasks never share a worktree, and a follow-up finds the previous
run's worktree (and branch) as it was left. The brief file is excluded from git in the
worktree's ``info/exclude``.

A clone or fetch that fails because the git host could not be reached raises
:class:`WorkspaceError` with ``retryable=True`` (reported as ``runtime_offline``: another
attempt, perhaps on another runtime, may succeed); any other git failure (no such
repository, no access, no such branch) is final (``agent_error``) so that a person looks.

:class:`Collector` removes the directories of finished issues (see its docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
from collections.abc import Awaitable, Callable
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
        if "no space left on device" in text.lower():
            raise WorkspaceError(
                f"git {args[0]} failed: the disk is full ({text}); free space on this "
                "runtime — the task is retried, perhaps on another runtime",
                retryable=True,
            )
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
        try:  # free (the usual case): taken at once, without a trip to a worker thread
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            await asyncio.to_thread(fcntl.flock, self.fd, fcntl.LOCK_EX)

    async def __aexit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


class Workdirs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache = root / ".repos"  # agent names start with a letter or digit: no clash
        self.layout_lock = asyncio.Lock()  # a directory is never prepared while collected

    def root_of(self, agent: str, issue_key: str) -> Path:
        return self.root / safe_segment(agent) / safe_segment(issue_key)

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
        # --no-auto-gc: no housekeeping process after every fetch (a task start waited
        # for it); the collector runs `git gc --auto` on the caches (_tidy_caches).
        await _git(
            "fetch", "--quiet", "--prune", "--no-auto-gc", "origin",
            "+refs/heads/*:refs/remotes/origin/*", cwd=path,
        )  # fmt: skip
        return path

    async def _worktree(self, repo: ClaimedRepository, target: Path, branch: str) -> None:
        self.cache.mkdir(parents=True, exist_ok=True)
        async with _FileLock(self.cache / f"{self._cache_path(repo).name}.lock"):
            cache = await self._refresh_cache(repo)
            if (target / ".git").exists():
                return  # a follow-up: the worktree stays as the last run left it
            start = f"refs/remotes/origin/{repo.default_branch}"
            # Which of the two exist: read from git's ref files, or in one git call when
            # the cache keeps its refs another way (each call is a process start).
            refs = _existing_refs(cache, (f"refs/heads/{branch}", start))
            if refs is None:
                refs = set(
                    (
                        await _git(
                            "for-each-ref", "--format=%(refname)", f"refs/heads/{branch}", start,
                            cwd=cache,
                        )
                    ).split()
                )  # fmt: skip
            if f"refs/heads/{branch}" in refs:
                add = ["worktree", "add", "--quiet", str(target), branch]
            elif start in refs:
                add = ["worktree", "add", "--quiet", "-b", branch, str(target), start]
            else:
                raise WorkspaceError(
                    f"repository {repo.name}: no branch {repo.default_branch!r} at {repo.url}",
                    retryable=False,
                )
            try:
                await _git(*add, cwd=cache)
            except WorkspaceError:
                # A worktree removed by hand is still registered: forget such ones, retry.
                await _git("worktree", "prune", cwd=cache)
                await _git(*add, cwd=cache)

    async def prepare(
        self, agent: str, issue_key: str, repositories: list[ClaimedRepository], brief_file: str
    ) -> TaskDir:
        agent_part, key_part = safe_segment(agent), safe_segment(issue_key)
        root = self.root_of(agent, issue_key)
        branch = f"forgehall/{agent_part}/{key_part}"
        work, tmp, logs = root / "work", root / "tmp", root / "logs"
        async with self.layout_lock:
            for directory in (root, tmp, logs):
                directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            (root / LAST_USED).touch()
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
        git_dir, common = _git_dirs(tree)
        for directory in {git_dir, common}:
            exclude = directory / "info" / "exclude"
            exclude.parent.mkdir(parents=True, exist_ok=True)
            lines = exclude.read_text().splitlines() if exclude.exists() else []
            if f"/{name}" not in lines:
                exclude.write_text("\n".join([*lines, f"/{name}"]) + "\n")


def _existing_refs(repository: Path, names: tuple[str, ...]) -> set[str] | None:
    """Which of ``names`` exist in a repository whose refs are files (a loose file under
    ``refs/`` or a line of ``packed-refs``); None when it keeps them another way (the
    reftable format) or a ref file is not what git writes — then ask git."""
    if (repository / "reftable").exists():
        return None
    found: set[str] = set()
    for name in names:
        loose = repository / name
        if loose.is_file():
            if len(loose.read_bytes().strip()) not in (40, 64):  # a symbolic ref, or odd
                return None
            found.add(name)
    wanted = set(names) - found
    packed = repository / "packed-refs"
    if wanted and packed.is_file():
        for line in packed.read_text(errors="replace").splitlines():
            _, _, name = line.partition(" ")  # "<object id> <ref name>"; ^ and # lines
            if name in wanted:
                found.add(name)
    return found


def _git_dirs(tree: Path) -> tuple[Path, Path]:
    """A work tree's git dir and common dir, read from the files git keeps (no process):
    ``.git`` is the git dir itself, or a file naming it (a linked worktree), whose
    ``commondir`` file names the repository it belongs to."""
    dot_git = tree / ".git"
    if dot_git.is_dir():
        return dot_git, dot_git
    pointer = dot_git.read_text().strip()
    if not pointer.startswith("gitdir:"):
        raise WorkspaceError(f"{dot_git} is not a git pointer file", retryable=False)
    git_dir = Path(pointer.removeprefix("gitdir:").strip())
    if not git_dir.is_absolute():
        git_dir = (tree / git_dir).resolve()
    common_file = git_dir / "commondir"
    common = git_dir
    if common_file.exists():
        common = Path(common_file.read_text().strip())
        if not common.is_absolute():
            common = (git_dir / common).resolve()
    return git_dir, common


# --- garbage collection ---------------------------------------------------------------

LAST_USED = ".last_used"  # touched when a task starts in the directory
FINISHED = frozenset({"done", "cancelled"})


@dataclass(frozen=True)
class TaskDirState:
    root: Path
    agent: str
    issue_key: str
    idle_seconds: float  # since the last task started or wrote a log line here


def _last_use(root: Path) -> float:
    times = [p.stat().st_mtime for p in (root / LAST_USED, root / "logs") if p.exists()]
    logs = root / "logs"
    if logs.is_dir():
        times.extend(entry.stat().st_mtime for entry in logs.iterdir())
    return max(times, default=root.stat().st_mtime)


class Collector:
    """Removes the task directories nobody needs any more, then tidies the caches.

    A directory goes when its issue is finished (a done or cancelled status category,
    asked of the server) and it was not used for ``after`` seconds, or when it was not
    used for ``max_age`` seconds whatever its issue (an issue of another workspace, or
    deleted). A directory some task uses (``in_use``) never goes. Its worktrees are
    removed through git (``git worktree remove --force``, so the caches forget them);
    the branches stay in the bare caches, so commits that were never pushed are not
    lost. Then each cache gets ``git worktree prune`` and ``git gc --auto``.
    """

    def __init__(self, workdirs: Workdirs, *, after: float, max_age: float) -> None:
        self.workdirs = workdirs
        self.after = after
        self.max_age = max_age

    def task_dirs(self, now: float) -> list[TaskDirState]:
        found = []
        root = self.workdirs.root
        if not root.is_dir():
            return []
        for agent_dir in sorted(root.iterdir()):
            if agent_dir.name.startswith(".") or not agent_dir.is_dir():
                continue
            for task_dir in sorted(agent_dir.iterdir()):
                if task_dir.is_dir():
                    idle = now - _last_use(task_dir)
                    found.append(TaskDirState(task_dir, agent_dir.name, task_dir.name, idle))
        return found

    async def collect(
        self,
        *,
        in_use: Callable[[], set[Path]],
        categories: Callable[[list[str]], Awaitable[dict[str, str]]],
        now: float,
    ) -> list[Path]:
        """One pass; returns the directories removed."""
        candidates = [d for d in self.task_dirs(now) if d.idle_seconds >= self.after]
        if not candidates:
            await self._tidy_caches()
            return []
        asked = sorted({d.issue_key for d in candidates if d.idle_seconds < self.max_age})
        known = await categories(asked) if asked else {}
        removed = []
        for state in candidates:
            expired = state.idle_seconds >= self.max_age
            if not expired and known.get(state.issue_key) not in FINISHED:
                continue
            async with self.workdirs.layout_lock:
                if state.root in in_use():
                    continue
                await self._remove(state.root)
            removed.append(state.root)
        await self._tidy_caches()
        return removed

    async def _remove(self, root: Path) -> None:
        trees = [root / "work", *sorted((root / "repos").glob("*"))]
        for tree in trees:
            if not (tree / ".git").is_file():
                continue  # not a linked worktree (the empty repository of no repositories)
            try:
                common = (await _git("rev-parse", "--git-common-dir", cwd=tree)).strip()
                cache = Path(common) if Path(common).is_absolute() else (tree / common).resolve()
                await _git("worktree", "remove", "--force", "--force", str(tree), cwd=cache)
            except WorkspaceError:
                pass  # a broken worktree: deleting the directory is all that is left to do
        shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(OSError):
            root.parent.rmdir()  # the agent's directory, when it was the last one

    async def _tidy_caches(self) -> None:
        if not self.workdirs.cache.is_dir():
            return
        for cache in sorted(self.workdirs.cache.glob("*.git")):
            with contextlib.suppress(WorkspaceError):
                await _git("worktree", "prune", cwd=cache)
                await _git("gc", "--auto", "--quiet", cwd=cache)
