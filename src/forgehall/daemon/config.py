"""The daemon's configuration: environment variables over the stored login.

Read once at start (:func:`load_config`); a bad value is a :class:`ConfigError` whose
message names the variable and says what to do. The server URL and daemon token come
from ``FORGEHALL_SERVER_URL`` / ``FORGEHALL_DAEMON_TOKEN`` or, when unset, from the file
``forgehall daemon login`` writes in the data directory (mode 0600).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

CREDENTIALS_FILE = "credentials.json"


class ConfigError(Exception):
    """A configuration value the daemon cannot start with."""


def _data_home(environ: Mapping[str, str]) -> Path:
    home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    base = environ.get("XDG_DATA_HOME") or str(home / ".local" / "share")
    return Path(base) / "forgehall"


def data_dir_from(environ: Mapping[str, str]) -> Path:
    """``FORGEHALL_DAEMON_DIR`` or ``~/.local/share/forgehall/daemon``."""
    value = environ.get("FORGEHALL_DAEMON_DIR")
    return Path(value).expanduser() if value else _data_home(environ) / "daemon"


@dataclass(frozen=True)
class DaemonConfig:
    server_url: str
    token: str = field(repr=False)
    data_dir: Path
    work_dir: Path
    health_host: str = "127.0.0.1"
    health_port: int = 0
    max_concurrent: int = 20
    drain_seconds: float = 60.0
    idle_timeout: float = 1800.0
    task_timeout: float = 0.0  # 0: no wall-clock limit
    kill_grace: float = 10.0
    claim_wait: float = 30.0
    wrapper: tuple[str, ...] = ()
    machine: str = ""
    gc_after: float = 86400.0  # a finished issue's worktree goes this long after last use
    gc_max_age: float = 30 * 86400.0  # any worktree unused this long goes
    gc_interval: float = 3600.0


def _number(environ: Mapping[str, str], name: str, default: float, *, low: float) -> float:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < low:
        raise ConfigError(f"{name}={raw!r} must be at least {low:g}")
    return value


def _health_addr(raw: str) -> tuple[str, int]:
    host, sep, port_text = raw.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        raise ConfigError(
            f"FORGEHALL_DAEMON_HEALTH_ADDR={raw!r} must be HOST:PORT, e.g. 127.0.0.1:0"
        )
    host = host.strip("[]")
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback:
        raise ConfigError(
            f"FORGEHALL_DAEMON_HEALTH_ADDR={raw!r}: the health endpoint listens on a loopback "
            "address only (127.0.0.1, ::1 or localhost)"
        )
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"FORGEHALL_DAEMON_HEALTH_ADDR={raw!r}: no such port")
    return host, port


def read_stored_login(data_dir: Path) -> tuple[str | None, str | None]:
    path = data_dir / CREDENTIALS_FILE
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; run `forgehall daemon login` again") from exc
    return data.get("server_url"), data.get("token")


def store_login(data_dir: Path, server_url: str, token: str) -> Path:
    """Write the server URL and daemon token, mode 0600, in a directory of mode 0700."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / CREDENTIALS_FILE
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"server_url": server_url.rstrip("/"), "token": token}, handle, indent=2)
    os.chmod(temporary, 0o600)
    temporary.replace(path)
    return path


def load_config(environ: Mapping[str, str] | None = None) -> DaemonConfig:
    env = os.environ if environ is None else environ
    data_dir = data_dir_from(env)
    stored_url, stored_token = read_stored_login(data_dir)
    server_url = env.get("FORGEHALL_SERVER_URL") or stored_url
    token = env.get("FORGEHALL_DAEMON_TOKEN") or stored_token
    if not server_url or not token:
        raise ConfigError(
            "no server or daemon token: run `forgehall daemon login --server URL --token "
            "fh_dmn_…` (or set FORGEHALL_SERVER_URL and FORGEHALL_DAEMON_TOKEN); a workspace "
            "admin mints the token"
        )
    if not token.startswith("fh_dmn_"):
        raise ConfigError("the daemon token must be a daemon token (fh_dmn_…), not another kind")
    if not server_url.startswith(("http://", "https://")):
        raise ConfigError(f"server URL {server_url!r} must start with http:// or https://")
    work_raw = env.get("FORGEHALL_DAEMON_WORKDIR")
    work_dir = Path(work_raw).expanduser() if work_raw else _data_home(env) / "work"
    host, port = _health_addr(env.get("FORGEHALL_DAEMON_HEALTH_ADDR") or "127.0.0.1:0")
    max_concurrent = int(_number(env, "FORGEHALL_DAEMON_MAX_CONCURRENT", 20, low=1))
    if max_concurrent > 100:
        raise ConfigError("FORGEHALL_DAEMON_MAX_CONCURRENT must be at most 100")
    wrapper_raw = env.get("FORGEHALL_DAEMON_WRAPPER", "")
    try:
        wrapper = tuple(shlex.split(wrapper_raw))
    except ValueError as exc:
        raise ConfigError(f"FORGEHALL_DAEMON_WRAPPER cannot be parsed: {exc}") from None
    return DaemonConfig(
        server_url=server_url.rstrip("/"),
        token=token,
        data_dir=data_dir,
        work_dir=work_dir,
        health_host=host,
        health_port=port,
        max_concurrent=max_concurrent,
        drain_seconds=_number(env, "FORGEHALL_DAEMON_DRAIN_SECONDS", 60, low=0),
        idle_timeout=_number(env, "FORGEHALL_DAEMON_IDLE_TIMEOUT", 1800, low=1),
        task_timeout=_number(env, "FORGEHALL_DAEMON_TASK_TIMEOUT", 0, low=0),
        kill_grace=_number(env, "FORGEHALL_DAEMON_KILL_GRACE", 10, low=0),
        claim_wait=min(_number(env, "FORGEHALL_DAEMON_CLAIM_WAIT", 30, low=0), 30.0),
        wrapper=wrapper,
        machine=(env.get("FORGEHALL_DAEMON_MACHINE") or socket.gethostname())[:200],
        gc_after=_number(env, "FORGEHALL_DAEMON_GC_AFTER", 86400, low=0),
        gc_max_age=_number(env, "FORGEHALL_DAEMON_GC_MAX_AGE", 30 * 86400, low=3600),
        gc_interval=_number(env, "FORGEHALL_DAEMON_GC_INTERVAL", 3600, low=1),
    )
