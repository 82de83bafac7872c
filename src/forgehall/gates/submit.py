"""What a submission of gate results to the server ledger looks like, for every client
that sends one (``gates run --submit`` and the runtime daemon after an agent's work).

The body of ``POST /api/v1/workspaces/{ws}/ledger/entries`` carries the entries (at most
:data:`~forgehall.ledger.schemas.MAX_ENTRIES_PER_REQUEST` per request) and what the gates
file says each tier requires — the server's readiness needs the latter. A client checks
the answer: the server must have hashed exactly the bytes it was sent.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import ValidationError

from forgehall.gates.schemas import GatesFile
from forgehall.ledger.canonical import canonical_json
from forgehall.ledger.merkle import leaf_hash
from forgehall.ledger.schemas import MAX_ENTRIES_PER_REQUEST, AppendOut


def gate_requirements(gates_file: GatesFile) -> list[dict[str, Any]]:
    """Which tiers require each gate of the file, and which gates may fail."""
    return [
        {"id": g.id, "required_in": list(g.required_in), "allow_failure": g.allow_failure}
        for g in gates_file.gates
    ]


def submission_bodies(
    entries: Sequence[dict[str, Any]], gates_file: GatesFile
) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """(the entries of one request, its JSON body), request by request."""
    gates = gate_requirements(gates_file)
    for start in range(0, len(entries), MAX_ENTRIES_PER_REQUEST):
        chunk = list(entries[start : start + MAX_ENTRIES_PER_REQUEST])
        yield chunk, {"entries": chunk, "gates": gates}


def check_receipt(chunk: Sequence[dict[str, Any]], answer: Any) -> tuple[str | None, str | None]:
    """(the ledger's origin, a problem): the answer to a request must name the leaf hash
    of every entry sent, in order."""
    try:
        receipt = AppendOut.model_validate(answer)
    except ValidationError:
        return None, "the server's answer is not an append receipt"
    ours = [leaf_hash(canonical_json(entry)).hex() for entry in chunk]
    if [e.leaf_hash for e in receipt.entries] != ours:
        return receipt.origin, "the server recorded other bytes than were sent (leaf hashes differ)"
    return receipt.origin, None
