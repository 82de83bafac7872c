"""What a verification found, in one shape for every kind of ledger file.

A report is either ``ok`` (with how many entries were checked and the head hash a
reader can keep to notice a later rewrite), or names the first bad position (a 1-based
line number for a local ledger) and why it is bad.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class VerificationReport:
    path: str
    kind: str  # "chain": a local .jsonl ledger
    ok: bool
    entries: int  # entries that verified (all of them when ok)
    position: int | None = None  # the first bad line, when not ok
    reason: str | None = None
    head: str | None = None  # hex SHA-256 of the last good line

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
        if self.ok:
            head = f", head {self.head}" if self.head else ""
            return f"OK: {self.entries} entries, hash chain intact{head}"
        return f"TAMPERED: line {self.position}: {self.reason}"
