"""``forgehall ledger …``: verify evidence ledgers, and read a workspace's server ledger.

``verify FILE`` checks a local ledger (``.jsonl``, a hash chain) or a server export (a
bundle, see docs/ledger.md) offline. ``verify --server`` checks the live ledger of the
current workspace the same way, from its export. A bundle or server that verifies has
its latest checkpoint remembered (``ledger_trust.py``); later verifications of the same
log must extend it. The other commands read the server ledger over the HTTP API.

Exit codes: 0 verified / ready; 1 tampered / not ready (or a server error); 2 a usage
error, a file that is not a ledger, or a damaged trust file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from forgehall.cli.client import JsonOption, Server, WorkspaceOption, _fail_with, _parse
from forgehall.cli.context import fail
from forgehall.cli.credentials import load_credentials
from forgehall.cli.issues import Board
from forgehall.cli.ledger_trust import load_trusted, remember
from forgehall.gates.schemas import TIERS
from forgehall.ledger.bundle import (
    BundleFormatError,
    TrustedCheckpoint,
    verify_bundle_file,
    verify_bundle_stream,
)
from forgehall.ledger.chain import verify_chain
from forgehall.ledger.checkpoint import CheckpointError, VerifierKey
from forgehall.ledger.merkle import verify_consistency
from forgehall.ledger.schemas import (
    CheckpointPage,
    ConsistencyOut,
    EntryPage,
    PublicKeyOut,
    ReadinessOut,
)
from forgehall.ledger.verify import VerificationReport

ledger_app = typer.Typer(
    help="Evidence ledgers: verify them (offline or against the server); read the server's.",
    no_args_is_help=True,
)
PublicKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--public-key",
        metavar="FILE",
        help="The instance's key to check checkpoints with: the `verifier_key` text, or the "
        "JSON of GET /api/v1/ledger/public-key (`forgehall ledger public-key`).",
    ),
]


def register(app: typer.Typer) -> None:
    app.add_typer(ledger_app, name="ledger")


def _pinned_key(path: Path | None) -> VerifierKey | None:
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        fail(f"{path}: cannot read the public key: {exc}", code=2)
    if text.startswith("{"):
        try:
            text = str(json.loads(text)["verifier_key"])
        except (ValueError, KeyError, TypeError):
            fail(f"{path}: JSON without a verifier_key", code=2)
    try:
        return VerifierKey.parse(text)
    except CheckpointError as exc:
        fail(f"{path}: not a verifier key: {exc}", code=2)


def _trusted(standalone: bool) -> dict[str, TrustedCheckpoint]:
    if standalone:
        return {}
    try:
        return load_trusted()
    except ValueError as exc:
        fail(f"{exc}; move the file away to trust afresh", code=2)


def _remember(report: VerificationReport, source: str) -> Path | None:
    if not report.ok or report.checkpoint is None or report.origin is None:
        return None
    assert report.public_key is not None
    return remember(report.origin, report.public_key, report.checkpoint, source)


def _show(report: VerificationReport, name: str, as_json: bool, saved: Path | None) -> None:
    if as_json:
        typer.echo(
            json.dumps({**report.as_dict(), "remembered_in": saved and str(saved)}, indent=2)
        )
        return
    typer.echo(f"{name}: {report.summary()}")
    if report.ok and report.kind == "bundle":
        source = {
            "pinned": "the key given with --public-key",
            "remembered": "the key trusted for this log before",
            "bundle": "the key in the bundle itself (pin one with --public-key)",
        }.get(report.key_source or "", "")
        typer.echo(f"  checkpoints signed by {report.public_key}: {source}")
        if saved is not None:
            typer.echo(f"  trusted from now on: the checkpoint of size {report.entries} ({saved})")


def _check_consistency(
    board: Board, trusted: TrustedCheckpoint, report: VerificationReport
) -> VerificationReport:
    """Ask the server to prove its latest tree extends the remembered one, and check it."""
    assert report.head is not None
    query = urlencode({"from": trusted.size, "to": report.entries})
    proof = _parse(ConsistencyOut, board.call("GET", f"/ledger/consistency?{query}"))
    hashes = [bytes.fromhex(h) for h in proof.proof]
    new_root = bytes.fromhex(report.head)
    if (
        proof.to_root != report.head
        or bytes.fromhex(proof.from_root) != trusted.root
        or not verify_consistency(trusted.size, report.entries, trusted.root, new_root, hashes)
    ):
        return VerificationReport(
            path=report.path,
            kind="bundle",
            ok=False,
            entries=trusted.size,
            position=0,
            reason=f"the server's consistency proof from the checkpoint of size "
            f"{trusted.size} trusted on {trusted.trusted_at} does not verify: the "
            "history it serves is not an extension of the one trusted",
            origin=report.origin,
        )
    return report


def _verify_server(
    workspace: str | None, key: VerifierKey | None, trusted: dict[str, TrustedCheckpoint]
) -> tuple[VerificationReport, str]:
    board = Board(workspace)
    name = f"{board.server.url} (workspace {board.slug})"
    try:
        with board.server.http.stream("GET", board.base + "/ledger/export") as response:
            if response.status_code >= 400:
                response.read()
                _fail_with(response)
            report = verify_bundle_stream(
                response.iter_bytes(), name=name, key=key, trusted=trusted
            )
    except httpx.HTTPError as exc:
        fail(f"cannot read the ledger from {board.server.url}: {exc}")
    except BundleFormatError as exc:
        fail(f"the server's export is not a ledger bundle: {exc}")
    remembered = trusted.get(report.origin or "")
    if report.ok and remembered is not None and 0 < remembered.size <= report.entries:
        report = _check_consistency(board, remembered, report)
    return report, name


@ledger_app.command()
def verify(
    file: Annotated[
        Path | None,
        typer.Argument(
            help="A local ledger (.forgehall/evidence/ledger.jsonl) or a bundle from "
            "`forgehall ledger export`."
        ),
    ] = None,
    public_key: PublicKeyOption = None,
    server: Annotated[
        bool,
        typer.Option(
            "--server", help="Verify the current workspace's ledger on the server instead."
        ),
    ] = False,
    workspace: WorkspaceOption = None,
    standalone: Annotated[
        bool,
        typer.Option(
            "--standalone",
            help="Neither compare with nor update the checkpoint remembered for the log "
            "(e.g. to check an export older than one verified before).",
        ),
    ] = False,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            help="Processes hashing a bundle file's entries, this one included (default: 1 "
            "for files below 64 MB, else one per CPU, at most 9).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Verify a ledger: every entry, hash and signature (exit 1 when tampered).

    A local .jsonl ledger: every line's seq and hash chain. A bundle or --server: every
    leaf hash, every checkpoint's signature, every root recomputed (which proves each
    checkpoint consistent with the one before), positions without gaps, and — unless
    --standalone — that the log extends the checkpoint this CLI trusted last time for
    the same log (remembered next to the credentials). The first bad position is named.
    """
    if server == (file is not None):
        fail("give a FILE or --server (one of them)", code=2)
    key = _pinned_key(public_key)
    trusted = _trusted(standalone)
    if server:
        report, name = _verify_server(workspace, key, trusted)
        saved = None if standalone else _remember(report, name)
        _show(report, name, as_json, saved)
        if not report.ok:
            raise typer.Exit(1)
        return
    assert file is not None
    if not file.is_file():
        fail(f"{file}: no such file", code=2)
    try:
        if file.suffix == ".jsonl":
            if public_key is not None:
                fail("--public-key is for bundles; a local ledger has no signatures", code=2)
            report = verify_chain(file)
        else:
            report = verify_bundle_file(file, key=key, trusted=trusted, workers=jobs)
    except OSError as exc:
        fail(f"{file}: cannot read it: {exc}", code=2)
    except BundleFormatError as exc:
        fail(f"{exc} (a local ledger ends in .jsonl)", code=2)
    saved = None if standalone or report.kind != "bundle" else _remember(report, str(file))
    _show(report, str(file), as_json, saved)
    if not report.ok:
        raise typer.Exit(1)


@ledger_app.command("public-key")
def public_key_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON.")] = False,
) -> None:
    """Print the server's checkpoint-signing key (the text --public-key reads)."""
    server = Server(load_credentials(), need_token=False)
    key = _parse(PublicKeyOut, server.request("GET", "/api/v1/ledger/public-key"))
    typer.echo(key.model_dump_json(indent=2) if as_json else key.verifier_key)


@ledger_app.command()
def export(
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="FILE", help="Where to write the bundle.")
    ],
    workspace: WorkspaceOption = None,
) -> None:
    """Download the workspace's ledger as a bundle (entries, checkpoints, public key)."""
    board = Board(workspace)
    temporary = output.with_name(output.name + ".part")
    try:
        with (
            board.server.http.stream("GET", board.base + "/ledger/export") as response,
            temporary.open("wb") as handle,
        ):
            if response.status_code >= 400:
                response.read()
                _fail_with(response)
            for chunk in response.iter_bytes():
                handle.write(chunk)
    except httpx.HTTPError as exc:
        temporary.unlink(missing_ok=True)
        fail(f"cannot read the ledger from {board.server.url}: {exc}")
    temporary.replace(output)
    typer.echo(f"Wrote {output}; check it with `forgehall ledger verify {output}`")


def _short(value: str | None, width: int = 12) -> str:
    return "—" if value is None else value[:width]


@ledger_app.command()
def entries(
    issue: Annotated[
        str | None, typer.Option("--issue", help="Issue key (scope.issue_key).")
    ] = None,
    commit: Annotated[str | None, typer.Option("--commit", help="Full commit hash.")] = None,
    gate: Annotated[str | None, typer.Option("--gate", help="Gate id.")] = None,
    repository: Annotated[str | None, typer.Option("--repository", help="Repository.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 50,
    oldest: Annotated[bool, typer.Option("--oldest", help="Oldest first.")] = False,
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """List sequenced entries (newest first), by issue, commit, gate or repository."""
    board = Board(workspace)
    page = _parse(
        EntryPage,
        board.call(
            "GET",
            "/ledger/entries",
            params={
                "issue_key": issue,
                "commit": commit,
                "gate_id": gate,
                "repository": repository,
                "limit": limit,
                "order": "oldest" if oldest else "newest",
            },
        ),
    )
    if as_json:
        typer.echo(page.model_dump_json(indent=2))
        return
    table = Table("pos", "gate", "result", "commit", "issue", "runner", "finished")
    for item in page.items:
        e = item.entry
        table.add_row(
            str(item.position),
            escape(e.gate_id),
            e.result,
            _short(e.scope.commit),
            escape(e.scope.issue_key or "—"),
            escape(e.runner.host),
            e.finished_at or "—",
        )
    Console(width=140).print(table)
    if page.next_cursor:
        typer.echo("(more: raise --limit, or use --json and the API's cursor)")


@ledger_app.command()
def checkpoints(
    limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 10,
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """List signed checkpoints, largest tree first."""
    board = Board(workspace)
    page = _parse(CheckpointPage, board.call("GET", "/ledger/checkpoints", params={"limit": limit}))
    if as_json:
        typer.echo(page.model_dump_json(indent=2))
        return
    table = Table("size", "root", "signed at")
    for item in page.items:
        table.add_row(str(item.size), item.root_hash, item.created_at.isoformat())
    Console(width=140).print(table)


def _readiness_text(result: ReadinessOut) -> str:
    lines = []
    if not result.results:
        lines.append(f"NOT READY for {result.tier}: no entries for what was asked")
    for item in result.results:
        verdict = "READY" if item.ready else "NOT READY"
        lines.append(f"{verdict} for {result.tier}: {item.repository} at {_short(item.commit)}")
        lines += [f"  ok       {gate}" for gate in item.passing]
        lines += [f"  blocked  {b.gate_id}: {b.reason} ({b.detail})" for b in item.blockers]
    return "\n".join(lines)


@ledger_app.command()
def readiness(
    commit: Annotated[str | None, typer.Option("--commit", help="Full commit hash.")] = None,
    issue: Annotated[
        str | None, typer.Option("--issue", help="Issue key: its latest commit per repository.")
    ] = None,
    repository: Annotated[str | None, typer.Option("--repository", help="Repository.")] = None,
    tier: Annotated[
        str | None, typer.Option("--tier", help="Default: the workspace's tier.")
    ] = None,
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Whether a commit or an issue is ready for a tier, from the server ledger (exit 1
    when not)."""
    if commit is None and issue is None:
        fail("give --commit or --issue", code=2)
    if tier is not None and tier not in TIERS:
        fail(f"unknown tier {tier!r}: use {', '.join(TIERS)}", code=2)
    board = Board(workspace)
    params: dict[str, Any] = {
        "commit": commit,
        "issue_key": issue,
        "repository": repository,
        "tier": tier,
    }
    result = _parse(ReadinessOut, board.call("GET", "/ledger/readiness", params=params))
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        typer.echo(_readiness_text(result))
    if not result.ready:
        raise typer.Exit(1)
