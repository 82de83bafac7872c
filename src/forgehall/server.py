"""Run a Forgehall server process (``forgehall serve`` and ``forgehall up``).

Start-up order, each step failing with one clear line and a non-zero exit:

1. settings checks — any error refuses to start (in production this includes unsafe
   secrets and a plain-http origin);
2. logging configured, with every secret from settings redacted;
3. listening sockets bound up front, so a port in use is reported plainly;
4. database reachable (retried for ``database_wait_seconds``), migrations applied under
   the advisory lock;
5. the API served by uvicorn; metrics, when enabled, on their own listener in a thread.

SIGTERM/SIGINT: uvicorn stops accepting, drains in-flight requests for up to
``shutdown_grace_seconds``, then the lifespan stops the background services.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import math
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from types import FrameType
from typing import Any, Literal
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import structlog
import uvicorn
from prometheus_client import make_wsgi_app
from pydantic import SecretStr

from forgehall import __version__
from forgehall.app import AppOptions, check_configuration, create_app
from forgehall.core.logging import configure_logging
from forgehall.db.engine import Database
from forgehall.db.migrate import SchemaAheadError, upgrade_to_head
from forgehall.db.url import DatabaseUrlError, resolve_database
from forgehall.settings import LoadedSettings, Settings, parse_host_port

log = structlog.get_logger("forgehall.server")


class StartupError(Exception):
    """Start-up cannot continue; the message is the one line shown to the operator."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def ensure_jwt_secret(settings: Settings) -> Settings:
    """In development, supply a persistent random JWT secret when none is configured.

    The secret is kept in ``<data_dir>/jwt_secret`` (mode 0600) so sessions survive a
    restart. Production never reaches this: a missing secret fails the settings check.
    """
    if settings.jwt_secret is not None or settings.is_production:
        return settings
    path = settings.data_dir / "jwt_secret"
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return settings.model_copy(update={"jwt_secret": SecretStr(path.read_text().strip())})


def ensure_encryption_key(settings: Settings) -> Settings:
    """In development, supply a persistent random encryption key when none is configured.

    Kept in ``<data_dir>/encryption_key`` (mode 0600). Production must configure one when
    it stores credentials (the settings check says so).
    """
    if settings.encryption_key is not None or settings.is_production:
        return settings
    path = settings.data_dir / "encryption_key"
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        from cryptography.fernet import Fernet

        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(Fernet.generate_key().decode())
    return settings.model_copy(update={"encryption_key": SecretStr(path.read_text().strip())})


def bind_socket(host: str, port: int, what: str, variable: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio turns Nagle's algorithm off only on sockets whose
    # protocol says TCP, and a response sent as headers + body would otherwise wait for
    # the client's delayed ACK (40 ms on Linux) before its body leaves. TCP_NODELAY on
    # the listener is inherited by every accepted connection as well.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"{what} port {port} on {host} is already in use; stop the other process or "
                f"choose another port with {variable}"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise StartupError(
                f"{what} address {host} is not an address of this machine ({variable})"
            ) from None
        if exc.errno == errno.EACCES:
            raise StartupError(
                f"not allowed to listen on {host}:{port} ({variable}); ports "
                "below 1024 need privileges"
            ) from None
        raise StartupError(f"cannot listen on {host}:{port} ({variable}): {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def prepare_database(db: Database, settings: Settings) -> list[str]:
    """Wait for the database, then migrate it when configured to."""
    deadline = time.monotonic() + settings.database_wait_seconds
    attempt = 0
    while True:
        attempt += 1
        try:
            await db.ping(timeout=5)
            break
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if time.monotonic() >= deadline:
                raise StartupError(
                    f"database {db.config.display} is unreachable ({reason}); check "
                    "DATABASE_URL and that the database server is running"
                ) from None
            log.warning("db.waiting", attempt=attempt, error=reason)
            await asyncio.sleep(min(0.5 * 2 ** min(attempt, 4), 5))
    if not settings.migrate_on_start:
        return []
    try:
        return await upgrade_to_head(db)
    except SchemaAheadError as exc:
        raise StartupError(str(exc)) from None


def run(loaded: LoadedSettings, mode: Literal["serve", "up"]) -> int:
    """Run until stopped; return the process exit code."""
    try:
        return asyncio.run(_run(loaded, mode))
    except StartupError as exc:
        print(f"forgehall: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


async def _run(loaded: LoadedSettings, mode: Literal["serve", "up"]) -> int:
    settings = loaded.settings
    problems = check_configuration(settings)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        lines = "\n".join(f"  - {p.render()}" for p in errors)
        raise StartupError(
            f"refusing to start: {len(errors)} configuration problem(s):\n{lines}\n"
            "Run `forgehall config check` for the full report.",
            exit_code=2,
        )
    settings = ensure_encryption_key(ensure_jwt_secret(settings))
    configure_logging(
        level=settings.log_level,
        fmt=settings.effective_log_format,
        secrets=settings.secret_values(),
    )
    for problem in problems:
        log.warning(
            "config.warning", setting=problem.variable, message=problem.message, fix=problem.fix
        )
    try:
        db_config = resolve_database(settings)
    except DatabaseUrlError as exc:
        raise StartupError(str(exc), exit_code=2) from None

    public = bind_socket(settings.host, settings.port, "API", "PORT / FORGEHALL_PORT")
    metrics_sock = None
    if settings.metrics_addr:
        host, port = parse_host_port(settings.metrics_addr)
        try:
            metrics_sock = bind_socket(host, port, "metrics", "FORGEHALL_METRICS_ADDR")
        except StartupError:
            public.close()
            raise

    db = Database(db_config)
    try:
        applied = await prepare_database(db, settings)
    except BaseException:
        public.close()
        if metrics_sock:
            metrics_sock.close()
        await db.dispose()
        raise
    app = create_app(settings, db=db, options=AppOptions(run_services=True))
    await _ensure_ledger_key(db, settings)  # after create_app: it installs the vault
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        proxy_headers=False,  # RequestContextMiddleware handles trusted proxies
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
        server_header=False,
    )
    server = _Server(config)
    metrics_thread = None
    if metrics_sock is not None and app.state.metrics is not None:
        metrics_thread = _start_metrics_listener(metrics_sock, app.state.metrics.registry)
    port = public.getsockname()[1]
    url = settings.public_origin or f"http://{_display_host(settings.host)}:{port}"
    log.info(
        "server.listening",
        url=url,
        mode=mode,
        version=__version__,
        database=db_config.dialect,
        migrations_applied=len(applied),
        metrics=settings.metrics_addr,
    )
    if mode == "up":
        setup_link = await _first_run_link(db, settings)
        _print_banner(url, db_config.display, settings.data_dir, setup_link)
    # What start-up built (modules, the app, the ORM's metadata) lives as long as the
    # process: keep it out of the collector's full sweeps, which otherwise walk it all and
    # stall a request for ~100 ms now and then (bench/ui_pages.py shows them as the p99).
    gc.collect()
    gc.freeze()
    asyncio.get_running_loop().create_task(db.warm())
    runtime = None
    if mode == "up" and settings.embedded_runtime:
        from forgehall.embedded_runtime import EmbeddedRuntime  # `serve` never loads it

        runtime = EmbeddedRuntime(
            db, server_url=f"http://{_loopback(settings.host)}:{port}", data_dir=settings.data_dir
        )
        server.before_exit = runtime.stop
        runtime.start()
    # uvicorn restores the previous handlers after its graceful shutdown and re-raises
    # the signal; with ours in place that is a no-op and a clean stop exits 0.
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    try:
        await server.serve(sockets=[public])
        if received:
            log.info("server.stopped", signal=signal.Signals(received[0]).name)
    finally:
        if runtime is not None:
            await runtime.stop()  # a no-op after a drain; stops it if serving failed
        if metrics_thread is not None:
            metrics_thread.shutdown()
        await db.dispose()
    return 0 if server.started else 1


class _Server(uvicorn.Server):
    """uvicorn with one step before it stops: ``before_exit`` (the embedded runtime's
    drain) runs while the API still answers, so its daemons can report what they ran.
    A second signal stops at once, as it does without it."""

    before_exit: Callable[[], Awaitable[None]] | None = None
    _draining: bool = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.before_exit is None or self._draining or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(self._drain_then_exit, sig, frame)

    def _drain_then_exit(self, sig: int, frame: FrameType | None) -> None:
        assert self.before_exit is not None
        before_exit = self.before_exit

        async def drain() -> None:
            try:
                await before_exit()
            except Exception as exc:
                log.error("server.drain_failed", error=f"{type(exc).__name__}: {exc}")
            super(_Server, self).handle_exit(sig, frame)

        self._drain_task = asyncio.get_running_loop().create_task(drain())


def _loopback(host: str) -> str:
    """Where this machine reaches the API it listens on at ``host``."""
    if host in ("0.0.0.0", "", "localhost"):  # noqa: S104
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def _ensure_ledger_key(db: Database, settings: Settings) -> None:
    """The instance's ledger signing key is generated on first start (stored encrypted)."""
    from forgehall.core.errors import ProblemError
    from forgehall.ledger.service import create_signing_key_at_start

    try:
        await create_signing_key_at_start(db, settings)
    except ProblemError as exc:  # no encryption key: appends will say so (503)
        log.warning("ledger.key_unavailable", error=exc.detail)


def _display_host(host: str) -> str:
    return "localhost" if host in ("0.0.0.0", "127.0.0.1", "::", "::1") else host  # noqa: S104


async def _first_run_link(db: Database, settings: Settings) -> str | None:
    from forgehall.identity.service import create_setup_link

    async with db.session() as session:
        return await create_setup_link(session, settings)


def _print_banner(url: str, database: str, data_dir: Path, setup_link: str | None) -> None:
    first_run = (
        f"  First run: create the administrator account with this one-time link\n"
        f"  (valid 24 hours):\n\n    {setup_link}\n\n"
        if setup_link
        else ""
    )
    print(
        f"\n  Forgehall {__version__} is running.\n\n"
        f"  Open {url} in your browser.\n"
        f"  Database: {database}\n  Data directory: {data_dir}\n\n"
        f"{first_run}"
        "  Press Ctrl+C to stop.\n",
        file=sys.stderr,
        flush=True,
    )


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


class _MetricsServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _start_metrics_listener(sock: socket.socket, registry: Any) -> _MetricsServer:
    """Serve ``/metrics`` from ``registry`` on the pre-bound socket, in a daemon thread.

    A thread keeps scrapes independent of the event loop and leaves signal handling to
    the API server alone.
    """
    server = _MetricsServer(sock.getsockname()[:2], _QuietHandler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    host, port = sock.getsockname()[:2]
    server.server_name, server.server_port = str(host), int(port)
    server.setup_environ()
    server.set_app(make_wsgi_app(registry))
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
