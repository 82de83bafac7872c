"""``forgehall gates …``: write, check and run the gates of a repository, and say
whether a commit is ready for its tier.

Runs are local: results go to the hash-chained ledger ``.forgehall/evidence/ledger.jsonl``
(see docs/gates.md); ``run --submit`` also sends them to the server ledger of the current
workspace (docs/ledger.md). Exit codes: 0 every gate that ran passed (or warned), 1 a
gate failed / the commit is not ready / the results could not be submitted, 2 a usage or
validation error (nothing recorded).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from forgehall.cli.client import WorkspaceOption
from forgehall.cli.context import fail
from forgehall.gates.config import (
    GATES_FILE,
    INTENT_FILE,
    ConfigError,
    display_path,
    find_project_root,
    load_gates,
    load_intent,
)
from forgehall.gates.detect import detect_gates, render_gates_yaml, render_intent_yaml
from forgehall.gates.readiness import Readiness, compute_readiness
from forgehall.gates.runner import (
    GateOutcome,
    SelectionError,
    detect_scope,
    run_gates,
    runner_identity,
    select_gates,
)
from forgehall.gates.schemas import TIERS, EntryScope, Gate, GatesFile, RunnerInfo, Tier
from forgehall.gates.submit import check_receipt, submission_bodies
from forgehall.ledger.chain import LEDGER_PATH, LedgerError, append_entries, check_appendable
from forgehall.ledger.chain import read_entries as read_ledger_entries

if TYPE_CHECKING:
    from forgehall.cli.issues import Board

gates_app = typer.Typer(
    help="Gates: the checks in .forgehall/gates.yaml, run and recorded as evidence.",
    no_args_is_help=True,
)

DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        metavar="PATH",
        help="The project directory (default: the nearest one upwards holding "
        ".forgehall/gates.yaml).",
    ),
]
TierOption = Annotated[
    str | None,
    typer.Option("--tier", help="prototype, pilot or production (default: intent.yaml's tier)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
RESULT_STYLE = {"PASS": "green", "WARN": "yellow", "FAIL": "red", "SKIP": "dim"}


def register(app: typer.Typer) -> None:
    app.add_typer(gates_app, name="gates")


def _config_failure(exc: ConfigError) -> NoReturn:
    for problem in exc.problems[:-1]:
        typer.echo(f"forgehall: error: {problem}", err=True)
    fail(str(exc.problems[-1]), code=2)


def _load(directory: Path | None) -> tuple[Path, GatesFile, Tier | None]:
    try:
        root = find_project_root(directory or Path.cwd())
        gates_file = load_gates(root)
        intent = load_intent(root)
    except ConfigError as exc:
        _config_failure(exc)
    return root, gates_file, intent.tier if intent else None


def _tier(value: str | None) -> Tier | None:
    if value is None:
        return None
    if value not in TIERS:
        fail(f"unknown tier {value!r}: use {', '.join(TIERS)}", code=2)
    return value


@gates_app.command()
def init(
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite gates.yaml and intent.yaml if they exist.")
    ] = False,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", metavar="PATH", help="The project directory (default: here)."),
    ] = None,
) -> None:
    """Write a starter .forgehall/gates.yaml and intent.yaml (tier prototype).

    The gates come from what the project is: pyproject.toml (ruff, pytest), package.json
    (npm test, npm run lint), go.mod (go vet, go test), Cargo.toml (clippy, cargo test);
    otherwise a commented example. Existing files are kept unless --force.
    """
    root = (directory or Path.cwd()).resolve()
    if not root.is_dir():
        fail(f"{display_path(root)} is not a directory", code=2)
    targets = [root / GATES_FILE, root / INTENT_FILE]
    existing = [display_path(path) for path in targets if path.exists()]
    if existing and not force:
        fail(f"{' and '.join(existing)} already exist(s); use --force to overwrite", code=2)
    kinds, gates = detect_gates(root)
    (root / GATES_FILE).parent.mkdir(parents=True, exist_ok=True)
    (root / GATES_FILE).write_text(render_gates_yaml(kinds, gates), encoding="utf-8")
    (root / INTENT_FILE).write_text(render_intent_yaml(), encoding="utf-8")
    try:
        load_gates(root)
    except ConfigError as exc:
        _config_failure(exc)
    found = ", ".join(kinds) or "no known project kind: edit the example"
    typer.echo(f"Wrote {display_path(root / GATES_FILE)} ({found}; {len(gates)} gates)")
    typer.echo(f"Wrote {display_path(root / INTENT_FILE)} (tier prototype)")
    typer.echo("Next: `forgehall gates validate`, then `forgehall gates run`.")


@gates_app.command()
def validate(directory: DirOption = None) -> None:
    """Check gates.yaml and intent.yaml; every problem is printed with file, line and field."""
    root, gates_file, tier = _load(directory)
    ids = ", ".join(gate.id for gate in gates_file.gates) or "none"
    typer.echo(f"OK: {display_path(root / GATES_FILE)}: {len(gates_file.gates)} gates ({ids})")
    if tier:
        typer.echo(f"OK: {display_path(root / INTENT_FILE)}: tier {tier}")


class _RunDisplay:
    """Progress while gates run (a live table on a terminal, plain lines otherwise) and
    the recording of each result as soon as it is known."""

    def __init__(
        self,
        gates: list[Gate],
        *,
        console: Console,
        mode: str,  # "live", "lines" or "quiet"
        record: Path | None,
        scope: EntryScope,
        runner: RunnerInfo,
        tier: Tier | None,
    ) -> None:
        self.gates = gates
        self.console = console
        self.mode = mode
        self.record = record
        self.scope = scope
        self.runner = runner
        self.tier = tier
        self.started: dict[str, float] = {}
        self.outcomes: dict[str, GateOutcome] = {}
        self.entries: list[dict[str, Any]] = []
        self.record_error: str | None = None

    def gate_started(self, gate: Gate) -> None:
        self.started[gate.id] = time.monotonic()
        if self.mode == "lines":
            self.console.print(f"…    {gate.id}", highlight=False)

    def gate_finished(self, outcome: GateOutcome) -> None:
        self.outcomes[outcome.gate.id] = outcome
        entry = outcome.entry(self.scope, self.runner, self.tier).model_dump(mode="json")
        self.entries.append(entry)
        if self.record is not None and self.record_error is None:
            try:
                append_entries(self.record, [entry])
            except (LedgerError, OSError, ValueError) as exc:
                self.record_error = str(exc)
        if self.mode == "lines":
            reason = f"  ({outcome.reason})" if outcome.reason else ""
            self.console.print(f"{outcome.result:4} {outcome.gate.id}{reason}", highlight=False)

    def render(self) -> RenderableType:
        rows: list[RenderableType] = []
        now = time.monotonic()
        for gate in self.gates:
            outcome = self.outcomes.get(gate.id)
            if outcome is not None:
                style = RESULT_STYLE[outcome.result]
                rows.append(Text.assemble((f"{outcome.result:4} ", style), gate.id))
            elif gate.id in self.started:
                elapsed = now - self.started[gate.id]
                rows.append(Spinner("dots", text=f"{gate.id}  {elapsed:.0f}s"))
            else:
                rows.append(Text(f"     {gate.id}  waiting", style="dim"))
        return Group(*rows)


def _summary(outcomes: list[GateOutcome], console: Console) -> None:
    table = Table("gate", "result", "reason", "time", title="Gates")
    for outcome in outcomes:
        seconds = "—" if outcome.duration_ms is None else f"{outcome.duration_ms / 1000:.1f}s"
        table.add_row(
            outcome.gate.id,
            Text(outcome.result, style=RESULT_STYLE[outcome.result]),
            outcome.reason or "",
            seconds,
        )
    console.print(table)


def _readiness_text(readiness: Readiness) -> str:
    verdict = "READY" if readiness.ready else "NOT READY"
    commit = (readiness.commit or "no commit")[:12]
    lines = [f"{verdict} for {readiness.tier}: {readiness.repository} at {commit}"]
    lines += [f"  ok       {gate_id}" for gate_id in readiness.passing]
    lines += [f"  blocked  {b.gate_id}: {b.reason} ({b.detail})" for b in readiness.blockers]
    return "\n".join(lines)


def _submit(
    board: Board, entries: list[dict[str, Any]], gates_file: GatesFile
) -> tuple[str | None, str | None]:
    """Send the results and the gates file to the server ledger: (origin, problem)."""
    origin = None
    for chunk, body in submission_bodies(entries, gates_file):
        try:
            response = board.server.http.post(board.base + "/ledger/entries", json=body)
        except httpx.HTTPError as exc:
            return origin, f"cannot reach the server at {board.server.url}: {exc}"
        if response.status_code != 201:
            try:
                detail = response.json().get("detail") or response.text
            except ValueError:
                detail = response.text[:200]
            return origin, f"{response.status_code}: {detail}"
        origin, problem = check_receipt(chunk, response.json())
        if problem is not None:
            return origin, problem
    return origin, None


@gates_app.command()
def run(
    gate: Annotated[
        str | None, typer.Option("--gate", help="Run this gate and its dependencies only.")
    ] = None,
    tier: Annotated[
        str | None,
        typer.Option(
            "--tier",
            help="Run only the gates required in this tier (and their "
            "dependencies); recorded with the results.",
        ),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", "-j", min=1, help="Gates run at once (default: the CPU count)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the entries and the readiness as JSON.")
    ] = False,
    no_record: Annotated[
        bool, typer.Option("--no-record", help="Do not append the results to the ledger.")
    ] = False,
    submit: Annotated[
        bool,
        typer.Option(
            "--submit",
            help="Also send the results (and which gates each tier requires) to the "
            "server ledger of the workspace (your login's, or --workspace).",
        ),
    ] = False,
    workspace: WorkspaceOption = None,
    directory: DirOption = None,
) -> None:
    """Run the gates as a dependency graph, record each result, print a summary.

    Independent gates run in parallel. A gate whose dependency did not pass (or warn) is
    skipped. With --submit the results also go to the server ledger, after the run.
    Exit code 0 when every gate that ran passed or warned, 1 when one failed (or the
    results could not be submitted), 2 on a usage or validation error (then nothing is
    recorded).
    """
    root, gates_file, intent_tier = _load(directory)
    board = None
    if submit:  # imported here: plain runs stay quick to start
        from forgehall.cli.issues import Board

        board = Board(workspace)  # not logged in: fail before running
    wanted_tier = _tier(tier)
    try:
        selected = select_gates(gates_file, gate, wanted_tier)
    except SelectionError as exc:
        fail(str(exc), code=2)
    ledger = root / LEDGER_PATH
    if not no_record:
        try:
            check_appendable(ledger)
        except (LedgerError, OSError) as exc:
            fail(str(exc), code=2)
    recorded_tier = wanted_tier or intent_tier
    scope = detect_scope(root)
    console = Console(highlight=False)
    mode = "quiet" if as_json else "live" if console.is_terminal else "lines"
    display = _RunDisplay(
        selected,
        console=console,
        mode=mode,
        record=None if no_record else ledger,
        scope=scope,
        runner=runner_identity(),
        tier=recorded_tier,
    )
    workers = jobs or os.cpu_count() or 1

    async def go() -> list[GateOutcome]:
        return await run_gates(selected, root, jobs=workers, observer=display)

    if mode == "live":
        with Live(console=console, get_renderable=display.render, transient=True):
            outcomes = asyncio.run(go())
    else:
        outcomes = asyncio.run(go())

    readiness = None
    if recorded_tier is not None:
        try:
            history = read_ledger_entries(ledger)
            if no_record:
                history += display.entries
        except (LedgerError, OSError):
            history = display.entries  # fresh evidence only: an unreadable ledger proves nothing
        readiness = compute_readiness(
            gates_file, recorded_tier, history, repository=scope.repository, commit=scope.commit
        )
    failed = any(o.result in ("FAIL", "SKIP") for o in outcomes)
    origin, submit_error = None, None
    if board is not None and display.entries:
        origin, submit_error = _submit(board, display.entries, gates_file)
    if as_json:
        document = {
            "entries": display.entries,
            "readiness": readiness.as_dict() if readiness else None,
            "recorded": not no_record and display.record_error is None,
            "ledger": display_path(ledger),
            "submitted": (
                {"workspace": board.slug, "origin": origin}
                if board is not None and submit_error is None and display.entries
                else None
            ),
        }
        typer.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        if outcomes:
            _summary(outcomes, console)
        else:
            typer.echo("No gates selected.")
        if readiness is not None:
            typer.echo(_readiness_text(readiness))
        if not no_record and display.record_error is None and outcomes:
            typer.echo(f"Recorded {len(outcomes)} results in {display_path(ledger)}")
        if board is not None and submit_error is None and outcomes:
            typer.echo(
                f"Submitted {len(outcomes)} results to the ledger of {board.slug} ({origin})"
            )
    if display.record_error is not None:
        fail(f"results were not all recorded: {display.record_error}")
    if submit_error is not None:
        fail(f"results were not submitted to the server ledger: {submit_error}")
    if failed:
        raise typer.Exit(1)


@gates_app.command()
def readiness(
    tier: TierOption = None,
    as_json: JsonOption = False,
    directory: DirOption = None,
) -> None:
    """Whether HEAD is ready for a tier, from the local ledger (exit 1 when not).

    Ready means: every gate required in the tier has a latest result for this repository
    and commit, from a clean worktree, that is PASS (or WARN for a gate allowed to fail).
    The ledger must verify; otherwise nothing counts.
    """
    root, gates_file, intent_tier = _load(directory)
    chosen = _tier(tier) or intent_tier
    if chosen is None:
        fail(f"no tier: pass --tier or write {display_path(root / INTENT_FILE)}", code=2)
    ledger = root / LEDGER_PATH
    try:
        entries = read_ledger_entries(ledger)
    except (LedgerError, OSError) as exc:
        fail(f"{exc}; readiness cannot be decided from a ledger that does not verify")
    scope = detect_scope(root)
    result = compute_readiness(
        gates_file, chosen, entries, repository=scope.repository, commit=scope.commit
    )
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
    else:
        typer.echo(_readiness_text(result))
    if not result.ready:
        raise typer.Exit(1)
