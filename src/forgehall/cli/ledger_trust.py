"""The checkpoints this CLI trusted: one per ledger origin, next to the credentials.

``~/.config/forgehall/ledger-trust.json`` (``$XDG_CONFIG_HOME``), mode 0600. After a
verification succeeds, the latest checkpoint it checked (and the key that signed it) is
remembered for the log's origin; the next verification of that origin must extend it —
so a server that rewrites or rolls back history, or starts signing with another key, is
caught even when everything it serves is consistent with itself.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from forgehall.cli.credentials import credentials_path
from forgehall.ledger.bundle import TrustedCheckpoint
from forgehall.ledger.checkpoint import CheckpointError, VerifierKey, open_checkpoint


def trust_path() -> Path:
    return credentials_path().parent / "ledger-trust.json"


def load_trusted() -> dict[str, TrustedCheckpoint]:
    """The remembered checkpoints by origin (none when there is no file yet).

    Raises:
        ValueError: the file is damaged (its message says which origin and why).
    """
    path = trust_path()
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    trusted: dict[str, TrustedCheckpoint] = {}
    for origin, item in data.get("checkpoints", {}).items():
        try:
            key = VerifierKey.parse(item["public_key"])
            checkpoint = open_checkpoint(item["note"], key)
        except (KeyError, TypeError, CheckpointError) as exc:
            raise ValueError(f"{path}: the checkpoint of {origin} is damaged ({exc})") from None
        if checkpoint.origin != origin:
            raise ValueError(f"{path}: the checkpoint stored for {origin} is of another log")
        trusted[origin] = TrustedCheckpoint(
            origin=origin,
            public_key=key.encode(),
            size=checkpoint.size,
            root=checkpoint.root_hash,
            note=item["note"],
            trusted_at=str(item.get("trusted_at", "an earlier run")),
        )
    return trusted


def remember(origin: str, public_key: str, note: str, source: str) -> Path:
    """Trust ``note`` (already verified) for ``origin`` from now on."""
    path = trust_path()
    data: dict[str, dict[str, dict[str, str]]] = {"checkpoints": {}}
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        data.setdefault("checkpoints", {})
    data["checkpoints"][origin] = {
        "public_key": public_key,
        "note": note,
        "source": source,
        "trusted_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
    temporary.replace(path)
    return path
