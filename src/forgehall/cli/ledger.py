"""``forgehall ledger …``: check evidence ledgers offline.

``verify`` takes a local ledger (``.jsonl``, a hash chain). A server export (a ``.json``
bundle with a signed checkpoint) will be verified by the same command once the server's
ledger exists; the dispatch on the file's kind is here for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from forgehall.cli.context import fail
from forgehall.ledger.chain import verify_chain
from forgehall.ledger.verify import VerificationReport

ledger_app = typer.Typer(help="Evidence ledgers: verify them offline.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(ledger_app, name="ledger")


def _verify(path: Path) -> VerificationReport:
    if path.suffix != ".jsonl":
        fail(
            f"{path}: not a local ledger (.jsonl); only local ledgers can be verified so far",
            code=2,
        )
    return verify_chain(path)


@ledger_app.command()
def verify(
    file: Annotated[
        Path, typer.Argument(help="A local ledger, e.g. .forgehall/evidence/ledger.jsonl.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Verify a ledger file: every line's seq and hash chain (exit 1 when tampered).

    Prints OK with the entry count and the head hash (keep it: a later rewrite of the
    end of the file is visible only against a head you kept), or the first bad line and
    why: edited, removed, reordered, duplicated, or cut mid-line.
    """
    if not file.is_file():
        fail(f"{file}: no such file", code=2)
    try:
        report = _verify(file)
    except OSError as exc:
        fail(f"{file}: cannot read it: {exc}", code=2)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        typer.echo(f"{file}: {report.summary()}")
    if not report.ok:
        raise typer.Exit(1)
