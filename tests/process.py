"""Real server processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment: nothing of the developer's FORGEHALL_* leaks in."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FORGEHALL_") and k not in ("DATABASE_URL", "PORT")}
    env.update({
        "FORGEHALL_DATA_DIR": str(tmp_path / "data"),
        "FORGEHALL_DATABASE_WAIT_SECONDS": "0",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str], cwd: Path | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "forgehall", *args], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=timeout, check=False,
    )


class ServerProcess:
    """``forgehall serve``/``up`` as a subprocess, its output captured to a file."""

    def __init__(self, tmp_path: Path, *, port: int | None = None, command: str = "serve",
                 env: dict[str, str] | None = None, name: str = "server") -> None:
        self.port = port or free_port()
        self.log_path = tmp_path / f"{name}-{self.port}.log"
        self.env = env if env is not None else base_env(tmp_path)
        self.env["PORT"] = str(self.port)
        self.command = command
        self.cwd = tmp_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "forgehall", self.command], env=self.env, cwd=self.cwd,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n"
                                     + self.output())
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("server did not become ready:\n" + self.output())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
