"""What a verification found, in one shape for every kind of ledger file.

A report is either ``ok`` (with how many entries were checked and the head a reader can
keep to notice a later rewrite), or names the first bad position and why it is bad. For
a local ledger (kind ``chain``) the position is a 1-based line number and the head is the
hex SHA-256 of the last good line; for a server bundle (kind ``bundle``) the position is
the 0-based log position and the head is the hex root hash of the tree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class VerificationReport:
    path: str
    kind: str  # "chain": a local .jsonl ledger; "bundle": a server export
    ok: bool
    entries: int  # entries that verified (all of them when ok)
    position: int | None = None  # the first bad line (chain) or log position (bundle)
    reason: str | None = None
    head: str | None = None  # hex SHA-256 of the last good line / hex root of the tree
    # Bundles only:
    origin: str | None = None
    checkpoints: int = 0  # signed checkpoints that verified
    checkpoint: str | None = None  # the latest signed checkpoint note (to remember)
    public_key: str | None = None  # the verifier key the checkpoints were checked with
    key_source: str | None = None  # "pinned", "remembered" or "bundle"

    @classmethod
    def good(cls, path: str, kind: str, entries: int, head: str | None) -> VerificationReport:
        return cls(path=path, kind=kind, ok=True, entries=entries, head=head)

    @classmethod
    def bad(
        cls, path: str, kind: str, entries: int, position: int, reason: str, head: str | None
    ) -> VerificationReport:
        return cls(
            path=path,
            kind=kind,
            ok=False,
            entries=entries,
            position=position,
            reason=reason,
            head=head,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.kind == "bundle":
            if self.ok:
                return (
                    f"OK: {self.entries} entries, {self.checkpoints} signed checkpoints "
                    f"verified; {self.origin} at tree size {self.entries}, root {self.head}"
                )
            return f"TAMPERED: position {self.position}: {self.reason}"
        if self.ok:
            head = f", head {self.head}" if self.head else ""
            return f"OK: {self.entries} entries, hash chain intact{head}"
        return f"TAMPERED: line {self.position}: {self.reason}"
