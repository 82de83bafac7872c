"""Settings: layers, provenance, validation, production refusal, generated docs."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from forgehall.settings import (
    Settings,
    SettingsError,
    check_settings,
    load_settings,
)

STRONG = "s" * 40
KEY = Fernet.generate_key().decode()
SAFE_PRODUCTION = {
    "env": "production",
    "jwt_secret": STRONG,
    "encryption_key": KEY,
    "public_origin": "https://forge.example.com",
}


def test_precedence_env_over_dotenv_over_file_over_default(tmp_path: Path) -> None:
    config = tmp_path / "forgehall.toml"
    config.write_text('log_level = "warning"\nhost = "0.0.0.0"\nport = 7000\n')
    dotenv = tmp_path / ".env"
    dotenv.write_text("FORGEHALL_HOST=10.1.1.1\nFORGEHALL_PORT=7001\n")
    loaded = load_settings(config_file=config, environ={"PORT": "7002"}, dotenv_file=dotenv)
    s = loaded.settings
    assert (s.log_level, s.host, s.port) == ("warning", "10.1.1.1", 7002)
    assert loaded.origins["log_level"] == f"config file {config}"
    assert loaded.origins["host"] == ".env FORGEHALL_HOST"
    assert loaded.origins["port"] == "env PORT"
    assert loaded.origins["env"] == "default"


def test_config_file_from_environment_variable(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('env = "development"\nmetrics_addr = "127.0.0.1:9999"\n')
    loaded = load_settings(environ={"FORGEHALL_CONFIG": str(config)}, dotenv_file=None)
    assert loaded.settings.metrics_addr == "127.0.0.1:9999"
    assert loaded.config_file == config


def test_prefixed_name_wins_over_unprefixed_alias() -> None:
    loaded = load_settings(
        environ={
            "DATABASE_URL": "postgresql://a@h/one",
            "FORGEHALL_DATABASE_URL": "postgresql://a@h/two",
            "PORT": "1",
            "FORGEHALL_PORT": "2",
        },
        dotenv_file=None,
    )
    assert loaded.settings.database_url == "postgresql://a@h/two"
    assert loaded.settings.port == 2


def test_lists_and_pairs_from_environment() -> None:
    s = load_settings(
        environ={
            "FORGEHALL_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1",
            "FORGEHALL_SERVICE_INTERVALS": "job-history-retention=60",
            "FORGEHALL_SERVICES_DISABLED": "job-history-retention",
        },
        dotenv_file=None,
    ).settings
    assert s.trusted_proxies == ["10.0.0.0/8", "127.0.0.1"]
    assert s.service_intervals == {"job-history-retention": 60.0}
    assert s.services_disabled == ["job-history-retention"]


def test_unknown_key_in_config_file_is_named_with_a_suggestion(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('log_levle = "debug"\n')
    with pytest.raises(
        SettingsError,
        match=r"unknown setting 'log_levle'.*did you mean "
        r"'log_level'",
    ):
        load_settings(config_file=config, environ={}, dotenv_file=None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("not = [valid", "is not valid TOML"),
        (b"\xff\xfe", "is not UTF-8"),
    ],
)
def test_unreadable_config_file(tmp_path: Path, content: str | bytes | None, message: str) -> None:
    config = tmp_path / "c.toml"
    if isinstance(content, str):
        config.write_text(content)
    elif isinstance(content, bytes):
        config.write_bytes(content)
    with pytest.raises(SettingsError, match=message):
        load_settings(config_file=config, environ={}, dotenv_file=None)


def test_config_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="is a directory"):
        load_settings(config_file=tmp_path, environ={}, dotenv_file=None)


def test_invalid_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="env FORGEHALL_PORT"):
        load_settings(environ={"FORGEHALL_PORT": "eighty"}, dotenv_file=None)
    with pytest.raises(SettingsError, match="env FORGEHALL_ENV"):
        load_settings(environ={"FORGEHALL_ENV": "staging"}, dotenv_file=None)
    with pytest.raises(SettingsError, match="origin only"):
        load_settings(environ={"FORGEHALL_PUBLIC_ORIGIN": "https://x.org/app"}, dotenv_file=None)


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.port = 1  # type: ignore[misc]


def test_constructor_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGEHALL_PORT", "1234")
    assert Settings().port == 8000


def _problems(**values: object) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for p in check_settings(Settings(**values)):  # type: ignore[arg-type]
        found.setdefault(p.variable, []).append(p.message)
    return found


def test_development_defaults_have_no_problems() -> None:
    assert check_settings(Settings()) == []


@pytest.mark.parametrize(
    ("secret", "message"),
    [(None, "is not set"), ("change-me", "placeholder"), ("short-secret", "shorter than 32")],
)
def test_production_refuses_weak_jwt_secret(secret: str | None, message: str) -> None:
    problems = _problems(**{**SAFE_PRODUCTION, "jwt_secret": secret})
    assert list(problems) == ["FORGEHALL_JWT_SECRET"]
    assert message in problems["FORGEHALL_JWT_SECRET"][0]


def test_production_origin_must_be_https_unless_allowed() -> None:
    problems = _problems(**{**SAFE_PRODUCTION, "public_origin": "http://f.example"})
    assert "is not https" in problems["FORGEHALL_PUBLIC_ORIGIN"][0]
    assert (
        _problems(
            **{
                **SAFE_PRODUCTION,
                "public_origin": "http://f.example",
                "allow_insecure_origin": True,
            }
        )
        == {}
    )
    assert (
        "is not set"
        in _problems(**{**SAFE_PRODUCTION, "public_origin": None})["FORGEHALL_PUBLIC_ORIGIN"][0]
    )


def test_production_requires_an_encryption_key() -> None:
    assert _problems(**SAFE_PRODUCTION) == {}
    problems = _problems(**{**SAFE_PRODUCTION, "encryption_key": None})
    assert list(problems) == ["FORGEHALL_ENCRYPTION_KEY"]
    assert "required in production" in problems["FORGEHALL_ENCRYPTION_KEY"][0]
    assert _problems(encryption_key=None) == {}, "development generates its own"


def test_every_problem_is_reported_at_once() -> None:
    problems = check_settings(
        Settings(
            env="production",
            public_origin="http://x.org",
            encryption_key="nope",
            metrics_addr="9090",
        )
    )
    variables = {p.variable for p in problems}
    assert variables == {
        "FORGEHALL_JWT_SECRET",
        "FORGEHALL_PUBLIC_ORIGIN",
        "FORGEHALL_ENCRYPTION_KEY",
        "FORGEHALL_METRICS_ADDR",
    }
    assert all(p.fix for p in problems)


def test_encryption_key_rotation_list_is_checked_key_by_key() -> None:
    from cryptography.fernet import Fernet

    good = Fernet.generate_key().decode()
    assert _problems(encryption_key=f"{good},{Fernet.generate_key().decode()}") == {}
    assert "key #2" in _problems(encryption_key=f"{good},bad")["FORGEHALL_ENCRYPTION_KEY"][0]


def test_database_url_and_pool_checks() -> None:
    assert "not supported" in _problems(database_url="mysql://x@h/db")["FORGEHALL_DATABASE_URL"][0]
    warn = check_settings(
        Settings(database_url="postgresql://u@h/db", database_min_conns=9, database_max_conns=3)
    )
    assert [(p.severity, p.variable) for p in warn] == [("warning", "FORGEHALL_DATABASE_MIN_CONNS")]


def test_metrics_on_the_public_listener_is_refused() -> None:
    assert "same listener" in _problems(metrics_addr="127.0.0.1:8000")["FORGEHALL_METRICS_ADDR"][0]


def test_unknown_service_names_are_refused() -> None:
    from forgehall.app import check_configuration

    problems = check_configuration(
        Settings(services_disabled=["no-such-service"], service_intervals={"nope": 3})
    )
    assert [(p.variable, p.message) for p in problems] == [
        ("FORGEHALL_SERVICES_DISABLED", "names unknown service(s) no-such-service"),
        ("FORGEHALL_SERVICE_INTERVALS", "names unknown service(s) nope"),
    ]
    assert check_configuration(Settings(services_disabled=["all"])) == []


def test_secret_values_cover_every_secret_field() -> None:
    s = Settings(
        jwt_secret=STRONG,
        database_url="postgresql://u:hunter2-password@h/db",
        encryption_key="a" * 44 + "," + "b" * 44,
    )
    assert set(s.secret_values()) == {STRONG, "hunter2-password", "a" * 44, "b" * 44}


def test_production_refuses_a_fixed_dev_login_code() -> None:
    problems = _problems(**SAFE_PRODUCTION, dev_login_code="888888")
    assert list(problems) == ["FORGEHALL_DEV_LOGIN_CODE"]
    assert _problems(dev_login_code="888888") == {}
    assert "six digits" in _problems(dev_login_code="abc")["FORGEHALL_DEV_LOGIN_CODE"][0]


@pytest.mark.parametrize("domain", ["192.168.1.10", "::1", "[::1]", ".10.0.0.1"])
def test_cookie_domain_may_not_be_an_ip_literal(domain: str) -> None:
    assert "IP address" in _problems(cookie_domain=domain)["FORGEHALL_COOKIE_DOMAIN"][0]
    assert _problems(cookie_domain=".example.com") == {}


def test_settings_that_only_work_together() -> None:
    problems = _problems(github_client_id="abc")
    assert "FORGEHALL_GITHUB_CLIENT_ID is set" in problems["FORGEHALL_GITHUB_CLIENT_SECRET"][0]
    problems = _problems(oidc_issuer="https://sso.example.com")
    assert "FORGEHALL_OIDC_CLIENT_ID" in problems
    problems = _problems(smtp_password="pw")
    assert "FORGEHALL_SMTP_USERNAME" in problems
    warnings = check_settings(Settings(smtp_ehlo_name="mail.example.com"))
    assert [(p.severity, p.variable) for p in warnings] == [("warning", "FORGEHALL_SMTP_EHLO_NAME")]
    assert _problems(gitlab_client_id="a", gitlab_client_secret="b") == {}


def test_bootstrap_admin_entries_and_cors_origins_are_validated() -> None:
    problems = _problems(
        bootstrap_admins=["email:a@x.org", "alice"],
        cors_allowed_origins=["https://ok.example", "https://x.org/path"],
    )
    assert "'alice'" in problems["FORGEHALL_BOOTSTRAP_ADMINS"][0]
    assert "'https://x.org/path'" in problems["FORGEHALL_CORS_ALLOWED_ORIGINS"][0]


def test_smtp_tls_modes() -> None:
    assert Settings(smtp_port=465).smtp_implicit_tls
    assert Settings(smtp_tls="smtps").smtp_implicit_tls
    assert Settings(smtp_tls="ssl", smtp_port=2525).smtp_implicit_tls
    assert not Settings(smtp_port=587).smtp_implicit_tls
