"""``forgehall serve`` and ``up`` as real processes: start-up, refusal, metrics, shutdown."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import ADMIN_URL, TEST_JWT_SECRET, PostgresTemplates, run_in_thread
from tests.process import ServerProcess, TcpProxy, base_env, free_port, run_cli

pytestmark = pytest.mark.slow


def assert_one_clear_error(output: str, *fragments: str) -> None:
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("forgehall: error:")]
    assert len(errors) == 1, output
    for fragment in fragments:
        assert fragment in output, output


def test_serve_on_sqlite_becomes_ready_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    with ServerProcess(tmp_path) as server:
        server.wait_ready()
        assert server.get("/readyz").json() == {
            "status": "ok",
            "checks": {"db": "ok", "migrations": "ok"},
        }
        assert server.get("/healthz").status_code == 200
        code = server.stop()
    assert code == 0
    output = server.output()
    assert "migrate.applied" in output
    assert "service.stopped" in output
    assert "app.stopped" in output
    assert (tmp_path / "data" / "forgehall.db").exists()


def test_up_prints_the_url_to_open_and_a_first_run_link(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, command="up") as server:
        server.wait_ready()
        output = server.output()
        assert f"Open http://localhost:{server.port} in your browser" in output
        link = re.search(r"(http://localhost:\d+/setup/(fh_boot_\w+))", output)
        assert link, output
        created = httpx.post(
            server.url + "/auth/setup", json={"token": link.group(2), "email": "me@example.com"}
        )
        assert created.status_code == 200
        assert created.json()["user"]["is_instance_admin"] is True
        assert server.stop() == 0


@pytest.mark.parametrize("command", ["serve", "up"])
def test_production_refuses_a_fixed_dev_login_code(tmp_path: Path, command: str) -> None:
    env = base_env(
        tmp_path,
        FORGEHALL_ENV="production",
        FORGEHALL_JWT_SECRET="x" * 40,
        FORGEHALL_PUBLIC_ORIGIN="https://forge.example.com",
        FORGEHALL_DEV_LOGIN_CODE="888888",
    )
    result = run_cli(command, env=env)
    assert result.returncode == 2
    assert_one_clear_error(result.stderr, "FORGEHALL_DEV_LOGIN_CODE")


def test_restart_on_an_existing_database_does_not_migrate_again(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    for _ in range(2):
        with ServerProcess(tmp_path, env=dict(env)) as server:
            server.wait_ready()
            assert server.stop() == 0
    assert "migrate.up_to_date" in server.output()


@pytest.mark.parametrize("secret", [None, "change-me", "too-short"])
def test_production_refuses_a_weak_jwt_secret(tmp_path: Path, secret: str | None) -> None:
    env = base_env(
        tmp_path, FORGEHALL_ENV="production", FORGEHALL_PUBLIC_ORIGIN="https://forge.example.com"
    )
    if secret:
        env["FORGEHALL_JWT_SECRET"] = secret
    result = run_cli("serve", env=env)
    assert result.returncode == 2
    assert_one_clear_error(result.stderr, "FORGEHALL_JWT_SECRET", "openssl rand -hex 32")
    assert not (tmp_path / "data" / "forgehall.db").exists(), "nothing may be created"


def test_production_refuses_a_plain_http_origin(tmp_path: Path) -> None:
    env = base_env(
        tmp_path,
        FORGEHALL_ENV="production",
        FORGEHALL_JWT_SECRET="x" * 40,
        FORGEHALL_PUBLIC_ORIGIN="http://forge.example.com",
    )
    result = run_cli("serve", env=env)
    assert result.returncode == 2
    assert_one_clear_error(
        result.stderr, "FORGEHALL_PUBLIC_ORIGIN", "FORGEHALL_ALLOW_INSECURE_ORIGIN"
    )


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", env=base_env(tmp_path, PORT=str(port)))
    assert result.returncode == 1
    assert_one_clear_error(result.stderr, f"port {port}", "already in use")


@pytest.mark.parametrize(
    ("variables", "fragment"),
    [
        ({"DATABASE_URL": "mysql://u@h/db"}, "not supported"),
        ({"DATABASE_URL": "::::"}, "not a valid URL"),
        ({"FORGEHALL_CONFIG": "/nonexistent/forgehall.toml"}, "does not exist"),
        ({"FORGEHALL_PORT": "http"}, "FORGEHALL_PORT"),
        ({"FORGEHALL_METRICS_ADDR": "nine"}, "FORGEHALL_METRICS_ADDR"),
    ],
)
def test_bad_configuration_is_one_clear_line(
    tmp_path: Path, variables: dict[str, str], fragment: str
) -> None:
    result = run_cli("serve", env=base_env(tmp_path, **variables))
    assert result.returncode == 2
    assert_one_clear_error(result.stderr, fragment)


def test_unknown_key_in_config_file(tmp_path: Path) -> None:
    config = tmp_path / "forgehall.toml"
    config.write_text("prot = 9000\n")
    result = run_cli("--config", str(config), "serve", env=base_env(tmp_path))
    assert result.returncode == 2
    assert_one_clear_error(result.stderr, "unknown setting 'prot'", "did you mean 'port'")


def test_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    env = base_env(tmp_path, DATABASE_URL=f"postgresql://fh:pw@127.0.0.1:{free_port()}/fh")
    result = run_cli("serve", env=env)
    assert result.returncode == 1
    assert_one_clear_error(result.stderr, "is unreachable", "DATABASE_URL")
    assert ":pw@" not in result.stderr


def test_metrics_only_on_the_private_listener(tmp_path: Path) -> None:
    metrics_port = free_port()
    env = base_env(tmp_path, FORGEHALL_METRICS_ADDR=f"127.0.0.1:{metrics_port}")
    with ServerProcess(tmp_path, env=env) as server:
        server.wait_ready()
        public = server.get("/metrics")
        assert public.status_code == 404
        assert "forgehall_" not in public.text
        server.get("/health")
        scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert scrape.status_code == 200
        text = scrape.text
        assert 'forgehall_http_requests_total{method="GET",route="/health",status="200"}' in text
        assert 'route="unmatched",status="404"' in text
        assert "forgehall_http_request_duration_seconds_bucket" in text
        assert re.search(r'forgehall_build_info\{python="[\d.]+",version="[\d.]+"\} 1', text)
        assert 'forgehall_db_pool_connections{state="in_use"}' in text
        assert server.stop() == 0


def test_without_metrics_addr_nothing_listens_for_metrics(tmp_path: Path) -> None:
    with ServerProcess(tmp_path) as server:
        server.wait_ready()
        assert server.get("/metrics").status_code == 404
        assert "metrics=None" in server.output() or '"metrics": null' in server.output()


def test_planted_secrets_never_reach_the_logs(tmp_path: Path) -> None:
    planted = "planted-jwt-secret-" + "z" * 30
    password = "planted-db-password-42"
    # PostgreSQL trusts local connections, so any password works — and must stay hidden.
    admin = make_url(ADMIN_URL)
    templates = PostgresTemplates()
    url = run_in_thread(lambda: templates.clone(migrated=False)) if _pg_up() else None
    env = base_env(
        tmp_path,
        FORGEHALL_JWT_SECRET=planted,
        FORGEHALL_LOG_FORMAT="json",
        FORGEHALL_LOG_LEVEL="debug",
    )
    if url:
        env["DATABASE_URL"] = (
            make_url(url)
            .set(username=admin.username or "postgres", password=password)
            .render_as_string(hide_password=False)
        )
    try:
        with ServerProcess(tmp_path, env=env) as server:
            server.wait_ready()
            server.get(f"/nope/{planted}")
            server.get(
                "/readyz", headers={"x-request-id": "probe-1", "x-forwarded-for": "198.51.100.7"}
            )
            httpx.post(server.url + "/health", content=planted, timeout=5)
            assert server.stop() == 0
        shown = run_cli("config", "show", env=env)
    finally:
        if url:
            run_in_thread(lambda: templates.drop(url))
    output = server.output()
    for secret in (planted, password):
        assert secret not in output
        assert secret not in shown.stdout
    assert "[REDACTED]" in output, "the request path carrying the secret must be logged"
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["event"] == "http.request"]
    assert requests
    assert all(line.get("request_id") for line in requests)
    assert any(line["request_id"] == "probe-1" for line in requests)


def _pg_up() -> bool:
    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(
                make_url(ADMIN_URL)
                .set(drivername="postgresql")
                .render_as_string(hide_password=False)
            )
        except Exception:
            return False
        await conn.close()
        return True

    return bool(run_in_thread(probe))


@pytest.mark.postgres_only
def test_two_replicas_on_one_empty_database_migrate_once(
    tmp_path: Path, pg_templates: PostgresTemplates
) -> None:
    url = run_in_thread(lambda: pg_templates.clone(migrated=False))
    servers = [
        ServerProcess(tmp_path, env=base_env(tmp_path, DATABASE_URL=url), name=f"replica{i}")
        for i in range(2)
    ]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
            assert server.get("/readyz").json()["checks"] == {"db": "ok", "migrations": "ok"}
    finally:
        for server in servers:
            server.stop()
        run_in_thread(lambda: pg_templates.drop(url))
    outputs = [server.output() for server in servers]
    assert sum("migrate.applied" in out for out in outputs) == 1, outputs
    assert sum("migrate.up_to_date" in out for out in outputs) == 1, outputs


@pytest.mark.postgres_only
def test_readyz_follows_the_database_going_away_and_returning(
    tmp_path: Path, pg_templates: PostgresTemplates
) -> None:
    url = run_in_thread(pg_templates.clone)
    target = make_url(url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432).start()
    via_proxy = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        with ServerProcess(tmp_path, env=base_env(tmp_path, DATABASE_URL=via_proxy)) as server:
            server.wait_ready()
            proxy.stop()
            down = _wait_status(server, 503)
            assert down.json()["checks"]["db"].startswith("error")
            assert server.get("/health").status_code == 200, "liveness does not need the db"
            proxy.start()
            up = _wait_status(server, 200)
            assert up.json()["checks"] == {"db": "ok", "migrations": "ok"}
            assert server.stop() == 0
    finally:
        proxy.close()
        run_in_thread(lambda: pg_templates.drop(url))


def _wait_status(server: ServerProcess, status: int, timeout: float = 15) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = server.get("/readyz")
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status, response.text
            return response
        time.sleep(0.1)


def test_config_check_in_production_lists_every_problem(tmp_path: Path) -> None:
    env = base_env(tmp_path, FORGEHALL_ENV="production", FORGEHALL_ENCRYPTION_KEY="bad")
    result = run_cli("config", "check", env=env)
    assert result.returncode == 1
    for variable in ("FORGEHALL_JWT_SECRET", "FORGEHALL_PUBLIC_ORIGIN", "FORGEHALL_ENCRYPTION_KEY"):
        assert variable in result.stdout
    assert "Fix:" in result.stdout
    ok = run_cli("config", "check", env=base_env(tmp_path))
    assert ok.returncode == 0
    assert "configuration OK" in ok.stdout


def test_config_show_masks_secrets_and_names_sources(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("FORGEHALL_LOG_LEVEL=warning\n")
    env = base_env(tmp_path, FORGEHALL_JWT_SECRET=TEST_JWT_SECRET)
    result = run_cli("config", "show", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {row["setting"]: row for row in json.loads(result.stdout)}
    assert rows["FORGEHALL_JWT_SECRET"]["value"] == "********"
    assert rows["FORGEHALL_JWT_SECRET"]["source"] == "env FORGEHALL_JWT_SECRET"
    assert rows["FORGEHALL_LOG_LEVEL"] == {
        "setting": "FORGEHALL_LOG_LEVEL",
        "value": "warning",
        "source": ".env FORGEHALL_LOG_LEVEL",
    }
    assert rows["FORGEHALL_PORT"]["source"] == "default"
    assert TEST_JWT_SECRET not in result.stdout


def test_migrate_commands(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    status = run_cli("migrate", "status", env=env)
    assert status.returncode == 1
    assert "pending" in status.stdout
    up = run_cli("migrate", "up", env=env)
    assert up.returncode == 0
    assert "applied" in up.stdout
    again = run_cli("migrate", "up", env=env)
    assert "up to date" in again.stdout
    current = run_cli("migrate", "status", "--json", env=env)
    assert json.loads(current.stdout)["pending"] == []
    down = run_cli("migrate", "down", "--to", "base", "--yes", env=env)
    assert down.returncode == 0
    assert "base" in down.stdout


def test_the_api_listener_hands_out_connections_without_nagle_delays() -> None:
    """A response written as headers then body must not wait for the client's delayed
    ACK: every accepted connection has TCP_NODELAY, and the socket says it is TCP (so
    asyncio keeps it that way)."""
    from forgehall.server import bind_socket

    listener = bind_socket("127.0.0.1", 0, "API", "PORT")
    try:
        listener.listen()
        assert listener.proto == socket.IPPROTO_TCP
        with socket.create_connection(listener.getsockname()[:2]):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        listener.close()
