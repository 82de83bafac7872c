"""Where the CLI keeps its server URL, token and current workspace.

``~/.config/forgehall/credentials.json`` (``$XDG_CONFIG_HOME``), written with mode 0600
in a directory of mode 0700. ``FORGEHALL_SERVER_URL`` and ``FORGEHALL_TOKEN`` override
the file (the daemon gives an agent process a task token this way).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


def credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "forgehall" / "credentials.json"


@dataclass
class Credentials:
    server_url: str | None = None
    token: str | None = None
    workspace: str | None = None


def load_credentials() -> Credentials:
    path = credentials_path()
    stored = Credentials()
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        stored = Credentials(**{k: data.get(k) for k in ("server_url", "token", "workspace")})
    return Credentials(
        server_url=os.environ.get("FORGEHALL_SERVER_URL") or stored.server_url,
        token=os.environ.get("FORGEHALL_TOKEN") or stored.token,
        workspace=os.environ.get("FORGEHALL_WORKSPACE") or stored.workspace,
    )


def save_credentials(credentials: Credentials) -> Path:
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(asdict(credentials), handle, indent=2)
    os.chmod(temporary, 0o600)
    temporary.replace(path)
    return path


def forget_credentials() -> bool:
    path = credentials_path()
    if path.exists():
        path.unlink()
        return True
    return False
