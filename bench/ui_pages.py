"""UI page render time: the board, the issue list and the issue page of a 5,000-issue workspace.

What it builds, per backend: a fresh database migrated to head (a SQLite file in a
temporary directory; on PostgreSQL a scratch database ``fh_bench_<pid>``, dropped at the
end, failure included) holding one owner with a personal access token and one workspace
with its default statuses and ``--issues`` issues spread round-robin over the seven
columns, titled from a small vocabulary (``prepare()`` of ``_server_bench``). Then,
written directly through the tables before the server starts: eight labels, one on every
third issue and a second on every sixth; ``--comments`` comments in all, of which
``--hot-comments`` on the hot issue ``ENG-1`` and the rest spread at random over the other
issues (short Markdown: sentences, sometimes a list or a code block); a long Markdown
description (about 20 KB: headings, lists, code, a table, links) on ``ENG-1`` and four
other issues; and ``--sub-issues`` sub-issues of ``ENG-1``. Then a real ``forgehall
serve`` process is started on that database (``sys.executable -m forgehall serve`` in a
temporary working directory, the caller's ``FORGEHALL_*`` / ``DATABASE_URL`` / ``PORT``
removed, logs at warning) with ``FORGEHALL_METRICS_ADDR`` on a free loopback port.

What it measures, one kind of request at a time, ``--warmup`` untimed requests and then
``--requests`` timed ones (or fewer: ``--budget``), sequentially over one keep-alive
connection, each with the owner's token (``Authorization: Bearer …``) and ``Accept:
text/html`` for pages:

- the board page ``/w/bench/board``, the board with a text filter (``?q=`` ``--query``,
  a word of the title and comment vocabulary, so a common-word search) and the board as
  an htmx fragment (``HX-Request: true``);
- the issue list page ``/w/bench/issues`` (50 issues);
- the issue page of ``ENG-1`` (hot: its comments, long description, sub-issues) and its
  comments fragment (``?part=comments``, ``HX-Request: true``);
- as the peer, the JSON API: ``GET /api/v1/workspaces/bench/issues?limit=50`` and
  ``GET …/issues/ENG-1`` followed by ``GET …/issues/ENG-1/comments`` (one sample is the
  pair, sent one after the other, as a client showing the issue would).

Two figures per kind. Server time: the server's own histogram
``forgehall_http_request_duration_seconds`` (per ``method`` and route template, recorded
by the request middleware from the request's arrival to the last byte handed to the
server) read from ``/metrics`` before and after the timed requests; the ``_sum`` /
``_count`` deltas give the mean, the bucket deltas an upper bound on the p99 (the
smallest bucket edge holding 99 %). Client round trip: ``time.perf_counter()`` around
each request with its body read, over loopback — p50 / p90 / p99 / max. Printed per
backend: one row per kind (n, server mean, server p99 bound, client p50 / p90 / p99 /
max, response size), the page / API ratio of server means and of client p50s for the
pairs (board, filtered board and list ↔ the API list; issue page and comments fragment ↔
issue + comments API), and ``met`` / ``MISSED`` against the target "pages render in under
100 ms server time" judged on the client round trip's p99 < 100 ms (conservative: it
includes loopback, HTTP parsing and the client). This is a benchmark, not a test: it
exits 0 whether or not targets are met, and non-zero only when something failed (a
server that does not start, a wrong answer, an unreachable PostgreSQL).

PostgreSQL: the admin URL comes from ``FORGEHALL_BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``).

Run it from the repository root::

    uv run python bench/ui_pages.py                         # both backends, 200 requests each
    uv run python bench/ui_pages.py --backend sqlite --requests 50 --warmup 5

Options: ``--requests`` (200), ``--warmup`` (20), ``--issues`` (5000), ``--comments``
(20000), ``--hot-comments`` (200), ``--sub-issues`` (25), ``--query`` (``deploy``),
``--seed`` (1), ``--budget S`` (60: seconds of timed requests per kind; a kind that has
used its budget sends no more, so a page of a second cannot stretch the run to an hour;
its row says so), ``--backend sqlite|postgresql|both`` (both). A line per kind goes to
stderr as the run proceeds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import structlog
from _server_bench import (
    TABLES,
    BenchError,
    asyncpg_dsn,
    expect,
    free_port,
    percentile,
    prepare,
    server_env,
)
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert, select, update
from sqlalchemy.engine import make_url

from forgehall.db.engine import Database
from forgehall.db.url import resolve_database
from forgehall.identity.models import User
from forgehall.issues.models import Issue
from forgehall.settings import Settings
from forgehall.workspaces.models import Workspace

TARGET_P99_MS = 100.0
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
SETTLE_S = 0.1
METRIC = "forgehall_http_request_duration_seconds"
API = "/api/v1/workspaces/bench"
PAGES = "/w/bench"
HOT = "ENG-1"
DESCRIPTION = "A generated issue of the UI page benchmark."
LONG_DESCRIPTION_ISSUES = (1, 100, 1000, 2500, 4000)
CATEGORIES = ("backlog", "todo", "in_progress", "in_review", "done", "blocked", "cancelled")
LABELS = ("bug", "feature", "frontend", "backend", "infra", "docs", "security", "perf")
WORDS = (
    "deploy", "cache", "login", "redirect", "token", "session", "migration", "dashboard",
    "search", "button", "form", "report", "sync", "queue", "worker", "index", "schema",
    "upload", "export", "import", "billing", "invoice", "email", "webhook", "retry",
    "timeout", "latency", "memory", "crash", "config", "release", "branch", "review",
    "merge", "test", "flaky", "build", "pipeline", "docker", "network", "proxy",
    "certificate",
)  # fmt: skip


# --- the data set --------------------------------------------------------------------------


def title(n: int) -> str:
    rng = random.Random(n)
    return f"{rng.choice(WORDS).capitalize()} {rng.choice(WORDS)} {rng.choice(WORDS)} #{n}"


def sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return text.capitalize() + "."


def comment_body(rng: random.Random, n: int) -> str:
    parts = [" ".join(sentence(rng, rng.randint(6, 14)) for _ in range(rng.randint(1, 3)))]
    if n % 5 == 0:
        parts.append("\n".join(f"- {sentence(rng, 5)}" for _ in range(3)))
    if n % 7 == 0:
        parts.append(f"```python\nresult = {rng.choice(WORDS)}({rng.randint(1, 99)})\n```")
    if n % 11 == 0:
        parts.append(f"See [the {rng.choice(WORDS)} notes](https://example.com/{n}) and `x`.")
    return "\n\n".join(parts)


def long_markdown(rng: random.Random) -> str:
    """About 20 KB of Markdown: headings, paragraphs, lists, code, a table, links."""
    sections = []
    for s in range(1, 13):
        lines = [f"## {s}. {sentence(rng, 3)[:-1]}", ""]
        lines += [" ".join(sentence(rng, rng.randint(10, 20)) for _ in range(4)), ""]
        lines += [f"- **{w}**: {sentence(rng, 8)}" for w in rng.sample(WORDS, 5)] + [""]
        lines += ["```sh", f"forgehall {rng.choice(WORDS)} --{rng.choice(WORDS)} {s}", "```", ""]
        if s % 3 == 0:
            lines += ["| step | owner | state |", "|---|---|---|"]
            lines += [f"| {w} | @{rng.choice(WORDS)} | `{s}` |" for w in rng.sample(WORDS, 6)]
            lines += [""]
        lines += [f"> {sentence(rng, 12)} See [docs](https://example.com/docs/{s}).", ""]
        sections.append("\n".join(lines))
    return "# Design notes\n\n" + "\n".join(sections)


@dataclass
class Dataset:
    token: str
    comments: int
    hot_comments: int
    labelled: int
    sub_issues: int
    long_descriptions: int
    seconds: float


async def build(url: str, args: argparse.Namespace) -> Dataset:
    """The workspace of ``prepare()``, then labels, comments, long descriptions and
    sub-issues, all written before the server starts."""
    started = time.perf_counter()
    token = await prepare(url, args.issues, DESCRIPTION, title=title, categories=CATEGORIES)
    rng = random.Random(args.seed)
    db = Database(resolve_database(Settings(database_url=url)))
    try:
        async with db.engine.begin() as conn:
            workspace_id = await conn.scalar(select(Workspace.id).where(Workspace.slug == "bench"))
            owner_id = await conn.scalar(select(User.id).where(User.email == "owner@bench.example"))
            label_ids = [f"{0xB0000 + i:032x}" for i in range(len(LABELS))]
            await conn.execute(
                insert(TABLES["labels"]),
                [
                    {"id": lid, "workspace_id": workspace_id, "name": name, "color": ""}
                    for lid, name in zip(label_ids, LABELS, strict=True)
                ],
            )
            links = []
            for n in range(3, args.issues + 1, 3):
                first = rng.randrange(len(label_ids))
                links.append({"issue_id": f"{n:032x}", "label_id": label_ids[first]})
                if n % 6 == 0:
                    second = (first + 1 + rng.randrange(len(label_ids) - 1)) % len(label_ids)
                    links.append({"issue_id": f"{n:032x}", "label_id": label_ids[second]})
            await conn.execute(insert(TABLES["issue_labels"]), links)
            long_ones = [n for n in LONG_DESCRIPTION_ISSUES if n <= args.issues]
            for n in long_ones:
                await conn.execute(
                    update(Issue)
                    .where(Issue.id == f"{n:032x}")
                    .values(description=long_markdown(rng))
                )
            subs = min(args.sub_issues, args.issues - 1)
            await conn.execute(
                update(Issue)
                .where(Issue.number.between(2, subs + 1), Issue.workspace_id == workspace_id)
                .values(parent_id=f"{1:032x}")
            )
        hot = min(args.hot_comments, args.comments)
        start = datetime.now(UTC) - timedelta(days=90)
        rows = []
        for n in range(args.comments):
            number = 1 if n < hot or args.issues == 1 else rng.randint(2, args.issues)
            created = start + timedelta(seconds=n * 300)
            rows.append(
                {
                    "id": f"{0xC0000000 + n:032x}",
                    "workspace_id": workspace_id,
                    "issue_id": f"{number:032x}",
                    "author_user_id": owner_id,
                    "body": comment_body(rng, n),
                    "created_at": created,
                    "updated_at": created,
                }
            )
        for at in range(0, len(rows), 2000):
            async with db.engine.begin() as conn:
                await conn.execute(insert(TABLES["comments"]), rows[at : at + 2000])
    finally:
        await db.dispose()
    return Dataset(
        token=token,
        comments=args.comments,
        hot_comments=hot,
        labelled=len({link["issue_id"] for link in links}),
        sub_issues=subs,
        long_descriptions=len(long_ones),
        seconds=time.perf_counter() - started,
    )


# --- the server ----------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    metrics_url: str
    log_path: Path

    def output(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return textwrap.indent(text[-4000:].rstrip() or "(no output)", "    | ")


@contextlib.contextmanager
def serving(database_url: str, workdir: Path) -> Iterator[Server]:
    """``forgehall serve`` on ``database_url`` with its metrics listener on a free port;
    always stopped (or killed) on the way out."""
    port, metrics_port = free_port(), free_port()
    env = server_env(database_url, workdir, port)
    env["FORGEHALL_METRICS_ADDR"] = f"127.0.0.1:{metrics_port}"
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "forgehall", "serve"],
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        server = Server(
            proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", log_path
        )
        try:
            wait_ready(server)
            yield server
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(trust_env=False) as client:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise BenchError(
                    f"server exited with {server.proc.returncode}:\n" + server.output()
                )
            with contextlib.suppress(httpx.HTTPError):
                ready = client.get(f"{server.url}/readyz", timeout=1).status_code == 200
                if ready and client.get(server.metrics_url, timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
    raise BenchError("server (or its metrics listener) not ready in time:\n" + server.output())


# --- the measurement -----------------------------------------------------------------------


@dataclass
class Histogram:
    """One route's ``GET`` request-duration histogram: sum, count and cumulative buckets."""

    total: float = 0.0
    count: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    def minus(self, before: Histogram) -> Histogram:
        return Histogram(
            self.total - before.total,
            self.count - before.count,
            {le: n - before.buckets.get(le, 0.0) for le, n in self.buckets.items()},
        )

    def p99_bound(self) -> float:
        """The smallest bucket edge holding 99 % of the observations (seconds)."""
        for le in sorted(self.buckets):
            if self.buckets[le] >= 0.99 * self.count:
                return le
        return float("inf")


async def scrape(http: httpx.AsyncClient, metrics_url: str) -> dict[str, Histogram]:
    response = await http.get(metrics_url)
    if response.status_code != 200:
        raise BenchError(f"metrics: {response.status_code}")
    routes: dict[str, Histogram] = {}
    for family in text_string_to_metric_families(response.text):
        if family.name != METRIC:
            continue
        for sample in family.samples:
            if sample.labels.get("method") != "GET":
                continue
            h = routes.setdefault(sample.labels["route"], Histogram())
            if sample.name.endswith("_sum"):
                h.total = sample.value
            elif sample.name.endswith("_count"):
                h.count = sample.value
            elif sample.name.endswith("_bucket"):
                h.buckets[float(sample.labels["le"])] = sample.value
    return routes


@dataclass(frozen=True)
class Request:
    path: str
    route: str  # the route template the server's histogram labels it with
    params: dict[str, str] = field(default_factory=dict)
    page: bool = True
    fragment: bool = False
    contains: str = ""  # checked once in the answer before timing


@dataclass(frozen=True)
class Kind:
    name: str
    requests: tuple[Request, ...]  # one sample sends these one after the other
    peer: str | None = None  # the API kind this page is compared with


@dataclass
class Result:
    kind: Kind
    client_ms: list[float]
    server_mean_ms: float
    server_p99_bound_ms: float
    size_kb: float


def kinds(args: argparse.Namespace, data: Dataset) -> list[Kind]:
    board = "/w/{workspace}/board"
    issue = "/w/{workspace}/issues/{key}"
    api_list = Request(
        f"{API}/issues", "/api/v1/workspaces/{workspace}/issues", {"limit": "50"}, page=False
    )
    api_issue = Request(
        f"{API}/issues/{HOT}", "/api/v1/workspaces/{workspace}/issues/{key}", page=False
    )
    api_comments = Request(
        f"{API}/issues/{HOT}/comments",
        "/api/v1/workspaces/{workspace}/issues/{key}/comments",
        page=False,
    )
    count = f'<span class="count quiet">{data.hot_comments}</span>'
    return [
        Kind("board page", (Request(f"{PAGES}/board", board, contains="ENG-"),), "API list"),
        Kind(
            f"board, q={args.query}",
            (Request(f"{PAGES}/board", board, {"q": args.query}, contains="ENG-"),),
            "API list",
        ),
        Kind(
            "board fragment (HX)",
            (Request(f"{PAGES}/board", board, fragment=True, contains="ENG-"),),
            "API list",
        ),
        Kind(
            "issue list page",
            (Request(f"{PAGES}/issues", "/w/{workspace}/issues", contains="ENG-"),),
            "API list",
        ),
        Kind(
            f"issue page {HOT}",
            (Request(f"{PAGES}/issues/{HOT}", issue, contains=count),),
            "API issue+comments",
        ),
        Kind(
            f"{HOT} ?part=comments (HX)",
            (
                Request(
                    f"{PAGES}/issues/{HOT}",
                    issue,
                    {"part": "comments"},
                    fragment=True,
                    contains=count,
                ),
            ),
            "API issue+comments",
        ),
        Kind("API list", (api_list,)),
        Kind(
            "API issue+comments",
            (api_issue, api_comments),
        ),
    ]


def headers_of(request: Request) -> dict[str, str]:
    headers = {"Accept": "text/html" if request.page else "application/json"}
    if request.fragment:
        headers["HX-Request"] = "true"
    return headers


async def send(http: httpx.AsyncClient, request: Request) -> httpx.Response:
    return await http.get(request.path, params=request.params, headers=headers_of(request))


async def check(http: httpx.AsyncClient, request: Request) -> int:
    """One request answered as expected (status, type, content); return its size."""
    response = await send(http, request)
    what = f"GET {request.path} {request.params or ''}".rstrip()
    if not request.page:
        expect(response, 200, what)
        return len(response.content)
    if response.status_code != 200:
        raise BenchError(f"{what}: {response.status_code} {response.text[:500]}")
    if not response.headers.get("content-type", "").startswith("text/html"):
        raise BenchError(f"{what}: answered {response.headers.get('content-type')}, not HTML")
    if request.contains not in response.text:
        raise BenchError(f"{what}: {request.contains!r} is not in the answer")
    if request.fragment and "<html" in response.text[:500].lower():
        raise BenchError(f"{what}: a whole page, not a fragment")
    return len(response.content)


async def measure_kind(
    http: httpx.AsyncClient,
    metrics: httpx.AsyncClient,
    server: Server,
    kind: Kind,
    args: argparse.Namespace,
) -> Result:
    size = sum([await check(http, r) for r in kind.requests])
    for _ in range(args.warmup):
        for request in kind.requests:
            await send(http, request)
    # The middleware records a request after its last byte is sent, so the client can be
    # a step ahead of the histogram: let the warm-up's last records land, and below wait
    # until the timed requests are all counted.
    await asyncio.sleep(SETTLE_S)
    before = await scrape(metrics, server.metrics_url)
    samples: list[float] = []
    spent = 0.0
    for _ in range(args.requests):
        if spent > args.budget:
            break  # this kind has had its time budget
        started = time.perf_counter()
        for request in kind.requests:
            response = await send(http, request)
            if response.status_code != 200:
                raise BenchError(f"{kind.name}: {response.status_code} {response.text[:300]}")
        samples.append((time.perf_counter() - started) * 1000)
        spent += samples[-1] / 1000
    routes = {
        r.route: len(samples) * sum(1 for x in kind.requests if x.route == r.route)
        for r in kind.requests
    }
    deadline = time.monotonic() + SETTLE_S * 20
    while True:
        after = await scrape(metrics, server.metrics_url)
        deltas = {
            route: after.get(route, Histogram()).minus(before.get(route, Histogram()))
            for route in routes
        }
        if all(deltas[r].count >= sent for r, sent in routes.items()):
            break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(SETTLE_S)
    mean_ms = p99_ms = 0.0
    for route, sent in routes.items():
        delta = deltas[route]
        if delta.count != sent:
            raise BenchError(
                f"{kind.name}: the histogram of {route} counted {delta.count:.0f} requests, "
                f"{sent} were sent (route label?)"
            )
        mean_ms += delta.total / delta.count * 1000
        p99_ms += delta.p99_bound() * 1000
    print(
        f"  {kind.name}: {len(samples)} requests, server mean {mean_ms:.1f} ms",
        file=sys.stderr,
        flush=True,
    )
    return Result(kind, samples, mean_ms, p99_ms, size / 1024)


async def measure(server: Server, data: Dataset, args: argparse.Namespace) -> list[Result]:
    results = []
    async with (
        httpx.AsyncClient(
            base_url=server.url,
            headers={"Authorization": f"Bearer {data.token}"},
            trust_env=False,
            timeout=30,
        ) as http,
        httpx.AsyncClient(trust_env=False, timeout=10) as metrics,
    ):
        for kind in kinds(args, data):
            results.append(await measure_kind(http, metrics, server, kind, args))
    return results


def report(label: str, results: list[Result], requested: int, budget: float) -> None:
    by_name = {r.kind.name: r for r in results}
    print(
        f"[{label}] {'request':<26} {'n':>4}  {'server':>7} {'srv p99':>8}  "
        f"{'p50':>6} {'p90':>6} {'p99':>6} {'max':>6}  {'KB':>6}  "
        f"{'page/API (server, p50)':<24} p99 < {TARGET_P99_MS:.0f} ms"
    )
    print(
        f"[{label}] {'':<26} {'':>4}  {'mean ms':>7} {'bound ms':>8}  {'client round trip, ms':^27}"
    )
    for r in results:
        values = r.client_ms
        p50, p99 = statistics.median(values), percentile(values, 99)
        ratio, verdict = "", ""
        if r.kind.peer:
            peer = by_name[r.kind.peer]
            ratio = (
                f"{r.server_mean_ms / peer.server_mean_ms:4.1f}x, "
                f"{p50 / statistics.median(peer.client_ms):4.1f}x"
            )
            verdict = "met" if p99 < TARGET_P99_MS else "MISSED"
        if len(values) < requested:
            verdict += f" (stopped after the {budget:g} s budget)"
        bound = f"{r.server_p99_bound_ms:8.0f}" if r.server_p99_bound_ms < 1e9 else "   >30 s"
        print(
            f"[{label}] {r.kind.name:<26} {len(values):>4}  {r.server_mean_ms:7.1f} "
            f"{bound}  {p50:6.1f} {percentile(values, 90):6.1f} {p99:6.1f} "
            f"{max(values):6.1f}  {r.size_kb:6.1f}  {ratio:<24} {verdict}"
        )
    pages = [r for r in results if r.kind.peer]
    missed = [r.kind.name for r in pages if percentile(r.client_ms, 99) >= TARGET_P99_MS]
    print(
        f"[{label}] target: every page's client round-trip p99 < {TARGET_P99_MS:.0f} ms "
        f"(the conservative figure: it holds the server time plus loopback and client): "
        + (
            "met" if not missed else f"MISSED by {len(missed)} of {len(pages)}: {', '.join(missed)}"
        ),
        flush=True,
    )


# --- backends ------------------------------------------------------------------------------


def describe(label: str, data: Dataset, args: argparse.Namespace) -> None:
    print(
        f"[{label}] built in {data.seconds:.1f} s: {args.issues:,} issues over "
        f"{len(CATEGORIES)} columns, {data.labelled:,} labelled, {data.comments:,} comments "
        f"({data.hot_comments} on {HOT}), {data.long_descriptions} long descriptions, "
        f"{data.sub_issues} sub-issues of {HOT}",
        flush=True,
    )


async def run_sqlite(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="fh_bench_") as tmp:
        root = Path(tmp)
        url = f"sqlite:///{root / 'bench.db'}"
        print(f"\n=== SQLite, database file {root / 'bench.db'}", flush=True)
        data = await build(url, args)
        describe("sqlite", data, args)
        with serving(url, root) as server:
            results = await measure(server, data, args)
        report("sqlite", results, args.requests, args.budget)


async def run_postgresql(args: argparse.Namespace) -> None:
    admin_url = os.environ.get("FORGEHALL_BENCH_DATABASE_URL", DEFAULT_ADMIN_URL)
    name = f"fh_bench_{os.getpid()}"
    admin = await asyncio.wait_for(asyncpg.connect(asyncpg_dsn(admin_url)), 10)
    try:
        version = await admin.fetchval("SHOW server_version")
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    print(f"\n=== PostgreSQL {version}, scratch database {name}", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="fh_bench_") as tmp:
            data = await build(url, args)
            describe("postgresql", data, args)
            with serving(url, Path(tmp)) as server:
                results = await measure(server, data, args)
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(admin_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        print(f"[postgresql] dropped scratch database {name}")
    report("postgresql", results, args.requests, args.budget)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per kind")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per kind first")
    parser.add_argument("--issues", type=int, default=5000)
    parser.add_argument("--comments", type=int, default=20000, help="comments in all")
    parser.add_argument("--hot-comments", type=int, default=200, help=f"of them on {HOT}")
    parser.add_argument("--sub-issues", type=int, default=25, help=f"sub-issues of {HOT}")
    parser.add_argument("--query", default="deploy", help="the board's text filter")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="seconds of timed requests per kind (60); a slower kind stops early",
    )
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.warmup < 0 or args.issues < 1 or args.budget <= 0:
        parser.error("--requests and --issues must be >= 1; --warmup >= 0; --budget > 0")
    if min(args.comments, args.hot_comments, args.sub_issues) < 0:
        parser.error("--comments, --hot-comments and --sub-issues must be >= 0")
    return args


async def main(args: argparse.Namespace) -> int:
    print(
        f"ui_pages: {args.requests} timed requests per kind after {args.warmup} warm-up, "
        f"{args.issues:,} issues, {args.comments:,} comments; target: pages p99 < "
        f"{TARGET_P99_MS:.0f} ms (client round trip)"
    )
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}",
        flush=True,
    )
    try:
        if args.backend in ("sqlite", "both"):
            await run_sqlite(args)
        if args.backend in ("postgresql", "both"):
            await run_postgresql(args)
    except BenchError as exc:
        print(f"ui_pages: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main(parse_args())))
    sys.exit(130)
